"""``--dut container:NAME`` for ``dpdkeni pmdtest``: dpdk-testpmd in runc container NAME on the port handed to it.

The port is the one dpdkeni's ledger says was handed to that container (``dpdkeni attach NIC --to container:NAME``):
a kernel interface (netdev mode: testpmd uses ``net_af_packet`` on it) or a PCI device on vfio-pci/uio (dpdk mode:
testpmd probes it, with the hugepages dpdkeni mounted in the container). A container with no lease and exactly one
interface besides ``lo`` uses that interface. When a ``dpdk-testpmd`` already runs in the container it is used as
it is (its forwarding mode is its own, and its counters stay with it); otherwise dpdkeni starts one there with
``runc exec`` (macswap or io mode) and stops it with SIGINT afterwards, reading its totals.
"""
from __future__ import annotations

import json
import logging
import os
import re
import resource
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional

from . import validate
from .errors import Error, InputError, NotFoundError

log = logging.getLogger(__name__)

TESTPMD = "dpdk-testpmd"
_STATS = re.compile(r"RX-packets:\s*(\d+)\s+RX-dropped:\s*(\d+).*?\n\s*TX-packets:\s*(\d+)\s+TX-dropped:\s*(\d+)")
_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
CAPS = ("CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_IPC_LOCK", "CAP_SYS_NICE", "CAP_SYS_RAWIO", "CAP_SYS_ADMIN")


def testpmd_counters(text: str) -> Dict[str, int]:
    """testpmd's own totals for its port from its end-of-run statistics (the first block with RX-dropped: the
    periodic ``--stats-period`` blocks say RX-missed)."""
    m = _STATS.search(text)
    if not m:
        return {}
    return {"rx": int(m.group(1)), "rx_dropped": int(m.group(2)), "tx": int(m.group(3)),
            "tx_dropped": int(m.group(4))}


class TestpmdOutput:
    """A testpmd's output, read on a thread: its lines, whether it forwards, its totals once it stopped."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: List[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._read, daemon=True, name="dpdkeni-testpmd-out").start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if "Port statistics" in line or "Press enter to exit" in line:
                self._ready.set()

    def wait_ready(self, timeout: float) -> Optional[str]:
        """None once testpmd forwards; the tail of its output when it exited or ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2) and self.proc.poll() is None and time.monotonic() < deadline:
            pass
        if self.proc.poll() is None and self._ready.is_set():
            return None
        return " | ".join(line.strip() for line in self.lines[-4:] if line.strip()) or "no output"

    def counters(self) -> Dict[str, int]:
        return testpmd_counters("".join(self.lines))


@dataclass
class HandedPort:
    """The port a container was handed: ``kind`` netdev (``ifname`` in its netns) or dpdk (``pci``)."""

    kind: str
    name: str
    mac: Optional[str]

    def eal_args(self) -> List[str]:
        """testpmd's EAL options for this port."""
        if self.kind == "dpdk":
            return ["-a", self.name, "--in-memory"]
        return ["--no-huge", "-m", "256", "--no-pci", "--no-shconf",
                "--vdev", f"net_af_packet0,iface={self.name},qdisc_bypass=1"]


