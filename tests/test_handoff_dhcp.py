"""DHCP on a handed-over NIC against dnsmasq (Debian's dnsmasq-base) in a peer namespace: the offered address,
default route and MTU arrive, the lease is renewed while attached, released on release, no process is left."""
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
