"""PCI hot-plug sequences this kernel cannot produce, replayed as uevents against a synthetic sysfs tree:
the pci/virtio/net uevents of one NIC coalesce into one event with everything known about it."""
from __future__ import annotations

import shutil
import time

import pytest

from dpdkeni.events import NicEvent, Watcher
from dpdkeni.sysfs import Sysfs

BDF = "0000:00:04.0"


class Uevent:
    """What pyudev hands the watcher: action, subsystem, sys_name and the uevent properties."""

    def __init__(self, action, subsystem, sys_name, **props):
        self.action, self.subsystem, self.sys_name = action, subsystem, sys_name
        self.properties = {"ACTION": action, "SUBSYSTEM": subsystem, **props}


def pci(action, bdf=BDF):
    return Uevent(action, "pci", bdf, PCI_CLASS="20000", DEVPATH=f"/devices/pci0000:00/{bdf}")


def net(action, ifname, bdf=BDF):
    return Uevent(action, "net", ifname, INTERFACE=ifname, IFINDEX="10",
                  DEVPATH=f"/devices/pci0000:00/{bdf}/virtio1/net/{ifname}")


@pytest.fixture
def watcher(sysfs_tree):
    w = Watcher(source="kernel", sysfs=Sysfs(sysfs_tree.root), settle=0.05)
    w.resync(emit=False)
    return w


def feed(w, *uevents, settle=True):
    """Hand the uevents to the watcher; with ``settle`` also let the NICs in transition time out."""
    out = []
    for u in uevents:
        w._on_uevent(u)
    deadline = time.monotonic() + 1
    while settle and w._pending and time.monotonic() < deadline:
        time.sleep(0.01)
        w._expire()
    out += list(w._out)
    w._out.clear()
    return out


def unplug(tree, bdf=BDF):
    shutil.rmtree(tree.p(f"sys/devices/pci0000:00/{bdf}"))
    tree_link = tree.p(f"sys/bus/pci/devices/{bdf}")
    import os
    os.unlink(tree_link)


def test_hotplug_pci_virtio_net_bind_is_one_added(watcher, sysfs_tree):
    sysfs_tree.add_nic(BDF, "virtio-net", driver=None)
    assert feed(watcher, pci("add"), settle=False) == []  # no driver yet: held back
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth1", mac="52:54:00:aa:00:01")
    events = feed(watcher, net("add", "eth1"), pci("bind"))
    assert [(e.action, e.nic.pci, e.nic.ifname, e.nic.mac, e.nic.driver, e.nic.model) for e in events] == [
        ("added", BDF, "eth1", "52:54:00:aa:00:01", "virtio-pci", "virtio-net")]


def test_pci_add_already_complete_then_late_uevents_add_nothing(watcher, sysfs_tree):
    sysfs_tree.add_nic(BDF, "e1000", ifname="eth1")
    events = feed(watcher, pci("add"), net("add", "eth1"), pci("bind"))
    assert [(e.action, e.nic.ifname, e.nic.model) for e in events] == [("added", "eth1", "e1000")]


def test_a_nic_its_driver_still_probes_is_held_until_its_netdev(watcher, sysfs_tree):
    # the driver link appears before the driver's probe runs: e1000's probe on a loaded guest took longer than the
    # settle time, and the watcher said 'added' with no netdev, then 'moved' when the netdev came (lab, CI run)
    sysfs_tree.add_nic(BDF, "e1000", ifname=None)
    assert feed(watcher, pci("add")) == []  # a whole second past the settle time, still held
    sysfs_tree.add_netdev(BDF, "e1000", "eth1", "52:54:00:00:00:01", 1500, "up")
    events = feed(watcher, net("add", "eth1"))
    assert [(e.action, e.nic.ifname, e.nic.driver) for e in events] == [("added", "eth1", "e1000")]


def test_a_driver_that_never_makes_its_netdev_is_reported_after_the_probe_hold(watcher, sysfs_tree, monkeypatch):
    monkeypatch.setattr("dpdkeni.events.PROBE_SETTLE_S", 0.3)
    sysfs_tree.add_nic(BDF, "e1000", ifname=None)
    start = time.monotonic()
    events = feed(watcher, pci("add"))
    assert [(e.action, e.nic.ifname, e.nic.driver) for e in events] == [("added", None, "e1000")]
    assert time.monotonic() - start >= 0.3


def test_no_driver_is_reported_after_settling(watcher, sysfs_tree):
    sysfs_tree.add_nic(BDF, "e1000e", driver=None)
    events = feed(watcher, pci("add"))
    assert [(e.action, e.nic.driver) for e in events] == [("added", None)]


