"""Build the lab's guest image (kernel, initramfs, root filesystem) once, and cache it.

The image is three files in ``~/.cache/dpdkeni/lab/<key>/``: an ELF ``vmlinux`` (booted through PVH, which
TCG starts much faster than a compressed bzImage), ``initramfs.cpio`` (busybox: loads the root and 9p
modules, mounts the root, switch_root) and ``rootfs.ext4`` (Debian bookworm by ``mmdebstrap``, booted with
``snapshot=on`` so it is never modified). The key hashes the build inputs and the versions of the Debian
packages that go in, so a new kernel or DPDK upload makes a new image and an unchanged one is reused.
"""
from __future__ import annotations

import fcntl
import glob
import hashlib
import json
import logging
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ..errors import Error
from . import initramfs

log = logging.getLogger(__name__)

Progress = Callable[[str], None]

SUITE = "bookworm"
MIRRORS = [
    f"deb http://deb.debian.org/debian {SUITE} main",
    f"deb http://deb.debian.org/debian {SUITE}-updates main",
    f"deb http://deb.debian.org/debian-security {SUITE}-security main",
]
KERNEL_META = "linux-image-amd64"
# what the guest runs: the project's runtime deps come from Debian so the host's abi3 extension runs there
PACKAGES = [
    "mount", "python3", "udev", "iproute2", "kmod", "pciutils", "procps", "ethtool", "runc", "tini",
    "iputils-ping", "dpdk", "dpdk-dev", "librte-net-virtio23", "librte-net-e1000-23",
    "librte-mempool-ring23", "python3-pyroute2", "python3-pyudev", "python3-psutil",
    "python3-cffi-backend",
]
# kernel modules the lab needs (their dependencies are resolved with modprobe --show-depends)
MODULES = [
    "virtio_pci", "virtio_net", "virtio_console", "virtio_blk", "virtio_rng", "e1000", "e1000e",
    "vfio", "vfio_pci", "vfio_iommu_type1", "uio_pci_generic", "9p", "9pnet_virtio", "ext4",
    "overlay", "veth", "bridge", "bonding", "macvlan", "dummy", "af_packet",
    "sch_netem", "sch_ingress", "cls_u32", "act_mirred",  # pmdtest's netem cross-checks (tests/vm/netemguest.py)
]
# what the initramfs loads to reach the root filesystem and the 9p share
BOOT_MODULES = ["virtio_pci", "virtio_blk", "ext4", "9pnet_virtio", "9p"]
EXCLUDES = ["/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*",
            "/usr/include/*", "/usr/share/dpdk/examples/*", "/usr/lib/x86_64-linux-gnu/*.a"]
ROOTFS_SIZE = "1536M"
BUILD_VERSION = "3"  # bump when the build recipe changes in a way the inputs below do not show


@dataclass
class Image:
    """A built guest image: the files QEMU boots."""

    dir: str
    key: str
    kernel_release: str

    @property
    def vmlinux(self) -> str:
        return os.path.join(self.dir, "vmlinux")

    @property
    def initramfs(self) -> str:
        return os.path.join(self.dir, "initramfs.cpio")

    @property
    def rootfs(self) -> str:
        return os.path.join(self.dir, "rootfs.ext4")


def cache_root() -> str:
    """``$DPDKENI_LAB_CACHE`` or ``$XDG_CACHE_HOME/dpdkeni/lab`` (``~/.cache/dpdkeni/lab``)."""
    if os.environ.get("DPDKENI_LAB_CACHE"):
        return os.environ["DPDKENI_LAB_CACHE"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "dpdkeni", "lab")


SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def tool_env() -> Dict[str, str]:
    """The environment for build tools: the sbin directories on PATH (depmod, mke2fs live there)."""
    return {**os.environ, "PATH": os.environ.get("PATH", "") + ":" + SBIN_PATH, "LC_ALL": "C"}


