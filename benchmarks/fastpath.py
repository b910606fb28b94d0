#!/usr/bin/env python3
"""dpdkeni's native forwarder against dpdk-testpmd, on the same veth topology and cores, in one invocation.

Lines (64-byte frames, packets/s measured at the sink, median of the per-second rates of each run, median over
--runs runs, the tools interleaved run by run so drift hits both alike):
  txonly -> rxonly, direct topology (A a0 <-> b0 B): generator on cpu0, sink on cpu1
      dpdkeni AF_PACKET vs testpmd net_af_packet; dpdkeni AF_XDP vs testpmd net_af_xdp
  io forwarding through a middle namespace (A a0 <-> a1 [fwd] b1 <-> b0 B): the same generator and sink on cpu0
      for every line, the forwarder alone on cpu1. The generator is the kernel's XDP live frames (xdpgen.py),
      which offers more than either forwarder can take; the sink is b0's kernel receive counter, with b0's receive
      processing steered to cpu0 (RPS), so cpu1 does the forwarder's work only and the line measures the
      forwarders. --io-generator af_xdp (dpdkeni's AF_XDP txonly, which saturates near the forwarders' rate) and
      --io-sink rxonly (dpdkeni AF_PACKET rxonly; b0's receive then runs on cpu1, in the forwarder's transmit)
      give the earlier setups
  AF_PACKET transmit method: PACKET_TX_RING (the default) vs sendmmsg (dpdkeni txonly -> rxonly)
testpmd runs with the EAL flags of reference/perf-baseline.md. Everything runs in namespaces made here and removed
at the end; every run is bounded (--seconds). Run as root on a quiet machine.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's dpdkeni
from dpdkeni.fastpath import Forwarder  # noqa: E402
from dpdkeni.testbed.topo import Topo  # noqa: E402
from dpdkeni.testbed.xdpgen import xdp_pass  # noqa: E402

GEN_CPU, SINK_CPU = 0, 1


def steady(samples: List[float]) -> float:
    """The median of the per-second rates, leaving out the partial first and last seconds."""
    nonzero = [s for s in samples if s > 0]
    core = nonzero[1:-1] if len(nonzero) > 3 else nonzero
    return statistics.median(core) if core else 0.0


class CounterSampler:
    """The per-second rate of an interface's kernel receive counter, read once a second."""

    def __init__(self, topo: Topo, role: str, ifname: str) -> None:
        self.samples: List[float] = []
        self._read = lambda: topo.rx_packets(role, ifname)
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        last, t_last = self._read(), time.monotonic()
        while not self._stop.wait(1.0):
            now, t_now = self._read(), time.monotonic()
            self.samples.append((now - last) / (t_now - t_last))
            last, t_last = now, t_now

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return steady(self.samples)


class Sampler:
    """Reads a running Forwarder's last-second rate once a second."""

    def __init__(self, fwd: Forwarder, key: str = "rx_pps", port: int = 0) -> None:
        self.fwd, self.key, self.port, self.samples = fwd, key, port, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if self.fwd.running:
                self.samples.append(getattr(self.fwd.stats().ports[self.port], self.key))

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return steady(self.samples)


# -- testpmd ---------------------------------------------------------------------------------------------------

def testpmd_vdev(backend: str, ifname: str, index: int) -> str:
    if backend == "af_packet":
        return f"net_af_packet{index},iface={ifname},qdisc_bypass=1"
    return f"net_af_xdp{index},iface={ifname},start_queue=0,queue_count=1"


class TestPmd:
    """dpdk-testpmd in namespace ``role``, its forwarding lcore on ``fwd_cpu``; its output is read as it comes so
    the run is timed from the moment forwarding starts (EAL start-up takes seconds here), and it is stopped with
    SIGINT so it prints its final statistics. ``timeout`` bounds it in any case."""

    def __init__(self, topo: Topo, role: str, backend: str, ifnames: List[str], mode: str, fwd_cpu: int) -> None:
        self.prefix = f"dkbench{os.getpid()}{role}{mode}"
        vdevs = [a for i, name in enumerate(ifnames) for a in ("--vdev", testpmd_vdev(backend, name, i))]
        argv = topo.exec(role, "stdbuf", "-oL", "timeout", "-s", "INT", "-k", "5", "120", "dpdk-testpmd",
                         "--lcores", f"0@{1 - fwd_cpu},1@{fwd_cpu}", "--no-huge", "-m", "512", "--no-pci",
                         "--no-shconf", "--file-prefix", self.prefix, *vdevs, "--", f"--forward-mode={mode}",
                         "--total-num-mbufs=32768", "--stats-period", "1", "--txpkts=64")
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL)
        self.lines: List[str] = []
        self.ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append(line)
            if "Port statistics" in line:          # the first stats block: forwarding has started
                self.ready.set()
        self.ready.set()

    def wait_ready(self, timeout: float = 60) -> "TestPmd":
        self.ready.wait(timeout)
        if self.proc.poll() is not None:
            raise RuntimeError("testpmd failed: " + "".join(self.lines[-5:]).strip())
        return self

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)   # ip netns exec execs; timeout passes SIGINT on to testpmd
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        shutil.rmtree(f"/var/run/dpdk/{self.prefix}", ignore_errors=True)
        return "".join(self.lines)


