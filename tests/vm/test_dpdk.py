"""The real binds, in the QEMU lab guest (vIOMMU, Debian 6.1 kernel, udevd): what tests/test_driver.py and
tests/test_dpdkmode.py prove on the simulated PCI core, here with the kernel's own vfio-pci, uio_pci_generic,
virtio-pci and e1000 drivers on hot-plugged NICs."""
import json

import pytest


@pytest.fixture
def guest_container(lab):
    """A stand-in container in the guest (sleep in its own net and mount namespaces): its pid; killed after."""
    handle = lab.spawn(["sh", "-c", "echo pid=$$; exec unshare --net --mount --propagation private sleep 3600"])
    out = lab.wait(handle, timeout=30, until="pid=")
    pid = int(str(out["output"]).split("pid=")[1].split()[0])
    lab.sh(f'while [ "$(readlink /proc/{pid}/exe)" != /usr/bin/sleep ]; do sleep 0.05; done', timeout=30,
           check=True)
    yield pid
    lab.kill(handle, signal=9)


def _driver(lab, pci):
    return lab.sh(f"basename $(readlink /sys/bus/pci/devices/{pci}/driver) 2>/dev/null").stdout.strip() or None


def _ifname(lab, pci):
    return lab.sh(f"ls /sys/bus/pci/devices/{pci}/net /sys/bus/pci/devices/{pci}/virtio*/net 2>/dev/null "
                  "| grep -v : | head -1").stdout.strip() or None


def _bind_and_back(lab, nic, driver, kernel_driver):
    lab.sh(f"modprobe {driver}", check=True)
    out = lab.dpdkeni("bind", nic.pci, "--driver", driver, "--json", timeout=300)
    assert out.rc == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["original_driver"] == kernel_driver
    assert _driver(lab, nic.pci) == driver and _ifname(lab, nic.pci) is None
    back = lab.dpdkeni("unbind", nic.pci, timeout=300)
    assert back.rc == 0, back.stdout + back.stderr
    assert _driver(lab, nic.pci) == kernel_driver
    assert _ifname(lab, nic.pci) == nic.ifname  # the original name, after udev's rename


def test_bind_vfio(lab, plugged):
    nic = plugged("virtio-net")
    group = lab.sh(f"basename $(readlink /sys/bus/pci/devices/{nic.pci}/iommu_group)", check=True).stdout.strip()
    lab.sh("modprobe vfio-pci", check=True)
    out = lab.dpdkeni("bind", nic.pci, timeout=300)
    assert out.rc == 0, out.stderr
    assert _driver(lab, nic.pci) == "vfio-pci"
    assert lab.sh(f"test -c /dev/vfio/{group}").rc == 0
    back = lab.dpdkeni("unbind", nic.pci, timeout=300)
    assert back.rc == 0 and _driver(lab, nic.pci) == "virtio-pci" and _ifname(lab, nic.pci) == nic.ifname


def test_bind_uio(lab, plugged):
    _bind_and_back(lab, plugged("e1000"), "uio_pci_generic", "e1000")


def test_unbind_restores_name(lab, plugged):
    _bind_and_back(lab, plugged("e1000e"), "vfio-pci", "e1000e")


def test_bind_refuses_an_active_nic(lab, plugged):
    nic = plugged("virtio-net")
    lab.sh(f"ip addr add 198.18.7.1/24 dev {nic.ifname} && ip link set {nic.ifname} up", check=True)
    out = lab.dpdkeni("bind", nic.pci, timeout=300)
    assert out.rc == 3 and "active" in out.stderr
    assert _driver(lab, nic.pci) == "virtio-pci"


def test_attach_dpdk_and_release(lab, plugged, guest_container):
    nic = plugged("virtio-net")
    pid = guest_container
    lab.sh(f"nsenter -t {pid} -m mount -t tmpfs tmpfs /dev && modprobe vfio-pci", check=True)
    before = lab.sh("cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", check=True).stdout.strip()
    out = lab.dpdkeni("attach", nic.pci, "--to", f"pid:{pid}", "--mode", "dpdk", "--hugepages", "64M",
                      timeout=300)
    assert out.rc == 0, out.stderr
    group = lab.sh(f"basename $(readlink /sys/bus/pci/devices/{nic.pci}/iommu_group)", check=True).stdout.strip()
    assert _driver(lab, nic.pci) == "vfio-pci"
    nodes = lab.sh(f"nsenter -t {pid} -m ls /dev/vfio", check=True).stdout.split()
    assert sorted(nodes) == sorted([group, "vfio"])
    mounts = lab.sh(f"grep hugetlbfs /proc/{pid}/mounts", check=True).stdout
    assert "/dev/hugepages" in mounts and f"size={64 << 20}" in mounts
    rel = lab.dpdkeni("release", nic.pci, timeout=300)
    assert rel.rc == 0, rel.stderr
    assert _driver(lab, nic.pci) == "virtio-pci" and _ifname(lab, nic.pci) == nic.ifname
    assert lab.sh("cat /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").stdout.strip() == before
    # the guest's own /dev/hugepages (no size cap) stays listed under the container's tmpfs /dev; ours is gone
    assert f"size={64 << 20}" not in lab.sh(f"grep hugetlbfs /proc/{pid}/mounts").stdout