def _run(argv: List[str], **kw) -> str:
    """Run a build tool; its output in the error when it fails."""
    kw.setdefault("env", tool_env())
    proc = subprocess.run(argv, capture_output=True, text=True, **kw)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        raise Error(f"lab image: {argv[0]} failed (exit {proc.returncode}): " + "\n".join(tail))
    return proc.stdout


def _candidate_versions(packages: List[str]) -> Dict[str, str]:
    """The version apt would install for each package (from the host's apt lists)."""
    out = _run(["apt-cache", "policy", *packages])
    versions, current = {}, None
    for line in out.splitlines():
        if line and not line[0].isspace() and line.endswith(":"):
            current = line[:-1]
        elif current and line.strip().startswith("Candidate:"):
            versions[current] = line.split(":", 1)[1].strip()
    return versions


def _kernel_package() -> str:
    """The versioned ``linux-image-*`` package the meta package depends on today."""
    out = _run(["apt-cache", "depends", KERNEL_META])
    for line in out.splitlines():
        m = re.match(r"\s*Depends:\s*(linux-image-\S+-amd64)$", line)
        if m:
            return m.group(1)
    raise Error(f"lab image: cannot tell which kernel {KERNEL_META} depends on", "run apt-get update")


def resolve_inputs(progress: Progress) -> Dict[str, object]:
    """Everything the image depends on: recipe, package list and the versions apt would pick."""
    try:
        kernel = _kernel_package()
    except Error:
        progress("lab image: apt lists have no kernel package; running apt-get update")
        _run(["apt-get", "update", "-qq"])
        kernel = _kernel_package()
    versions = _candidate_versions([kernel, *PACKAGES])
    missing = [p for p in [kernel, *PACKAGES] if versions.get(p) in (None, "(none)")]
    if missing:
        raise Error(f"lab image: apt knows no candidate for {', '.join(missing)}", "run apt-get update")
    return {"build": BUILD_VERSION, "suite": SUITE, "mirrors": MIRRORS, "kernel": kernel,
            "modules": MODULES, "boot_modules": BOOT_MODULES, "excludes": EXCLUDES,
            "rootfs_size": ROOTFS_SIZE, "versions": versions, "init": initramfs.INIT_SCRIPT}


