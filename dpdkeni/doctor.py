"""What this host can do for dpdkeni, and what to fix: vfio, IOMMU, hugepages, udevd, cgroups, capabilities."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

from .sysfs import Sysfs

CAP_NET_ADMIN = 12
CAP_SYS_ADMIN = 21


@dataclass
class Check:
    """One finding: ``status`` is ``ok``, ``warn`` or ``fail``; ``hint`` says what to do about it."""

    name: str
    status: str
    detail: str
    hint: Optional[str] = None

    def to_dict(self) -> Dict[str, Optional[str]]:
        """A JSON-ready dict."""
        return asdict(self)


def _mounts(fs: Sysfs) -> List[List[str]]:
    return [line.split() for line in (fs.read("proc/self/mounts") or "").splitlines() if line.strip()]


def check_vfio(fs: Sysfs) -> Check:
    """vfio and vfio-pci loaded, /dev/vfio/vfio present."""
    have_driver = fs.exists("sys/bus/pci/drivers/vfio-pci")
    have_node = fs.exists("dev/vfio/vfio")
    if have_driver and have_node:
        return Check("vfio", "ok", "vfio-pci driver and /dev/vfio/vfio present")
    missing = [n for n, ok in (("vfio-pci driver", have_driver), ("/dev/vfio/vfio", have_node)) if not ok]
    return Check("vfio", "fail", "missing: " + ", ".join(missing),
                 "modprobe vfio-pci (DPDK mode needs it; netdev mode does not)")


def check_iommu(fs: Sysfs) -> Check:
    """An IOMMU with groups, or the vfio no-IOMMU mode, or neither."""
    groups = fs.listdir("sys/kernel/iommu_groups")
    if groups:
        return Check("iommu", "ok", f"{len(groups)} IOMMU groups")
    noiommu = fs.read("sys/module/vfio/parameters/enable_unsafe_noiommu_mode")
    if noiommu in ("Y", "1"):
        return Check("iommu", "warn", "no IOMMU; vfio no-IOMMU mode is enabled (unsafe: no DMA isolation)",
                     "DPDK runs with IOVA as PA; bind with --noiommu")
    if noiommu is not None:
        return Check("iommu", "warn", "no IOMMU; vfio no-IOMMU mode is available but off",
                     "boot with intel_iommu=on / a vIOMMU, or bind with --noiommu to enable the unsafe mode")
    return Check("iommu", "fail", "no IOMMU and no vfio no-IOMMU mode",
                 "boot with intel_iommu=on (a vIOMMU in a VM), or use uio_pci_generic")


def check_uio(fs: Sysfs) -> Check:
    """uio_pci_generic, the no-IOMMU alternative to vfio-pci."""
    if fs.exists("sys/bus/pci/drivers/uio_pci_generic"):
        return Check("uio_pci_generic", "ok", "driver present")
    return Check("uio_pci_generic", "warn", "driver not loaded", "modprobe uio_pci_generic if there is no IOMMU")


def check_hugepages(fs: Sysfs) -> List[Check]:
    """One check per page size: total and free pages."""
    out = []
    for size in fs.listdir("sys/kernel/mm/hugepages"):
        base = f"sys/kernel/mm/hugepages/{size}"
        total = fs.read_int(f"{base}/nr_hugepages", 0, 10)
        free = fs.read_int(f"{base}/free_hugepages", 0, 10)
        label = size.removeprefix("hugepages-")
        status = "ok" if total else "warn"
        hint = None if total else "dpdkeni hugepages reserve SIZE"
        out.append(Check(f"hugepages {label}", status, f"{total} reserved, {free} free", hint))
    if not out:
        out.append(Check("hugepages", "fail", "kernel has no hugepage support", "CONFIG_HUGETLBFS"))
    return out


def check_hugetlbfs(fs: Sysfs) -> Check:
    """hugetlbfs mounts."""
    mounts = [m[1] for m in _mounts(fs) if len(m) > 2 and m[2] == "hugetlbfs"]
    if mounts:
        return Check("hugetlbfs", "ok", "mounted at " + ", ".join(mounts))
    return Check("hugetlbfs", "warn", "not mounted", "dpdkeni mounts one per container on attach --mode dpdk")


def check_udevd(fs: Sysfs) -> Check:
    """udevd running (its control socket); without it events come from the kernel source."""
    if fs.exists("run/udev/control"):
        return Check("udevd", "ok", "running: events from the udev source")
    return Check("udevd", "warn", "not running: events come from the kernel source (before udev renames)",
                 "normal inside containers; the watcher waits for final names")


def check_cgroups(fs: Sysfs) -> List[Check]:
    """cgroup layout and whether device access can be controlled (v1 devices controller, v2 BPF)."""
    mounts = _mounts(fs)
    v1_devices = [m[1] for m in mounts if len(m) > 3 and m[2] == "cgroup" and "devices" in m[3].split(",")]
    v2 = [m[1] for m in mounts if len(m) > 2 and m[2] == "cgroup2"]
    layout = "hybrid" if v1_devices and v2 else "v2" if v2 else "v1" if v1_devices else "none"
    out = [Check("cgroup", "ok" if layout != "none" else "fail", f"layout {layout}"
                 + (f", v2 at {v2[0]}" if v2 else ""))]
    if v1_devices:
        out.append(Check("devices controller", "ok", f"cgroup v1 devices at {v1_devices[0]}"))
    elif v2:
        out.append(Check("devices controller", "ok", "cgroup v2: BPF_PROG_TYPE_CGROUP_DEVICE programs"))
    else:
        out.append(Check("devices controller", "fail", "no cgroup mounted", "mount cgroup2 on /sys/fs/cgroup"))
    return out


def _cap_effective(fs: Sysfs) -> int:
    for line in (fs.read("proc/self/status") or "").splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return 0


def check_capabilities(fs: Sysfs) -> Check:
    """CAP_NET_ADMIN and CAP_SYS_ADMIN in the effective set."""
    caps = _cap_effective(fs)
    missing = [name for name, bit in (("CAP_NET_ADMIN", CAP_NET_ADMIN), ("CAP_SYS_ADMIN", CAP_SYS_ADMIN))
               if not caps >> bit & 1]
    if not missing:
        return Check("capabilities", "ok", "CAP_NET_ADMIN and CAP_SYS_ADMIN")
    return Check("capabilities", "fail", "missing " + ", ".join(missing), "run as root")


def run_checks(sysfs: Optional[Sysfs] = None) -> List[Check]:
    """Every check, in the order a person reads them."""
    fs = sysfs or Sysfs()
    return [check_capabilities(fs), check_vfio(fs), check_iommu(fs), check_uio(fs), *check_hugepages(fs),
            check_hugetlbfs(fs), check_udevd(fs), *check_cgroups(fs)]
