"""Devices under test for ``dpdkeni pmdtest``, started and stopped by dpdkeni:

- ``fwd:IF@TARGET``: dpdkeni's own forwarder in macswap mode on IF in TARGET's netns (a kernel-side reflector);
- ``testpmd:IF@TARGET``: ``dpdk-testpmd`` with ``net_af_packet`` on IF, in a runc container joined to TARGET's
  netns (the host's /usr and /etc read-only, no hugepages: ``--no-huge -m``), macswap or io mode;
- ``container:NAME``: ``dpdk-testpmd`` in runc container NAME on the port handed to it (:mod:`dpdkeni.pmdcontainer`):
  started there by dpdkeni, or the one already running there;
- ``none``: whatever reflects frames behind the generator's port (a testpmd already running in a container, a
  hardware loop), or no DUT at all with a second ``--port`` (the loop that shows the generator's headroom).

:meth:`stop` returns the DUT's own counters (``rx``, ``tx``) where it has them, for the cross-check.
"""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from typing import Dict, List, Optional, Union

from .errors import Error, InputError, NotFoundError
from .fastpath import Forwarder
from .pmdcontainer import ContainerDut, TestpmdOutput

MODES = ("macswap", "io")


def parse_spec(spec: str) -> tuple:
    """``kind:IF@TARGET`` -> (kind, ifname, target); ``none`` -> ("none", None, None); ``container:NAME`` ->
    ("container", None, NAME). Bad forms: InputError."""
    from . import validate
    if spec == "none":
        return "none", None, None
    if isinstance(spec, str) and spec.startswith("container:"):
        return "container", None, validate.container_id(spec[len("container:"):])
    m = re.fullmatch(r"(fwd|testpmd):([^@]+)@(.+)", spec or "")
    if not m:
        raise InputError(f"bad --dut {spec!r}: none, container:NAME, fwd:IF@TARGET or testpmd:IF@TARGET "
                         "(TARGET: netns:NAME, pid:N, container:ID)")
    kind, ifname, target = m.groups()
    validate.ifname(ifname)
    validate.target(target)
    return kind, ifname, target


class Dut:
    """Base: a DUT dpdkeni does not manage."""

    description = "none (a reflector behind the port, or no DUT)"
    peer_mac: Optional[str] = None      # the DUT port's MAC where dpdkeni knows it

    def start(self) -> "Dut":
        return self

    def stop(self) -> Dict[str, int]:
        return {}


class FwdDut(Dut):
    """dpdkeni's forwarder as the reflector (macswap on one port)."""

    def __init__(self, ifname: str, target: str, mode: str = "macswap", cpu: Optional[int] = None) -> None:
        self.fwd = Forwarder([ifname], mode=mode, backend="af_packet", target=target, cpu=cpu)
        self.description = f"dpdkeni fwd --mode {mode} --port {ifname} --target {target} (AF_PACKET)"

    def start(self) -> "FwdDut":
        self.fwd.start()
        return self

    def stop(self) -> Dict[str, int]:
        self.fwd.stop()
        stats = self.fwd.wait(30)
        if stats is None:
            return {}
        p = stats.ports[0]
        return {"rx": p.rx_packets, "tx": p.tx_packets, "rx_dropped": p.rx_dropped, "tx_dropped": p.tx_dropped}


