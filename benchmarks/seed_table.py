#!/usr/bin/env python3
"""The seed article's comparison, reproduced on veth: the NIC handed straight to the container ("direct") vs the
container behind a Linux bridge in a middle "VM" namespace ("bridge", bridge-nf-call-iptables=0) vs the bridge with
netfilter and Docker-like iptables rules ("bridge+nf": FORWARD policy DROP, 10 non-matching rules, conntrack
ESTABLISHED, physdev-is-bridged ACCEPT; see reference/perf-baseline.md).

Network table: single-flow Mbps (iperf3 TCP, one stream), single-flow pps and multi-flow pps (dpdkeni fwd txonly
64-byte UDP -> rxonly, AF_PACKET, so every frame takes the kernel path under test; multi-flow: 256 UDP flows from
two generator threads), with direct's improvement in percent beside the article's +56.35 % / +58.7 % / +64.49 %.
Redis table (the article's appendix): redis-benchmark SET and GET, 1 KB values, 50 clients, from namespace A to
redis-server in B: QPS, average and p99 latency, beside the article's +29.6 % QPS and -23 % average latency.
Medians of --runs runs, the topologies interleaved run by run. Everything runs in namespaces made here and removed
at the end; bounded by --seconds and --requests. Needs root, iperf3, redis-server, redis-tools, iptables.
``--plot FILE.png`` draws both tables (matplotlib).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's dpdkeni
from fastpath import Sampler  # noqa: E402

from dpdkeni.fastpath import Forwarder  # noqa: E402
from dpdkeni.testbed.topo import Topo  # noqa: E402

KINDS = {"direct": "direct", "bridge": "bridge", "bridge+nf": "bridge-ipt"}
ARTICLE = {"single-flow Mbps": 56.35, "single-flow pps": 58.7, "multi-flow pps": 64.49}
ARTICLE_REDIS = {"QPS": 29.6, "avg latency": -23.0}
SERVER = "198.18.0.2"


def pinned(cpu: int, argv: List[str]) -> List[str]:
    return ["taskset", "-c", str(cpu), *argv]


def wait_port(topo: Topo, port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on SERVER:port (checked from namespace A)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        r = subprocess.run(topo.exec("a", "bash", "-c", f"exec 3<>/dev/tcp/{SERVER}/{port}"), capture_output=True)
        if r.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {SERVER}:{port}")


def server(topo: Topo, argv: List[str], port: int) -> subprocess.Popen:
    proc = subprocess.Popen(topo.exec("b", *pinned(1, argv)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    try:
        wait_port(topo, port)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def iperf_mbps(topo: Topo, seconds: float) -> float:
    srv = server(topo, ["iperf3", "-s", "-B", SERVER, "-p", "5201"], 5201)
    try:
        r = subprocess.run(topo.exec("a", *pinned(0, ["iperf3", "-c", SERVER, "-p", "5201", "-t", str(int(seconds)),
                                                      "-J"])), capture_output=True, text=True,
                           timeout=seconds + 30)
        doc = json.loads(r.stdout)
        return doc["end"]["sum_received"]["bits_per_second"] / 1e6
    finally:
        stop(srv)


def udp_pps(topo: Topo, seconds: float, flows: int) -> float:
    """dpdkeni txonly (64 B, to b0's MAC and address) -> rxonly at b0, through whatever lies between."""
    multi = flows > 1
    sink = Forwarder(["b0"], mode="rxonly", backend="af_packet", target=topo.target("b"),
                     cpu=None if multi else 1).start()
    sampler = Sampler(sink)
    try:
        Forwarder(["a0"], mode="txonly", backend="af_packet", target=topo.target("a"), peer=topo.mac("b0"),
                  flows=flows, queues=2 if multi else 1, cpu=0).run(seconds)
    finally:
        pps = sampler.stop()
        sink.close()
    return pps


def redis(topo: Topo, requests: int) -> Dict[str, Dict[str, float]]:
    srv = server(topo, ["redis-server", "--bind", SERVER, "--port", "6379", "--save", "", "--appendonly", "no",
                        "--protected-mode", "no"], 6379)
    try:
        r = subprocess.run(topo.exec("a", *pinned(0, ["redis-benchmark", "-h", SERVER, "-p", "6379", "-t", "set,get",
                                                      "-d", "1024", "-n", str(requests), "-c", "50", "--csv"])),
                           capture_output=True, text=True, timeout=300)
    finally:
        stop(srv)
    out: Dict[str, Dict[str, float]] = {}
    for row in csv.DictReader(io.StringIO(r.stdout)):
        out[row["test"]] = {"QPS": float(row["rps"]), "avg latency": float(row["avg_latency_ms"]),
                            "p99 latency": float(row["p99_latency_ms"])}
    if not out:
        raise RuntimeError(f"redis-benchmark printed nothing: {r.stderr.strip()[-300:]}")
    return out


def measure(runs: int, seconds: float, requests: int):
    net: Dict[str, Dict[str, List[float]]] = {k: {m: [] for m in ARTICLE} for k in KINDS}
    red: Dict[str, Dict[str, Dict[str, List[float]]]] = {k: {} for k in KINDS}
    for r in range(runs):
        for label, kind in KINDS.items():         # interleaved: drift hits every topology alike
            with Topo(kind) as topo:
                got = {"single-flow Mbps": iperf_mbps(topo, seconds), "single-flow pps": udp_pps(topo, seconds, 1),
                       "multi-flow pps": udp_pps(topo, seconds, 256)}
                for metric, value in got.items():
                    net[label][metric].append(value)
                for test, values in redis(topo, requests).items():
                    for metric, value in values.items():
                        red[label].setdefault(test, {}).setdefault(metric, []).append(value)
            print(f"  run {r + 1}/{runs} {label}: " + ", ".join(f"{m} {v:.0f}" for m, v in got.items()),
                  file=sys.stderr, flush=True)
    return net, red


def med(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def pct(a: float, b: float) -> str:
    return f"{(a / b - 1) * 100:+.1f} %" if b else "n/a"


def print_tables(net, red, runs: int) -> None:
    print(f"\nNetwork (median of {runs} runs; improvement = direct over the other path)\n")
    print("| metric | direct | bridge | bridge+nf | direct vs bridge | direct vs bridge+nf | article |")
    print("|---|---|---|---|---|---|---|")
    for metric, article in ARTICLE.items():
        d, b, n = (med(net[k][metric]) for k in KINDS)
        scale = 1 if "Mbps" in metric else 1000
        unit = "" if "Mbps" in metric else " k"
        print(f"| {metric} | {d / scale:.0f}{unit} | {b / scale:.0f}{unit} | {n / scale:.0f}{unit} | {pct(d, b)} | "
              f"{pct(d, n)} | +{article} % |")
    print("\nRedis, 1 KB values, 50 clients (redis-benchmark; latency in ms)\n")
    print("| test | metric | direct | bridge | bridge+nf | direct vs bridge | direct vs bridge+nf | article |")
    print("|---|---|---|---|---|---|---|---|")
    for test in sorted(red["direct"]):
        for metric in ("QPS", "avg latency", "p99 latency"):
            d, b, n = (med(red[k].get(test, {}).get(metric, [])) for k in KINDS)
            article = ARTICLE_REDIS.get(metric)
            art = f"{article:+.1f} %" if article is not None else "-"
            print(f"| {test} | {metric} | {d:.3f} | {b:.3f} | {n:.3f} | {pct(d, b)} | {pct(d, n)} | {art} |"
                  if "latency" in metric else
                  f"| {test} | {metric} | {d:.0f} | {b:.0f} | {n:.0f} | {pct(d, b)} | {pct(d, n)} | {art} |")


def plot(net, red, path: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install 'dpdkeni[bench]')")
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    kinds = list(KINDS)
    width = 0.25
    metrics = list(ARTICLE)
    for i, kind in enumerate(kinds):
        vals = [med(net[kind][m]) / med(net["direct"][m]) * 100 for m in metrics]
        axes[0].bar([x + i * width for x in range(len(metrics))], vals, width, label=kind)
    axes[0].set_xticks([x + width for x in range(len(metrics))], metrics)
    axes[0].set_ylabel("% of direct")
    axes[0].set_title("network (direct = 100 %)")
    axes[0].legend()
    tests = sorted(red["direct"])
    for i, kind in enumerate(kinds):
        vals = [med(red[kind][t]["QPS"]) for t in tests]
        axes[1].bar([x + i * width for x in range(len(tests))], vals, width, label=kind)
    axes[1].set_xticks([x + width for x in range(len(tests))], tests)
    axes[1].set_ylabel("requests/s")
    axes[1].set_title("redis-benchmark, 1 KB values")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=5.0, help="length of each throughput run (default 5)")
    ap.add_argument("--requests", type=int, default=100000, help="redis-benchmark requests per test")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--plot", metavar="FILE.png", help="draw both tables into this file")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks/seed_table.py: needs root (namespaces)", file=sys.stderr)
        return 2
    missing = [t for t in ("iperf3", "redis-server", "redis-benchmark", "iptables", "taskset") if not shutil.which(t)]
    if missing:
        print(f"benchmarks/seed_table.py: missing {', '.join(missing)} (apt-get install "
              "iperf3 redis-server redis-tools iptables)", file=sys.stderr)
        return 2
    net, red = measure(args.runs, args.seconds, args.requests)
    print_tables(net, red, args.runs)
    if args.plot:
        plot(net, red, args.plot)
        print(f"\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
