import json
import multiprocessing
import os

import pytest

from conftest import wait_stopped
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


_STOPPING_WRITER = r"""
import os, signal, sys
real_rename = os.rename
def stop_then_rename(src, dst):
    if os.path.basename(dst) == "leases.json":  # the new ledger is written in its temp file, not yet in place
        os.kill(os.getpid(), signal.SIGSTOP)
    real_rename(src, dst)
os.rename = stop_then_rename
from dpdkeni.ledger import Lease, Ledger
with Ledger(sys.argv[1]).transaction() as leases:
    del leases["a"]
    leases["b"] = Lease("b", "netdev", "pid:2", {}, params={"ifname": "new"})
"""


def test_a_writer_killed_between_temp_file_and_rename_leaves_the_old_ledger(tmp_path):
    """A real writer process stops itself once its new ledger is written, before the rename (no fsync: the ledger
    is renamed into place unsynced); SIGKILL then. The ledger still reads as before (not empty, not half-written, not the new one), its lock is free and
    the next write works."""
    import signal
    import subprocess
    import sys
    state = str(tmp_path / "state")
    with Ledger(state).transaction() as leases:
        leases["a"] = Lease("a", "netdev", "pid:1", {}, params={"ifname": "old"})
    with open(os.path.join(state, "leases.json"), "rb") as f:
        before = f.read()
    proc = subprocess.Popen([sys.executable, "-c", _STOPPING_WRITER, state])
    try:
        wait_stopped(proc)
        assert proc.poll() is None, "the writer ended without stopping at its rename"
        temps = {n: open(os.path.join(state, n), "rb").read() for n in os.listdir(state) if n.startswith(".leases.")}
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    with open(os.path.join(state, "leases.json"), "rb") as f:
        assert f.read() == before
    assert len(temps) == 1 and b'"b"' in list(temps.values())[0]  # it was stopped in between
    assert {k: v.params for k, v in Ledger(state).leases().items()} == {"a": {"ifname": "old"}}
    with Ledger(state).transaction() as leases:  # the dead writer's lock went with it
        leases["c"] = Lease("c", "netdev", "pid:3", {})
    assert set(Ledger(state).leases()) == {"a", "c"}


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a mount namespace with its own /run)")
def test_the_default_state_dir_is_made_private():
    """With no DPDKENI_STATE_DIR, the ledger lives in /run/dpdkeni, made 0700 with the leases file 0600 (run in
    a mount namespace of its own with a fresh tmpfs on /run: the host's /run/dpdkeni is not touched)."""
    import subprocess
    import sys
    code = ("import os\nfrom dpdkeni.ledger import Lease, Ledger\n"
            "with Ledger().transaction() as leases:\n    leases['a'] = Lease('a', 'netdev', 'pid:1', {})\n"
            "print(Ledger().directory, oct(os.stat('/run/dpdkeni').st_mode & 0o777),"
            " oct(os.stat('/run/dpdkeni/leases.json').st_mode & 0o777))")
    env = {k: v for k, v in os.environ.items() if k != "DPDKENI_STATE_DIR"}
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                          'mount -t tmpfs -o mode=0755 tmpfs /run && exec "$0" -c "$1"', sys.executable, code],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["/run/dpdkeni", "0o700", "0o600"]


def test_the_ledger_and_cni_records_are_renamed_into_place_unsynced_and_0600(tmp_path, monkeypatch):
    """What they describe does not outlive a power loss, so neither the ledger nor a CNI record pays an fsync
    (~2 ms each on a disk state dir); both still go through statedir.write_atomic: 0600, no temp file left."""
    import stat

    from dpdkeni import cni
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    state = str(tmp_path / "state")
    monkeypatch.setenv("DPDKENI_STATE_DIR", state)
    with Ledger(state).transaction() as leases:
        leases["a"] = Lease("a", "netdev", "pid:1", {}, params={"ifname": "x"})
    record = cni._record_path("net", "c1", "net1")
    cni.save_record(record, {"nic": "a"})
    assert synced == []
    for path in (os.path.join(state, "leases.json"), record):
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600, path
    assert [n for n in os.listdir(state) + os.listdir(os.path.dirname(record)) if n.startswith(".")] == []
    assert cni.load_record(record) == {"nic": "a"}
