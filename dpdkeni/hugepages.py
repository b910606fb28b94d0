"""Hugepages: reserve per page size (2M, 1G) and NUMA node, checked after writing; hugetlbfs mounts with a
``size=`` limit per container so one container cannot starve another; release.

Pools are ``sys/kernel/mm/hugepages/hugepages-<kB>kB/nr_hugepages`` (system-wide) and
``sys/devices/system/node/node<N>/hugepages/…`` (per node), read and written through :class:`~dpdkeni.sysfs.Sysfs`.
The kernel may give fewer pages than asked (fragmented memory): every write is read back, and a short
reservation is undone and reported as ``asked N, got M``.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Optional

from . import nsexec, statedir
from .validate import SIZE_UNITS as _UNITS, size as parse_size  # noqa: F401 (parse_size: used by cdi, commands)
from .errors import Error, InputError, os_error_message
from .sysfs import Sysfs

log = logging.getLogger(__name__)

SYSTEM = "sys/kernel/mm/hugepages"
NODES = "sys/devices/system/node"


def format_size(n: int) -> str:
    """The shortest exact form: ``2M``, ``1G``, ``4096K``."""
    for unit in ("T", "G", "M", "K"):
        if n and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)


def pages_for(size: str | int, page_bytes: int) -> int:
    """Pages of ``page_bytes`` needed to cover ``size`` (rounded up)."""
    nbytes = parse_size(size) if isinstance(size, str) else size
    return -(-nbytes // page_bytes)


@dataclass
class Pool:
    """One hugepage pool: ``node`` None for the system-wide one."""

    page_bytes: int
    node: Optional[int]
    total: int
    free: int
    surplus: int

    def to_dict(self) -> Dict[str, object]:
        """A JSON-ready dict (with the page size also as text)."""
        return {**asdict(self), "pagesize": format_size(self.page_bytes)}


def pool_dir(page_bytes: int, node: Optional[int] = None) -> str:
    """The sysfs directory of a pool."""
    leaf = f"hugepages/hugepages-{page_bytes // 1024}kB"
    return f"{SYSTEM}/hugepages-{page_bytes // 1024}kB" if node is None else f"{NODES}/node{node}/{leaf}"


def page_sizes(fs: Optional[Sysfs] = None) -> List[int]:
    """The page sizes this kernel supports, in bytes."""
    fs = fs or Sysfs()
    return sorted(int(d[len("hugepages-"):-2]) * 1024 for d in fs.listdir(SYSTEM) if d.endswith("kB"))


def _pool(fs: Sysfs, page_bytes: int, node: Optional[int]) -> Pool:
    d = pool_dir(page_bytes, node)
    read = lambda name: fs.read_int(f"{d}/{name}", default=0, base=10) or 0  # noqa: E731
    return Pool(page_bytes, node, read("nr_hugepages"), read("free_hugepages"), read("surplus_hugepages"))


def status(fs: Optional[Sysfs] = None) -> List[Pool]:
    """Every pool: system-wide per page size, then per NUMA node."""
    fs = fs or Sysfs()
    nodes = [int(n[4:]) for n in fs.listdir(NODES) if re.fullmatch(r"node\d+", n)]
    return [_pool(fs, size, node) for node in [None, *sorted(nodes)] for size in page_sizes(fs)]


def _check_pool(fs: Sysfs, page_bytes: int, node: Optional[int]) -> str:
    path = f"{pool_dir(page_bytes, node)}/nr_hugepages"
    if not fs.exists(path):
        sizes = ", ".join(format_size(s) for s in page_sizes(fs)) or "none"
        where = f" on node {node}" if node is not None else ""
        raise InputError(f"no {format_size(page_bytes)} hugepage pool{where}", f"this kernel has: {sizes}")
    return path


@contextlib.contextmanager
def _pool_lock() -> Iterator[None]:
    """Serialize read-modify-write of the pools between dpdkeni processes."""
    fd = statedir.open_file(os.path.join(statedir.ensure(), "hugepages.lock"), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def set_pages(count: int, page_bytes: int, node: Optional[int] = None, fs: Optional[Sysfs] = None) -> int:
    """Set a pool to ``count`` pages and read it back; on a short result restore the previous count and raise
    ``asked N, got M``. Returns the count (the planned one in dry-run)."""
    fs = fs or Sysfs()
    if count < 0:
        raise InputError(f"a page count cannot be negative ({count})")
    path = _check_pool(fs, page_bytes, node)
    before = fs.read_int(path, default=0, base=10) or 0
    fs.write(path, str(count))
    if fs.dry_run:
        return count
    got = fs.read_int(path, default=0, base=10) or 0
    if got != count:
        if got < count:
            fs.write(path, str(before))
        where = f" on node {node}" if node is not None else ""
        raise Error(f"hugepages {format_size(page_bytes)}{where}: asked {count}, got {got}",
                    "free memory, reserve at boot (hugepages= on the kernel command line), or ask for fewer")
    return got


def add_pages(delta: int, page_bytes: int, node: Optional[int] = None, fs: Optional[Sysfs] = None) -> int:
    """Grow a pool by ``delta`` pages (checked); returns the new total."""
    fs = fs or Sysfs()
    with _pool_lock():
        now = fs.read_int(_check_pool(fs, page_bytes, node), default=0, base=10) or 0
        return set_pages(now + delta, page_bytes, node, fs)


def remove_pages(delta: int, page_bytes: int, node: Optional[int] = None, fs: Optional[Sysfs] = None) -> int:
    """Shrink a pool by ``delta`` pages (never below 0); pages still in use become surplus and return to the
    kernel when freed. Returns what the pool reads afterwards."""
    fs = fs or Sysfs()
    with _pool_lock():
        path = _check_pool(fs, page_bytes, node)
        now = fs.read_int(path, default=0, base=10) or 0
        fs.write(path, str(max(0, now - delta)))
        return fs.read_int(path, default=0, base=10) or 0


# --- hugetlbfs mounts ----------------------------------------------------------------------------------------

def mount_options(size_bytes: int, page_bytes: int) -> str:
    """hugetlbfs options: the page size and the ``size=`` cap (rounded up to whole pages)."""
    return f"pagesize={format_size(page_bytes)},size={pages_for(size_bytes, page_bytes) * page_bytes}"


def _mount_here(path: str, options: str) -> str:
    os.makedirs(path, exist_ok=True)
    nsexec.mount("nodev", path, "hugetlbfs", 0, options)
    return path


def _umount_here(path: str) -> str:
    nsexec.umount(path)
    return path


def mount_hugetlbfs(path: str, size_bytes: int, page_bytes: int = 2 << 20, pid: Optional[int] = None) -> str:
    """Mount a hugetlbfs capped at ``size_bytes`` at ``path``, in the mount namespace of ``pid`` (a container)
    or here. The cap makes the kernel refuse mappings past it, so one container cannot take another's pages."""
    options = mount_options(size_bytes, page_bytes)
    try:
        return nsexec.in_mount_ns(pid, _mount_here, path, options)
    except OSError as exc:
        raise os_error_message(exc, f"mounting hugetlbfs ({options}) at {path}") from exc


