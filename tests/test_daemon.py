"""The udev hook and the policy daemon, on this host (veth stand-ins, a process in its own netns)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import needs_root, unique

from dpdkeni import udev
from dpdkeni.daemon import Daemon
from dpdkeni.events import Watcher
from dpdkeni.policy import parse

pytestmark = needs_root
log = logging.getLogger(__name__)
HOOK = udev.hook_command()  # exactly what the rules run

# what udevd hands RUN programs for a virtio-net add: the properties `udevadm info` printed for a virtio-net-pci
# hot-plugged into the QEMU lab guest (tests/vm/test_events_udev.py logs them), plus ACTION and SEQNUM, which
# every event carries
VIRTIO_NET_ADD = {
    "ACTION": "add", "SEQNUM": "2291", "SUBSYSTEM": "net",
    "DEVPATH": "/devices/pci0000:00/0000:00:05.0/0000:01:00.0/virtio4/net/enp1s0",
    "INTERFACE": "enp1s0", "IFINDEX": "4", "USEC_INITIALIZED": "52845273",
    "ID_NET_NAMING_SCHEME": "v252", "ID_NET_NAME_MAC": "enx5254007e0012", "ID_NET_NAME_PATH": "enp1s0",
    "ID_BUS": "pci", "ID_VENDOR_ID": "0x1af4", "ID_MODEL_ID": "0x1041",
    "ID_PCI_CLASS_FROM_DATABASE": "Network controller", "ID_PCI_SUBCLASS_FROM_DATABASE": "Ethernet controller",
    "ID_VENDOR_FROM_DATABASE": "Red Hat, Inc.", "ID_MODEL_FROM_DATABASE": "Virtio 1.0 network device",
    "ID_PATH": "pci-0000:01:00.0", "ID_PATH_TAG": "pci-0000_01_00_0", "ID_NET_DRIVER": "virtio_net",
    "ID_NET_LINK_FILE": "/usr/lib/systemd/network/99-default.link", "ID_NET_NAME": "enp1s0",
}


def run_hook(state_dir):
    env = {"PATH": "/usr/bin:/bin", "DPDKENI_STATE_DIR": state_dir, "DPDKENI_HOOK_VERBOSE": "1",
           **VIRTIO_NET_ADD}
    t0 = time.monotonic()
    out = subprocess.run(HOOK, env=env, capture_output=True, text=True, timeout=30)
    log.info("hook took %.1f ms: %s", (time.monotonic() - t0) * 1000, out.stderr.strip())
    return out


@pytest.fixture
def prefix(link_prefix):
    return link_prefix


@pytest.fixture
def running(state_dir):
    """Start a Daemon in a thread (``running(policy_text, watcher)``); stopped at teardown."""
    made = []

    def start(policy_text, watcher):
        daemon = Daemon(parse(policy_text, "test.toml"), watcher=watcher, state=state_dir)
        th = threading.Thread(target=daemon.serve, daemon=True)
        th.start()
        made.append((daemon, th))
        wait_until(lambda: os.path.exists(udev.socket_path(state_dir)), "daemon socket")
        return daemon

    yield start
    for daemon, th in made:
        daemon.stop.set()
        th.join(10)


def wait_until(cond, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


NO_MATCH_POLICY = '[[rule]]\nmatch = { model = "e1000e", mac = "02:00:00:00:00:01" }\ntarget = "pid:1"\n'


def test_hook_with_a_real_virtio_net_add_reaches_the_daemon(state_dir, running):
    daemon = running(NO_MATCH_POLICY, Watcher(source="kernel"))
    sock = udev.socket_path(state_dir)
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600" and oct(os.stat(state_dir).st_mode & 0o777) == "0o700"
    out = run_hook(state_dir)
    assert out.returncode == 0 and "sent" in out.stderr
    wait_until(lambda: daemon.hook_events, "the hook event in the daemon")
    (got,) = daemon.hook_events
    assert {k: got[k] for k in ("ACTION", "DEVPATH", "INTERFACE", "IFINDEX", "SEQNUM", "ID_VENDOR_ID",
                                "ID_MODEL_ID", "ID_NET_NAME_PATH", "ID_PATH")} == {
        k: VIRTIO_NET_ADD[k] for k in ("ACTION", "DEVPATH", "INTERFACE", "IFINDEX", "SEQNUM", "ID_VENDOR_ID",
                                       "ID_MODEL_ID", "ID_NET_NAME_PATH", "ID_PATH")}
    assert "PATH" not in got and got["ID_PCI_CLASS_FROM_DATABASE"] == "Network controller"  # udev's, not the rest
    assert os.listdir(udev.queue_dir(state_dir)) == [] if os.path.isdir(udev.queue_dir(state_dir)) else True


def test_hook_without_daemon_queues_and_the_daemon_picks_it_up(state_dir, running):
    out = run_hook(state_dir)
    assert out.returncode == 0 and "queued" in out.stderr
    (name,) = os.listdir(udev.queue_dir(state_dir))
    with open(os.path.join(udev.queue_dir(state_dir), name)) as f:
        assert json.load(f)["DEVPATH"] == VIRTIO_NET_ADD["DEVPATH"]
    daemon = running(NO_MATCH_POLICY, Watcher(source="kernel"))
    wait_until(lambda: daemon.hook_events, "the queued event taken")
    assert daemon.hook_events[0]["SEQNUM"] == "2291"
    assert os.listdir(udev.queue_dir(state_dir)) == []
    assert any(d["decision"] == "hook" and d["queued"] for d in daemon.decisions)


def test_hook_outside_udev_is_a_clear_error(state_dir):
    out = subprocess.run(HOOK, env={"PATH": "/usr/bin:/bin", "DPDKENI_STATE_DIR": state_dir},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.startswith("dpdkeni-hook: error: no ACTION")


def test_daemon_moves_a_stand_in_into_a_container_and_back_when_it_dies(
        state_dir, stand_in_models, container_factory, prefix, running):
    from pyroute2 import IPRoute
    box = container_factory()
    policy = f"""