def runc_state(runc: str, name: str) -> Dict[str, object]:
    """``runc state NAME`` of a running container (NotFoundError when runc does not know it, InputError when it
    is not running)."""
    out = subprocess.run([runc, "state", name], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise NotFoundError(f"--dut container:{name}: runc has no container {name!r}",
                            "give the name 'runc list' shows")
    state = json.loads(out.stdout)
    if state.get("status") != "running":
        raise InputError(f"--dut container:{name}: the container is {state.get('status')}, not running")
    return state


def handed_port(name: str, ns_id: str, ifnames: List[str]) -> HandedPort:
    """The one port handed to container ``name`` (its netns ``ns_id``; ``ifnames``: its links besides lo)."""
    from .ledger import Ledger
    leases = Ledger().leases()
    mine = [leases[k] for k in leases]
    mine = [x for x in mine if x.state == "attached" and (x.target_id == ns_id or x.target == f"container:{name}")]
    if len(mine) > 1:
        raise InputError(f"--dut container:{name}: {len(mine)} ports are handed to it "
                         f"({', '.join(x.key for x in mine)}); the DUT reflects on one")
    if mine:
        lease = mine[0]
        mac = (lease.original or {}).get("mac")
        if lease.mode == "dpdk":
            return HandedPort("dpdk", lease.key, mac)
        ifname = lease.params.get("ifname") or (lease.original or {}).get("ifname")
        return HandedPort("netdev", str(ifname), mac)
    if len(ifnames) == 1:
        return HandedPort("netdev", ifnames[0], None)
    raise NotFoundError(f"--dut container:{name}: no port is handed to it"
                        + (f" and it has {len(ifnames)} interfaces ({', '.join(ifnames)})" if ifnames else ""),
                        f"hand one over first: dpdkeni attach NIC --to container:{name}")


def _links(target) -> Dict[str, Optional[str]]:
    """Interface name -> MAC in ``target``'s netns, lo left out."""
    from .netns import iproute_in
    fd = target.open()
    try:
        with iproute_in(fd) as ipr:
            return {link.get_attr("IFLA_IFNAME"): link.get_attr("IFLA_ADDRESS") for link in ipr.get_links()
                    if link.get_attr("IFLA_IFNAME") != "lo"}
    finally:
        os.close(fd)


def _in_root(pid: int, names: List[str]) -> Optional[str]:
    """The first of ``names`` found on the container's PATH (through /proc/PID/root), as the container sees it."""
    for name in names:
        for d in _PATH:
            if os.access(f"/proc/{pid}/root{d}/{name}", os.X_OK):
                return f"{d}/{name}"
    return None


def running_testpmd(runc: str, name: str) -> Optional[int]:
    """The host pid of a dpdk-testpmd running in container ``name``, or None."""
    out = subprocess.run([runc, "ps", "--format", "json", name], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return None
    for pid in json.loads(out.stdout or "[]") or []:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
                if f.read().strip() == TESTPMD:
                    return int(pid)
        except OSError:
            continue
    return None


def _cmdline(pid: int) -> List[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def memlock_limit(status: str = "/proc/self/status") -> int:
    """RLIMIT_MEMLOCK for testpmd (vfio pins its hugepages): unlimited where we hold CAP_SYS_RESOURCE (runc then
    raises it), else our own hard limit (runc cannot go above it)."""
    try:
        with open(status, encoding="ascii") as f:
            eff = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        eff = 0
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    if eff >> 24 & 1 or hard == resource.RLIM_INFINITY:          # CAP_SYS_RESOURCE is capability 24
        return 2 ** 63 - 1
    return hard


class ContainerDut:
    """dpdk-testpmd in runc container ``name`` on its handed-over port (started there, or the one running)."""

    def __init__(self, name: str, mode: str = "macswap", cpu: Optional[int] = None) -> None:
        from .netns import resolve_target
        validate.container_id(name)
        runc = shutil.which("runc") or next((f"{d}/runc" for d in _PATH if os.access(f"{d}/runc", os.X_OK)), None)
        if runc is None:
            raise NotFoundError("--dut container:NAME needs runc", "apt-get install runc")
        self.runc, self.name, self.mode, self.cpu = runc, name, mode, cpu
        self.pid = int(runc_state(runc, name)["pid"])                      # type: ignore[call-overload]
        target = resolve_target(f"container:{name}")
        links = _links(target)
        self.port = handed_port(name, target.ns_id, sorted(links))
        if self.port.kind == "netdev":
            if self.port.name not in links:
                raise NotFoundError(f"--dut container:{name}: its port {self.port.name} is not in its netns")
            self.port.mac = links[self.port.name] or self.port.mac
        self.running = running_testpmd(runc, name)
        self.proc: Optional[subprocess.Popen] = None
        self.output: Optional[TestpmdOutput] = None
        self._tmp: Optional[str] = None
        if self.running is not None:
            args = _cmdline(self.running)
            modes = [a.split("=", 1)[1] for a in args if a.startswith("--forward-mode=")]
            self.description = (f"{TESTPMD} already running in runc container {name} (pid {self.running}, "
                                f"forward mode {modes[-1] if modes else 'io'}) on {self.port.kind} port "
                                f"{self.port.name}: used as it is")
        else:
            self.binary = _in_root(self.pid, [TESTPMD])
            if self.binary is None:
                raise NotFoundError(f"--dut container:{name}: no {TESTPMD} in the container's filesystem and "
                                    "none running", "use an image with DPDK (examples/testpmd-container)")
            self.description = (f"{TESTPMD} --forward-mode={mode} started by dpdkeni in runc container {name} on "
                                f"{self.port.kind} port {self.port.name}")

    @property
    def peer_mac(self) -> Optional[str]:
        """The DUT port's MAC: where test frames go unless --peer says otherwise."""
        return self.port.mac

    def argv(self) -> List[str]:
        """testpmd's command line (line-buffered through stdbuf where the container has it)."""
        lcores = f"0@{self.cpu},1@{self.cpu}" if self.cpu is not None else "0-1"
        stdbuf = _in_root(self.pid, ["stdbuf"])
        return [*([stdbuf, "-oL"] if stdbuf else []), str(self.binary), "--lcores", lcores, *self.port.eal_args(),
                "--", f"--forward-mode={self.mode}", "--auto-start", "--stats-period", "1",
                "--total-num-mbufs=8192", "--nb-cores=1"]

    def _process_json(self) -> str:
        hard = memlock_limit()
        caps = sorted(CAPS)
        proc = {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": self.argv(), "cwd": "/",
                "env": ["PATH=" + ":".join(_PATH)], "noNewPrivileges": True,
                "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
                "rlimits": [{"type": "RLIMIT_MEMLOCK", "hard": hard, "soft": hard}]}
        self._tmp = tempfile.mkdtemp(prefix="dpdkeni-pmdexec-")
        path = os.path.join(self._tmp, "process.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(proc, f)
        return path

    def start(self, timeout: float = 300.0) -> "ContainerDut":
        """Start testpmd in the container (not when one runs there) and wait until it forwards."""
        if self.running is not None:
            return self
        process = self._process_json()
        pidfile = os.path.join(str(self._tmp), "pid")
        self.proc = subprocess.Popen([self.runc, "exec", "--process", process, "--pid-file", pidfile, self.name],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True, errors="replace")
        self._pidfile = pidfile
        self.output = TestpmdOutput(self.proc)
        failed = self.output.wait_ready(timeout)
        if failed is not None:
            self.stop()
            raise Error(f"testpmd did not start forwarding in container {self.name}: {failed}")
        return self

    def _exec_pid(self) -> Optional[int]:
        try:
            with open(self._pidfile, encoding="ascii") as f:
                return int(f.read().strip())
        except (OSError, ValueError, AttributeError):
            return None

    def stop(self) -> Dict[str, int]:
        """SIGINT to the testpmd dpdkeni started (it prints its totals and exits); its counters. A testpmd that
        was running before is left running (no counters: they are its own)."""
        if self.proc is not None:
            pid = self._exec_pid()
            if self.proc.poll() is None and pid is not None:
                try:
                    os.kill(pid, 2)
                    self.proc.wait(30)
                except ProcessLookupError:
                    pass
                except subprocess.TimeoutExpired:
                    os.kill(pid, 9)
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(30)
            self.proc = None
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        return self.output.counters() if self.output else {}
