"""Bind a NIC to a user-space driver (vfio-pci, uio_pci_generic) and give it back to its kernel driver.

The order is driverctl's: remember the original driver, unbind, write ``driver_override``, ``drivers_probe``,
check the ``driver`` link; on any failure the original driver is restored. ``unbind`` clears the override and
reprobes, so the kernel driver returns, and the interface gets its original name back.

Guards run before anything is written (each a :class:`~dpdkeni.errors.GuardError`, exit 3, ``force=True``
overrides): the shared handoff guards (an active NIC), a process holding the device, an IOMMU group that is not
viable (another device of the group on a kernel driver: DPDK users hit "VFIO group is not viable!" and
dpdk-devbind never checks), and vfio-pci without an IOMMU unless ``noiommu=True`` (only then is the unsafe
no-IOMMU mode enabled).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional, Tuple

import psutil

from . import models, statedir
from .errors import Error, InputError, StepError, boundary
from .guards import check_handoff, refuse
from .inventory import PCI_DEVICES, Nic, find_nic
from .ledger import state_dir
from .sysfs import Sysfs

log = logging.getLogger(__name__)

USER_DRIVERS = models.USER_DRIVERS
# Drivers the kernel's vfio accepts beside vfio ones in a viable group (vfio_dev_driver_allowed).
_VIABLE_DRIVERS = ("vfio-pci", "pci-stub", "pcieport")
NOIOMMU_PARAM = "sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
PROBE_WAIT = 3.0

Renamer = Callable[[str, str], None]


@dataclass
class BindResult:
    """What a bind or unbind did: ``writes`` are the (path, value) pairs, in order (planned ones in dry-run)."""

    pci: str
    driver: Optional[str]
    original_driver: Optional[str]
    ifname: Optional[str] = None
    mac: Optional[str] = None
    noiommu: bool = False
    dry_run: bool = False
    writes: List[Tuple[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return asdict(self)


def _dev(pci: str) -> str:
    return f"{PCI_DEVICES}/{pci}"


def current_driver(fs: Sysfs, pci: str) -> Optional[str]:
    """The driver the device is bound to now (the ``driver`` link), or None."""
    return fs.link_name(f"{_dev(pci)}/driver")


def iommu_group(fs: Sysfs, pci: str) -> Optional[int]:
    """The device's IOMMU group number, or None without an IOMMU."""
    name = fs.link_name(f"{_dev(pci)}/iommu_group")
    return int(name) if name and name.isdigit() else None


def vfio_group_paths(fs: Sysfs, group: int) -> List[str]:
    """The host device nodes of a vfio group: ``/dev/vfio/N`` or, in no-IOMMU mode, ``/dev/vfio/noiommu-N``."""
    return [f"/dev/vfio/{group}", f"/dev/vfio/noiommu-{group}"]


# --- guards --------------------------------------------------------------------------------------------------

def _fd_targets(pid: int) -> List[str]:
    fd_dir = f"/proc/{pid}/fd"
    out = []
    try:
        for fd in os.listdir(fd_dir):
            try:
                out.append(os.readlink(f"{fd_dir}/{fd}"))
            except OSError:
                continue
    except OSError:
        pass
    return out


def holders(paths: List[str]) -> List[psutil.Process]:
    """Processes with one of ``paths`` open. psutil's ``open_files`` lists regular files only, so the fd links
    of each process psutil enumerates are read directly (char devices like /dev/vfio/N included)."""
    wanted = set(paths)
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        if proc.pid == os.getpid():
            continue
        if wanted.intersection(_fd_targets(proc.pid)):
            found.append(proc)
    return found


def _device_nodes(fs: Sysfs, pci: str) -> List[str]:
    """Absolute paths (under the sysfs root) of the device nodes a user-space driver exposes for the NIC."""
    paths = []
    group = iommu_group(fs, pci)
    if group is not None:
        paths += [fs.path(p) for p in vfio_group_paths(fs, group)]
    paths += [fs.path(f"dev/{uio}") for uio in fs.listdir(f"{_dev(pci)}/uio")]
    return paths