def testpmd_rates(out: str, key: str = "Rx-pps") -> List[float]:
    """Per-second rates of the first port from testpmd's --stats-period blocks."""
    rates: List[float] = []
    for block in out.split("Port statistics ====")[1:]:
        m = re.search(rf"{key}:\s+(\d+)", block)
        if m:
            rates.append(float(m.group(1)))
    return rates


# -- the lines -------------------------------------------------------------------------------------------------

# how each dpdkeni line drove its ports (Stats.details of its forwarders), printed under the table
OPTIONS: Dict[str, List[str]] = {}


def note(line: str, role: str, stats) -> None:
    OPTIONS.setdefault(line, [])
    text = f"{role}: " + "; ".join(dict.fromkeys(stats.details))
    if text not in OPTIONS[line]:
        OPTIONS[line].append(text)


def pair_dpdkeni(topo: Topo, backend: str, seconds: float, tx_method: Optional[str] = None) -> float:
    line = f"txonly -> rxonly {backend}" + (f" {tx_method}" if tx_method else "")
    sink = Forwarder(["b0"], mode="rxonly", backend=backend, target=topo.target("b"), cpu=SINK_CPU).start()
    sampler = Sampler(sink)
    try:
        gen = Forwarder(["a0"], mode="txonly", backend=backend, target=topo.target("a"), cpu=GEN_CPU,
                        tx_method=tx_method)
        note(line, "generator", gen.run(seconds))
    finally:
        pps = sampler.stop()
        note(line, "sink", sink.stats())
        sink.close()
    return pps


def pair_testpmd(topo: Topo, backend: str, seconds: float) -> float:
    sink = TestPmd(topo, "b", backend, ["b0"], "rxonly", SINK_CPU)
    gen = None
    try:
        sink.wait_ready()
        gen = TestPmd(topo, "a", backend, ["a0"], "txonly", GEN_CPU).wait_ready()
        time.sleep(seconds)
    finally:
        if gen is not None:
            gen.stop()
        out = sink.stop()
    return steady(testpmd_rates(out))


XDPGEN = ["-m", "dpdkeni.testbed.xdpgen"]
OFFERED: Dict[str, List[float]] = {}     # per io line, the generator's rate (frames/s handed to a0)


@dataclass(frozen=True)
class IoSetup:
    """What surrounds the forwarder on the io lines (the same for every line of an invocation).

    ``generator``: ``kernel`` (xdpgen.py: the kernel's XDP live frames, several times what either forwarder can
    take) or ``af_xdp`` (dpdkeni's own txonly, which saturates here about where the forwarders do).
    ``sink``: ``counter`` (b0's kernel receive counter, with b0's receive processing steered to cpu0 by RPS, so
    the forwarder's core does the forwarder's work only) or ``rxonly`` (dpdkeni AF_PACKET rxonly on cpu0; b0's
    receive processing, the sink's ring included, then runs on the forwarder's core, inside its transmit)."""

    generator: str = "kernel"
    sink: str = "counter"


def io_run(topo: Topo, seconds: float, line: str, forwarder: Callable[[], Callable[[], None]], setup: IoSetup,
           pass_on_a1: bool = False) -> float:
    """The common generator and sink around a forwarder in M; returns the rate at b0. ``pass_on_a1``: a forwarder
    without an XDP program of its own gets an XDP_PASS one on a1, which the kernel generator's frames need to be
    received (the same receive path for both tools)."""
    with contextlib.ExitStack() as stack:
        if setup.sink == "rxonly":
            # the sink shares cpu0 with the generator: it sleeps when idle (spin_us=0) so the generator keeps the core
            sink = Forwarder(["b0"], mode="rxonly", backend="af_packet", target=topo.target("b"), cpu=GEN_CPU,
                             spin_us=0).start()
            stack.callback(sink.close)
        if setup.generator == "kernel" and pass_on_a1:
            stack.enter_context(xdp_pass(topo.ns["m"], "a1"))
        finish = forwarder()
        sampler = Sampler(sink) if setup.sink == "rxonly" else CounterSampler(topo, "b", "b0")
        try:
            if setup.generator == "kernel":
                out = subprocess.run(topo.exec("a", "taskset", "-c", str(GEN_CPU), sys.executable, *XDPGEN,
                                               "--ifname", "a0", "--seconds", str(seconds)),
                                     capture_output=True, text=True, timeout=seconds + 60)
                if out.returncode:
                    raise RuntimeError(out.stderr.strip())
                got = json.loads(out.stdout)
                OFFERED.setdefault(line, []).append(got["frames"] / got["seconds"])
            else:
                Forwarder(["a0"], mode="txonly", backend="af_xdp", target=topo.target("a"), cpu=GEN_CPU).run(seconds)
        finally:
            pps = sampler.stop()
            finish()
    return pps


