"""The agent inside the lab guest (standard library only): PID 1's child under tini.

With ``--init`` it first sets the guest up (pseudo filesystems, cgroup2, the NIC and vfio modules,
systemd-udevd with a trigger and settle). Then it serves newline-delimited JSON requests on the
virtio-serial port ``org.dpdkeni.agent``: ``{"id": n, "op": ..., ...}`` -> ``{"id": n, ...}``; each request
runs in its own thread so a long command does not block a ping or a spawn.
"""
from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

PORT_NAME = "org.dpdkeni.agent"
PRELOAD = ["virtio_net", "e1000", "e1000e", "vfio_pci", "vfio_iommu_type1", "uio_pci_generic", "veth",
           "af_packet"]
MOUNTS = [  # (type, source, target, options)
    ("proc", "proc", "/proc", ""), ("sysfs", "sysfs", "/sys", ""), ("devpts", "devpts", "/dev/pts", ""),
    ("tmpfs", "tmpfs", "/dev/shm", ""), ("tmpfs", "tmpfs", "/run", "mode=755"),
    ("tmpfs", "tmpfs", "/tmp", ""), ("cgroup2", "cgroup2", "/sys/fs/cgroup", ""),
]  # no /dev/hugepages: dpdkeni mounts a capped hugetlbfs per container, and tests check that it is the only one
# the checkout (the 9p share) is put on PYTHONPATH by the wrapper itself: udevd runs RUN programs (the persistent
# binding's 'dpdkeni bind') with an environment of its own, not the agent's
SHARE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WRAPPER = f"#!/bin/sh\nexport PYTHONPATH={SHARE}${{PYTHONPATH:+:$PYTHONPATH}}\nexec python3 -m dpdkeni \"$@\"\n"


def log(msg: str) -> None:
    """A line on the console (the serial log the host keeps)."""
    print(f"lab-agent: {msg}", file=sys.stderr, flush=True)


def sh(*argv: str) -> int:
    return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode


def setup_guest() -> None:
    """Everything the guest needs before it serves requests."""
    for fstype, src, target, opts in MOUNTS:
        os.makedirs(target, exist_ok=True)
        if os.path.ismount(target):
            continue
        sh("mount", "-t", fstype, *(["-o", opts] if opts else []), src, target)
    os.makedirs("/run/netns", exist_ok=True)
    sh("hostname", "-F", "/etc/hostname")
    sh("ip", "link", "set", "lo", "up")
    sh("modprobe", "-a", *PRELOAD)
    with open("/usr/local/bin/dpdkeni", "w") as f:
        f.write(WRAPPER)
    os.chmod("/usr/local/bin/dpdkeni", 0o755)
    log("starting systemd-udevd")
    sh("/lib/systemd/systemd-udevd", "--daemon")
    sh("udevadm", "trigger", "--action=add")
    sh("udevadm", "settle", "--timeout=60")
    log("guest ready")


def find_port() -> str:
    for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
        with open(name_file) as f:
            if f.read().strip() == PORT_NAME:
                return "/dev/" + os.path.basename(os.path.dirname(name_file))
    raise SystemExit(f"lab-agent: no virtio-serial port named {PORT_NAME}")