class TestpmdDut(Dut):
    """dpdk-testpmd (net_af_packet on ``ifname``) in a runc container in ``target``'s network namespace."""

    def __init__(self, ifname: str, target: str, mode: str = "macswap", cpu: Optional[int] = None,
                 memory_mb: int = 256) -> None:
        from .netns import resolve_target
        if mode not in MODES:
            raise InputError(f"bad testpmd mode {mode!r}: one of {', '.join(MODES)}")
        binary, runc = shutil.which("dpdk-testpmd"), shutil.which("runc")
        if not binary or not runc:
            raise NotFoundError("dpdk-testpmd and runc are needed for --dut testpmd:",
                                "apt-get install dpdk-dev runc")
        self.binary: str = binary
        self.runc: str = runc
        self.ifname, self.mode, self.cpu, self.memory_mb = ifname, mode, cpu, memory_mb
        self.target = resolve_target(target)
        self._check_ifname()
        self.name = f"dpdkeni-pmdtest-{os.getpid()}-{int(time.monotonic() * 1000) % 100000}"
        self.description = (f"dpdk-testpmd --vdev net_af_packet0,iface={ifname},qdisc_bypass=1 "
                            f"--forward-mode={mode}, in runc container {self.name} (netns of {target})")
        self.bundle: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self.output: Optional[TestpmdOutput] = None

    def _check_ifname(self) -> None:
        from .netns import iproute_in
        fd = self.target.open()
        try:
            with iproute_in(fd) as ipr:
                if not ipr.link_lookup(ifname=self.ifname):
                    raise NotFoundError(f"no interface {self.ifname} in {self.target.spec}")
        finally:
            os.close(fd)

    def _argv(self) -> List[str]:
        lcores = f"0@{self.cpu},1@{self.cpu}" if self.cpu is not None else "0-1"
        return [self.binary, "--lcores", lcores, "--no-huge", "-m", str(self.memory_mb), "--no-pci",
                "--no-shconf", "--vdev", f"net_af_packet0,iface={self.ifname},qdisc_bypass=1",
                "--", f"--forward-mode={self.mode}", "--auto-start", "--stats-period", "1",
                "--total-num-mbufs=16384", "--nb-cores=1"]

    def _write_bundle(self) -> str:
        return host_bundle(self.runc, ["stdbuf", "-oL", *self._argv()], self.target.path)

    def start(self, timeout: float = 60.0) -> "TestpmdDut":
        self.bundle = self._write_bundle()
        self.proc = subprocess.Popen([self.runc, "run", "--bundle", self.bundle, self.name],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     text=True)
        self.output = TestpmdOutput(self.proc)
        failed = self.output.wait_ready(timeout)
        if failed is not None:
            self.stop()
            raise Error(f"testpmd did not start forwarding in its container: {failed}")
        return self

    def stop(self) -> Dict[str, int]:
        """SIGINT (testpmd prints its totals), then remove the container and its bundle; testpmd's counters."""
        if self.proc is not None:
            if self.proc.poll() is None:
                subprocess.run([self.runc, "kill", self.name, "INT"], capture_output=True)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    subprocess.run([self.runc, "kill", self.name, "KILL"], capture_output=True)
                    self.proc.wait(10)
            subprocess.run([self.runc, "delete", "--force", self.name], capture_output=True)
        if self.bundle:
            shutil.rmtree(self.bundle, ignore_errors=True)
            self.bundle = None
        return self.counters()

    def counters(self) -> Dict[str, int]:
        """testpmd's own totals for the port, from its end-of-run statistics (the first block with RX-dropped:
        the periodic --stats-period blocks say RX-missed)."""
        return self.output.counters() if self.output else {}


def host_bundle(runc: str, args: List[str], netns_path: Optional[str] = None) -> str:
    """An OCI bundle (a temporary directory; the caller removes it) whose root is the host's /usr and /etc
    read-only, running ``args`` as root with the capabilities and locked memory DPDK needs, in the network
    namespace at ``netns_path`` (None: a new one)."""
    bundle = tempfile.mkdtemp(prefix="dpdkeni-testpmd-")
    root = os.path.join(bundle, "rootfs")
    for d in ("usr", "etc", "proc", "dev", "sys", "tmp", "run"):
        os.makedirs(os.path.join(root, d))
    for d in ("bin", "lib", "lib64", "sbin"):
        os.symlink(f"usr/{d}", os.path.join(root, d))
    subprocess.run([runc, "spec", "--bundle", bundle], check=True, capture_output=True)
    path = os.path.join(bundle, "config.json")
    with open(path) as f:
        spec = json.load(f)
    spec["root"] = {"path": "rootfs", "readonly": True}
    proc = spec["process"]
    proc["terminal"] = False
    proc["args"] = list(args)
    # as much locked memory as we may have (DPDK locks its memory; the hard limit cannot be raised here)
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    hard = 2 ** 63 - 1 if hard == resource.RLIM_INFINITY else hard
    proc["rlimits"] = proc.get("rlimits", []) + [{"type": "RLIMIT_MEMLOCK", "hard": hard, "soft": hard}]
    caps = {"CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_IPC_LOCK", "CAP_SYS_NICE"}
    for kind in ("bounding", "effective", "permitted"):
        proc["capabilities"][kind] = sorted(set(proc["capabilities"][kind]) | caps)
    spec["mounts"] += [{"destination": d, "type": "bind", "source": d, "options": ["rbind", "ro"]}
                       for d in ("/usr", "/etc")]
    spec["mounts"] += [{"destination": d, "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
                       for d in ("/run", "/tmp")]
    if netns_path:
        spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "network"] + \
            [{"type": "network", "path": netns_path}]
    spec["hostname"] = "testpmd"
    with open(path, "w") as f:
        json.dump(spec, f)
    return bundle


def make(spec: str, mode: str = "macswap", cpu: Optional[int] = None) -> Union[Dut, ContainerDut]:
    """The DUT a ``--dut`` spec names (checked: a bad form or a missing target/interface is an InputError)."""
    kind, ifname, target = parse_spec(spec)
    ncpu = os.cpu_count() or 1
    if cpu is not None and (isinstance(cpu, bool) or not isinstance(cpu, int) or not 0 <= cpu < ncpu):
        raise InputError(f"bad DUT cpu {cpu!r}: 0..{ncpu - 1}")
    if kind == "none":
        return Dut()
    if kind == "container":
        return ContainerDut(target, mode, cpu)
    if kind == "fwd":
        from .netns import resolve_target
        resolve_target(target)
        return FwdDut(ifname, target, mode, cpu)
    return TestpmdDut(ifname, target, mode, cpu)
