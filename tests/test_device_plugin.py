"""The device plugin (``dpdkeni k8s device-plugin``) against a kubelet stand-in (tests/kubeletstandin.py) written
from the official deviceplugin/v1beta1 API: registration, ListAndWatch on hot-plug and unplug, Allocate's answer
field by field, the pod's end, GetPreferredAllocation, re-registration after a kubelet restart, bad pools files.

This host has no PCI hot-plug and no vfio: the NICs live in a synthetic sysfs driven by the simulated PCI core
(tests/sysfs_tree.SimKernel), and the plugin's :class:`~dpdkeni.events.Watcher` gets the uevents the kernel would
send through a pipe instead of the netlink socket (the watcher's table and the plugin's loop are the real ones).
A pod is a real process holding the group's device node open. The same paths run for real in the QEMU lab
(tests/vm/test_device_plugin_vm.py).
"""
from __future__ import annotations

import json
import os
import queue
import select
import shutil
import subprocess
import sys
import threading
import time

import grpc
import pytest
from kubeletstandin import Kubelet
from sysfs_tree import SimKernel
from test_events_pci import net, pci

from dpdkeni.events import Watcher
from dpdkeni.k8s import api, pools
from dpdkeni.k8s.plugin import DevicePlugin, preferred
from dpdkeni.ledger import Ledger

V1, V2, E1, X1 = "0000:00:04.0", "0000:00:05.0", "0000:00:06.0", "0000:00:07.0"
HOTPLUG_BOUND_S = 1.0  # the bound: the new list within 1 s of the plug or unplug


class _PipeMonitor:
    """Stands in for pyudev's monitor socket: uevents handed over through a queue, a pipe byte per uevent."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.q: queue.Queue = queue.Queue()

    def fileno(self) -> int:
        return self.r

    def poll(self, timeout: float) -> object:
        try:
            uevent = self.q.get_nowait()
        except queue.Empty:
            return None
        try:
            os.read(self.r, 1)
        except BlockingIOError:
            pass
        return uevent

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


class SimWatcher(Watcher):
    """The real Watcher whose uevents come from the test instead of the kernel."""

    def start(self) -> "SimWatcher":
        if self._monitor is None:
            self._monitor = _PipeMonitor()
            self._poller.register(self._monitor.fileno(), select.POLLIN)
            self.resync(emit=False)
        return self

    def close(self) -> None:
        if self._monitor is not None:
            self._poller.unregister(self._monitor.fileno())
            self._monitor.close()
            self._monitor = None

    def feed(self, *uevents) -> None:
        for u in uevents:
            self._monitor.q.put(u)
            os.write(self._monitor.w, b"u")


CONFIG = """
prefix = "dpdkeni.io"
hugepages_mount = "{hugetlbfs}"
cdi_spec = "{cdi}"
release_grace = {grace}

[[pool]]
name = "virtio"
model = "virtio-net"
mac = "52:54:00:*"

