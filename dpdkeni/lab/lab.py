"""``Lab``: one booted guest with real PCI hot-plug, driven from the host.

    from dpdkeni.lab import Lab
    with Lab() as lab:                       # builds or reuses the image, boots, waits for the agent
        nic = lab.plug("virtio-net", mac="52:54:00:00:00:01")
        print(lab.run(["dpdkeni", "list"]).stdout)
        lab.unplug(nic.id)

The project reaches the guest through a read-only 9p share of the directory that holds the ``dpdkeni``
package (the checkout in an editable install), so the guest runs exactly this code with Debian's python3.
"""
from __future__ import annotations

import atexit
import itertools
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import Error, GuestFaultError, InputError
from .agent import AgentClient, Result
from .console import ConsoleWatch
from .heartbeat import Heartbeat
from .image import Image, cache_root, ensure_image
from .qemu import CpuSetup, Qemu, accel
from .qmp import QMP

log = logging.getLogger(__name__)

# model name -> (QEMU device, extra device_add properties)
DEVICES: Dict[str, tuple] = {
    "virtio-net": ("virtio-net-pci", {"iommu_platform": True, "ats": True}),
    "e1000": ("e1000", {}),
    "e1000e": ("e1000e", {}),
}
_ALIASES = {"virtio-net-pci": "virtio-net", "virtio": "virtio-net"}
_macs = itertools.count(1)
# a container's cgroup with the runtime's device program: allow everything (r0 = 1), attached with ALLOW_MULTI
_CGROUP_SETUP = """
import os, sys
from dpdkeni import bpfsys, devcgroup as dc
cg, pid = sys.argv[1], sys.argv[2]
os.makedirs(cg, exist_ok=True)
with open(os.path.join(cg, "cgroup.procs"), "w") as f:
    f.write(pid)
cfd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
fd = dc.load(bpfsys.return_const(1), "runtime_dev")
dc.attach(cfd, fd, dc.BPF_F_ALLOW_MULTI)
print(dc.query(cfd)[1])
"""
# dpdkeni's device rules in the device programs of a cgroup (v1 lines; [] when none of its programs carries our block)
_OUR_RULES = """
import json, os, sys
from dpdkeni import devcgroup as dc
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)
rules = []
for prog in dc.query(fd)[1]:
    pfd = dc.prog_fd(prog)
    rules += [r.v1() for r in dc.split_program(dc.prog_info(pfd).insns)[0]]
    os.close(pfd)
print(json.dumps(rules))
"""
# a minimal OCI bundle over the guest's own root (runc spec's defaults: new pid, net, ipc, uts, mount ns)
_RUNC_BUNDLE = """
import json, os, subprocess
bundle = {bundle!r}
os.makedirs(bundle, exist_ok=True)
if os.path.exists(bundle + "/config.json"):
    os.unlink(bundle + "/config.json")
subprocess.run(["runc", "spec", "--bundle", bundle], check=True)
with open(bundle + "/config.json") as f:
    spec = json.load(f)
spec["root"] = {{"path": "/run/tproot", "readonly": True}}
spec["process"].update(terminal=False, args={args!r})
spec["mounts"] += [{{"destination": d, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}}
                   for d in ("/run", "/tmp")]
spec["hostname"] = {name!r}
with open(bundle + "/config.json", "w") as f:
    json.dump(spec, f)
"""


@dataclass
class PluggedNic:
    """A NIC hot-plugged into the guest, as the guest saw it."""

    id: str
    model: str
    mac: str
    port: str
    netdev: str
    pci: str = ""
    ifname: str = ""
    seconds: float = 0.0
    extra: Dict[str, object] = field(default_factory=dict)