def check_not_held(fs: Sysfs, nic: Nic, force: bool) -> None:
    """Refuse when a process holds the device (its vfio group or uio node) or its netdev is enslaved."""
    procs = holders(_device_nodes(fs, nic.pci or ""))
    if procs:
        who = ", ".join(f"{p.info.get('name')}[{p.pid}]" for p in procs)
        refuse(f"{nic.name} is held by {who} (it has the device node open)", force)
    master = fs.link_name(f"sys/class/net/{nic.ifname}/master") if nic.ifname else None
    if master:
        refuse(f"{nic.name} ({nic.ifname}) is busy: it is a port of {master}", force)


def check_group_viable(fs: Sysfs, nic: Nic, force: bool) -> None:
    """Refuse when another device in the NIC's IOMMU group is on a kernel driver: vfio would then refuse the
    group ("VFIO group is not viable!") at the application's start, long after the bind looked fine."""
    group = iommu_group(fs, nic.pci or "")
    if group is None:
        return
    others = []
    for peer in fs.listdir(f"sys/kernel/iommu_groups/{group}/devices"):
        drv = current_driver(fs, peer)
        if peer != nic.pci and drv and drv not in _VIABLE_DRIVERS:
            others.append(f"{peer} on {drv}")
    if others:
        refuse(f"IOMMU group {group} of {nic.name} is not viable for vfio: {', '.join(others)}", force,
               "bind every device of the group to vfio-pci, or use --force")


def iommu_present(fs: Sysfs) -> bool:
    """Whether the host has an IOMMU (any IOMMU group exists)."""
    return bool(fs.listdir("sys/kernel/iommu_groups"))


def check_iommu(fs: Sysfs, nic: Nic, driver: str, noiommu: bool, force: bool) -> bool:
    """For vfio-pci: an IOMMU group, or an explicit ``noiommu``. Returns whether the no-IOMMU mode is needed."""
    if driver != "vfio-pci" or iommu_group(fs, nic.pci or "") is not None:
        return False
    if not noiommu:
        where = "its bus bypasses the IOMMU" if iommu_present(fs) else "no IOMMU on this host"
        refuse(f"{nic.name} has no IOMMU group ({where}); vfio-pci would need the unsafe no-IOMMU mode", force,
               "pass --noiommu (noiommu=True) to enable it, or use uio_pci_generic")
        return False
    if fs.read(NOIOMMU_PARAM) is None:
        raise Error("this kernel's vfio has no no-IOMMU mode (CONFIG_VFIO_NOIOMMU is off)",
                    "give the VM a vIOMMU (intel-iommu) or use --driver uio_pci_generic")
    return True


def check_bind(fs: Sysfs, nic: Nic, driver: str, noiommu: bool = False, force: bool = False) -> bool:
    """Every guard a bind runs; returns whether the no-IOMMU mode must be enabled."""
    if driver not in USER_DRIVERS:
        raise InputError(f"unknown driver {driver!r}", f"use one of {', '.join(USER_DRIVERS)}")
    if not nic.pci:
        raise InputError(f"{nic.name} is not a PCI device; only PCI NICs can be bound to {driver}")
    check_handoff(nic, force)
    check_not_held(fs, nic, force)
    if driver == "vfio-pci":
        check_group_viable(fs, nic, force)
    return check_iommu(fs, nic, driver, noiommu, force)


# --- the sysfs sequence --------------------------------------------------------------------------------------

def _unbind_current(fs: Sysfs, pci: str, drv: Optional[str]) -> None:
    if drv:
        fs.write(f"sys/bus/pci/drivers/{drv}/unbind", pci)


