"""Binding on a synthetic sysfs driven by a simulated PCI core (tests/sysfs_tree.SimKernel): this host has no
vfio, uio or hot-plug. The real binds are the lab's: tests/vm/test_dpdk.py::test_bind_vfio (vfio-pci with a
vIOMMU), ::test_bind_uio (uio_pci_generic) and ::test_unbind_restores_name (kernel driver and name come back)."""
import os
import subprocess
import sys
import time

import pytest

import hostfacts

from dpdkeni import driver
from dpdkeni.errors import Error, GuardError, StepError
from dpdkeni.inventory import find_nic
from sysfs_tree import SimKernel

BDF, PEER = "0000:00:04.0", "0000:00:05.0"


@pytest.fixture
def sim(sysfs_tree, state_dir):
    k = SimKernel(sysfs_tree)
    k.add_nic(BDF, "virtio-net", ifname="enp0s4", mac="52:54:00:00:00:04", iommu_group=4)
    return k


def nic(sim, spec=BDF, active=()):
    return find_nic(spec, sysfs=sim.sysfs(), active=lambda: set(active))


def test_bind_vfio_moves_the_driver_link_and_unbind_brings_the_name_back(sim):
    # lab: tests/vm/test_dpdk.py::test_bind_vfio
    fs = sim.sysfs()
    res = driver.bind(nic(sim), "vfio-pci", sysfs=fs)
    assert sim.driver(BDF) == "vfio-pci" and res.original_driver == "virtio-pci"
    assert not os.path.exists(sim.tree.p("sys/class/net/enp0s4"))  # the netdev went with virtio-pci
    assert [p for p, _ in res.writes] == ["/sys/bus/pci/drivers/virtio-pci/unbind",
                                          f"/sys/bus/pci/devices/{BDF}/driver_override",
                                          "/sys/bus/pci/drivers_probe"]
    assert sim.override(BDF) == "vfio-pci"
    assert driver.remembered(BDF)["ifname"] == "enp0s4"
    back = driver.unbind(BDF, sysfs=sim.sysfs())
    assert sim.driver(BDF) == "virtio-pci" and sim.override(BDF) == ""
    assert back.ifname == "enp0s4" and os.path.exists(sim.tree.p("sys/class/net/enp0s4"))
    assert driver.remembered(BDF) == {}


def test_unbind_renames_a_netdev_the_kernel_named_differently(sim):
    # lab: tests/vm/test_dpdk.py::test_unbind_restores_name
    driver.bind(nic(sim), "vfio-pci", sysfs=sim.sysfs())
    sim.names[BDF] = "eth7"  # no udev on the host: the kernel's own name comes back
    back = driver.unbind(BDF, sysfs=sim.sysfs(), renamer=sim.rename_netdev)
    assert back.ifname == "enp0s4"
    assert os.path.exists(sim.tree.p("sys/class/net/enp0s4")) and not os.path.exists(
        sim.tree.p("sys/class/net/eth7"))


def test_failed_bind_restores_the_original_driver(sim):
    # lab: tests/vm/test_dpdk.py::test_bind_vfio (the e1000 82545EM "Invalid argument" case is this path)
    sim.failing.add("vfio-pci")
    with pytest.raises(StepError) as err:
        driver.bind(nic(sim), "vfio-pci", sysfs=sim.sysfs())
    assert "restored to virtio-pci" in str(err.value)
    assert sim.driver(BDF) == "virtio-pci" and sim.override(BDF) == ""
    assert os.path.exists(sim.tree.p("sys/class/net/enp0s4"))


def test_uio_pci_generic_needs_no_iommu(sysfs_tree, state_dir):
    # lab: tests/vm/test_dpdk.py::test_bind_uio
    k = SimKernel(sysfs_tree)
    k.add_nic(BDF, "e1000", ifname="ens4")
    driver.bind(find_nic(BDF, sysfs=k.sysfs(), active=set), "uio_pci_generic", sysfs=k.sysfs())
    assert k.driver(BDF) == "uio_pci_generic"
    driver.unbind(BDF, sysfs=k.sysfs())
    assert k.driver(BDF) == "e1000" and os.path.exists(k.tree.p("sys/class/net/ens4"))


def test_dry_run_lists_the_exact_writes_and_changes_nothing(sim, cli):
    res = driver.bind(nic(sim), "vfio-pci", dry_run=True, sysfs=sim.sysfs())
    assert res.writes == [("/sys/bus/pci/drivers/virtio-pci/unbind", BDF),
                          (f"/sys/bus/pci/devices/{BDF}/driver_override", "vfio-pci"),
                          ("/sys/bus/pci/drivers_probe", BDF)]
    assert sim.driver(BDF) == "virtio-pci" and sim.probes == 0
    out = cli("bind", BDF, "--dry-run", env={"DPDKENI_SYSFS_ROOT": sim.tree.root})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        f"would write '{BDF}' to /sys/bus/pci/drivers/virtio-pci/unbind",
        f"would write 'vfio-pci' to /sys/bus/pci/devices/{BDF}/driver_override",
        f"would write '{BDF}' to /sys/bus/pci/drivers_probe"]
    assert sim.driver(BDF) == "virtio-pci"


