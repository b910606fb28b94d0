"""``dpdkeni pmdtest``: NDR/PDR search and latency against a DUT reached through a kernel port (RFC 2544, CSIT)."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Tuple

from ..errors import InputError
from ..pmddut import MODES, make
from ..pmdstream import Stream
from ..pmdtest import KernelCounters, PmdTest, emulation_note, parse_sizes, table


def _check(args: argparse.Namespace) -> None:
    """Every value before anything starts (bad input: one line, exit 2)."""
    for name, lo, hi in (("max_rate", 1, 10 ** 8), ("min_rate", 1, 10 ** 8), ("repeat", 1, 100),
                         ("max_trials", 3, 200)):
        value = getattr(args, name)
        if not lo <= value <= hi:
            raise InputError(f"bad --{name.replace('_', '-')} {value}: must be {lo}..{hi}")
    if args.min_rate >= args.max_rate:
        raise InputError(f"bad rates: --min-rate {args.min_rate} must be below --max-rate {args.max_rate}")
    floats: Tuple[Tuple[str, float, float], ...] = (("duration", 0.1, 600), ("initial", 0.1, 600),
                                                   ("warmup", 0, 60), ("drain", 0, 10), ("precision", 0.001, 0.5))
    for fname, flo, fhi in floats:
        fvalue = getattr(args, fname)
        if not flo <= fvalue <= fhi:
            raise InputError(f"bad --{fname} {fvalue}: must be {flo}..{fhi}")
    if len(args.port) > 2:
        raise InputError("give one --port (the DUT's link) or two (the second receives: a loop)")
    if args.plot is not None:
        from ..pmdplot import check
        check(args.plot)


def cmd_pmdtest(args: argparse.Namespace) -> int:
    _check(args)
    sizes = parse_sizes(args.sizes)
    Stream(args.port, target=args.target, peer=args.peer, cpu=args.cpu)      # the generator's input checked
    counters = KernelCounters(args.port, args.target)
    counters.read()                                  # the ports exist (exit 2 if not) before the DUT starts
    dut = make(args.dut, args.dut_mode, args.dut_cpu)
    # test frames go to the DUT port's MAC where dpdkeni knows it (a container's handed-over port)
    stream = Stream(args.port, target=args.target, peer=args.peer or dut.peer_mac, cpu=args.cpu)
    live = sys.stderr if args.json else sys.stdout

    def line(text: str) -> None:
        if not args.quiet:
            print(text, file=live, flush=True)

    test = PmdTest(stream, sizes, duration=args.duration, initial=args.initial, warmup=args.warmup,
                   drain=args.drain, max_rate=args.max_rate, min_rate=args.min_rate, precision=args.precision,
                   repeat=args.repeat, max_trials=args.max_trials, counters=counters, dut_mac=dut.peer_mac,
                   on_line=line)
    slow = emulation_note()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda *_: stream.stop())
    try:
        stream.open()
        line(f"DUT: {dut.description}")
        if slow:
            line(f"note: {slow}")
        dut.start()
        try:
            report = test.run()
        finally:
            report_dut = dut.stop()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        stream.close()
    report.settings.update({"ports": args.port, "target": args.target, "dut": args.dut,
                            "peer": ":".join(f"{x:02x}" for x in stream.peer or b""),
                            "dut_description": dut.description, "dut_counters": report_dut, "slow": slow})
    if args.plot is not None:
        from ..pmdplot import plot
        report.settings["plot"] = {"file": args.plot, "series": plot(report, args.plot)}
        line(f"plot: {args.plot}")
    if args.json:
        from ..cli import emit_json
        emit_json(report.to_dict())
    else:
        print(table(report))
        if report_dut:
            print(f"DUT's own counters: {report_dut}")
    return 130 if report.interrupted else 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pmdtest``."""
    p = sub.add_parser("pmdtest", help="NDR/PDR and latency of a DUT behind a kernel port (RFC 2544, like "
                                       "FD.io CSIT)")
    p.add_argument("--port", action="append", required=True, metavar="IF",
                   help="the generator's port (frames go out and come back on it); a second --port receives "
                        "instead (a loop with no DUT: the generator's headroom)")
    p.add_argument("--target", default=None, help="the generator's netns (netns:NAME, pid:N, container:ID)")
    p.add_argument("--peer", metavar="MAC", default=None,
                   help="destination MAC of test frames (default: the port handed to --dut container:NAME, else "
                        "02:00:00:00:00:02)")
    p.add_argument("--dut", default="none", help="none (default), container:NAME (dpdk-testpmd in runc container "
                                                 "NAME on the port handed to it: started there, or the one running), "
                                                 "fwd:IF@TARGET (dpdkeni's macswap reflector) or testpmd:IF@TARGET "
                                                 "(dpdk-testpmd net_af_packet in a runc container of its own)")
    p.add_argument("--dut-mode", default="macswap", choices=list(MODES), help="testpmd/fwd forwarding mode")
    p.add_argument("--dut-cpu", type=int, default=None, help="pin the DUT's forwarding to this CPU")
    p.add_argument("--cpu", type=int, default=None, help="pin the generator to this CPU")
    p.add_argument("--sizes", default="64", help="frame sizes with FCS, and imix: e.g. 64,512,1518,imix")
    p.add_argument("--repeat", type=int, default=1, help="searches per size (median and min..max are shown)")
    p.add_argument("--duration", type=float, default=2.0, help="final trial duration, s (default 2)")
    p.add_argument("--initial", type=float, default=1.0, help="initial (short) trial duration, s (default 1)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up before each trial, s (default 0.5)")
    p.add_argument("--drain", type=float, default=0.5, help="receive time after sending stops, s (default 0.5)")
    p.add_argument("--max-rate", type=int, default=1_000_000, help="highest rate tried, frames/s")
    p.add_argument("--min-rate", type=int, default=1000, help="lowest rate, and the minimal-load latency rate")
    p.add_argument("--precision", type=float, default=0.02, help="relative width NDR/PDR are found to")
    p.add_argument("--max-trials", type=int, default=30, help="trials per search at most")
    p.add_argument("--quiet", action="store_true", help="no live lines")
    p.add_argument("--json", action="store_true", help="the report as one JSON document on stdout")
    p.add_argument("--plot", metavar="FILE", default=None,
                   help="throughput against frame size and latency CDFs, FILE.png or FILE.svg (needs matplotlib: "
                        "pip install 'dpdkeni[bench]')")
    p.set_defaults(func=cmd_pmdtest)
