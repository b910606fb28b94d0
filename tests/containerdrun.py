"""A containerd of the test's own: Debian's containerd 1.6 with its CRI plugin and runc, its root, state, socket
and configuration in a temp dir (a system containerd, if any, is never touched), and CNI pointed at a
directory the test fills. Stopped by pid; its shims, mounts and sandboxes' netns files are cleaned up by path."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from typing import List, Optional

from conftest import unmount_under

CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"
CTR = shutil.which("ctr") or "/usr/bin/ctr"
RUNC = shutil.which("runc") or "/usr/sbin/runc"

CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = "{base}/debug.sock"

[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{cni_conf}"
    max_conf_num = {max_conf}
"""


class Containerd:
    """One containerd process on ``base``/containerd.sock."""

    def __init__(self, base: str, cni_conf_dir: str, cni_bin_dir: str, sandbox_image: str,
                 max_conf_num: int = 1) -> None:
        self.base = base
        self.socket = os.path.join(base, "containerd.sock")
        self.config = os.path.join(base, "config.toml")
        self.log_path = os.path.join(base, "containerd.log")
        self.proc: Optional[subprocess.Popen] = None
        os.makedirs(base, exist_ok=True)
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(CONFIG.format(base=base, sandbox_image=sandbox_image, runc=RUNC, cni_bin=cni_bin_dir,
                                  cni_conf=cni_conf_dir, max_conf=max_conf_num))

    def start(self, timeout: float = 30.0) -> None:
        """Start containerd and wait until its CRI answers."""
        log = open(self.log_path, "ab")
        # its own session: the runtime's signals (a test's Ctrl-C) do not reach it; it is stopped by pid
        self.proc = subprocess.Popen([CONTAINERD, "--config", self.config, "--log-level", "info"],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"containerd exited ({self.proc.returncode}):\n{self.log_tail()}")
            if os.path.exists(self.socket) and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"containerd did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def ctr(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run ``ctr`` against this containerd in CRI's namespace ``k8s.io``."""
        return subprocess.run([CTR, "--address", self.socket, "--namespace", "k8s.io", *args], capture_output=True,
                              text=True, timeout=timeout, check=check)

    def import_image(self, archive: str) -> None:
        """Load an image tarball into CRI's namespace (no registry needed)."""
        self.ctr("images", "import", "--all-platforms", archive)

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return ""

    def shim_pids(self) -> List[int]:
        """The runc shims this containerd started (their command line names its socket)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"containerd-shim-runc-v2") and self.socket.encode() in argv:
                pids.append(int(entry))
        return pids

    def stop(self) -> None:
        """Stop containerd (SIGTERM, then SIGKILL after 15 s), then kill its shims (with their containers) and
        unmount what is left under its directories."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        for pid in self.shim_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        unmount_under(self.base)