def _probe(fs: Sysfs, pci: str, override: str) -> None:
    # An empty write clears driver_override (the kernel treats "\n" as clearing it).
    fs.write(f"{_dev(pci)}/driver_override", override or "\n")
    fs.write("sys/bus/pci/drivers_probe", pci)


def _wait_driver(fs: Sysfs, pci: str, want: Optional[str], timeout: float = PROBE_WAIT) -> Optional[str]:
    deadline = time.monotonic() + timeout
    drv = current_driver(fs, pci)
    while drv != want and time.monotonic() < deadline:
        time.sleep(0.02)
        drv = current_driver(fs, pci)
    return drv


def _restore(fs: Sysfs, pci: str, original: Optional[str]) -> None:
    """Best effort: leave the device on its original driver (or unbound if it had none)."""
    try:
        _unbind_current(fs, pci, current_driver(fs, pci))
        _probe(fs, pci, "")
        if original and current_driver(fs, pci) != original:
            fs.write(f"sys/bus/pci/drivers/{original}/bind", pci)
    except Error as exc:
        log.error("restoring %s to %s failed: %s", pci, original, exc)


def _ensure_driver_loaded(fs: Sysfs, driver: str) -> None:
    if fs.exists(f"sys/bus/pci/drivers/{driver}"):
        return
    if fs.root == "/" and not fs.dry_run:
        import subprocess  # kmod has no library binding worth a dependency; modprobe is the interface
        subprocess.run(["modprobe", driver], capture_output=True, check=False, timeout=30)
        if fs.exists(f"sys/bus/pci/drivers/{driver}"):
            return
    if not fs.dry_run:
        raise Error(f"driver {driver} is not loaded", f"modprobe {driver}")


@boundary
def bind(nic: Nic | str, driver: str = "vfio-pci", *, noiommu: bool = False, force: bool = False,
         dry_run: bool = False, sysfs: Optional[Sysfs] = None) -> BindResult:
    """Bind ``nic`` to ``driver`` (``vfio-pci`` or ``uio_pci_generic``), guards first; returns what was done.

    On a failed probe the original driver is restored and :class:`StepError` raised. In ``dry_run`` nothing is
    written; ``result.writes`` lists the exact writes that would be made.
    """
    fs = sysfs or Sysfs()
    fs = Sysfs(fs.root, dry_run=True) if dry_run and not fs.dry_run else fs
    if isinstance(nic, str):
        nic = find_nic(nic, sysfs=fs)
    need_noiommu = check_bind(fs, nic, driver, noiommu, force)
    pci, original = nic.pci or "", current_driver(fs, nic.pci or "")
    result = BindResult(pci, driver, original, nic.ifname, nic.mac, need_noiommu, fs.dry_run, fs.writes)
    if original == driver:
        log.info("%s is already bound to %s", pci, driver)
        return result
    if not fs.dry_run:
        statedir.subdir("bound")  # a state dir that cannot keep the original state refuses before the unbind
    _ensure_driver_loaded(fs, driver)
    if need_noiommu and fs.read(NOIOMMU_PARAM) not in ("Y", "1"):
        log.warning("enabling vfio's unsafe no-IOMMU mode (no DMA isolation)")
        fs.write(NOIOMMU_PARAM, "1")
    _unbind_current(fs, pci, original)
    try:
        _probe(fs, pci, driver)
    except Error as exc:
        _restore(fs, pci, original)
        raise StepError("bind", f"{pci} to {driver}: {exc}; restored to {original or 'no driver'}") from exc
    if fs.dry_run:
        return result
    got = _wait_driver(fs, pci, driver)
    if got != driver:
        _restore(fs, pci, original)
        raise StepError("bind", f"{pci}: {driver} did not take the device (driver now {got or 'none'}); "
                        f"restored to {original or 'no driver'}", "see dmesg for the probe error")
    _remember(result)
    return result


# --- unbind --------------------------------------------------------------------------------------------------

def _record_path(pci: str) -> str:
    return os.path.join(state_dir(), "bound", f"{pci}.json")


