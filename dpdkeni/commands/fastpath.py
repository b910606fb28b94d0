"""``dpdkeni fwd``: a small testpmd for kernel interfaces (the native forwarder), with a live line per second
and testpmd's summary at the end (or on Ctrl-C)."""
from __future__ import annotations

import argparse
import sys
from typing import List, TextIO

from ..errors import InputError
from ..fastpath import BACKENDS, MODES, TX_METHODS, Forwarder, Stats


def _live_line(stats: Stats) -> str:
    parts = [f"port {p.port} ({p.name}): Rx-pps: {p.rx_pps:>9} Tx-pps: {p.tx_pps:>9} "
             f"RX-packets: {p.rx_packets} TX-packets: {p.tx_packets}" for p in stats.ports]
    return " | ".join(parts)


def print_summary(stats: Stats, out: TextIO) -> None:
    """testpmd's end-of-run statistics, in its words."""
    for p in stats.ports:
        print(f"\n  ---------------------- Forward statistics for port {p.port} ({p.name}) "
              "----------------------", file=out)
        print(f"  RX-packets: {p.rx_packets:<14} RX-dropped: {p.rx_dropped:<14} "
              f"RX-total: {p.rx_packets + p.rx_dropped}", file=out)
        print(f"  TX-packets: {p.tx_packets:<14} TX-dropped: {p.tx_dropped:<14} "
              f"TX-total: {p.tx_packets + p.tx_dropped}", file=out)
        print(f"  RX-bytes:   {p.rx_bytes:<14} RX-errors:  {p.rx_errors:<14} TX-bytes: {p.tx_bytes}"
              f"  TX-errors: {p.tx_errors}", file=out)
        print(f"  Throughput (last second): Rx-pps: {p.rx_pps} Rx-bps: {p.rx_bps} "
              f"Tx-pps: {p.tx_pps} Tx-bps: {p.tx_bps}", file=out)
    rx_total = stats.rx_packets + stats.rx_dropped
    tx_total = stats.tx_packets + stats.tx_dropped
    print("\n  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++", file=out)
    print(f"  RX-packets: {stats.rx_packets:<14} RX-dropped: {stats.rx_dropped:<14} RX-total: {rx_total}",
          file=out)
    print(f"  TX-packets: {stats.tx_packets:<14} TX-dropped: {stats.tx_dropped:<14} TX-total: {tx_total}",
          file=out)
    print("  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++", file=out)
    print(f"\n  {stats.seconds:.1f} s, average Rx-pps: {stats.avg_pps('rx'):.0f} Tx-pps: "
          f"{stats.avg_pps('tx'):.0f}", file=out)
    print("\nDone." + (" (stopped by signal)" if stats.interrupted else ""), file=out)


def cmd_fwd(args: argparse.Namespace) -> int:
    if args.seconds is not None and args.seconds < 0:
        raise InputError(f"bad --seconds {args.seconds}: must be >= 0 (0: until Ctrl-C)")
    fwd = Forwarder(ports=args.port, mode=args.mode, backend=args.backend, burst=args.burst, queues=args.queues,
                    cpu=args.cpu, peer=args.peer, target=args.target, pkt_size=args.size, flows=args.flows,
                    rate=args.rate, count=args.count, tx_method=args.tx_method)
    live = sys.stderr if args.json else sys.stdout
    started: List[bool] = []

    def every(stats: Stats) -> None:
        if args.quiet:
            return
        if not started:        # the header, once SIGINT is handled by the run
            started.append(True)
            for line in stats.details:
                print(f"Forwarding: mode {args.mode}, {line}", file=live)
            if stats.fallback:
                print(stats.fallback, file=live)
            print("Press Ctrl-C to stop.", file=live, flush=True)
            return
        print(_live_line(stats), file=live, flush=True)

    stats = fwd.run(args.seconds, every=every)
    if args.json:
        from ..cli import emit_json
        emit_json(stats.to_dict())
    else:
        print_summary(stats, sys.stdout)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``fwd``."""
    p = sub.add_parser("fwd", help="forward or generate packets on kernel interfaces, like testpmd "
                                   "(AF_XDP or AF_PACKET)")
    p.add_argument("--mode", required=True, choices=list(MODES),
                   help="io: unchanged; mac: src = TX port MAC, dst = --peer; macswap; txonly; rxonly")
    p.add_argument("--port", action="append", required=True, metavar="IF",
                   help="interface (give one or two; one: traffic goes back out of the same port)")
    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="auto: AF_XDP when it works, else AF_PACKET (says why)")
    p.add_argument("--seconds", type=float, default=None, help="duration (default: until Ctrl-C)")
    p.add_argument("--burst", type=int, default=32, help="frames per receive/transmit burst (default 32)")
    p.add_argument("--queues", type=int, default=1, help="queues/threads per port (PACKET_FANOUT / XDP queues)")
    p.add_argument("--cpu", type=int, default=None, help="pin queue q to CPU N+q")
    p.add_argument("--peer", metavar="MAC", default=None, help="destination MAC (mac and txonly modes)")
    p.add_argument("--target", default=None, help="run inside this target's netns (container:ID, pid:N, "
                                                  "netns:NAME)")
    p.add_argument("--size", type=int, default=64, help="txonly frame size without FCS (default 64)")
    p.add_argument("--flows", type=int, default=1, help="txonly: number of UDP flows (source ports)")
    p.add_argument("--rate", type=int, default=0, help="txonly: packets/s per port (default: unlimited)")
    p.add_argument("--count", type=int, default=0, help="txonly: stop after N packets sent per port")
    p.add_argument("--tx-method", choices=list(TX_METHODS), default=None,
                   help="AF_PACKET transmit: sendmmsg or PACKET_TX_RING (default: the faster one here)")
    p.add_argument("--quiet", action="store_true", help="no live lines")
    p.add_argument("--json", action="store_true", help="the summary as one JSON document on stdout")
    p.set_defaults(func=cmd_fwd)