def test_guard_active_nic(sim):
    with pytest.raises(GuardError) as err:
        driver.bind(nic(sim, active=["enp0s4"]), sysfs=sim.sysfs())
    assert "active" in str(err.value) and err.value.exit_code == 3
    assert sim.driver(BDF) == "virtio-pci"
    driver.bind(nic(sim, active=["enp0s4"]), force=True, sysfs=sim.sysfs())
    assert sim.driver(BDF) == "vfio-pci"


def test_guard_process_holds_the_vfio_group(sim):
    node = sim.tree.p("dev/vfio/4")
    open(node, "w").close()
    holder = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); print(1, flush=True);"
                               " time.sleep(60)", node], stdout=subprocess.PIPE)
    try:
        holder.stdout.readline()
        with pytest.raises(GuardError) as err:
            driver.bind(nic(sim), sysfs=sim.sysfs())
        assert f"[{holder.pid}]" in str(err.value) and "held" in str(err.value)
        assert sim.driver(BDF) == "virtio-pci"
    finally:
        holder.kill()
        holder.wait()
    driver.bind(nic(sim), sysfs=sim.sysfs())
    assert sim.driver(BDF) == "vfio-pci"


def test_guard_enslaved_netdev(sim):
    sim.tree.add_virtual("br0")
    sim.tree.link("sys/class/net/enp0s4/master", "sys/class/net/br0")
    with pytest.raises(GuardError, match="port of br0"):
        driver.bind(nic(sim), sysfs=sim.sysfs())


def test_guard_iommu_group_not_viable(sim):
    sim.add_nic(PEER, "e1000", ifname="ens5", iommu_group=4)
    with pytest.raises(GuardError) as err:
        driver.bind(nic(sim), sysfs=sim.sysfs())
    assert "IOMMU group 4" in str(err.value) and f"{PEER} on e1000" in str(err.value)
    assert sim.driver(BDF) == "virtio-pci"
    driver.bind(nic(sim, PEER), sysfs=sim.sysfs(), force=True)  # the peer on vfio-pci: the group is viable
    driver.bind(nic(sim), sysfs=sim.sysfs())
    assert sim.driver(BDF) == "vfio-pci"


def test_guard_no_iommu_needs_noiommu(sysfs_tree, state_dir):
    k = SimKernel(sysfs_tree)
    k.add_nic(BDF, "virtio-net", ifname="enp0s4")
    find = lambda: find_nic(BDF, sysfs=k.sysfs(), active=set)  # noqa: E731
    with pytest.raises(GuardError, match="--noiommu"):
        driver.bind(find(), sysfs=k.sysfs())
    with pytest.raises(Error, match="CONFIG_VFIO_NOIOMMU"):  # the Debian guest kernel's case
        driver.bind(find(), noiommu=True, sysfs=k.sysfs())
    k.tree.write(SimKernel.NOIOMMU, "N")
    res = driver.bind(find(), noiommu=True, sysfs=k.sysfs())
    assert res.noiommu and (f"/{SimKernel.NOIOMMU}", "1") in res.writes
    assert k.driver(BDF) == "vfio-pci"


def test_unknown_driver_is_bad_input(sim, cli):
    out = cli("bind", BDF, "--driver", "igb_uio", env={"DPDKENI_SYSFS_ROOT": sim.tree.root})
    assert out.returncode == 2 and "invalid choice" in out.stderr


def _nic_state(pci):
    dev = f"/sys/bus/pci/devices/{pci}"
    return (os.readlink(f"{dev}/driver") if os.path.exists(f"{dev}/driver") else None,
            open(f"{dev}/driver_override").read() if os.path.exists(f"{dev}/driver_override") else None)


def test_host_route_nic_is_refused_in_dry_run(cli):
    """The host's own NIC (the one its default route leaves by, found at run time) is refused as active."""
    found = hostfacts.route_nic()
    if found is None:
        pytest.skip("no PCI NIC carries the default route here")
    ifname, pci = found
    before = _nic_state(pci)
    assert before[0] is not None
    out = cli("bind", ifname, "--dry-run")
    assert out.returncode == 3, out.stderr
    assert f"{pci} ({ifname}) is active" in out.stderr and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert _nic_state(pci) == before