[[rule]]
name = "stand-in"
match = {{ model = "veth", ifname = "{prefix}a*" }}
target = "{box.target}"
ifname = "eth5"
addresses = ["198.18.77.2/24"]
"""
    mine = lambda nic: nic.model == "veth" and (nic.ifname or "").startswith(prefix)  # noqa: E731
    daemon = running(policy, Watcher(source="kernel", models=mine, existing=True))
    a, b = prefix + "a", prefix + "b"
    with IPRoute() as ipr:
        ipr.link("add", ifname=a, kind="veth", peer=b)
        mac = ipr.get_links(ipr.link_lookup(ifname=a)[0])[0].get_attr("IFLA_ADDRESS")
    wait_until(lambda: any(d["decision"] in ("attached", "attach-failed") for d in daemon.decisions), "attach")
    assert [d["decision"] for d in daemon.decisions if d.get("nic") == f"if:{a}"][0] == "attached", \
        daemon.decisions
    inside = box.run("ip", "-o", "addr", "show", "eth5")
    assert "198.18.77.2/24" in inside.stdout and mac in box.run("ip", "-o", "link", "show", "eth5").stdout
    assert any(d["decision"] == "ignore" and d["nic"] == f"if:{b}" for d in daemon.decisions)

    box.kill()  # the container's process exits
    wait_until(lambda: any(d["decision"] in ("released", "release-failed") for d in daemon.decisions),
               "release")
    released = [d for d in daemon.decisions if d["decision"] in ("released", "release-failed")]
    assert released[0]["decision"] == "released" and released[0]["nic"] == f"if:{a}", released
    with IPRoute() as ipr:
        (idx,) = ipr.link_lookup(ifname=a)  # back on the host under its own name, not destroyed
        assert ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS") == mac
    from dpdkeni.ledger import Ledger
    assert Ledger(state_dir).leases() == {}


def test_cli_daemon_serves_the_hook_and_stops_on_sigterm(state_dir, tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(NO_MATCH_POLICY)
    proc = subprocess.Popen([sys.executable, "-m", "dpdkeni", "-v", "daemon", "--policy", str(path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not any("daemon ready" in x for x in lines):
            lines.append(proc.stderr.readline())
            assert lines[-1], "".join(lines)
        assert run_hook(state_dir).returncode == 0
        line = proc.stderr.readline()
        assert "hook: action=add devpath=/devices/pci0000:00/0000:00:05.0/0000:01:00.0/virtio4/net/enp1s0 " \
            "interface=enp1s0 seqnum=2291" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert not os.path.exists(udev.socket_path(state_dir))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_udev_rules_text(cli, tmp_path):
    out = cli("udev", "rules")
    assert out.returncode == 0
    text = out.stdout
    assert 'SUBSYSTEM=="net", ENV{ID_VENDOR_ID}=="0x1af4", ENV{ID_MODEL_ID}=="0x1000|0x1041"' in text
    assert 'ENV{PCI_ID}=="8086:100E' in text or "8086:100E" in text
    assert " ".join(udev.hook_command()) in text and "/etc/dpdkeni/overrides/pci-$kernel" in text and "systemd-run" in text
    dest = tmp_path / "rules.d" / "90-dpdkeni.rules"
    out = cli("udev", "rules", "--install", "--path", str(dest))
    assert out.returncode == 0 and dest.read_text() == text


def test_restarted_daemon_reconciles_with_the_ledger_and_still_reclaims(
        state_dir, stand_in_models, container_factory, prefix, running):
    """A daemon that stops leaves the NIC in the container; the next one finds the lease in the ledger, keeps
    it (the container lives), and takes the NIC back when the container's process exits."""
    from pyroute2 import IPRoute
    box = container_factory()
    policy = f'[[rule]]\nmatch = {{ ifname = "{prefix}a" }}\ntarget = "{box.target}"\nifname = "eth6"\n'
    mine = lambda nic: nic.model == "veth" and (nic.ifname or "").startswith(prefix)  # noqa: E731
    first = running(policy, Watcher(source="kernel", models=mine, existing=True))
    with IPRoute() as ipr:
        ipr.link("add", ifname=prefix + "a", kind="veth", peer=prefix + "b")
    wait_until(lambda: any(d["decision"] == "attached" for d in first.decisions), "attach")
    first.stop.set()
    wait_until(lambda: not os.path.exists(udev.socket_path(state_dir)), "the first daemon gone")
    assert "eth6" in box.run("ip", "-o", "link").stdout  # stopping the daemon leaves the NIC where it is

    second = running(policy, Watcher(source="kernel", models=mine, existing=True))
    assert [(d["decision"], d["key"], d["action"]) for d in second.decisions if d["decision"] == "recovered"] \
        == [("recovered", f"if:{prefix}a", "kept")]
    box.kill()
    wait_until(lambda: any(d["decision"] == "released" for d in second.decisions), "release")
    with IPRoute() as ipr:
        assert ipr.link_lookup(ifname=prefix + "a"), "back on the host under its own name"