[[pool]]
name = "e1000"
model = ["e1000"]
pci = "0000:00:0[0-6].0"
"""


class Node:
    """A simulated node: the PCI tree, the plugin running in a thread, the kubelet stand-in."""

    def __init__(self, tmp_path, sysfs_tree, active=None, grace=0.5, extra="") -> None:
        self.kernel = SimKernel(sysfs_tree)
        self.tree = sysfs_tree
        self.dir = str(tmp_path / "device-plugins")
        self.cdi = str(tmp_path / "cdi" / "dpdkeni.json")
        self.hugetlbfs = str(tmp_path / "hugepages")
        os.makedirs(self.hugetlbfs)
        path = str(tmp_path / "pools.toml")
        with open(path, "w") as f:
            f.write(CONFIG.format(hugetlbfs=self.hugetlbfs, cdi=self.cdi, grace=grace) + extra)
        self.config = pools.load(path)
        self.active = active
        self.kubelet = Kubelet(self.dir).start()
        self.plugin = None
        self.thread = None

    def plug(self, bdf, model="virtio-net", ifname="eth7", mac="52:54:00:aa:00:07", group=7, numa=0, feed=True):
        self.kernel.add_nic(bdf, model, ifname=ifname, mac=mac, iommu_group=group, numa_node=numa)
        self.tree.write(f"dev/vfio/{group}", "")
        if feed:
            self.plugin.watcher.feed(pci("add", bdf), net("add", ifname, bdf), pci("bind", bdf))

    def unplug(self, bdf, ifname=None):
        shutil.rmtree(self.tree.p(f"sys/devices/pci0000:00/{bdf}"))
        os.unlink(self.tree.p(f"sys/bus/pci/devices/{bdf}"))
        events = ([net("remove", ifname, bdf)] if ifname else []) + [pci("remove", bdf)]
        self.plugin.watcher.feed(*events)

    def start(self):
        fs = self.kernel.sysfs()
        self.plugin = DevicePlugin(self.config, self.dir, sysfs=fs, active=self.active,
                                   watcher=SimWatcher(sysfs=fs))
        self.plugin.start()
        self.thread = threading.Thread(target=self.plugin.serve, daemon=True)
        self.thread.start()
        return self

    def close(self):
        if self.plugin is not None:
            self.plugin.stopping.set()
            self.thread.join(10)
        self.kubelet.stop()


@pytest.fixture
def node(tmp_path, sysfs_tree, state_dir):
    n = Node(tmp_path, sysfs_tree)
    n.plug(V1, ifname="eth1", mac="52:54:00:aa:00:01", group=11, numa=0, feed=False)
    n.plug(E1, model="e1000", ifname="eth3", mac="52:54:00:aa:00:03", group=13, numa=1, feed=False)
    n.plug(X1, model="e1000e", ifname="eth4", mac="52:54:00:aa:00:04", group=14, feed=False)  # in no pool
    yield n
    n.close()


def _virtio(node):
    return node.kubelet.plugin("dpdkeni.io/virtio")


def _started(node):
    """Start the plugin, wait for its registrations and the virtio pool's first list (V1 alone); its plugin."""
    node.start()
    node.kubelet.wait_registered(2)
    virtio = _virtio(node)
    virtio.wait_list(lambda d: d == [(V1, "Healthy", [0])])
    return virtio


