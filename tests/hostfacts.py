"""Facts about the host the suite runs on, found without the code under test: they decide which tests must run
here (tests/skip-allowlist.toml names them as ``fact:NAME``) and what a test expects of this host."""
from __future__ import annotations

import ctypes.util
import os
import platform
import shutil
from typing import Callable, Dict, Optional

V1_DEVICES = "/sys/fs/cgroup/devices"
V2_CANDIDATES = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def command(name: str) -> Optional[str]:
    """The path of a command on PATH or in the sbin directories (root's tools, e.g. dnsmasq), or None."""
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    return None


def cgroup_v1_devices() -> bool:
    """The cgroup v1 devices controller is mounted (a hybrid or legacy layout)."""
    return os.path.exists(f"{V1_DEVICES}/devices.allow")


def cgroup_v2() -> Optional[str]:
    """The mount point of the unified (v2) hierarchy, or None."""
    return next((p for p in V2_CANDIDATES if os.path.exists(f"{p}/cgroup.procs")
                 and os.path.exists(f"{p}/cgroup.controllers")), None)


def kernel_version() -> tuple:
    """(major, minor) of the running kernel."""
    parts = platform.release().split(".")
    return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)


def libxdp() -> bool:
    """libxdp and libbpf with their headers (what the native build needs for AF_XDP)."""
    return bool(ctypes.util.find_library("xdp") and ctypes.util.find_library("bpf")) \
        and os.path.exists("/usr/include/xdp/xsk.h") and os.path.exists("/usr/include/bpf/libbpf.h")


def veth_xdp() -> bool:
    """The kernel has veth with native XDP (veth_xdp_xmit: 4.19+) and AF_XDP sockets (CONFIG_XDP_SOCKETS)."""
    if kernel_version() < (5, 4):
        return False
    config = f"/boot/config-{platform.release()}"
    if os.path.exists(config):
        with open(config, encoding="utf-8") as f:
            text = f.read()
        return "CONFIG_XDP_SOCKETS=y" in text
    return os.path.exists("/proc/net/xdp_sockets") or kernel_version() >= (5, 10)


def af_xdp() -> bool:
    """AF_XDP must work here: a kernel with AF_XDP on veth (5.4+), libxdp/libbpf installed and root."""
    return root() and libxdp() and veth_xdp()


def root() -> bool:
    return os.geteuid() == 0


def lab() -> bool:
    """The QEMU lab can run: QEMU is installed and we are root (the image is built with mmdebstrap as root)."""
    return root() and command("qemu-system-x86_64") is not None


def hugetlb_2m() -> bool:
    return os.path.isdir("/sys/kernel/mm/hugepages/hugepages-2048kB")


def route_nic() -> Optional[tuple]:
    """(ifname, pci) of the host's NIC that carries its default route, read from /proc/net/route and sysfs;
    None when the default route leaves by a virtual link (or there is none)."""
    with open("/proc/net/route", encoding="ascii") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    for row in rows:
        if len(row) > 2 and row[1] == "00000000":
            dev = os.path.realpath(f"/sys/class/net/{row[0]}/device")
            pci = os.path.basename(dev)
            if os.path.exists(f"/sys/bus/pci/devices/{pci}"):
                return row[0], pci
            parent = os.path.basename(os.path.dirname(dev))  # virtio: <bdf>/virtioN
            if os.path.exists(f"/sys/bus/pci/devices/{parent}"):
                return row[0], parent
    return None


def netem() -> bool:
    """The kernel has sch_netem (CONFIG_NET_SCH_NETEM built in, or a module that is installed), from its config."""
    import gzip
    text = ""
    if os.path.exists("/proc/config.gz"):
        with gzip.open("/proc/config.gz", "rt") as f:
            text = f.read()
    elif os.path.exists(f"/boot/config-{platform.release()}"):
        with open(f"/boot/config-{platform.release()}", encoding="utf-8") as f:
            text = f.read()
    return "CONFIG_NET_SCH_NETEM=y" in text or ("CONFIG_NET_SCH_NETEM=m" in text
                                                 and os.path.isdir(f"/lib/modules/{platform.release()}"))


FACTS: Dict[str, Callable[[], object]] = {
    "root": root, "cgroup_v1_devices": cgroup_v1_devices, "cgroup_v2": cgroup_v2, "af_xdp": af_xdp,
    "lab": lab, "hugetlb_2m": hugetlb_2m, "route_nic": route_nic,
    "netem": netem,
}