class Agent:
    """Serves requests on the port; keeps background processes (``spawn``) by handle."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR)
        self.wlock = threading.Lock()
        self.procs: Dict[int, subprocess.Popen] = {}
        self.next_handle = 1

    def send(self, msg: Dict[str, Any]) -> None:
        data = json.dumps(msg).encode() + b"\n"
        with self.wlock:
            while data:
                try:
                    data = data[os.write(self.fd, data):]
                except OSError:
                    time.sleep(0.1)

    def serve(self) -> None:
        buf = b""
        self.send({"event": "ready"})
        while True:
            chunk = os.read(self.fd, 65536)
            if not chunk:  # the host is not connected: wait for it
                time.sleep(0.1)
                continue
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if line.strip():
                    threading.Thread(target=self.handle, args=(json.loads(line),), daemon=True).start()

    def handle(self, req: Dict[str, Any]) -> None:
        try:
            reply = getattr(self, "op_" + req["op"])(req)
        except Exception as exc:  # the host gets the error, the agent keeps serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        reply["id"] = req.get("id")
        self.send(reply)

    def op_ping(self, req: Dict[str, Any]) -> Dict[str, Any]:
        return {"pid": os.getpid(), "uptime": float(open("/proc/uptime").read().split()[0])}

    def op_run(self, req: Dict[str, Any]) -> Dict[str, Any]:
        env = {**os.environ, **req.get("env", {})}
        try:
            proc = subprocess.run(req["argv"], input=req.get("input", ""), capture_output=True, text=True,
                                  env=env, cwd=req.get("cwd"), timeout=req.get("limit", 120),
                                  errors="replace")
        except subprocess.TimeoutExpired as exc:
            return {"rc": None, "timeout": True, "stdout": _text(exc.stdout), "stderr": _text(exc.stderr)}
        except FileNotFoundError as exc:
            return {"rc": 127, "stdout": "", "stderr": str(exc)}
        return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    def op_spawn(self, req: Dict[str, Any]) -> Dict[str, Any]:
        handle = self.next_handle
        self.next_handle += 1
        logpath = f"/tmp/lab-spawn-{handle}.log"
        with open(logpath, "wb") as out:
            proc = subprocess.Popen(req["argv"], stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env={**os.environ, **req.get("env", {})}, cwd=req.get("cwd"),
                                    start_new_session=True)
        self.procs[handle] = proc
        return {"handle": handle, "pid": proc.pid, "log": logpath}

    def op_poll(self, req: Dict[str, Any]) -> Dict[str, Any]:
        proc = self.procs[req["handle"]]
        return {"rc": proc.poll(), "output": _tail(f"/tmp/lab-spawn-{req['handle']}.log")}

    def op_signal(self, req: Dict[str, Any]) -> Dict[str, Any]:
        proc = self.procs[req["handle"]]
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, req.get("signal", signal.SIGTERM))
            except ProcessLookupError:
                pass
        try:
            rc = proc.wait(req.get("limit", 10))
        except subprocess.TimeoutExpired:
            rc = None
        return {"rc": rc, "output": _tail(f"/tmp/lab-spawn-{req['handle']}.log")}

    def op_wait_net(self, req: Dict[str, Any]) -> Dict[str, Any]:
        """Wait until a netdev with ``mac`` exists and udev has settled (or, with ``gone``, until none does)."""
        deadline = time.monotonic() + req.get("limit", 60)
        while time.monotonic() < deadline:
            found = _net_by_mac(req["mac"])
            if req.get("gone") and found is None:
                return {}
            if not req.get("gone") and found is not None:
                sh("udevadm", "settle", "--timeout=30")
                found = _net_by_mac(req["mac"])
                if found is not None:
                    return found
            time.sleep(0.05)
        raise TimeoutError(f"netdev {req['mac']} {'still there' if req.get('gone') else 'not seen'}")

    def op_read(self, req: Dict[str, Any]) -> Dict[str, Any]:
        with open(req["path"], errors="replace") as f:
            return {"data": f.read()}

    def op_write(self, req: Dict[str, Any]) -> Dict[str, Any]:
        os.makedirs(os.path.dirname(req["path"]) or "/", exist_ok=True)
        with open(req["path"], "w") as f:
            f.write(req["data"])
        os.chmod(req["path"], req.get("mode", 0o644))
        return {}


def _net_by_mac(mac: str) -> Any:
    """{"ifname", "pci"} of the netdev with this MAC, or None."""
    for addr in glob.glob("/sys/class/net/*/address"):
        try:
            with open(addr) as f:
                if f.read().strip().lower() != mac.lower():
                    continue
        except OSError:
            continue
        netdir = os.path.dirname(addr)
        try:
            dev = os.path.realpath(os.path.join(netdir, "device"))
        except OSError:  # udev renamed the netdev between the glob and here (realpath's readlink raced it)
            continue
        if os.path.basename(dev).startswith("virtio"):
            dev = os.path.dirname(dev)
        return {"ifname": os.path.basename(netdir), "pci": os.path.basename(dev)}
    return None


def _text(data: Any) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""


def _tail(path: str, limit: int = 65536) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def main(argv: List[str]) -> None:
    if "--init" in argv:
        setup_guest()
    Agent(find_port()).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