def test_unplug_is_one_removed(watcher, sysfs_tree):
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth1")
    watcher.resync(emit=False)
    unplug(sysfs_tree)
    events = feed(watcher, net("remove", "eth1"), pci("unbind"), pci("remove"))
    assert [(e.action, e.nic.ifname) for e in events] == [("removed", "eth1")]


def test_rebind_to_vfio_is_one_bound(watcher, sysfs_tree):
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth1")
    watcher.resync(emit=False)
    unplug(sysfs_tree)
    sysfs_tree.add_nic(BDF, "virtio-net", driver="vfio-pci")
    events = feed(watcher, net("remove", "eth1"), pci("unbind"), pci("bind"))
    assert [(e.action, e.nic.driver, e.old.driver, e.nic.ifname) for e in events] == [
        ("bound", "vfio-pci", "virtio-pci", None)]


def test_nic_replaced_at_the_same_address_before_its_uevents_are_read(watcher, sysfs_tree):
    """Unplug, then another NIC plugged at the same PCI address, all before the watcher reads the first uevent
    (a busy machine, a slow guest): sysfs already shows the new NIC while the old one's uevents are handled. That
    is the old NIC removed and the new one added, not a rename (seen in the lab as ['moved', 'removed'])."""
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth1", mac="52:54:00:aa:00:01")
    watcher.resync(emit=False)
    unplug(sysfs_tree)
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth2", mac="52:54:00:aa:00:02")
    events = feed(watcher, net("remove", "eth1"), pci("remove"), pci("add"), net("add", "eth2"), pci("bind"))
    assert [(e.action, e.nic.mac, e.nic.ifname) for e in events] == [
        ("removed", "52:54:00:aa:00:01", "eth1"), ("added", "52:54:00:aa:00:02", "eth2")]


def test_another_model_at_the_same_address_is_removed_and_added(watcher, sysfs_tree):
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth1", mac="52:54:00:aa:00:01")
    watcher.resync(emit=False)
    unplug(sysfs_tree)
    sysfs_tree.add_nic(BDF, "e1000e", driver=None)          # no netdev yet, so no MAC to compare
    events = feed(watcher, net("remove", "eth1"), pci("remove"), pci("add"))
    assert [(e.action, e.nic.model) for e in events] == [("removed", "virtio-net"), ("added", "e1000e")]


def test_netdev_leaving_the_netns_is_moved(watcher, sysfs_tree):
    sysfs_tree.add_nic(BDF, "e1000", ifname="eth1")
    watcher.resync(emit=False)
    import os
    os.unlink(sysfs_tree.p("sys/class/net/eth1"))
    shutil.rmtree(sysfs_tree.p(f"sys/devices/pci0000:00/{BDF}/net"))
    events = feed(watcher, net("remove", "eth1"))
    assert [(e.action, e.nic.ifname, e.old.ifname) for e in events] == [("moved", None, "eth1")]


def test_unmanaged_and_non_network_pci_devices_are_ignored(watcher, sysfs_tree):
    events = feed(watcher, Uevent("add", "pci", "0000:00:05.0", PCI_CLASS="10802"),
                  Uevent("add", "net", "veth0", INTERFACE="veth0", IFINDEX="3",
                         DEVPATH="/devices/virtual/net/veth0"))
    assert events == []


def test_event_json_has_the_changed_fields_only(watcher, sysfs_tree):
    sysfs_tree.add_nic(BDF, "e1000", ifname="eth1")
    watcher.resync(emit=False)
    os_unlink = __import__("os").unlink
    os_unlink(sysfs_tree.p("sys/class/net/eth1"))
    shutil.rmtree(sysfs_tree.p(f"sys/devices/pci0000:00/{BDF}/net"))
    (event,) = feed(watcher, net("remove", "eth1"))
    doc = event.to_dict()
    assert isinstance(event, NicEvent) and doc["action"] == "moved" and "seqnum" not in doc
    assert doc["old"] == {"ifname": "eth1", "mac": "52:54:00:00:00:01", "mtu": 1500, "operstate": "up"}
    assert "moved" in str(event) and "was=eth1" in str(event)


def test_udev_source_reports_the_name_udev_gave(sysfs_tree):
    """udevd passes the pci bind on before it renamed the netdev: the NIC waits for its net event."""
    w = Watcher(source="udev", sysfs=Sysfs(sysfs_tree.root), settle=0.05)
    w.resync(emit=False)
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth0")
    assert feed(w, pci("add"), pci("bind"), settle=False) == []
    import os
    os.unlink(sysfs_tree.p("sys/class/net/eth0"))
    shutil.rmtree(sysfs_tree.p(f"sys/devices/pci0000:00/{BDF}"))
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="enp1s0")
    events = feed(w, net("add", "enp1s0"))
    assert [(e.action, e.nic.ifname) for e in events] == [("added", "enp1s0")]


