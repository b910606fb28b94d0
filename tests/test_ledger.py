import json
import multiprocessing
import os

import pytest

from dpdkeni.ledger import Lease, Ledger, LedgerError


def test_roundtrip_and_steps(state_dir):
    led = Ledger()
    with led.transaction() as leases:
        leases["0000:01:00.0"] = Lease("0000:01:00.0", "netdev", "pid:1", {"ifname": "ens1", "mac": "52:54:00:00:00:10"})
    led.begin_step("0000:01:00.0", "move", {"netns": "tmp"})
    assert led.get("0000:01:00.0").step("move").state == "started"
    led.end_step("0000:01:00.0", "move", index=7)
    step = led.get("0000:01:00.0").step("move")
    assert (step.state, step.undo) == ("done", {"netns": "tmp", "index": 7})
    assert led.known_macs() == {"0000:01:00.0": "52:54:00:00:00:10"}
    assert json.load(open(os.path.join(state_dir, "leases.json")))["version"] == 1
    assert led.remove("0000:01:00.0").mode == "netdev" and led.leases() == {}


def test_failed_transaction_writes_nothing(state_dir):
    led = Ledger()
    with pytest.raises(RuntimeError):
        with led.transaction() as leases:
            leases["x"] = Lease("x", "netdev", "pid:1", {})
            raise RuntimeError("boom")
    assert led.leases() == {}


def test_corrupt_ledger_is_clear_error(state_dir):
    open(os.path.join(state_dir, "leases.json"), "w").write("{not json")
    with pytest.raises(LedgerError, match="unreadable"):
        Ledger().leases()


def test_parse_cache_sees_other_writers_and_keeps_its_copy(state_dir):
    """A read that finds the bytes it parsed last reuses the parse; a write by anyone else (here: the file
    rewritten behind its back) is read afresh, and changing a lease handed out changes nothing stored."""
    led = Ledger()
    with led.transaction() as leases:
        leases["a"] = Lease("a", "netdev", "pid:1", {"ifname": "ens1"}, params={"ifname": "eth0"})
    got = led.get("a")
    got.params["ifname"] = "mutated"
    got.original["ifname"] = "mutated"
    assert led.get("a").params == {"ifname": "eth0"} and led.get("a").original == {"ifname": "ens1"}
    with led.transaction() as leases:
        leases["a"].params["mtu"] = 1400
    led.get("a").params.clear()
    assert led.get("a").params == {"ifname": "eth0", "mtu": 1400}
    path = os.path.join(state_dir, "leases.json")
    doc = json.load(open(path))
    doc["leases"]["a"]["target"] = "pid:2"
    with open(path, "w") as f:
        json.dump(doc, f, separators=(",", ":"), sort_keys=True)
    assert led.get("a").target == "pid:2" and Ledger().leases()["a"].params["mtu"] == 1400


def _claim(args):
    directory, n = args
    led = Ledger(directory)
    with led.transaction() as leases:
        if "nic" in leases:
            return False
        leases["nic"] = Lease("nic", "netdev", f"pid:{n}", {})
        return True


def test_exactly_one_claims(state_dir):
    for _ in range(20):
        Ledger().remove("nic")
        with multiprocessing.Pool(4) as pool:
            wins = pool.map(_claim, [(state_dir, i) for i in range(8)])
        assert wins.count(True) == 1
        assert len(Ledger().leases()) == 1
