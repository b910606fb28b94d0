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


class SimKernel:
    """A small simulated PCI core over a :class:`SysfsTree`, for binding logic this host cannot run for real.

    It reacts to writes the way the kernel does: ``drivers/<drv>/unbind`` drops the ``driver`` link and the
    netdev (ENODEV when the device is not on that driver); ``driver_override`` is stored; ``drivers_probe``
    binds an unbound device to its override, else to its model's kernel driver, which brings the netdev back;
    ``drivers/<drv>/bind`` binds to that driver if the override allows it. A probe of a driver listed in
    ``failing`` (or of vfio-pci with neither an IOMMU group nor the no-IOMMU mode, like the Debian guest kernel's
    ``probe … failed with error -22``) leaves the device unbound. ``names`` sets the name the kernel gives a
    netdev on reprobe (default: the name it had when added).
    """

    NOIOMMU = "sys/module/vfio/parameters/enable_unsafe_noiommu_mode"

    def __init__(self, tree: SysfsTree) -> None:
        self.tree = tree
        self.failing: set = set()
        self.names: dict = {}
        self._first: dict = {}
        self.probes = 0
        self.uio_nodes = True   # False: uio_pci_generic binds without registering a uio device
        self.next_uio = 0

    def sysfs(self, dry_run: bool = False):
        """A :class:`dpdkeni.sysfs.Sysfs` over the tree whose writes this kernel acts on."""
        return _SimSysfs(self, dry_run)

    def add_nic(self, bdf: str, model: str = "virtio-net", ifname: str = None, mac: str = "52:54:00:00:00:01",
                **kw) -> str:
        """Add a NIC as :meth:`SysfsTree.add_nic` does, and remember its name and MAC for reprobes."""
        self._first[bdf] = (model, ifname, mac)
        for drv in ("vfio-pci", "uio_pci_generic", MODELS[model][2]):
            self.tree.add_driver(drv)
        return self.tree.add_nic(bdf, model, ifname=ifname, mac=mac, **kw)

    def unplug(self, bdf: str) -> None:
        """The device leaves the machine (hot-unplug): its netdevs, driver links and device dir go."""
        import shutil
        dev = self.tree.p(self._dev(bdf))
        self._drop_netdevs(bdf)
        drv = self.driver(bdf)
        if drv:
            os.unlink(self.tree.p(f"sys/bus/pci/drivers/{drv}/{bdf}"))
        for group in os.listdir(self.tree.p("sys/kernel/iommu_groups")):
            link = self.tree.p(f"sys/kernel/iommu_groups/{group}/devices/{bdf}")
            if os.path.lexists(link):
                os.unlink(link)
        os.unlink(self.tree.p(f"sys/bus/pci/devices/{bdf}"))
        shutil.rmtree(dev)

    def driver(self, bdf: str):
        link = self.tree.p(f"sys/bus/pci/devices/{bdf}/driver")
        return os.path.basename(os.readlink(link)) if os.path.islink(link) else None

    def override(self, bdf: str) -> str:
        with open(self.tree.p(f"sys/bus/pci/devices/{bdf}/driver_override")) as f:
            value = f.read().strip()
        return "" if value == "(null)" else value

    def _dev(self, bdf: str) -> str:
        return os.path.relpath(os.path.realpath(self.tree.p(f"sys/bus/pci/devices/{bdf}")), self.tree.root)

    def _drop_netdevs(self, bdf: str) -> None:
        import shutil
        dev = self.tree.p(self._dev(bdf))
        for name in os.listdir(self.tree.p("sys/class/net")):
            link = self.tree.p(f"sys/class/net/{name}")
            if os.path.realpath(link).startswith(dev + "/"):
                shutil.rmtree(os.path.dirname(os.path.realpath(link)))
                os.unlink(link)

    def _unbind(self, drv: str, bdf: str) -> None:
        import errno
        if self.driver(bdf) != drv:
            raise OSError(errno.ENODEV, "No such device")
        os.unlink(self.tree.p(f"sys/bus/pci/devices/{bdf}/driver"))
        os.unlink(self.tree.p(f"sys/bus/pci/drivers/{drv}/{bdf}"))
        self._drop_netdevs(bdf)
        uio = self.tree.p(f"{self._dev(bdf)}/uio")
        if os.path.isdir(uio):  # uio_pci_generic's device goes with it
            for name in os.listdir(uio):
                os.unlink(self.tree.p(f"dev/{name}"))
            import shutil
            shutil.rmtree(uio)

    def _attach(self, drv: str, bdf: str) -> bool:
        self.probes += 1
        has_group = os.path.islink(self.tree.p(f"sys/bus/pci/devices/{bdf}/iommu_group"))
        noiommu = os.path.exists(self.tree.p(self.NOIOMMU)) and open(self.tree.p(self.NOIOMMU)).read().strip() \
            in ("1", "Y")
        if drv in self.failing or (drv == "vfio-pci" and not has_group and not noiommu):
            return False
        dev = self._dev(bdf)
        self.tree.link(f"{dev}/driver", f"sys/bus/pci/drivers/{drv}")
        self.tree.link(f"sys/bus/pci/drivers/{drv}/{bdf}", dev)
        model, ifname, mac = self._first[bdf]
        if drv == "uio_pci_generic" and self.uio_nodes:  # uio registers /sys/.../uio/uioN and /dev/uioN
            name = f"uio{self.next_uio}"
            self.next_uio += 1
            os.makedirs(self.tree.p(f"{dev}/uio/{name}"))
            self.tree.write(f"dev/{name}", "")
        if drv == MODELS[model][2] and ifname:
            self.tree.add_netdev(bdf, model, self.names.get(bdf, ifname), mac)
        return True

    def _probe(self, bdf: str) -> None:
        if self.driver(bdf):
            return
        model = self._first[bdf][0]
        self._attach(self.override(bdf) or MODELS[model][2], bdf)

    def handle(self, rel: str, value: str) -> bool:
        """Act on a write like the kernel; False when the path is not one the kernel reacts to."""
        import errno
        parts, value = rel.strip("/").split("/"), value.strip()
        if rel.strip("/") == "sys/bus/pci/drivers_probe":
            self._probe(value)
        elif parts[-1] == "driver_override":
            self.tree.write(rel.strip("/"), value or "(null)")
        elif parts[:4] == ["sys", "bus", "pci", "drivers"] and parts[-1] == "unbind":
            self._unbind(parts[4], value)
        elif parts[:4] == ["sys", "bus", "pci", "drivers"] and parts[-1] == "bind":
            if self.driver(value) or (self.override(value) and self.override(value) != parts[4]):
                raise OSError(errno.EBUSY if self.driver(value) else errno.ENODEV, "bind refused")
            if not self._attach(parts[4], value):
                raise OSError(errno.EINVAL, "Invalid argument")
        else:
            return False
        return True

    def rename_netdev(self, old: str, new: str) -> None:
        """What a netlink rename does to sysfs."""
        link = self.tree.p(f"sys/class/net/{old}")
        net = os.path.realpath(link)
        os.rename(net, os.path.join(os.path.dirname(net), new))
        os.unlink(link)
        self.tree.link(f"sys/class/net/{new}", os.path.relpath(os.path.join(os.path.dirname(net), new),
                                                                 self.tree.root))


def _sim_sysfs_class():
    from dpdkeni.errors import os_error_message
    from dpdkeni.sysfs import Sysfs

    class SimSysfs(Sysfs):
        """A Sysfs whose writes the :class:`SimKernel` acts on (used only by tests)."""

        def __init__(self, kernel: SimKernel, dry_run: bool = False) -> None:
            super().__init__(kernel.tree.root, dry_run)
            self.kernel = kernel

        def write(self, rel: str, value: str) -> None:
            if self.dry_run:
                return super().write(rel, value)
            self.writes.append((rel if rel.startswith("/") else "/" + rel, value))
            try:
                if not self.kernel.handle(rel, value):
                    self.kernel.tree.write(rel.strip("/"), value.strip())
            except OSError as exc:
                raise os_error_message(exc, f"writing {value!r} to /{rel.lstrip('/')}") from exc

    return SimSysfs


def _SimSysfs(kernel: SimKernel, dry_run: bool = False):
    return _sim_sysfs_class()(kernel, dry_run)