def test_udev_naming_late_under_load_is_still_waited_for(sysfs_tree):
    """Seen in the lab while the host ran the rest of the suite: udevd announced the netdev more than 3 s after
    the pci bind, and a daemon attached it under its kernel name (eth0) just before udevd renamed it. The NIC
    is held until udevd's event (up to UDEV_NAME_SETTLE_S), not reported as eth0 after 3 s."""
    from dpdkeni import events as events_mod
    assert events_mod.UDEV_NAME_SETTLE_S == 10.0
    w = Watcher(source="udev", sysfs=Sysfs(sysfs_tree.root), settle=0.05)
    w.resync(emit=False)
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth0")
    assert feed(w, pci("add"), pci("bind"), settle=False) == []
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        time.sleep(0.05)
        w._expire()
    assert list(w._out) == [] and BDF in w._pending       # 3.5 s on: still waiting for udevd's name
    import os
    os.unlink(sysfs_tree.p("sys/class/net/eth0"))
    shutil.rmtree(sysfs_tree.p(f"sys/devices/pci0000:00/{BDF}"))
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="enp1s0")
    assert [(e.action, e.nic.ifname) for e in feed(w, net("add", "enp1s0"))] == [("added", "enp1s0")]


def test_a_resync_before_udevds_net_event_waits_for_the_name_too(sysfs_tree):
    """Seen in a clean-clone CI run: the udev hook's message for the pci add made the daemon resync, which reported
    the new NIC as eth0 (its kernel name) and the attach failed as udevd renamed it (``eth0 is not in the host's
    namespace``). A resync holds an unnamed new NIC for udevd's net event as a uevent does."""
    w = Watcher(source="udev", sysfs=Sysfs(sysfs_tree.root), settle=0.05)
    w.resync(emit=False)
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth0")
    w.resync()
    assert list(w._out) == [] and w._pending[BDF] > time.monotonic() + 9  # held for udevd, up to 10 s
    import os
    os.unlink(sysfs_tree.p("sys/class/net/eth0"))
    shutil.rmtree(sysfs_tree.p(f"sys/devices/pci0000:00/{BDF}"))
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="enp1s0")
    assert [(e.action, e.nic.ifname) for e in feed(w, net("add", "enp1s0"))] == [("added", "enp1s0")]
    w.resync()  # named and known: a resync reports nothing new
    assert list(w._out) == []


def test_a_kernel_source_resync_reports_a_new_nic_at_once(sysfs_tree):
    """Without udevd no one renames the netdev: the kernel source's resync does not hold a new NIC."""
    w = Watcher(source="kernel", sysfs=Sysfs(sysfs_tree.root), settle=0.05)
    w.resync(emit=False)
    sysfs_tree.add_nic(BDF, "virtio-net", ifname="eth0")
    w.resync()
    assert [(e.action, e.nic.ifname) for e in w.poll(0)] == [("added", "eth0")]


def test_an_unplug_whose_remove_uevent_comes_late_is_still_one_removed(watcher, sysfs_tree):
    """Seen in the lab under load: the driver let go (net remove + pci unbind), and udevd passed the pci remove on
    after the settle time. That is one ``removed`` with what the NIC was, not a ``bound`` to nothing first."""
    sysfs_tree.add_nic(BDF, "e1000", ifname="eth1", mac="52:54:00:aa:00:07")
    watcher.resync(emit=False)
    unplug(sysfs_tree)
    sysfs_tree.add_nic(BDF, "e1000", driver=None)           # the device is still there, without its driver
    assert feed(watcher, net("remove", "eth1"), pci("unbind")) == []   # 1 s: twenty times the settle time
    unplug(sysfs_tree)
    events = feed(watcher, pci("remove"))
    assert [(e.action, e.nic.mac, e.nic.driver, e.nic.ifname) for e in events] == [
        ("removed", "52:54:00:aa:00:07", "e1000", "eth1")]


def test_a_nic_left_without_a_driver_is_bound_to_nothing_after_the_unbind_window(watcher, sysfs_tree,
                                                                                  monkeypatch):
    import dpdkeni.events as events_mod
    monkeypatch.setattr(events_mod, "UNBIND_SETTLE_S", 0.3)
    sysfs_tree.add_nic(BDF, "e1000", ifname="eth1")
    watcher.resync(emit=False)
    unplug(sysfs_tree)
    sysfs_tree.add_nic(BDF, "e1000", driver=None)
    started = time.monotonic()
    events = feed(watcher, net("remove", "eth1"), pci("unbind"))
    assert time.monotonic() - started >= 0.3
    assert [(e.action, e.nic.driver, e.old.driver) for e in events] == [("bound", None, "e1000")]
