"""Crash safety and concurrency of the handoff: SIGKILL after each step, then ``dpdkeni recover``; two processes
racing for one NIC. Real namespaces, veth stand-ins."""
import json
import subprocess
import sys

import pytest

from conftest import needs_root, unique, wait_stopped
from dpdkeni import handoff, netdev
from dpdkeni.ledger import Ledger
from test_handoff import host_state, prepare_nic

pytestmark = [needs_root]

ATTACH_ARGS = ["--address", "198.18.40.2/24", "--address", "198.18.41.2/24", "--address", "2001:db8::2/64",
               "--gateway", "198.18.99.1", "--table", "140"]


@pytest.fixture
def env(state_dir, stand_in_models):
    return state_dir


def test_every_attach_step_is_listed(env, veth_factory, container_factory):
    """The steps a real attach records in the ledger (all of them: altnames, addresses, a gateway, a table) are
    netdev.ATTACH_STEPS in order, so the crash test below kills after every step there is."""
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400, altname=unique("dkalt"))
    c = container_factory()
    lease = handoff.attach(nic, c.target, addresses=["198.18.40.2/24", "2001:db8::2/64"], gateway="198.18.99.1",
                           table=140)
    try:
        done = [(s.name, s.state) for s in Ledger().get(lease.key).steps]
    finally:
        handoff.release(nic)
    assert done == [(s, "done") for s in netdev.ATTACH_STEPS if s != "dhcp"]


@pytest.mark.parametrize("step", [s for s in netdev.ATTACH_STEPS if s != "dhcp"])
def test_sigkill_after_attach_step_then_recover(env, veth_factory, container_factory, cli, step):
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400, altname=unique("dkalt"))
    before = host_state(nic)
    c = container_factory()
    r = cli("attach", nic, "--to", c.target, *ATTACH_ARGS, env={netdev.TEST_KILL_ENV: step})
    assert r.returncode == -9, r.stderr
    lease = Ledger().get(f"if:{nic}")
    assert lease.state == "attaching" and lease.step(step) is not None
    r = cli("recover", "--json")
    assert r.returncode == 0, r.stderr
    actions = json.loads(r.stdout)
    assert [(a["key"], a["action"]) for a in actions] == [(f"if:{nic}", "rolled-back")]
    assert host_state(nic) == before, step
    assert Ledger().leases() == {}
    assert "eth0" not in c.run("ip", "link").stdout
    assert "lookup 140" not in c.run("ip", "rule").stdout


@pytest.mark.parametrize("step", ["rules", "return"])
def test_sigkill_during_release_then_recover(env, veth_factory, container_factory, cli, step):
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400, altname=unique("dkalt"))
    before = host_state(nic)
    c = container_factory()
    assert cli("attach", nic, "--to", c.target, *ATTACH_ARGS).returncode == 0
    r = cli("release", nic, env={netdev.TEST_KILL_ENV: step})
    assert r.returncode == -9
    assert Ledger().get(f"if:{nic}").state == "releasing"
    r = cli("recover", "--json")
    assert json.loads(r.stdout)[0]["action"] == "released", r.stdout + r.stderr
    assert host_state(nic) == before and Ledger().leases() == {}
    assert "lookup 140" not in c.run("ip", "rule").stdout


def test_recover_keeps_a_healthy_attachment(env, veth_factory, container_factory, cli):
    nic, _ = veth_factory()
    c = container_factory()
    handoff.attach(nic, c.target, addresses=["198.18.42.2/24"])
    assert handoff.recover() == [{"key": f"if:{nic}", "action": "kept", "detail": f"attached to {c.target}"}]
    assert "198.18.42.2" in c.run("ip", "addr").stdout
    handoff.release(nic)


RACE = """
import subprocess, sys
procs = [subprocess.Popen([sys.executable, "-m", "dpdkeni", "attach", sys.argv[1], "--to", t],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for t in sys.argv[2:]]
print([p.wait() for p in procs])
"""


def test_two_processes_race_for_one_nic(env, veth_factory, container_factory, cli):
    """Both attaches start together, many times: exactly one wins (exit 0), the other is refused (exit 3), the
    ledger holds one lease naming the winner, and the NIC is in the winner's namespace only."""
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400)
    before = host_state(nic)
    c1, c2 = container_factory(), container_factory()
    wins = {0: 0, 1: 0}
    for _ in range(8):
        out = subprocess.run([sys.executable, "-c", RACE, nic, c1.target, c2.target], capture_output=True,
                             text=True, timeout=60)
        codes = json.loads(out.stdout)
        assert sorted(codes) == [0, 3], (codes, out.stderr)
        winner = codes.index(0)
        wins[winner] += 1
        leases = Ledger().leases()
        assert list(leases) == [f"if:{nic}"]
        assert leases[f"if:{nic}"].target == (c1, c2)[winner].target
        assert leases[f"if:{nic}"].state == "attached"
        assert "eth0" in (c1, c2)[winner].run("ip", "link").stdout
        assert "eth0" not in (c1, c2)[1 - winner].run("ip", "link").stdout
        handoff.release(nic)
        assert host_state(nic) == before


_STOPPED_ATTACH = r"""
import os, signal, sys
from dpdkeni import steps
from dpdkeni.cli import main
steps.test_hook = lambda step: os.kill(os.getpid(), signal.SIGSTOP) if step == "addresses" else None
sys.exit(main(sys.argv[1:]))
"""


def test_recover_leaves_an_attach_alone_while_its_owner_lives(env, veth_factory, container_factory, cli):
    """An attach whose process still lives (stopped half-way, after 'addresses') is not recover's to undo: it
    says busy and changes nothing. Once the owner is dead, recover rolls it back."""
    import os
    import signal
    import time
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400)
    before = host_state(nic)
    c = container_factory()
    proc = subprocess.Popen([sys.executable, "-c", _STOPPED_ATTACH, "attach", nic, "--to", c.target,
                             "--address", "198.18.74.2/24"])
    try:
        assert wait_stopped(proc), "the attach ended without stopping after 'addresses'"
        lease = Ledger().get(f"if:{nic}")
        assert lease.state == "attaching" and lease.owner_pid == proc.pid, lease
        r = cli("recover", "--json")
        assert r.returncode == 0, r.stderr
        assert [(a["key"], a["action"]) for a in json.loads(r.stdout)] == [(f"if:{nic}", "busy")]
        assert Ledger().get(f"if:{nic}") == lease                       # untouched
        assert "198.18.74.2/24" in c.run("ip", "addr", "show", "eth0").stdout
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    # the owner's pid now names another process (started after the lease): by its start time, not the owner
    other = subprocess.Popen(["sleep", "60"])
    try:
        Ledger().update(f"if:{nic}", owner_pid=other.pid, created=time.time() - 60)  # a lease a minute old
        r = cli("recover", "--json")
        assert [(a["key"], a["action"]) for a in json.loads(r.stdout)] == [(f"if:{nic}", "rolled-back")]
        assert other.poll() is None  # and it is left alone
    finally:
        other.kill()
        other.wait(30)
    assert host_state(nic) == before and Ledger().leases() == {}