def umount_hugetlbfs(path: str, pid: Optional[int] = None) -> None:
    """Unmount a hugetlbfs mounted by :func:`mount_hugetlbfs` (the pages its files held go back to the pool)."""
    try:
        nsexec.in_mount_ns(pid, _umount_here, path)
    except OSError as exc:
        raise os_error_message(exc, f"unmounting {path}") from exc


def _resize_here(path: str, options: Optional[str]) -> int:
    """Replace the (empty) hugetlbfs at ``path`` by one with ``options`` (None: just unmount); returns the
    number of files that were in it (non-zero: nothing was changed)."""
    used = len(os.listdir(path))
    if used:
        return used
    nsexec.umount(path)
    if options:
        nsexec.mount("nodev", path, "hugetlbfs", 0, options)
    return 0


def resize_hugetlbfs(path: str, size_bytes: int, page_bytes: int = 2 << 20, pid: Optional[int] = None) -> None:
    """Give the hugetlbfs at ``path`` (in pid's mount namespace) a new ``size=`` cap; 0 unmounts it. hugetlbfs
    cannot change its cap in place, so it is mounted anew, which is only done while it holds no file: an
    application that already maps its pages keeps its memory, and the caller hears why (Error)."""
    options = mount_options(size_bytes, page_bytes) if size_bytes > 0 else None
    try:
        used = nsexec.in_mount_ns(pid, _resize_here, path, options)
    except OSError as exc:
        raise os_error_message(exc, f"resizing the hugetlbfs at {path} ({options or 'unmount'})") from exc
    if used:
        raise Error(f"the hugetlbfs at {path} is in use ({used} files): its size cap cannot change now",
                    "hand every DPDK NIC over before the application starts, or stop it first")


def size_cap(pid: Optional[int], path: str) -> Optional[int]:
    """The ``size=`` cap in bytes of the (topmost) hugetlbfs at ``path`` seen by ``pid``; None when there is no
    hugetlbfs there, 0 when it has no cap."""
    found = [m for m in mounts(pid) if m["path"] == path]
    if not found:
        return None
    opts = dict(o.split("=", 1) if "=" in o else (o, "") for o in found[-1]["options"].split(","))
    return int(opts["size"]) if opts.get("size", "").isdigit() else 0


def mounts(pid: Optional[int] = None) -> List[Dict[str, str]]:
    """hugetlbfs mounts seen by ``pid`` (default: this process): path and options."""
    out = []
    with open(f"/proc/{pid or 'self'}/mounts", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 3 and fields[2] == "hugetlbfs":
                out.append({"path": fields[1].replace("\\040", " "), "options": fields[3]})
    return out