def _wait_freed(timeout: float) -> None:
    """Until V1's lease is gone (the plugin freed it), at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while Ledger().get(V1) is not None and time.monotonic() < deadline:
        time.sleep(0.1)


def _held_by(pod, timeout=10.0):
    deadline = time.monotonic() + timeout
    while Ledger().get(V1).params.get("holder") != f"sleep[{pod.proc.pid}]" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert Ledger().get(V1).params.get("holder") == f"sleep[{pod.proc.pid}]"


class Pod:
    """A pod's DPDK process: a real process holding the vfio group node open."""

    def __init__(self, path: str) -> None:
        self.proc = subprocess.Popen(["sh", "-c", f'exec 3<"{path}"; echo ready; exec sleep 60'],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def end(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def test_registration_and_the_first_lists(node):
    node.start()
    regs = node.kubelet.wait_registered(2)
    got = sorted((r.version, r.endpoint, r.resource_name, r.options.get_preferred_allocation_available,
                  r.options.pre_start_required) for _, r in regs)
    assert got == [("v1beta1", "dpdkeni-e1000.sock", "dpdkeni.io/e1000", True, False),
                   ("v1beta1", "dpdkeni-virtio.sock", "dpdkeni.io/virtio", True, False)]
    virtio, e1000 = _virtio(node), node.kubelet.plugin("dpdkeni.io/e1000")
    assert virtio.options.get_preferred_allocation_available is True
    assert virtio.wait_list(lambda d: True)[1] == [(V1, "Healthy", [0])]
    assert e1000.wait_list(lambda d: True)[1] == [(E1, "Healthy", [1])]  # the e1000e at X1 is in no pool


def test_list_and_watch_follows_hotplug_and_unplug_within_1s(node):
    node.start()
    virtio = (node.kubelet.wait_registered(2), _virtio(node))[1]
    virtio.wait_list(lambda d: d == [(V1, "Healthy", [0])])
    t0 = time.monotonic()
    node.plug(V2, ifname="eth2", mac="52:54:00:aa:00:02", group=12, numa=1)
    at, devices = virtio.wait_list(lambda d: len(d) == 2)
    assert devices == [(V1, "Healthy", [0]), (V2, "Healthy", [1])]
    assert at - t0 < HOTPLUG_BOUND_S, f"plug seen after {at - t0:.3f} s"
    t0 = time.monotonic()
    node.unplug(V2, "eth2")
    at, devices = virtio.wait_list(lambda d: len(d) == 1 and t0 > 0 and d[0][0] == V1 and at_after(virtio, t0))
    assert devices == [(V1, "Healthy", [0])]
    assert at - t0 < HOTPLUG_BOUND_S, f"unplug seen after {at - t0:.3f} s"
    # the e1000 pool's stream got its one list and nothing for the virtio pool's changes
    assert [d for _, d in node.kubelet.plugin("dpdkeni.io/e1000").lists] == [[(E1, "Healthy", [1])]]


def at_after(plugin, t0):
    last = plugin.last()
    return last is not None and last[0] >= t0


def test_a_pass_that_fails_is_logged_and_the_loop_goes_on(node, state_dir, caplog):
    virtio = _started(node)
    ledger = os.path.join(state_dir, "leases.json")
    with open(ledger, "w") as f:
        f.write("{not json")  # the re-read after the next uevent fails
    node.plug(V2, ifname="eth2", mac="52:54:00:aa:00:02", group=12)
    deadline = time.monotonic() + 10
    while "re-reading the pools failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "re-reading the pools failed" in caplog.text and "is unreadable" in caplog.text
    os.unlink(ledger)
    node.plugin.watcher.feed(pci("bind", V2))  # the next uevent: the loop still runs
    assert virtio.wait_list(lambda d: len(d) == 2)[1] == [(V1, "Healthy", [0]), (V2, "Healthy", [0])]
    assert node.thread.is_alive()


def test_allocate_answer_field_by_field_and_the_pods_end(node, state_dir):
    virtio = _started(node)
    resp = virtio.allocate(V1)
    (c,) = resp.container_responses
    assert [(d.container_path, d.host_path, d.permissions) for d in c.devices] == [
        ("/dev/vfio/vfio", "/dev/vfio/vfio", "rw"), ("/dev/vfio/11", "/dev/vfio/11", "rw")]
    info = {V1: {"generic": {"deviceID": V1}, "vfio": {"dev-mount": "/dev/vfio/11", "mount": "/dev/vfio/vfio"}}}
    assert dict(c.envs) == {"PCIDEVICE_DPDKENI_IO_VIRTIO": V1,
                            "PCIDEVICE_DPDKENI_IO_VIRTIO_INFO": json.dumps(info, separators=(",", ":")),
                            "DPDKENI_NIC_0000_00_04_0": V1}
    assert [(m.container_path, m.host_path, m.read_only) for m in c.mounts] == [
        ("/dev/hugepages", node.hugetlbfs, False)]
    assert [d.name for d in c.cdi_devices] == [f"dpdkeni.io/nic={V1}"]
    assert dict(c.annotations) == {}
    with open(node.cdi) as f:  # the CDI name resolves: the spec the plugin wrote has it
        assert [d["name"] for d in json.load(f)["devices"]] == [V1]
    assert node.kernel.driver(V1) == "vfio-pci"
    lease = Ledger().get(V1)
    assert (lease.mode, lease.state, lease.target, lease.params["pool"], lease.original["driver"],
            lease.original["ifname"], [(s.name, s.state) for s in lease.steps]) == (
        "dpdk", "attached", "k8s:dpdkeni.io/virtio", "virtio", "virtio-pci", "eth1", [("bind", "done")])
    out = subprocess.run([sys.executable, "-m", "dpdkeni", "leases", "--json"], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "DPDKENI_STATE_DIR": state_dir})
    assert out.returncode == 0, out.stderr
    assert [(x["key"], x["target"], x["state"]) for x in json.loads(out.stdout)] == [
        (V1, "k8s:dpdkeni.io/virtio", "attached")]
    time.sleep(2.0)  # allocated, not opened yet (the container may still start): stays bound past the grace
    assert node.kernel.driver(V1) == "vfio-pci" and Ledger().get(V1).state == "attached"
    # the pod runs: it opens the group; the lease names it
    pod = Pod(node.tree.p("dev/vfio/11"))
    _held_by(pod)
    held = Ledger().get(V1)
    assert held.params["holder"] == f"sleep[{pod.proc.pid}]"
    assert held.params["target_path"] == f"/proc/{pod.proc.pid}/ns/net"
    time.sleep(1.5)  # held longer than the grace: still bound
    assert node.kernel.driver(V1) == "vfio-pci"
    # the pod ends: after the grace the NIC is back on virtio-pci under its name, the lease gone, still listed
    pod.end()
    _wait_freed(10)
    assert Ledger().get(V1) is None
    assert node.kernel.driver(V1) == "virtio-pci" and os.path.islink(node.tree.p("sys/class/net/eth1"))
    assert virtio.last()[1] == [(V1, "Healthy", [0])]


def test_a_container_restart_within_the_grace_keeps_the_nic(tmp_path, sysfs_tree, state_dir):
    n = Node(tmp_path, sysfs_tree, grace=5)
    try:
        n.plug(V1, ifname="eth1", mac="52:54:00:aa:00:01", group=11, feed=False)
        virtio = _started(n)
        virtio.allocate(V1)
        first = Pod(n.tree.p("dev/vfio/11"))
        _held_by(first)
        first.end()
        time.sleep(2.0)  # the holder check (every 1 s) has seen the node free at least once
        second = Pod(n.tree.p("dev/vfio/11"))  # the container restarted within the 5 s grace
        _held_by(second)
        time.sleep(4.0)  # past the grace counted from the first pod's end
        assert n.kernel.driver(V1) == "vfio-pci" and Ledger().get(V1).state == "attached"
        t0 = time.monotonic()
        second.end()
        _wait_freed(20)
        freed = time.monotonic() - t0
        assert Ledger().get(V1) is None and n.kernel.driver(V1) == "virtio-pci"
        assert freed >= 5.0, f"freed {freed:.1f} s after the pod ended, before the 5 s grace"
    finally:
        n.close()


def test_unplug_of_a_held_nic_is_unhealthy_until_its_pod_ends(node):
    virtio = _started(node)
    virtio.allocate(V1)
    pod = Pod(node.tree.p("dev/vfio/11"))
    _held_by(pod)
    t0 = time.monotonic()
    node.unplug(V1)
    at, devices = virtio.wait_list(lambda d: d == [(V1, "Unhealthy", [0])])
    assert at - t0 < HOTPLUG_BOUND_S, f"unhealthy after {at - t0:.3f} s"
    pod.end()
    at, devices = virtio.wait_list(lambda d: d == [])
    assert Ledger().get(V1) is None


def test_an_allocated_nic_unplugged_before_its_pod_opened_it_leaves_the_list(node):
    virtio = _started(node)
    virtio.allocate(V1)
    node.unplug(V1)
    virtio.wait_list(lambda d: d == [], timeout=5)  # the holder check runs once a second
    _wait_freed(5)
    assert Ledger().get(V1) is None and node.plugin.claims.pcis() == set()


def test_allocate_of_an_active_nic_is_refused_with_the_guards_line(tmp_path, sysfs_tree, state_dir):
    n = Node(tmp_path, sysfs_tree, active=lambda: {"eth1"})
    try:
        n.plug(V1, ifname="eth1", mac="52:54:00:aa:00:01", group=11, feed=False)
        n.start()
        n.kubelet.wait_registered(2)
        virtio = _virtio(n)
        assert virtio.wait_list(lambda d: True)[1] == [(V1, "Unhealthy", [0])]
        with pytest.raises(grpc.RpcError) as err:
            virtio.allocate(V1)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == (f"{V1} (eth1) is active: it has addresses or routes in the host's "
                                       "namespace, so it carries the host's traffic (use --force (force=True) "
                                       "to override)")
        assert n.kernel.driver(V1) == "virtio-pci" and Ledger().get(V1) is None
        # all or nothing: V2 is bound first, V1 is refused, so V2 goes back and no lease is left
        n.plug(V2, ifname="eth2", mac="52:54:00:aa:00:02", group=12)
        virtio.wait_list(lambda d: len(d) == 2)
        with pytest.raises(grpc.RpcError) as err:
            virtio.allocate(V2, V1)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "is active" in err.value.details()
        assert (n.kernel.driver(V2), n.kernel.driver(V1)) == ("virtio-pci", "virtio-pci")
        assert os.path.islink(n.tree.p("sys/class/net/eth2")) and dict(Ledger().leases()) == {}
        with pytest.raises(grpc.RpcError) as err:
            virtio.allocate("0000:00:09.0")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        n.close()


UIO_POOL = """
[[pool]]
name = "uio"
model = "e1000e"
driver = "uio_pci_generic"
"""


def _uio_node(tmp_path, sysfs_tree):
    """A node whose e1000e (X1) is in a pool bound to uio_pci_generic; started, its three pools registered."""
    n = Node(tmp_path, sysfs_tree, extra=UIO_POOL)
    n.plug(X1, model="e1000e", ifname="eth4", mac="52:54:00:aa:00:04", group=14, feed=False)
    n.start()
    n.kubelet.wait_registered(3)
    uio = n.kubelet.plugin("dpdkeni.io/uio")
    assert uio.wait_list(lambda d: True)[1] == [(X1, "Healthy", [0])]
    return n, uio


def test_a_uio_pool_answers_with_the_uio_node_and_frees_it_at_the_pods_end(tmp_path, sysfs_tree, state_dir):
    n, uio = _uio_node(tmp_path, sysfs_tree)
    try:
        (c,) = uio.allocate(X1).container_responses
        # the uio node only: no /dev/vfio/vfio, and no CDI name (the CDI spec describes vfio devices)
        assert [(d.container_path, d.host_path, d.permissions) for d in c.devices] == [
            ("/dev/uio0", "/dev/uio0", "rw")]
        info = {X1: {"generic": {"deviceID": X1}, "uio": {"dev-mount": "/dev/uio0"}}}
        assert dict(c.envs) == {"PCIDEVICE_DPDKENI_IO_UIO": X1,
                                "PCIDEVICE_DPDKENI_IO_UIO_INFO": json.dumps(info, separators=(",", ":")),
                                "DPDKENI_NIC_0000_00_07_0": X1}
        assert [(m.container_path, m.host_path) for m in c.mounts] == [("/dev/hugepages", n.hugetlbfs)]
        assert list(c.cdi_devices) == []
        assert n.kernel.driver(X1) == "uio_pci_generic" and not os.path.exists(n.tree.p("sys/class/net/eth4"))
        lease = Ledger().get(X1)
        assert (lease.state, lease.params["driver"], lease.params["nodes"]) == (
            "attached", "uio_pci_generic", ["/dev/uio0"])
        pod = Pod(n.tree.p("dev/uio0"))   # the pod's DPDK process holds the uio node
        deadline = time.monotonic() + 10
        while Ledger().get(X1).params.get("holder") != f"sleep[{pod.proc.pid}]" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert Ledger().get(X1).params.get("holder") == f"sleep[{pod.proc.pid}]"
        pod.end()
        deadline = time.monotonic() + 10
        while Ledger().get(X1) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert Ledger().get(X1) is None and n.kernel.driver(X1) == "e1000e"
        assert os.path.islink(n.tree.p("sys/class/net/eth4")) and not os.path.exists(n.tree.p("dev/uio0"))
    finally:
        n.close()


def test_a_failure_after_the_bind_is_one_line_and_undoes_the_bind(tmp_path, sysfs_tree, state_dir):
    """uio_pci_generic takes the NIC but registers no uio device (the node the answer must name is missing): the
    Allocate fails with one line, the NIC is back on its driver under its name, no lease."""
    n, uio = _uio_node(tmp_path, sysfs_tree)
    try:
        n.kernel.uio_nodes = False
        with pytest.raises(grpc.RpcError) as err:
            uio.allocate(X1)
        assert err.value.code() == grpc.StatusCode.INTERNAL
        assert err.value.details() == (f"{X1} is on uio_pci_generic but has no uio device (nothing in "
                                       f"/sys/bus/pci/devices/{X1}/uio)")
        assert n.kernel.driver(X1) == "e1000e" and os.path.islink(n.tree.p("sys/class/net/eth4"))
        assert dict(Ledger().leases()) == {}
        n.kernel.uio_nodes = True     # the plugin still serves: the next Allocate works
        (c,) = uio.allocate(X1).container_responses
        assert [d.host_path for d in c.devices] == ["/dev/uio0"] and n.kernel.driver(X1) == "uio_pci_generic"
    finally:
        n.close()


def test_a_nic_leased_by_something_else_is_unhealthy_and_refused(node):
    from dpdkeni.ledger import Lease
    with Ledger().transaction() as leases:  # as `dpdkeni attach` leaves it: another target holds the NIC
        leases[V1] = Lease(V1, "netdev", "netns:web1", {"ifname": "eth1"}, "attached")
    node.start()
    node.kubelet.wait_registered(2)
    virtio = _virtio(node)
    assert virtio.wait_list(lambda d: True)[1] == [(V1, "Unhealthy", [0])]
    with pytest.raises(grpc.RpcError) as err:
        virtio.allocate(V1)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == f"{V1} is leased to netns:web1 (attached) (release it first: dpdkeni release {V1})"
    assert node.kernel.driver(V1) == "virtio-pci" and Ledger().get(V1).target == "netns:web1"


def test_a_restarted_plugin_adopts_its_allocations_and_frees_the_ended_ones(node):
    node.start()
    node.kubelet.wait_registered(2)
    _virtio(node).allocate(V1)
    node.plugin.stopping.set()  # the plugin stops (SIGTERM): the NIC stays bound for its pod
    node.thread.join(10)
    assert node.kernel.driver(V1) == "vfio-pci" and not os.path.exists(os.path.join(node.dir, "dpdkeni-virtio.sock"))
    node.start()  # no process holds the NIC now: its pod ended while the plugin was down
    assert node.plugin.claims.pcis() == {V1}
    _wait_freed(20)
    assert Ledger().get(V1) is None and node.kernel.driver(V1) == "virtio-pci"


def test_recover_keeps_a_held_nic_and_undoes_it_once_its_pod_is_gone(node, monkeypatch):
    from dpdkeni import dpdkmode, handoff
    monkeypatch.setattr(dpdkmode, "sysfs_for", lambda root: node.kernel.sysfs())  # undo through the simulation
    virtio = _started(node)
    virtio.allocate(V1)
    pod = Pod(node.tree.p("dev/vfio/11"))
    _held_by(pod)
    node.plugin.stopping.set()  # the plugin is gone; `dpdkeni recover` is what is left
    node.thread.join(10)
    assert [(r["key"], r["detail"]) for r in handoff.recover()] == [(V1, "kept: attached to k8s:dpdkeni.io/virtio")]
    assert node.kernel.driver(V1) == "vfio-pci"
    pod.end()
    assert [(r["key"], r["detail"]) for r in handoff.recover()] == [(V1, "undid bind")]
    assert Ledger().get(V1) is None and node.kernel.driver(V1) == "virtio-pci"
    assert os.path.islink(node.tree.p("sys/class/net/eth1"))


def test_preferred_allocation_keeps_to_the_numa_node(node):
    node.plug(V2, ifname="eth2", mac="52:54:00:aa:00:02", group=12, numa=1, feed=False)
    node.plug("0000:00:08.0", ifname="eth5", mac="52:54:00:aa:00:05", group=15, numa=1, feed=False)
    node.start()
    node.kubelet.wait_registered(2)
    virtio = _virtio(node)
    virtio.wait_list(lambda d: len(d) == 3)
    every = [V1, V2, "0000:00:08.0"]
    assert virtio.preferred(every, [], 2) == [V2, "0000:00:08.0"]      # node 1 has two
    assert virtio.preferred(every, [V1], 2) == [V1, V2]                 # asked: V1's node 0, then by address
    assert virtio.preferred(every, ["0000:00:08.0"], 2) == ["0000:00:08.0", V2]
    assert preferred(["a", "b", "c"], [], 1, {"a": 0, "b": 1, "c": 1}.get) == ["b"]
    assert preferred(["a", "b"], [], 2, lambda p: None) == ["a", "b"]


def test_registers_again_when_kubelet_sock_is_recreated(node):
    node.start()
    node.kubelet.wait_registered(2)
    t0 = time.monotonic()
    node.kubelet.restart()  # kubelet.sock and the plugins' sockets deleted, kubelet.sock made anew
    regs = node.kubelet.wait_registered(4)
    assert sorted(r.resource_name for _, r in regs[2:]) == ["dpdkeni.io/e1000", "dpdkeni.io/virtio"]
    # no tight bound (a loaded 2-core host): the loop stats kubelet.sock every 0.25 s, a pass is ~0.3 s here
    assert regs[3][0] - t0 < 10.0
    assert _virtio(node).wait_list(lambda d: True)[1] == [(V1, "Healthy", [0])]
    assert os.path.exists(os.path.join(node.dir, "dpdkeni-virtio.sock"))


def test_a_kubelet_that_comes_after_the_plugin_is_registered_with(node):
    node.kubelet.stop()  # gRPC removes its socket
    assert not os.path.exists(node.kubelet.socket)
    node.start()
    time.sleep(1.0)  # the plugin serves; no kubelet to register with
    assert node.kubelet.registrations == [] and os.path.exists(os.path.join(node.dir, "dpdkeni-virtio.sock"))
    t0 = time.monotonic()
    node.kubelet.start()
    regs = node.kubelet.wait_registered(2)
    assert sorted(r.resource_name for _, r in regs) == ["dpdkeni.io/e1000", "dpdkeni.io/virtio"]
    assert regs[1][0] - t0 < 10.0  # a loose bound: it is about 0.3 s here
    assert _virtio(node).wait_list(lambda d: True)[1] == [(V1, "Healthy", [0])]


def test_a_refused_registration_is_tried_again(node):
    node.kubelet.refuse = 1  # the first Register fails (UNAVAILABLE), as from a kubelet still starting
    t0 = time.monotonic()
    node.start()
    regs = node.kubelet.wait_registered(2)
    assert node.kubelet.refused == 1
    assert sorted(r.resource_name for _, r in regs) == ["dpdkeni.io/e1000", "dpdkeni.io/virtio"]
    assert regs[1][0] - t0 < 10.0  # retried after 1 s; loose for a loaded host


def test_proto_matches_the_official_field_table():
    """Field names and numbers of dpdkeni/k8s/protos as in the official v1beta1 api.proto (written from it)."""
    pb, _ = api.stubs()
    official = {
        "RegisterRequest": [("version", 1), ("endpoint", 2), ("resource_name", 3), ("options", 4)],
        "DevicePluginOptions": [("pre_start_required", 1), ("get_preferred_allocation_available", 2)],
        "ListAndWatchResponse": [("devices", 1)], "TopologyInfo": [("nodes", 1)], "NUMANode": [("ID", 1)],
        "Device": [("ID", 1), ("health", 2), ("topology", 3)],
        "PreStartContainerRequest": [("devices_ids", 1)],
        "PreferredAllocationRequest": [("container_requests", 1)],
        "ContainerPreferredAllocationRequest": [("available_deviceIDs", 1), ("must_include_deviceIDs", 2),
                                                ("allocation_size", 3)],
        "PreferredAllocationResponse": [("container_responses", 1)],
        "ContainerPreferredAllocationResponse": [("deviceIDs", 1)],
        "AllocateRequest": [("container_requests", 1)], "ContainerAllocateRequest": [("devices_ids", 1)],
        "CDIDevice": [("name", 1)], "AllocateResponse": [("container_responses", 1)],
        "ContainerAllocateResponse": [("envs", 1), ("mounts", 2), ("devices", 3), ("annotations", 4),
                                      ("cdi_devices", 5)],
        "Mount": [("container_path", 1), ("host_path", 2), ("read_only", 3)],
        "DeviceSpec": [("container_path", 1), ("host_path", 2), ("permissions", 3)],
    }
    for name, fields in official.items():
        desc = getattr(pb, name).DESCRIPTOR
        assert desc.full_name == f"v1beta1.{name}"
        assert [(f.name, f.number) for f in desc.fields] == fields, name
    services = {s.full_name: [m.name for m in s.methods] for s in pb.DESCRIPTOR.services_by_name.values()}
    assert services == {"v1beta1.Registration": ["Register"],
                        "v1beta1.DevicePlugin": ["GetDevicePluginOptions", "ListAndWatch", "GetPreferredAllocation",
                                                 "Allocate", "PreStartContainer"]}


BAD = [
    ("pools.toml", "[[pool]]\nname = \"virtio\"\n", "pools.toml:1: pool 1: give at least one of model, mac, pci"),
    ("pools.toml", "[[pool]]\nname = \"Bad_Name\"\nmodel = \"virtio-net\"\n",
     "pools.toml:2: pool 1: name 'Bad_Name' must be a DNS label of at most 40 characters (a-z, 0-9, '-')"),
    ("pools.toml", "[[pool]]\nname = \"a\"\nmodel = \"virtio-net\"\n\n[[pool]]\nname = \"b\"\nmodel = \"tulip\"\n",
     "pools.toml:7: pool 2: model 'tulip' matches no known model"),
    ("pools.toml", "[[pool]]\nname = \"a\"\nmac = \"zz:*\"\n",
     "pools.toml:3: pool 1: mac pattern 'zz:*' is not a MAC glob"),
    ("pools.toml", "[[pool]]\nname = \"a\"\nmodel = \"e1000\"\ndriver = \"igb_uio\"\n",
     "pools.toml:4: pool 1: driver 'igb_uio' must be one of vfio-pci, uio_pci_generic"),
    ("pools.toml", "release_grace = -1\n[[pool]]\nname = \"a\"\nmodel = \"e1000\"\n",
     "pools.toml:1: release_grace must be a number of seconds from 0 to 3600"),
    ("pools.toml", "[[pool]\n", "pools.toml:1: "),
    ("pools.toml", "prefix = \"dpdkeni.io\"\n", "pools.toml:1: no pools"),
    ("pools.json", '{"pool": [\n  {"name": "a", "model": "e1000"},\n  {"name": "a", "pci": "0000:00:0*"}\n]}',
     "pools.json:3: pool 2: name 'a' is taken by an earlier pool"),
]


def test_without_grpc_it_is_one_line_exit_1(tmp_path, state_dir):
    config = tmp_path / "pools.toml"
    config.write_text('[[pool]]\nname = "virtio"\nmodel = "virtio-net"\n')
    code = ("import sys; sys.modules['grpc'] = None; from dpdkeni.cli import main; "  # grpcio not installed
            f"sys.exit(main(['k8s', 'device-plugin', '--config', {str(config)!r}, '--plugin-dir', "
            f"{str(tmp_path / 'dp')!r}]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DPDKENI_STATE_DIR": state_dir})
    assert out.returncode == 1 and out.stderr.startswith(
        "dpdkeni: error: this needs grpcio and grpcio-tools, which cannot be imported: "), out.stderr
    assert out.stderr.endswith("(pip install 'dpdkeni[k8s]')\n") and len(out.stderr.splitlines()) == 1
    assert not (tmp_path / "dp").exists()


