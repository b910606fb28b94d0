"""Inventory over synthetic sysfs trees laid out like the kernel's (see sysfs_tree.py)."""
import os

import pytest

from dpdkeni.errors import InputError, NotFoundError
from dpdkeni.inventory import find_nic, list_nics
from dpdkeni.sysfs import Sysfs


@pytest.fixture
def tree(sysfs_tree):
    t = sysfs_tree
    t.add_nic("0000:00:03.0", "virtio-net", ifname="eth0", mac="52:54:00:00:00:03", numa_node=0, iommu_group=3)
    t.add_nic("0000:01:00.0", "e1000", ifname="ens1", mac="52:54:00:00:00:10", iommu_group=7)
    t.add_nic("0000:02:00.0", "e1000e", ifname="enp2s0", mac="52:54:00:00:00:20", mtu=9000)
    t.add_nic("0000:03:00.0", "virtio-net", driver="vfio-pci", iommu_group=9)
    t.add_nic("0000:04:00.0", "e1000", driver=None)
    t.add_nic("0000:05:00.0", "virtio-net-legacy", ifname="eth5", mac="52:54:00:00:00:50")
    t.add_virtual("veth9")
    return t


def nics(tree, **kw):
    return {n.name: n for n in list_nics(sysfs=Sysfs(tree.root), **kw)}


def test_virtio_netdev_under_virtio_dir(tree):
    nic = nics(tree)["0000:00:03.0"]
    assert (nic.model, nic.driver, nic.ifname, nic.mac) == ("virtio-net", "virtio-pci", "eth0", "52:54:00:00:00:03")
    assert (nic.vendor, nic.device, nic.numa_node, nic.iommu_group) == ("1af4", "1041", 0, 3)
    assert nic.pmd == "net_virtio" and nic.managed and not nic.on_dpdk_driver


def test_e1000_and_e1000e(tree):
    all_ = nics(tree)
    assert (all_["0000:01:00.0"].model, all_["0000:01:00.0"].driver, all_["0000:01:00.0"].ifname) == \
        ("e1000", "e1000", "ens1")
    e = all_["0000:02:00.0"]
    assert (e.model, e.driver, e.ifname, e.mtu, e.numa_node) == ("e1000e", "e1000e", "enp2s0", 9000, None)
    assert all_["0000:05:00.0"].model == "virtio-net"  # legacy 1af4:1000


def test_vfio_bound_and_unbound(tree):
    all_ = nics(tree)
    v = all_["0000:03:00.0"]
    assert v.driver == "vfio-pci" and v.on_dpdk_driver and v.ifname is None and v.mac is None
    assert v.iommu_group == 9
    assert "vfio-pci" not in v.unused and "virtio-pci" in v.unused
    u = all_["0000:04:00.0"]
    assert u.driver is None and u.ifname is None and u.managed


def test_all_adds_virtual_links(tree):
    assert "veth9" not in {n.ifname for n in list_nics(sysfs=Sysfs(tree.root))}
    every = list_nics(all=True, sysfs=Sysfs(tree.root))
    veth = [n for n in every if n.ifname == "veth9"]
    assert len(veth) == 1 and veth[0].pci is None and not veth[0].managed


def test_active_marks(tree):
    all_ = nics(tree, active=lambda: {"eth0"})
    assert all_["0000:00:03.0"].active and not all_["0000:01:00.0"].active


def test_find_by_each_spec(tree):
    fs = Sysfs(tree.root)
    assert find_nic("0000:01:00.0", sysfs=fs).ifname == "ens1"
    assert find_nic("01:00.0", sysfs=fs).ifname == "ens1"
    assert find_nic("52:54:00:00:00:20", sysfs=fs).pci == "0000:02:00.0"
    assert find_nic("52-54-00-00-00-20", sysfs=fs).pci == "0000:02:00.0"
    assert find_nic("eth5", sysfs=fs).pci == "0000:05:00.0"
    assert find_nic("veth9", sysfs=fs).model == "unknown"


def test_find_errors(tree):
    fs = Sysfs(tree.root)
    with pytest.raises(NotFoundError):
        find_nic("0000:09:00.0", sysfs=fs)
    with pytest.raises(NotFoundError):
        find_nic("nosuch0", sysfs=fs)
    with pytest.raises(InputError):
        find_nic("0000:zz:00.0", sysfs=fs)


def test_mac_prefers_pci_device_over_virtual_sharing_it(tree):
    tree.add_virtual("macvlan0", mac="52:54:00:00:00:10")
    assert find_nic("52:54:00:00:00:10", sysfs=Sysfs(tree.root)).pci == "0000:01:00.0"


def tree_contents(root):
    """Every entry under root: path -> (kind, content or link target, mode, mtime_ns)."""
    out = {}
    for d, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(d, name)
            st = os.lstat(p)
            if os.path.islink(p):
                out[p] = ("link", os.readlink(p), st.st_mode, st.st_mtime_ns)
            elif os.path.isdir(p):
                out[p] = ("dir", sorted(os.listdir(p)), st.st_mode, st.st_mtime_ns)
            else:
                with open(p, "rb") as f:
                    out[p] = ("file", f.read(), st.st_mode, st.st_mtime_ns)
    return out


def test_nothing_written(tree):
    """Listing and finding change nothing in the tree: every file's content, mode and mtime, every link and
    directory are as they were (not only that the Sysfs write method was not called)."""
    before = tree_contents(tree.root)
    fs = Sysfs(tree.root)
    list_nics(all=True, sysfs=fs)
    find_nic("eth0", sysfs=fs)
    after = tree_contents(tree.root)
    assert [p for p in set(before) | set(after) if before.get(p) != after.get(p)] == []
    assert fs.writes == []
