#!/usr/bin/env python3
"""``dpdkeni pmdtest`` against dpdk-testpmd (net_af_packet, macswap) in a runc container, and the generator's
headroom with no DUT, in one invocation (README "PMD testing").

Topology: namespace A (generator, a0) <-> namespace B (b0, testpmd's container joins B's netns). The generator is
pinned to cpu0, testpmd's forwarding lcore to cpu1. Then the no-DUT loop: a veth pair p0 -> p1 in one namespace,
our stream sent on p0 and received on p1: its highest offered rate (a trial at "as fast as possible") and its NDR.
Everything is removed at the end. Run as root; bounded by the trial counts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout's dpdkeni
from dpdkeni.pmddut import TestpmdDut  # noqa: E402
from dpdkeni.pmdsearch import search  # noqa: E402
from dpdkeni.pmdstream import Stream  # noqa: E402
from dpdkeni.pmdtest import KernelCounters, PmdTest, parse_sizes, table  # noqa: E402
from dpdkeni.testbed.topo import Topo  # noqa: E402


def loop_ns(name: str) -> None:
    for cmd in (["ip", "netns", "add", name],
                ["ip", "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"],
                ["ip", "-n", name, "link", "set", "p0", "up"], ["ip", "-n", name, "link", "set", "p1", "up"],
                ["ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]):
        subprocess.run(cmd, check=True, capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64,512,1518,imix")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--duration", type=float, default=2.0)
    ap.add_argument("--max-rate", type=int, default=1_000_000)
    ap.add_argument("--json", default=None, help="write the whole report here")
    args = ap.parse_args()
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f} at the start")
    line = lambda text: print(text, flush=True)  # noqa: E731
    results = {}
    with Topo("direct", f"dkpb{os.getpid() % 10000}") as topo:
        dut = TestpmdDut("b0", topo.target("b"), "macswap", cpu=1).start()
        report = None
        try:
            line(f"DUT: {dut.description}")
            with Stream(["a0"], target=topo.target("a"), cpu=0) as stream:
                test = PmdTest(stream, parse_sizes(args.sizes), duration=args.duration, max_rate=args.max_rate,
                               repeat=args.repeat, counters=KernelCounters(["a0"], topo.target("a")),
                               on_line=line)
                report = test.run()
        finally:
            counters = dut.stop()
        report.settings["dut_counters"] = counters
        print(table(report))
        results["testpmd"] = report.to_dict()
    name = f"dkpl{os.getpid() % 10000}"
    loop_ns(name)
    try:
        with Stream(["p0", "p1"], target=f"netns:{name}", cpu=0) as stream:
            top = stream.trial(0, args.duration, [64], drain=0.5)
            line(f"no DUT, 64 B, as fast as possible: offered {top.offered_pps:.0f} pps, received "
                 f"{top.rx_packets / args.duration:.0f} pps, loss {top.loss_ratio * 100:.3f} %")
            pt = PmdTest(stream, [], duration=args.duration, counters=KernelCounters(["p0", "p1"],
                                                                                    f"netns:{name}"), on_line=line)
            res = search(lambda r, s: pt.trial(r, s, [64]), args.max_rate, 1000, args.duration)
            line(f"no DUT, 64 B: NDR {res.ndr} pps, PDR {res.pdr} pps ({len(res.trials)} trials)")
            results["no_dut"] = {"max_offered_pps": top.offered_pps, "max_received_pps": top.rx_packets / args.duration,
                                 "search": res.to_dict()}
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    ndr64 = [s for s in results["testpmd"]["results"] if s["size"] == "64"]
    if ndr64 and ndr64[0]["ndr"]:
        ndr = ndr64[0]["ndr"]["median"]
        line(f"headroom: generator's offered rate with no DUT {results['no_dut']['max_offered_pps']:.0f} pps = "
             f"{results['no_dut']['max_offered_pps'] / ndr:.2f} x testpmd's 64 B NDR {ndr:.0f} pps")
    print(f"# load {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