@pytest.mark.parametrize("where", ["relative", "file", "not-a-socket"])
def test_a_bad_plugin_dir_or_socket_is_one_line_exit_2_and_nothing_starts(tmp_path, state_dir, where):
    config = tmp_path / "pools.toml"
    config.write_text('[[pool]]\nname = "virtio"\nmodel = "virtio-net"\n[[pool]]\nname = "e1000"\nmodel = "e1000"\n')
    plugin_dir = {"relative": "device-plugins", "file": str(tmp_path / "f"),
                  "not-a-socket": str(tmp_path / "dp")}[where]
    (tmp_path / "f").write_text("")
    (tmp_path / "dp").mkdir()
    (tmp_path / "dp" / "dpdkeni-e1000.sock").write_text("keep me")
    out = subprocess.run([sys.executable, "-m", "dpdkeni", "k8s", "device-plugin", "--config", str(config),
                          "--plugin-dir", plugin_dir], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "DPDKENI_STATE_DIR": state_dir})
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr
    want = {"relative": "the device-plugins dir 'device-plugins' must be an absolute path to a directory",
            "file": f"the device-plugins dir '{tmp_path}/f' must be an absolute path to a directory",
            "not-a-socket": f"{tmp_path}/dp/dpdkeni-e1000.sock exists and is not a socket: not replacing it"}[where]
    assert out.stderr == f"dpdkeni: error: {want}\n"
    assert sorted(os.listdir(tmp_path / "dp")) == ["dpdkeni-e1000.sock"]  # the first pool did not start either
    assert (tmp_path / "dp" / "dpdkeni-e1000.sock").read_text() == "keep me"
    assert not (tmp_path / "device-plugins").exists()


@pytest.mark.parametrize("name,text,want", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_pools_file_is_one_line_and_exit_2(tmp_path, state_dir, name, text, want):
    path = tmp_path / name
    path.write_text(text)
    plugin_dir = tmp_path / "dp"
    out = subprocess.run([sys.executable, "-m", "dpdkeni", "k8s", "device-plugin", "--config", str(path),
                          "--plugin-dir", str(plugin_dir)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DPDKENI_STATE_DIR": state_dir})
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"dpdkeni: error: {tmp_path}/{want}"), out.stderr
    assert not plugin_dir.exists()  # nothing started
