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