def image_key(inputs: Dict[str, object]) -> str:
    """A short stable hash of the build inputs."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def ensure_image(progress: Optional[Progress] = None, rebuild: bool = False) -> Image:
    """The cached image for today's inputs, built first when it is missing (one builder at a time)."""
    progress = progress or log.info
    inputs = resolve_inputs(progress)
    key = image_key(inputs)
    root = cache_root()
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, key)
    with open(os.path.join(root, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rebuild and os.path.isdir(final):
            shutil.rmtree(final)
        if not os.path.exists(os.path.join(final, "manifest.json")):
            _build(final, inputs, progress)
        else:
            progress(f"lab image: reusing {final}")
    with open(os.path.join(final, "manifest.json")) as f:
        manifest = json.load(f)
    return Image(final, key, manifest["kernel_release"])


def _build(final: str, inputs: Dict[str, object], progress: Progress) -> None:
    """Build into a temporary directory next to ``final`` and rename it into place when complete."""
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix=".build-", dir=os.path.dirname(final))
    try:
        progress(f"lab image: building {os.path.basename(final)} in {work} (first time: about a minute)")
        kdir = os.path.join(work, "kernel")
        release = fetch_kernel(str(inputs["kernel"]), kdir, progress)
        extract_vmlinux(glob.glob(os.path.join(kdir, "boot", "vmlinuz-*"))[0], os.path.join(work, "vmlinux"))
        rootdir = os.path.join(work, "rootfs")
        build_rootfs(rootdir, progress)
        mods = resolve_modules(kdir, release, MODULES)
        install_modules(kdir, rootdir, release, mods)
        progress("lab image: initramfs")
        initramfs.build(os.path.join(work, "initramfs.cpio"), kdir, release,
                        resolve_modules(kdir, release, BOOT_MODULES))
        progress("lab image: ext4 root filesystem")
        _run(["mke2fs", "-q", "-t", "ext4", "-L", "dpdkeni-lab", "-d", rootdir,
              os.path.join(work, "rootfs.ext4"), ROOTFS_SIZE])
        shutil.rmtree(rootdir)
        shutil.rmtree(kdir)
        with open(os.path.join(work, "manifest.json"), "w") as f:
            json.dump({"kernel_release": release, "inputs": inputs}, f, indent=1, sort_keys=True)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(work, final)
        progress(f"lab image: built in {time.monotonic() - started:.0f}s")
    finally:
        if os.path.exists(work):
            shutil.rmtree(work, ignore_errors=True)


def fetch_kernel(package: str, dest: str, progress: Progress) -> str:
    """``apt-get download`` the kernel package and unpack it; returns the kernel release."""
    progress(f"lab image: downloading {package}")
    dl = dest + ".deb"
    os.makedirs(dl)
    _run(["apt-get", "download", "-q", package], cwd=dl)
    debs = glob.glob(os.path.join(dl, "*.deb"))
    _run(["dpkg-deb", "-x", debs[0], dest])
    shutil.rmtree(dl)
    releases = os.listdir(os.path.join(dest, "lib", "modules"))
    _run(["depmod", "-b", dest, releases[0]])
    return releases[0]


def extract_vmlinux(vmlinuz: str, out: str) -> None:
    """The ELF kernel is the XZ stream inside the bzImage: find its magic and decompress it."""
    with open(vmlinuz, "rb") as f:
        data = f.read()
    start = data.find(b"\xfd7zXZ\x00")
    while start >= 0:
        try:
            elf = lzma.LZMADecompressor().decompress(data[start:])
        except lzma.LZMAError:
            start = data.find(b"\xfd7zXZ\x00", start + 1)
            continue
        if elf[:4] == b"\x7fELF":
            with open(out, "wb") as f:
                f.write(elf)
            return
        start = data.find(b"\xfd7zXZ\x00", start + 1)
    raise Error(f"lab image: no XZ-compressed ELF kernel inside {vmlinuz}")


def resolve_modules(kdir: str, release: str, names: List[str]) -> List[str]:
    """Module files (relative to ``lib/modules/<release>``) for ``names`` and their dependencies, in load
    order; built-in modules are skipped."""
    base = os.path.join(kdir, "lib", "modules", release)
    order: List[str] = []
    for name in names:
        out = _run(["modprobe", "-d", kdir, "-S", release, "--show-depends", name])
        for line in out.splitlines():
            if line.startswith("insmod "):
                rel = os.path.relpath(line.split()[1], base)
                if rel not in order:
                    order.append(rel)
    return order


def install_modules(kdir: str, rootdir: str, release: str, mods: List[str]) -> None:
    """Copy only ``mods`` (and the modules.* metadata) into the root filesystem, then depmod there."""
    src = os.path.join(kdir, "lib", "modules", release)
    dst = os.path.join(rootdir, "lib", "modules", release)
    for rel in mods:
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(os.path.join(src, rel), os.path.join(dst, rel))
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if os.path.exists(os.path.join(src, meta)):
            shutil.copy2(os.path.join(src, meta), os.path.join(dst, meta))
    _run(["depmod", "-b", rootdir, release])


def build_rootfs(rootdir: str, progress: Progress) -> None:
    """Debian bookworm (``--variant=essential`` plus PACKAGES) by mmdebstrap, docs and headers excluded."""
    progress(f"lab image: mmdebstrap {SUITE} with {len(PACKAGES)} packages (about 40-90 s)")
    argv = ["mmdebstrap", "--quiet", "--variant=essential", "--mode=root",
            "--include=" + ",".join(PACKAGES),
            "--aptopt=APT::Install-Recommends \"false\"",
            *[f"--dpkgopt=path-exclude={p}" for p in EXCLUDES],
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--customize-hook=mkdir -p \"$1/opt/dpdkeni\" \"$1/root\"",
            "--customize-hook=echo dpdkeni-lab > \"$1/etc/hostname\"",
            SUITE, rootdir, *MIRRORS]
    _run(argv)