def io_dpdkeni(topo: Topo, backend: str, seconds: float, setup: IoSetup) -> float:
    def start():
        fwd = Forwarder(["a1", "b1"], mode="io", backend=backend, target=topo.target("m"), cpu=SINK_CPU).start()

        def finish():
            st = fwd.stats()
            note(f"io {backend}", "forwarder", st)
            a1 = st.ports[0]
            input_drops(f"dpdkeni {backend}", a1.rx_packets, a1.rx_dropped)
            fwd.close()
        return finish
    return io_run(topo, seconds, f"dpdkeni {backend}", start, setup, pass_on_a1=backend == "af_packet")


def io_testpmd(topo: Topo, backend: str, seconds: float, setup: IoSetup) -> float:
    def start():
        proc = TestPmd(topo, "m", backend, ["a1", "b1"], "io", SINK_CPU)
        try:
            proc.wait_ready()
        except BaseException:
            proc.stop()
            raise

        def finish():
            out = proc.stop()
            got = re.findall(r"NIC statistics for port 0\s+#+\s+RX-packets:\s+(\d+)\s+RX-missed:\s+(\d+)", out)
            if got and backend == "af_xdp":    # net_af_packet (DPDK 22.11) leaves RX-missed at 0 whatever it drops
                input_drops(f"testpmd net_{backend}", int(got[-1][0]), int(got[-1][1]))
        return finish
    return io_run(topo, seconds, f"testpmd net_{backend}", start, setup, pass_on_a1=backend == "af_packet")


# per io line, the share of the frames offered to the forwarder that it dropped at its input (its receive ring
# was full): ~0 means the forwarder kept up and the line measured the generator, not the forwarder
DROPS: Dict[str, List[float]] = {}


def input_drops(line: str, received: int, dropped: int) -> None:
    DROPS.setdefault(line, []).append(100.0 * dropped / (received + dropped) if received + dropped else 0.0)


# -- the table -------------------------------------------------------------------------------------------------

def measure(runs: int, seconds: float, lines: Dict[str, Callable[[], float]]) -> Dict[str, List[float]]:
    got: Dict[str, List[float]] = {name: [] for name in lines}
    for r in range(runs):
        for name, fn in lines.items():      # interleaved: drift in the machine's load hits every line alike
            try:
                got[name].append(fn())
            except Exception as exc:        # a tool that cannot run here: say so in the table
                print(f"  {name}: {exc}", file=sys.stderr)
            print(f"  run {r + 1}/{runs} {name}: {got[name][-1] if got[name] else 'failed':>.0f}"
                  if got[name] else f"  run {r + 1}/{runs} {name}: failed", file=sys.stderr, flush=True)
    return got


def fmt(values: List[float]) -> str:
    return f"{statistics.median(values) / 1000:.0f} k" if values else "n/a"


def ratio(a: List[float], b: List[float]) -> str:
    if not a or not b or not statistics.median(b):
        return "n/a"
    return f"{statistics.median(a) / statistics.median(b):.2f}x"


