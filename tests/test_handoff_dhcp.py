"""DHCP on a handed-over NIC against dnsmasq (Debian's dnsmasq-base) in a peer namespace: the offered address,
default route and MTU arrive, the lease is renewed while attached, released on release, no process is left."""
import json
import os
import subprocess
import time

import psutil
import pytest

import hostfacts
from conftest import needs_root
from dpdkeni import dhcp, handoff
from dpdkeni.errors import StepError
from dpdkeni.ledger import Ledger
from test_handoff import host_state, in_ns, peer_ns, prepare_nic

DNSMASQ = hostfacts.command("dnsmasq")  # /usr/sbin is not on every PATH
pytestmark = [needs_root, pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq not installed")]


@pytest.fixture
def env(state_dir, stand_in_models):
    yield state_dir
    for p in psutil.process_iter(["cmdline"]):  # a failed test must not leave its client behind
        if "dpdkeni.dhcp" in (p.info["cmdline"] or []) and state_dir in (p.info["cmdline"] or []):
            p.kill()


@pytest.fixture
def dnsmasq(netns_factory, veth_factory, tmp_path):
    """A DHCP server on the peer end of a fresh stand-in NIC; yields (nic, leasefile)."""
    nic, ns, peer = peer_ns(netns_factory, veth_factory, "198.18.60.1/24")
    leases = tmp_path / "dnsmasq.leases"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=0",
         f"--interface={peer}", "--bind-interfaces", "--dhcp-range=198.18.60.10,198.18.60.20,255.255.255.0,2m",
         "--dhcp-option=option:router,198.18.60.1", "--dhcp-option=option:dns-server,198.18.60.53",
         "--dhcp-option=option:mtu,1400", "--dhcp-option=option:T1,3", "--dhcp-option=option:T2,100",
         f"--dhcp-leasefile={leases}", "--pid-file", "--user=root", "--log-dhcp"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield nic, leases
    proc.terminate()
    proc.wait(5)


def wait_for(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return False


def test_dhcp_lease_renewed_and_released(env, dnsmasq, container_factory):
    nic, leasefile = dnsmasq
    prepare_nic(nic, mtu=1500)
    before = host_state(nic)
    c = container_factory()
    lease = handoff.attach(nic, c.target, dhcp=True)
    got = Ledger().get(lease.key).params["dhcp_lease"]
    assert got["ip"].startswith("198.18.60.") and got["prefixlen"] == 24
    assert got["gateway"] == "198.18.60.1" and got["dns"] == ["198.18.60.53"] and got["mtu"] == 1400
    assert f"inet {got['ip']}/24" in c.run("ip", "addr", "show", "eth0").stdout
    assert "default via 198.18.60.1 dev eth0" in c.run("ip", "route").stdout
    assert "mtu 1400" in c.run("ip", "link", "show", "eth0").stdout
    assert before["mac"] in leasefile.read_text()
    client = Ledger().get(lease.key).step("dhcp").undo["pid"]
    assert psutil.Process(client).cmdline()[1:3] == ["-m", "dpdkeni.dhcp"]
    # the server set T1 to 3 s: the client renews while attached
    assert wait_for(lambda: Ledger().get(lease.key).params["dhcp_lease"]["renewals"] >= 1), "no renewal"
    handoff.release(nic)
    assert not psutil.pid_exists(client) or psutil.Process(client).status() == psutil.STATUS_ZOMBIE
    assert wait_for(lambda: before["mac"] not in leasefile.read_text()), "lease not given back to the server"
    assert host_state(nic) == before and Ledger().leases() == {}


def test_dhcp_without_server_fails_cleanly(env, veth_factory, container_factory, monkeypatch):
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400)
    before = host_state(nic)
    c = container_factory()
    monkeypatch.setattr(dhcp, "BOUND_TIMEOUT", 3.0)
    with pytest.raises(StepError) as err:
        handoff.attach(nic, c.target, dhcp=True)
    assert err.value.step == "dhcp" and "no DHCP lease for eth0 within 3 s" in str(err.value)
    assert host_state(nic) == before and Ledger().leases() == {}
    assert not [p for p in psutil.process_iter(["cmdline"]) if "dpdkeni.dhcp" in (p.info["cmdline"] or [])
                and nic in " ".join(p.info["cmdline"] or [])]


def test_recover_restarts_a_dead_client(env, dnsmasq, container_factory):
    nic, _ = dnsmasq
    c = container_factory()
    lease = handoff.attach(nic, c.target, dhcp=True)
    pid = Ledger().get(lease.key).step("dhcp").undo["pid"]
    os.kill(pid, 9)
    assert wait_for(lambda: not dhcp.running(Ledger().get(lease.key)))
    assert handoff.recover()[0]["action"] == "kept"
    assert dhcp.running(Ledger().get(lease.key))
    handoff.release(nic)
    assert not dhcp.running(lease)


@pytest.mark.parametrize("step", ["dhcp"])
def test_sigkill_after_dhcp_step_then_recover(env, dnsmasq, container_factory, cli, step):
    """Killed right after the DHCP client bound: recover stops the client (which gives the lease back) and
    brings the NIC home; no client process is left."""
    nic, leasefile = dnsmasq
    prepare_nic(nic, mtu=1500)
    before = host_state(nic)
    c = container_factory()
    from dpdkeni import netdev
    r = cli("attach", nic, "--to", c.target, "--dhcp", env={netdev.TEST_KILL_ENV: step})
    assert r.returncode == -9, r.stderr
    pid = Ledger().get(f"if:{nic}").step("dhcp").undo["pid"]
    assert psutil.pid_exists(pid)
    r = cli("recover", "--json")
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    assert host_state(nic) == before and Ledger().leases() == {}
    assert wait_for(lambda: before["mac"] not in leasefile.read_text())


def test_sigkill_after_dhcp_stop_then_recover(env, dnsmasq, container_factory, cli):
    """A release killed right after ``dhcp-stop`` (the client told to give its lease back and gone): recover
    finishes the release (the NIC home with its name and settings, no lease) and starts no client again."""
    nic, leasefile = dnsmasq
    prepare_nic(nic, mtu=1500)
    before = host_state(nic)
    c = container_factory()
    from dpdkeni import netdev
    assert cli("attach", nic, "--to", c.target, "--dhcp").returncode == 0
    pid = Ledger().get(f"if:{nic}").step("dhcp").undo["pid"]
    assert wait_for(lambda: before["mac"] in leasefile.read_text())
    r = cli("release", nic, env={netdev.TEST_KILL_ENV: "dhcp-stop"})
    assert r.returncode == -9, r.stderr
    lease = Ledger().get(f"if:{nic}")
    assert lease.state == "releasing" and lease.steps[-1].name == "dhcp-stop", lease
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    r = cli("recover", "--json")
    assert r.returncode == 0, r.stderr
    assert [(a["key"], a["action"], a["detail"]) for a in json.loads(r.stdout)] == [
        (f"if:{nic}", "released", "returned")]
    assert host_state(nic) == before and Ledger().leases() == {}
    assert "eth0" not in c.run("ip", "link").stdout
    assert _clients_of(env) == []
    assert wait_for(lambda: before["mac"] not in leasefile.read_text())


def _clients_of(state_dir):
    return [p.pid for p in psutil.process_iter(["cmdline"]) if "dpdkeni.dhcp" in (p.info["cmdline"] or [])
            and state_dir in (p.info["cmdline"] or [])]


def test_recover_keeps_a_live_client(env, dnsmasq, container_factory):
    """recover on an attached DHCP lease whose client lives (its pid and start time match the ledger) keeps that
    client: no restart, no second client."""
    nic, _ = dnsmasq
    c = container_factory()
    lease = handoff.attach(nic, c.target, dhcp=True)
    info = Ledger().get(lease.key).step("dhcp").undo
    assert handoff.recover() == [{"key": lease.key, "action": "kept", "detail": f"attached to {c.target}"}]
    assert Ledger().get(lease.key).step("dhcp").undo == info
    assert _clients_of(env) == [info["pid"]]
    handoff.release(nic)
    assert _clients_of(env) == []


def test_client_exits_when_its_nic_is_gone(env, dnsmasq, container_factory):
    """The NIC disappears from under its client (deleted in the container): the client notices and exits."""
    nic, _ = dnsmasq
    c = container_factory()
    lease = handoff.attach(nic, c.target, dhcp=True)
    pid = Ledger().get(lease.key).step("dhcp").undo["pid"]
    assert psutil.pid_exists(pid)
    assert c.run("ip", "link", "del", "eth0").returncode == 0
    assert wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE), \
        "the client outlived its NIC"
    with open(dhcp._log_path(Ledger(), lease.key)) as f:
        assert "eth0 is gone; stopping" in f.read()