def default_share() -> str:
    """The directory holding the ``dpdkeni`` package (the checkout for an editable install)."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Lab:
    """A QEMU guest with hot-plug slots, a QMP monitor and an agent. Use as a context manager."""

    def __init__(self, progress: Optional[Callable[[str], None]] = None, share: Optional[str] = None,
                 root_ports: int = 8, memory: str = "2048", cpu: Optional[CpuSetup] = None,
                 boot_timeout: float = 300.0, extra_args: Optional[List[str]] = None) -> None:
        self.progress = progress or log.info
        self.extra_args = list(extra_args or [])
        self.share = share or default_share()
        self.root_ports, self.memory = root_ports, memory
        self.cpu = cpu or CpuSetup()
        self.boot_timeout = boot_timeout
        self.image: Optional[Image] = None
        self.qemu: Optional[Qemu] = None
        self.qmp: Optional[QMP] = None
        self.agent: Optional[AgentClient] = None
        self.workdir: Optional[str] = None
        self.watch: Optional[ConsoleWatch] = None
        self.heartbeat: Optional[Heartbeat] = None
        self.fault: Optional[GuestFaultError] = None
        self.on_fault: Optional[Callable[[GuestFaultError], None]] = None   # told once, after calls are failed
        self.nics: Dict[str, PluggedNic] = {}
        self.pids: Dict[int, int] = {}
        self.containers: Dict[int, int] = {}
        self.boot_seconds = 0.0

    # -- lifecycle ---------------------------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is not None and self.qemu is not None and not isinstance(exc, GuestFaultError):
            self.progress("lab: failed; guest console (last lines):\n" + self.console_tail())
        self.stop()

    def start(self) -> None:
        """Build or reuse the image, boot QEMU, connect QMP and the agent; raises with the console on failure."""
        self.image = ensure_image(self.progress)
        self.workdir = tempfile.mkdtemp(prefix="dpdkeni-lab-")
        self.qemu = Qemu(self.image, self.workdir, self.share, self.root_ports, self.memory, self.cpu,
                         self.extra_args)
        self.fault = None
        atexit.register(self.stop)
        started = time.monotonic()
        self.progress(f"lab: booting the guest (kernel {self.image.kernel_release}, "
                      f"{accel().upper()} {self.cpu.describe()}; 10-60 s)")
        try:
            self.qemu.start()
            self.watch = ConsoleWatch(self.qemu.console_path, self._on_fault, pending=self.doing).start()
            self.qmp = QMP(self.qemu.qmp_path)
            self.agent = AgentClient(self.qemu.agent_path, context=lambda: self.console_tail(8))
            if self.fault is not None:      # wedged before the agent connected
                raise self.fault
            self.agent.wait_ready(self.boot_timeout, alive=self.qemu.alive)
            self.heartbeat = Heartbeat(self.agent, self._on_silence, context=lambda: self.console_tail(30)).start()
        except GuestFaultError:
            self.stop()
            raise
        except Error as exc:
            detail = self.qemu.stderr().strip()[-1500:]
            tail = self.console_tail()
            self.stop()
            raise Error(f"lab: the guest did not come up: {exc}\n{detail}\n--- guest console ---\n{tail}") from exc
        self.boot_seconds = time.monotonic() - started
        self.progress(f"lab: guest up in {self.boot_seconds:.1f}s")

    def _on_fault(self, fault: GuestFaultError) -> None:
        """The console watcher found a wedged kernel, or the heartbeat a silent guest: every call in flight and
        every later one fails with it."""
        if self.fault is not None:
            return
        fault.hint = f"the guest must be restarted; its console is kept in {self.console_keep_path()}"
        self.fault = fault
        for conn in (self.agent, self.qmp):
            if conn is not None:
                conn.fail(fault)
        if self.on_fault is not None:
            self.on_fault(fault)

    def _on_silence(self, fault: GuestFaultError) -> None:
        """The heartbeat got no answer: the console's own words win when it has any by now."""
        if self.watch is not None and self.watch.check():
            return
        self._on_fault(fault)

    def doing(self) -> str:
        """What the lab is waiting for in the guest right now (the requests in flight), or ``""``."""
        return "; ".join(filter(None, (c.doing() for c in (self.agent, self.qmp) if c is not None)))

    def healthy(self) -> bool:
        """True while QEMU runs, the agent is connected and the console has shown no kernel fault."""
        return (self.qemu is not None and self.qemu.alive() and self.fault is None and self.agent is not None
                and not self.agent.closed)

    def stop(self) -> None:
        """Stop QEMU (idempotent) and keep the console log under the cache dir."""
        for watcher in (self.watch, self.heartbeat):
            if watcher is not None:
                watcher.stop()
        self.watch = self.heartbeat = None
        if self.qemu is not None:
            self.qemu.stop(self.qmp)
            self._keep_console()
        for conn in (self.agent, self.qmp):
            if conn is not None:
                conn.close()
        self.agent = self.qmp = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
        atexit.unregister(self.stop)

    @staticmethod
    def console_keep_path() -> str:
        """Where :meth:`stop` keeps the last guest's serial console."""
        return os.path.join(cache_root(), "last-console.log")

    def _keep_console(self) -> None:
        if self.qemu is None:
            return
        text = self.qemu.console()
        if text:
            os.makedirs(cache_root(), exist_ok=True)
            with open(self.console_keep_path(), "w") as f:
                f.write(text)

    def console_tail(self, lines: int = 60) -> str:
        """The last lines of the guest's serial console."""
        return "\n".join(self.qemu.console().splitlines()[-lines:]) if self.qemu else ""

    # -- running things in the guest ---------------------------------------------------------------------
    def run(self, argv: Sequence[str], timeout: float = 120.0, check: bool = False, input: str = "",
            env: Optional[Dict[str, str]] = None) -> Result:
        """Run a command in the guest; ``check=True`` raises unless it exits 0."""
        result = self._agent().run(argv, timeout=timeout, input=input, env=env)
        return result.check() if check else result

    def sh(self, script: str, timeout: float = 120.0, check: bool = False) -> Result:
        """Run a shell script in the guest."""
        return self.run(["sh", "-c", script], timeout=timeout, check=check)

    def dpdkeni(self, *args: str, timeout: float = 120.0, check: bool = False) -> Result:
        """Run the ``dpdkeni`` command (this checkout) in the guest."""
        return self.run(["python3", "-m", "dpdkeni", *args], timeout=timeout, check=check)

    def python(self, code: str, timeout: float = 120.0, check: bool = True) -> Result:
        """Run Python code in the guest (with this checkout on ``PYTHONPATH``)."""
        return self.run(["python3", "-c", code], timeout=timeout, check=check)

    def spawn(self, argv: Sequence[str], env: Optional[Dict[str, str]] = None) -> int:
        """Start a background process in the guest (its own session); returns its handle (``pid_of`` gives
        its pid)."""
        reply = self._agent().call("spawn", argv=list(argv), env=env or {})
        self.pids[reply["handle"]] = reply["pid"]
        return reply["handle"]

    def pid_of(self, handle: int) -> int:
        """The guest pid of a spawned process."""
        return self.pids[handle]

    def container(self) -> int:
        """A stand-in container in the guest (``sleep`` in its own net and mount namespaces); returns its pid
        once it runs there. Kill it with ``kill(handle)``; its handle is ``self.containers[pid]``."""
        handle = self.spawn(["unshare", "--net", "--mount", "--propagation", "private", "sleep", "3600"])
        pid = self.pid_of(handle)
        self.sh(f'while [ "$(readlink /proc/{pid}/exe)" != /usr/bin/sleep ]; do sleep 0.05; done',
                timeout=30, check=True)
        self.containers[pid] = handle
        return pid

    def cgroup_container(self, name: str = "dkcg") -> tuple:
        """(pid, cgroup) of a stand-in container (:meth:`container`) with its own tmpfs ``/dev``, moved into
        cgroup ``/sys/fs/cgroup/<name><pid>`` carrying a runtime-style device program (allow all), as a DPDK
        handoff finds a real container; vfio-pci is loaded. Kill it, then ``rmdir`` the cgroup."""
        pid = self.container()
        cgroup = f"/sys/fs/cgroup/{name}{pid}"
        self.sh(f"nsenter -t {pid} -m mount -t tmpfs tmpfs /dev && modprobe vfio-pci", check=True)
        self.run(["python3", "-c", _CGROUP_SETUP, cgroup, str(pid)], check=True)
        return pid, cgroup

    def device_rules(self, cgroup: str) -> list:
        """dpdkeni's device rules (v1 lines) in the device programs of guest cgroup ``cgroup``."""
        return self.run(["python3", "-c", _OUR_RULES, cgroup], check=True).json()

    def wait_text(self, path: str, text: str, timeout: float = 60.0, interval: float = 1.0) -> str:
        """The guest file at ``path`` once it contains ``text``; raises Error with its tail on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            content = self.run(["cat", path]).stdout
            if text in content:
                return content
            if time.monotonic() > deadline:
                raise Error(f"lab: {text!r} not in {path} after {timeout:.0f}s:\n{content[-3000:]}")
            time.sleep(interval)

    def runc_container(self, name: str, args: Sequence[str] = ("sleep", "3600")) -> int:
        """Start the runc container ``name`` in the guest: the guest's root (read-only) as its root filesystem,
        its own namespaces (an empty netns), ``args`` as its process. Returns its init pid; ``runc delete
        --force NAME`` (or :meth:`runc_delete`) ends it. The same name again is a new instance."""
        bundle = self.runc_bundle(name, args)
        self.sh(f"runc run -d -b {bundle} {name} >/tmp/{name}.log 2>&1 </dev/null", check=True)
        return int(self.run(["runc", "state", name], check=True).json()["pid"])

    def runc_bundle(self, name: str, args: Sequence[str] = ("sleep", "3600")) -> str:
        """Write the OCI bundle of :meth:`runc_container` (``/run/bundles/NAME``) and return its path."""
        bundle = f"/run/bundles/{name}"
        self.sh("mkdir -p /run/tproot && (mountpoint -q /run/tproot || mount --bind / /run/tproot)", check=True)
        self.python(_RUNC_BUNDLE.format(bundle=bundle, args=list(args), name=name))
        return bundle

    def runc_delete(self, name: str) -> None:
        """Stop and remove runc container ``name`` (no error when it is not there)."""
        self.run(["runc", "delete", "--force", name])

    def poll(self, handle: int) -> Dict[str, object]:
        """``{"rc": None while running, "output": the tail of its output}``."""
        return self._agent().call("poll", handle=handle)

    def wait(self, handle: int, timeout: float = 60.0, until: Optional[str] = None) -> Dict[str, object]:
        """Wait until a background process exits (or, with ``until``, until its output contains that text);
        returns the last ``poll``. Raises Error on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.poll(handle)
            if (until is not None and until in str(state["output"])) or (until is None and state["rc"] is not None):
                return state
            if until is not None and state["rc"] is not None:
                raise Error(f"lab: guest process {handle} exited {state['rc']} before printing {until!r}: "
                            f"{str(state['output'])[-2000:]}")
            if time.monotonic() > deadline:
                raise Error(f"lab: guest process {handle} still running after {timeout:.0f}s: "
                            f"{str(state['output'])[-2000:]}")
            time.sleep(0.2)

    def kill(self, handle: int, signal: int = 15, timeout: float = 10.0) -> Dict[str, object]:
        """Signal a background process's group and wait for it; returns rc and output."""
        return self._agent().call("signal", timeout=timeout + 10, handle=handle, signal=signal, limit=timeout)

    def write(self, path: str, data: str, mode: int = 0o644) -> None:
        """Write a file in the guest."""
        self._agent().call("write", path=path, data=data, mode=mode)

    def _agent(self) -> AgentClient:
        if self.agent is None:
            raise Error("lab: the guest is not running")
        return self.agent

    # -- hot-plug ----------------------------------------------------------------------------------------
    def plug(self, model: str, mac: Optional[str] = None, id: Optional[str] = None,
             timeout: float = 60.0, wait: bool = True) -> PluggedNic:
        """Hot-plug a NIC (``virtio-net``, ``e1000``, ``e1000e``) on the QEMU hub and wait until the guest has
        its netdev (udev done renaming it); ``wait=False`` returns after ``device_add`` (when something in the
        guest, such as the daemon, takes the NIC away at once)."""
        model = _ALIASES.get(model, model)
        if model not in DEVICES:
            raise InputError(f"lab: unknown NIC model {model!r}", f"one of {', '.join(DEVICES)}")
        driver, props = DEVICES[model]
        mac = (mac or f"52:54:00:aa:00:{next(_macs):02x}").lower()
        nic_id = id or f"nic{len(self.nics) + 1}-{mac[-2:]}"
        port = self._free_port()
        nic = PluggedNic(nic_id, model, mac, port, f"hub-{nic_id}")
        qmp = self._qmp()
        started = time.monotonic()
        qmp.execute("netdev_add", type="hubport", id=nic.netdev, hubid=0)
        try:
            qmp.execute("device_add", driver=driver, netdev=nic.netdev, bus=port, id=nic_id, mac=mac, **props)
        except Error:
            qmp.execute("netdev_del", id=nic.netdev)
            raise
        self.nics[nic_id] = nic
        if not wait:
            return nic
        seen = self.wait_net(mac, timeout=timeout)
        nic.pci, nic.ifname = seen["pci"], seen["ifname"]
        nic.seconds = time.monotonic() - started
        self.progress(f"lab: plugged {model} {mac} -> {nic.pci} {nic.ifname} ({nic.seconds:.1f}s)")
        return nic

    def unplug(self, nic_id: str, timeout: float = 60.0) -> None:
        """``device_del`` a plugged NIC, wait for QEMU's DEVICE_DELETED and for the guest to drop it."""
        nic = self.nics.get(nic_id)
        if nic is None:
            raise InputError(f"lab: no plugged NIC {nic_id!r}", f"plugged: {', '.join(self.nics) or 'none'}")
        qmp = self._qmp()
        qmp.execute("device_del", id=nic_id)
        qmp.wait_event("DEVICE_DELETED", lambda d: d.get("device") == nic_id, timeout=timeout)
        qmp.execute("netdev_del", id=nic.netdev)
        del self.nics[nic_id]
        self.wait_net(nic.mac, gone=True, timeout=timeout)
        self.progress(f"lab: unplugged {nic.model} {nic.mac} ({nic.pci})")

    def wait_net(self, mac: str, gone: bool = False, timeout: float = 60.0) -> Dict[str, str]:
        """Wait until the guest's root namespace has a netdev with ``mac`` (``{"ifname", "pci"}``), or with
        ``gone=True`` until it has none."""
        return self._agent().call("wait_net", timeout=timeout + 10, mac=mac, gone=gone, limit=timeout)

    def _free_port(self) -> str:
        used = {n.port for n in self.nics.values()}
        for i in range(1, self.root_ports + 1):
            if f"rp{i}" not in used:
                return f"rp{i}"
        raise Error(f"lab: all {self.root_ports} hot-plug slots are in use", "unplug a NIC first")

    def _qmp(self) -> QMP:
        if self.qmp is None:
            raise Error("lab: the guest is not running")
        return self.qmp