def test_daemon_waits_for_a_target_that_is_not_there_yet(state_dir, stand_in_models, prefix, running):
    """A NIC whose rule names a netns (or container) that does not exist yet waits on the host, is retried
    quietly, and lands with its addresses once the target appears (the NIC came before its container)."""
    from pyroute2 import IPRoute, NetNS, netns
    name, key = unique("dkns"), f"if:{prefix}a"
    policy = (f'[[rule]]\nname = "later"\nmatch = {{ ifname = "{prefix}a" }}\ntarget = "netns:{name}"\n'
              f'ifname = "eth7"\naddresses = ["198.18.78.2/24"]\n')
    mine = lambda nic: nic.model == "veth" and (nic.ifname or "").startswith(prefix)  # noqa: E731
    daemon = running(policy, Watcher(source="kernel", models=mine, existing=True))
    mine_only = lambda: [d["decision"] for d in daemon.decisions if d.get("nic") == key]  # noqa: E731
    with IPRoute() as ipr:
        ipr.link("add", ifname=prefix + "a", kind="veth", peer=prefix + "b")
    try:
        wait_until(lambda: mine_only(), "a decision")
        time.sleep(3 * 1.0)  # three retries while the netns is absent
        assert mine_only() == ["waiting"], daemon.decisions
        with IPRoute() as ipr:
            assert ipr.link_lookup(ifname=prefix + "a"), "it waits on the host"
        netns.create(name)
        wait_until(lambda: "attached" in mine_only(), "the attach once the netns exists")
        assert mine_only() == ["waiting", "attached"]
        with NetNS(name, flags=0) as ns:
            (idx,) = ns.link_lookup(ifname="eth7")
            assert [a.get_attr("IFA_ADDRESS") for a in ns.get_addr(index=idx, family=2)] == ["198.18.78.2"]
    finally:
        if os.path.exists(f"/run/netns/{name}"):
            netns.remove(name)
        with IPRoute() as ipr:
            for left in ipr.link_lookup(ifname=prefix + "a") + ipr.link_lookup(ifname=prefix + "b"):
                ipr.link("del", index=left)
                break


def test_daemon_drops_a_non_root_senders_datagram(open_dir, monkeypatch, caplog):
    """A real uid 65534 process: the 0700 state dir, and then the 0600 socket alone, refuse its datagram; with both
    opened up to it, the daemon reads the sender's credentials (SCM_CREDENTIALS) and drops it. Root's gets in."""
    import errno
    from conftest import as_nobody
    state = os.path.join(open_dir, "state")
    monkeypatch.setenv("DPDKENI_STATE_DIR", state)
    daemon = Daemon(parse(NO_MATCH_POLICY, "test.toml"), watcher=Watcher(source="kernel"), state=state)
    th = threading.Thread(target=daemon.serve, daemon=True)
    th.start()
    try:
        sock = udev.socket_path(state)
        wait_until(lambda: os.path.exists(sock), "daemon socket")
        forged = json.dumps({**VIRTIO_NET_ADD, "SEQNUM": "6666"}).encode()
        assert as_nobody("dgram", sock, forged) == {"errno": errno.EACCES, "reply": None}
        os.chmod(state, 0o755)  # the socket's own mode (0600) still refuses it
        assert as_nobody("dgram", sock, forged) == {"errno": errno.EACCES, "reply": None}
        os.chmod(sock, 0o666)
        with caplog.at_level(logging.WARNING, logger="dpdkeni.daemon"):
            assert as_nobody("dgram", sock, forged) == {"errno": 0, "reply": ""}  # sent...
            assert run_hook(state).returncode == 0                                    # then root's
            wait_until(lambda: daemon.hook_events, "root's hook event in the daemon")
        assert [e["SEQNUM"] for e in daemon.hook_events] == ["2291"]                  # ... and dropped
        assert "hook message from uid 65534 ignored (root only)" in caplog.text
    finally:
        daemon.stop.set()
        th.join(10)
