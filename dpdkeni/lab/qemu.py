"""Start and stop the lab's QEMU: q35 with an intel-iommu, empty pcie-root-ports for hot-plug, a virtio-serial
agent port, a 9p share, and no network but the QEMU hub (``-nodefaults``, ``hubport`` netdevs only).

QEMU dies with its parent (``PR_SET_PDEATHSIG``) and ``stop()`` quits, terminates, then kills it, so no QEMU
outlives the lab even when the test run is killed.
"""
from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
from dataclasses import dataclass
from typing import List, Optional

from ..errors import Error
from .image import Image
from .initramfs import SHARE_TAG

log = logging.getLogger(__name__)

QEMU = "qemu-system-x86_64"
AGENT_PORT = "org.dpdkeni.agent"
KERNEL_ARGS = ["console=ttyS0", "intel_iommu=on", "iommu=pt", "panic=-1", "rw", "net.ifnames=1",
               "8250.nr_uarts=1", "tsc=reliable", "no_timer_check"]
_PR_SET_PDEATHSIG = 1


def qemu_binary() -> Optional[str]:
    """The QEMU binary on PATH, or None."""
    return shutil.which(QEMU)


def accel() -> str:
    """``tcg`` unless ``DPDKENI_LAB_ACCEL`` asks for another accelerator (e.g. ``kvm``)."""
    return os.environ.get("DPDKENI_LAB_ACCEL", "tcg")


@dataclass(frozen=True)
class CpuSetup:
    """How QEMU runs the guest's CPUs under TCG (ignored under another accelerator, which uses ``-cpu host``).

    The defaults are what ``benchmarks/lab_lockup.py`` measured as never livelocking at the least cost (the
    table is in DESIGN.md, "The lab"): multi-threaded TCG with two vCPUs livelocked the guest kernel while it
    patched its own text (static keys, ``int3``) as runc attached a cgroup device program.
    """

    thread: str = "single"   # TCG: one host thread runs every vCPU ("single") or one thread each ("multi")
    model: str = "max"       # -cpu
    cpus: int = 2            # -smp

    def __post_init__(self) -> None:
        if self.thread not in ("single", "multi"):
            raise Error(f"lab: TCG thread mode {self.thread!r} is neither 'single' nor 'multi'")
        if not 1 <= self.cpus <= 8:
            raise Error(f"lab: {self.cpus} vCPUs is outside 1..8")

    def describe(self) -> str:
        """``thread=single -cpu max -smp 2``."""
        return f"thread={self.thread} -cpu {self.model} -smp {self.cpus}"

    def argv(self, mode: str) -> List[str]:
        """The QEMU arguments for accelerator ``mode``."""
        if mode != "tcg":
            return ["-accel", mode, "-cpu", "host", "-smp", str(self.cpus)]
        return ["-accel", f"tcg,thread={self.thread}", "-cpu", self.model, "-smp", str(self.cpus)]


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Qemu:
    """One QEMU process for one lab boot; sockets and the console log live in ``workdir``."""

    def __init__(self, image: Image, workdir: str, share: str, root_ports: int = 8, memory: str = "2048",
                 cpu: Optional[CpuSetup] = None, extra_args: Optional[List[str]] = None) -> None:
        self.image, self.workdir, self.share = image, workdir, share
        self.root_ports, self.memory, self.cpu = root_ports, memory, cpu or CpuSetup()
        self.extra_args = extra_args or []
        self.proc: Optional[subprocess.Popen] = None
        self.qmp_path = os.path.join(workdir, "qmp.sock")
        self.agent_path = os.path.join(workdir, "agent.sock")
        self.console_path = os.path.join(workdir, "console.log")
        self.stderr_path = os.path.join(workdir, "qemu.stderr")

    def argv(self) -> List[str]:
        """The QEMU command line."""
        ports = []
        for i in range(1, self.root_ports + 1):
            ports += ["-device", f"pcie-root-port,id=rp{i},bus=pcie.0,chassis={i},slot={i}"]
        return [
            QEMU, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-machine", "q35,kernel-irqchip=split", *self.cpu.argv(accel()), "-m", self.memory,
            "-device", "intel-iommu,intremap=on,caching-mode=on,device-iotlb=on",
            "-kernel", self.image.vmlinux, "-initrd", self.image.initramfs,
            "-append", " ".join(KERNEL_ARGS),
            "-drive", f"file={self.image.rootfs},if=none,id=root,format=raw,snapshot=on",
            "-device", "virtio-blk-pci,drive=root",
            "-chardev", f"file,id=console,path={self.console_path}", "-serial", "chardev:console",
            "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vser",
            "-chardev", f"socket,id=agent,path={self.agent_path},server=on,wait=off",
            "-device", f"virtserialport,bus=vser.0,chardev=agent,name={AGENT_PORT}",
            "-fsdev", f"local,id=share,path={self.share},security_model=none,readonly=on",
            "-device", f"virtio-9p-pci,fsdev=share,mount_tag={SHARE_TAG}",
            "-device", "virtio-rng-pci",
            *ports, *self.extra_args,
        ]

    def start(self) -> None:
        """Start QEMU (the guest boots in the background)."""
        if qemu_binary() is None:
            raise Error(f"lab: {QEMU} is not installed", "apt-get install qemu-system-x86")
        argv = self.argv()
        log.debug("lab: %s", " ".join(argv))
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                         preexec_fn=_die_with_parent, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, qmp=None, timeout: float = 10.0) -> None:
        """Quit QEMU: QMP ``quit`` when a monitor is given, then SIGTERM, then SIGKILL."""
        if self.proc is None:
            return
        if qmp is not None and self.alive():
            try:
                qmp.execute("quit", timeout=5)
            except Error:
                pass
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.alive():
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()

    def console(self) -> str:
        """The serial console so far."""
        try:
            with open(self.console_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stderr(self) -> str:
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""
