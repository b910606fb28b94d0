"""Synthetic sysfs trees laid out the way the kernel lays them out, for what this host's kernel lacks.

A PCI device lives under ``sys/devices/pci0000:00/<bdf>`` with ``sys/bus/pci/devices/<bdf>`` a symlink to it;
``driver`` links to ``sys/bus/pci/drivers/<drv>``; ``iommu_group`` to ``sys/kernel/iommu_groups/<n>``; a
virtio-net's netdev sits under ``<bdf>/virtio<N>/net/<if>``, an e1000's under ``<bdf>/net/<if>``; and
``sys/class/net/<if>`` links to the netdev directory.
"""
from __future__ import annotations

import os
from typing import Optional

MODELS = {
    "virtio-net": ("0x1af4", "0x1041", "virtio-pci"),
    "virtio-net-legacy": ("0x1af4", "0x1000", "virtio-pci"),
    "e1000": ("0x8086", "0x100e", "e1000"),
    "e1000e": ("0x8086", "0x10d3", "e1000e"),
}


class SysfsTree:
    """A fake /sys (plus /dev, /proc bits) rooted at ``root``."""

    def __init__(self, root: str) -> None:
        self.root = str(root)
        self._virtio = 0
        for d in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/class/net", "sys/kernel/iommu_groups",
                  "sys/devices/pci0000:00", "sys/devices/virtual/net", "dev/vfio", "proc/self"):
            os.makedirs(self.p(d), exist_ok=True)

    def p(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def write(self, rel: str, text: str) -> None:
        os.makedirs(os.path.dirname(self.p(rel)), exist_ok=True)
        with open(self.p(rel), "w") as f:
            f.write(text + "\n")

    def link(self, rel: str, target_rel: str) -> None:
        """Make ``rel`` a relative symlink to ``target_rel`` (both relative to the root)."""
        path = self.p(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(os.path.relpath(self.p(target_rel), os.path.dirname(path)), path)

    def add_driver(self, name: str) -> str:
        rel = f"sys/bus/pci/drivers/{name}"
        os.makedirs(self.p(rel), exist_ok=True)
        for f in ("bind", "unbind", "new_id"):
            if not os.path.exists(self.p(f"{rel}/{f}")):
                self.write(f"{rel}/{f}", "")
        return rel

    def add_nic(self, bdf: str, model: str = "virtio-net", driver: Optional[str] = "default",
                ifname: Optional[str] = None, mac: str = "52:54:00:00:00:01", iommu_group: Optional[int] = None,
                numa_node: int = -1, mtu: int = 1500, operstate: str = "up") -> str:
        """Add a PCI NIC; ``driver="default"`` binds it to the model's kernel driver, None to nothing,
        another name (``vfio-pci``) to that driver (then no netdev is made)."""
        vendor, device, kdrv = MODELS[model]
        dev = f"sys/devices/pci0000:00/{bdf}"
        os.makedirs(self.p(dev), exist_ok=True)
        for name, value in (("vendor", vendor), ("device", device), ("class", "0x020000"),
                            ("numa_node", str(numa_node)), ("driver_override", "(null)"),
                            ("subsystem_vendor", vendor), ("subsystem_device", "0x0001")):
            self.write(f"{dev}/{name}", value)
        self.link(f"sys/bus/pci/devices/{bdf}", dev)
        self.link(f"{dev}/subsystem", "sys/bus/pci")
        if iommu_group is not None:
            os.makedirs(self.p(f"sys/kernel/iommu_groups/{iommu_group}/devices"), exist_ok=True)
            self.link(f"sys/kernel/iommu_groups/{iommu_group}/devices/{bdf}", dev)
            self.link(f"{dev}/iommu_group", f"sys/kernel/iommu_groups/{iommu_group}")
        drv = kdrv if driver == "default" else driver
        if drv:
            self.link(f"{dev}/driver", self.add_driver(drv))
            self.link(f"sys/bus/pci/drivers/{drv}/{bdf}", dev)
        if drv == kdrv and ifname:
            self.add_netdev(bdf, model, ifname, mac, mtu, operstate)
        return dev

    def add_netdev(self, bdf: str, model: str, ifname: str, mac: str, mtu: int = 1500,
                   operstate: str = "up") -> str:
        dev = f"sys/devices/pci0000:00/{bdf}"
        if model.startswith("virtio"):
            parent = f"{dev}/virtio{self._virtio}"
            self._virtio += 1
        else:
            parent = dev
        net = f"{parent}/net/{ifname}"
        for name, value in (("address", mac), ("mtu", str(mtu)), ("operstate", operstate),
                            ("ifindex", "10")):
            self.write(f"{net}/{name}", value)
        self.link(f"{net}/device", parent)
        self.link(f"sys/class/net/{ifname}", net)
        return net

    def add_virtual(self, ifname: str, mac: str = "aa:bb:cc:00:00:01") -> None:
        net = f"sys/devices/virtual/net/{ifname}"
        for name, value in (("address", mac), ("mtu", "1500"), ("operstate", "up")):
            self.write(f"{net}/{name}", value)
        self.link(f"sys/class/net/{ifname}", net)