def test_a_client_still_selecting_stops_at_once_on_sigterm(env, netns_factory, veth_factory, tmp_path):
    """No server answers: the client is still sending DISCOVERs when it is told to stop (the daemon gives the
    attach up because the container died). It exits at once with nothing to release, not after the caller's
    5 s grace and a SIGKILL."""
    import signal
    import sys
    ns = netns_factory()
    _, peer = veth_factory(peer_netns=ns)
    in_ns(ns, "ip", "link", "set", peer, "up")
    rfd, wfd = os.pipe()
    log_path = tmp_path / "client.log"
    with open(log_path, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "dpdkeni.dhcp", "--netns", f"/run/netns/{ns}", "--ifname",
                                 peer, "--key", "k", "--state-dir", env, "--ready-fd", str(wfd)],
                                pass_fds=(wfd,), stdout=logf, stderr=logf)
    os.close(wfd)
    try:
        assert wait_for(lambda: "Sending DISCOVER" in log_path.read_text()), log_path.read_text()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0, log_path.read_text()
        took = time.monotonic() - t0
        assert took < 1.0, f"stopped after {took:.1f} s"
        assert "stopped before a lease was bound" in log_path.read_text()
        assert os.read(rfd, 100) == b""         # the caller reads no verdict: it gave up itself
    finally:
        os.close(rfd)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
