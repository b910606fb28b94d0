"""Real kernel uevents on this host: veth pairs stand in for hot-plugged NICs (no PCI hot-plug here)."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
from conftest import needs_root, unique

from dpdkeni.events import Watcher, WaitTimeout, wait_for_nic

pytestmark = needs_root
log = logging.getLogger(__name__)


@pytest.fixture
def prefix(link_prefix):
    return link_prefix


def veth_filter(pre):
    """The test-only filter: veth links of this test (other helpers' tests make veths too)."""
    return lambda nic: nic.model == "veth" and (nic.ifname or "").startswith(pre)


def add_veth(ipr, a, b, **kw):
    ipr.link("add", ifname=a, kind="veth", peer=b, **kw)


def collect(watcher, want, timeout=10.0):
    """Events until ``want(events)`` holds or ``timeout`` passes (bounded)."""
    events = []
    deadline = time.monotonic() + timeout
    while not want(events) and time.monotonic() < deadline:
        events += watcher.poll(deadline - time.monotonic())
    return events


def assert_quiet(watcher, ipr, prefix, window=1.5):
    """Nothing more and nothing twice: no event for ``window`` seconds (3x the settle time), and then the
    watcher is still live: a marker pair made afterwards is reported, and nothing else."""
    late = []
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        late += watcher.poll(deadline - time.monotonic())
    assert late == []
    marker = (prefix + "m", prefix + "n")
    add_veth(ipr, *marker)
    try:
        ev = collect(watcher, lambda e: len(e) >= 2)
    finally:
        ipr.link("del", index=ipr.link_lookup(ifname=marker[0])[0])
    ev += collect(watcher, lambda e: len(e) >= 2)
    assert sorted((e.action, e.nic.ifname) for e in ev) == [("added", marker[0]), ("added", marker[1]),
                                                            ("removed", marker[0]), ("removed", marker[1])]


def test_veth_add_rename_move_delete(prefix, netns_factory):
    from pyroute2 import IPRoute
    a, b, c = prefix + "a", prefix + "b", prefix + "c"
    with Watcher(models=veth_filter(prefix)) as w, IPRoute() as ipr:
        assert w.source == ("udev" if os.path.exists("/run/udev/control") else "kernel")
        add_veth(ipr, a, b)
        ev = collect(w, lambda e: len(e) >= 2)
        assert sorted((e.action, e.nic.ifname) for e in ev) == [("added", a), ("added", b)]
        mac_a = open(f"/sys/class/net/{a}/address").read().strip()
        assert {e.nic.ifname: e.nic.mac for e in ev}[a] == mac_a
        assert all(e.nic.model == "veth" and e.nic.pci is None for e in ev)

        ipr.link("set", index=ipr.link_lookup(ifname=a)[0], ifname=c)
        ev = collect(w, lambda e: len(e) >= 1)
        assert [(e.action, e.nic.ifname, e.old.ifname) for e in ev] == [("moved", c, a)]

        ns = netns_factory()
        ipr.link("set", index=ipr.link_lookup(ifname=b)[0], net_ns_fd=ns)
        ev = collect(w, lambda e: len(e) >= 1)
        assert [(e.action, e.nic.ifname) for e in ev] == [("removed", b)]  # gone from this netns

        ipr.link("del", index=ipr.link_lookup(ifname=c)[0])
        ev = collect(w, lambda e: len(e) >= 1)
        assert [(e.action, e.nic.ifname) for e in ev] == [("removed", c)]
        assert_quiet(w, ipr, prefix)  # nothing more, nothing twice


def test_existing_and_restart_report_changes_only(prefix):
    from pyroute2 import IPRoute
    a, b = prefix + "a", prefix + "b"
    with IPRoute() as ipr:
        add_veth(ipr, a, b)
        w = Watcher(models=veth_filter(prefix), existing=True)
        with w:
            ev = collect(w, lambda e: len(e) >= 2)
            assert sorted((e.action, e.nic.ifname, e.resync) for e in ev) == [
                ("added", a, True), ("added", b, True)]
        # while the watcher is stopped: one link goes, another comes
        ipr.link("del", index=ipr.link_lookup(ifname=a)[0])  # deletes the pair
        add_veth(ipr, prefix + "c", prefix + "d")
        with w:
            ev = collect(w, lambda e: len(e) >= 4)
        assert sorted((e.action, e.nic.ifname) for e in ev) == [
            ("added", prefix + "c"), ("added", prefix + "d"), ("removed", a), ("removed", b)]


def test_storm_128_with_tiny_buffer_none_missed_none_twice(prefix):
    """128 stand-in NICs created at once while the watcher does not read, its receive buffer tiny: the
    kernel drops uevents (ENOBUFS), the watcher re-enumerates, and reports each NIC exactly once."""
    from pyroute2 import IPRoute
    names = [f"{prefix}{i}" for i in range(128)]
    markers = {prefix + "m", prefix + "n"}  # assert_quiet's
    mine = lambda nic: nic.model == "veth" and nic.ifname in set(names) | markers  # noqa: E731 (not the peers)
    with Watcher(models=mine, rcvbuf=4096) as w, IPRoute() as ipr:
        for i, name in enumerate(names):
            add_veth(ipr, name, f"{prefix}p{i}")
        ev = collect(w, lambda e: len({x.nic.ifname for x in e}) >= 128, timeout=60)
        added = Counter(e.nic.ifname for e in ev if e.action == "added")
        log.info("storm: %d uevents read, %d overflows, %d resyncs", w.stats["uevents"], w.stats["overflows"],
                 w.stats["resyncs"])
        assert w.stats["overflows"] >= 1, "the kernel dropped nothing: the test proves nothing"
        assert set(added) == set(names) and max(added.values()) == 1
        assert_quiet(w, ipr, prefix)  # the uevents still queued add nothing
        for name in names:
            ipr.link("del", index=ipr.link_lookup(ifname=name)[0])
        ev = collect(w, lambda e: len(e) >= 128, timeout=60)
        removed = Counter(e.nic.ifname for e in ev if e.action == "removed")
        assert set(removed) == set(names) and max(removed.values()) == 1 and len(ev) == 128


def test_wait_for_nic_appears_then_times_out(prefix):
    from pyroute2 import IPRoute
    a, b = prefix + "a", prefix + "b"
    mac = "02:00:5e:10:00:%02x" % (os.getpid() % 256)
    created = {}

    def plug():
        time.sleep(0.3)
        with IPRoute() as ipr:
            created["t"] = time.monotonic()
            add_veth(ipr, a, b, address=mac)

    th = threading.Thread(target=plug)
    th.start()
    try:
        nic = wait_for_nic(mac=mac, timeout=10, models=veth_filter(prefix))
        returned = time.monotonic()
    finally:
        th.join()
    assert nic.ifname == a and nic.mac == mac
    log.info("wait_for_nic returned %.1f ms after the NIC was created", (returned - created["t"]) * 1000)
    # already present counts
    assert wait_for_nic(mac=mac.upper(), timeout=0.01, models=veth_filter(prefix)).ifname == a
    # only real devices count: the default filter (managed models) does not take a veth with that MAC
    with pytest.raises(WaitTimeout, match="no NIC with MAC"):
        wait_for_nic(mac=mac, timeout=0.3)
    with pytest.raises(WaitTimeout, match="PCI address 0000:00:1f.6"):
        wait_for_nic(pci="00:1f.6", timeout=0.2)


def test_cli_wait_timeout_and_found(cli, prefix):
    from pyroute2 import IPRoute
    out = cli("wait", "--mac", "02:00:5e:00:00:99", "--timeout", "0.2")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "dpdkeni: error: no NIC with MAC 02:00:5e:00:00:99 appeared within 0.2 s "
        "(is it attached? 'dpdkeni list' shows the NICs there are)"]
    out = cli("wait", "--mac", "nonsense")
    assert out.returncode == 2 and "malformed MAC" in out.stderr and "Traceback" not in out.stderr
    with IPRoute() as ipr:
        add_veth(ipr, prefix + "a", prefix + "b", address="02:00:5e:00:00:98")
    out = cli("wait", "--mac", "02:00:5e:00:00:98", "--all", "--json", "--timeout", "5")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["ifname"] == prefix + "a"


def test_cli_watch_json_lines_and_ctrl_c(prefix):
    from pyroute2 import IPRoute
    proc = subprocess.Popen([sys.executable, "-m", "dpdkeni", "-v", "watch", "--json", "--all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "watching NIC events" in proc.stderr.readline()
        with IPRoute() as ipr:
            add_veth(ipr, prefix + "a", prefix + "b")
        mine = []
        deadline = time.monotonic() + 20
        while len(mine) < 2 and time.monotonic() < deadline:
            event = json.loads(proc.stdout.readline())  # every line is one JSON object
            if event["nic"]["ifname"].startswith(prefix):
                mine.append(event)
        assert sorted((e["action"], e["nic"]["ifname"]) for e in mine) == [
            ("added", prefix + "a"), ("added", prefix + "b")]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