def _remember(result: BindResult) -> None:
    """Keep the original driver, name and MAC, so ``unbind`` can restore them (a vfio NIC has no netdev)."""
    try:
        statedir.write_atomic(_record_path(result.pci), json.dumps(result.to_dict()).encode())
    except OSError as exc:
        log.warning("could not record the original state of %s: %s", result.pci, exc)


def forget(pci: str) -> None:
    """Drop what a bind recorded about ``pci`` (the device left the machine: nothing to restore)."""
    try:
        os.unlink(_record_path(pci))
    except OSError:
        pass


def remembered(pci: str) -> dict:
    """What a bind recorded about the NIC's original state ({} when nothing was recorded)."""
    try:
        with statedir.opened(_record_path(pci)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def _netdev_name(fs: Sysfs, pci: str) -> Optional[str]:
    from .inventory import netdev_name  # the one place that knows virtio's netdev layout
    return netdev_name(pci, fs)


def netlink_rename(old: str, new: str) -> None:
    """Rename a link in this netns with pyroute2 (down for the rename, up again if it was up)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=old)[0]
        up = ipr.get_links(idx)[0]["flags"] & 1
        ipr.link("set", index=idx, state="down")
        ipr.link("set", index=idx, ifname=new)
        if up:
            ipr.link("set", index=idx, state="up")


def _restore_name(fs: Sysfs, pci: str, want: Optional[str], renamer: Optional[Renamer],
                  timeout: float = PROBE_WAIT) -> Optional[str]:
    """Wait for the netdev to appear (udev may rename it on its own), then give it its original name."""
    deadline = time.monotonic() + timeout
    name = _netdev_name(fs, pci)
    while (name is None or (want and name != want)) and time.monotonic() < deadline:
        time.sleep(0.05)
        name = _netdev_name(fs, pci)
    if name and want and name != want and not fs.exists(f"sys/class/net/{want}"):
        (renamer or netlink_rename)(name, want)
        name = want
    return name


@boundary
def unbind(nic: Nic | str, *, driver: Optional[str] = None, ifname: Optional[str] = None,
           dry_run: bool = False, sysfs: Optional[Sysfs] = None, renamer: Optional[Renamer] = None) -> BindResult:
    """Give the NIC back to its kernel driver: clear the override, unbind, reprobe, check, rename.

    ``driver`` (default: the driver remembered at bind, else the model's kernel driver) and ``ifname`` (default:
    the remembered name) say what to return to.
    """
    fs = sysfs or Sysfs()
    fs = Sysfs(fs.root, dry_run=True) if dry_run and not fs.dry_run else fs
    if isinstance(nic, str):
        nic = find_nic(nic, sysfs=fs)
    if not nic.pci:
        raise InputError(f"{nic.name} is not a PCI device")
    pci, memo = nic.pci, remembered(nic.pci)
    model = models.model_for(nic.vendor or "", nic.device or "")
    want = driver or memo.get("original_driver") or (model.kernel_driver if model else None)
    ifname = ifname or memo.get("ifname")
    now = current_driver(fs, pci)
    result = BindResult(pci, want, now, ifname, memo.get("mac"), dry_run=fs.dry_run, writes=fs.writes)
    if now == want:
        fs.write(f"{_dev(pci)}/driver_override", "\n")
    else:
        _unbind_current(fs, pci, now)
        _probe(fs, pci, "")
        if want and not fs.dry_run and _wait_driver(fs, pci, want) != want:
            fs.write(f"sys/bus/pci/drivers/{want}/bind", pci)
    if fs.dry_run:
        return result
    got = _wait_driver(fs, pci, want, timeout=0.5)
    if want and got != want:
        raise StepError("unbind", f"{pci} did not return to {want} (driver now {got or 'none'})",
                        "see dmesg for the probe error")
    result.ifname = _restore_name(fs, pci, ifname, renamer)
    forget(pci)
    return result