def spread(values: List[float]) -> str:
    return ", ".join(f"{v / 1000:.0f}" for v in values)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=4.0, help="length of each run (default 4)")
    ap.add_argument("--runs", type=int, default=5, help="runs per line (default 5)")
    ap.add_argument("--skip-io", action="store_true")
    ap.add_argument("--skip-pair", action="store_true", help="only the io forwarding lines")
    ap.add_argument("--io-generator", choices=("kernel", "af_xdp"), default="kernel",
                    help="what feeds the io forwarders: the kernel's XDP live frames (default; more than either "
                         "forwarder takes) or dpdkeni's AF_XDP txonly (saturates near the forwarders' rate)")
    ap.add_argument("--io-sink", choices=("counter", "rxonly"), default="counter",
                    help="what counts the io lines at b0: its kernel counter with its receive steered to cpu0 "
                         "(default: the forwarder's core forwards only) or dpdkeni rxonly, whose receive then "
                         "runs on the forwarder's core")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/fastpath.py: needs root (namespaces)", file=sys.stderr)
        return 2
    s = args.seconds
    setup = IoSetup(args.io_generator, args.io_sink)
    with Topo("direct") as direct:
        pair = {} if args.skip_pair else measure(args.runs, s, {
            "dpdkeni af_packet": lambda: pair_dpdkeni(direct, "af_packet", s),
            "testpmd net_af_packet": lambda: pair_testpmd(direct, "af_packet", s),
            "dpdkeni af_xdp": lambda: pair_dpdkeni(direct, "af_xdp", s),
            "testpmd net_af_xdp": lambda: pair_testpmd(direct, "af_xdp", s),
            "dpdkeni af_packet sendmmsg": lambda: pair_dpdkeni(direct, "af_packet", s, "sendmmsg"),
        })
    io: Dict[str, List[float]] = {}
    if not args.skip_io:
        with Topo("fwd") as mid:
            if setup.sink == "counter":
                mid.steer("b", "b0", GEN_CPU)
            io = measure(args.runs, s, {
                "dpdkeni af_packet": lambda: io_dpdkeni(mid, "af_packet", s, setup),
                "testpmd net_af_packet": lambda: io_testpmd(mid, "af_packet", s, setup),
                "dpdkeni af_xdp": lambda: io_dpdkeni(mid, "af_xdp", s, setup),
                "testpmd net_af_xdp": lambda: io_testpmd(mid, "af_xdp", s, setup),
            })
    print(f"\n64-byte frames, packets/s at the sink (median of {args.runs} runs of {s:g} s; per-run values in "
          "k after the bars). Goal: dpdkeni >= 1.2x testpmd.\n")
    print("| test | backend | dpdkeni | testpmd | dpdkeni / testpmd | runs dpdkeni | runs testpmd |")
    print("|---|---|---|---|---|---|---|")
    for title, table in (("txonly -> rxonly (direct)", pair), ("io forwarding (middle netns)", io)):
        for backend, tp in (("af_packet", "testpmd net_af_packet"), ("af_xdp", "testpmd net_af_xdp")):
            mine = table.get(f"dpdkeni {backend}", [])
            ref = table.get(tp, [])
            if mine or ref:
                print(f"| {title} | {backend} | {fmt(mine)} | {fmt(ref)} | {ratio(mine, ref)} | {spread(mine)} | "
                      f"{spread(ref)} |")
    if io:
        print("\nio forwarder input drops (% of the frames offered to a1 that the forwarder's receive ring had no "
              "room for; median, per run): well above 0 = the forwarder was the bottleneck, ~0 = the generator was")
        for name in ("dpdkeni af_packet", "testpmd net_af_packet", "dpdkeni af_xdp", "testpmd net_af_xdp"):
            vals = DROPS.get(name, [])
            if vals:
                print(f"  {name}: {statistics.median(vals):.1f} % ({', '.join(f'{v:.1f}' for v in vals)})")
            elif name == "testpmd net_af_packet":
                print(f"  {name}: not reported (the PMD's RX-missed stays 0)")
        if OFFERED:
            print("io generator's rate (frames/s handed to a0 by the kernel; median, per run in k):")
            for name, vals in OFFERED.items():
                print(f"  {name}: {fmt(vals)} ({spread(vals)})")
    print("\nOptions used (dpdkeni as it described its ports; testpmd as launched, burst 32 for both):")
    for line, texts in OPTIONS.items():
        for text in texts:
            print(f"  dpdkeni {line}: {text}")
    for backend in ("af_packet", "af_xdp"):
        print(f"  testpmd {backend}: --vdev {testpmd_vdev(backend, 'IF', 0)}, --txpkts=64, "
              f"--total-num-mbufs=32768, lcores 0@other,1@fwd-cpu")
    gen = ("the kernel's XDP live frames (xdpgen.py; an XDP_PASS program on a1 for the af_packet forwarders)"
           if setup.generator == "kernel" else "dpdkeni af_xdp txonly")
    sink = ("b0's kernel receive counter, b0's receive steered to cpu0 (RPS)" if setup.sink == "counter"
            else "dpdkeni af_packet rxonly spin_us=0 (cpu0)")
    print(f"  io lines: generator {gen} (cpu0), sink {sink}, "
          "forwarder on cpu1")
    mm, ring = pair.get("dpdkeni af_packet sendmmsg", []), pair.get("dpdkeni af_packet", [])
    print(f"\nAF_PACKET transmit (the default, PACKET_TX_RING, is the af_packet line above): PACKET_TX_RING "
          f"{fmt(ring)} vs sendmmsg {fmt(mm)} (tx_ring / sendmmsg = {ratio(ring, mm)}; runs {spread(ring)} / "
          f"{spread(mm)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
