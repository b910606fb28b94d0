#!/usr/bin/env python3
"""Wait for a NIC by its MAC (the cloud is hot-plugging it), hand it to a container, give it back on exit.

What an orchestrator built on dpdkeni's Python API does for one NIC:

    sudo python3 examples/orchestrator.py --mac 52:54:00:12:34:60 --to pid:4242 --address 198.18.0.2/24

It prints one JSON line per event on stdout (``waiting``, ``attached``, ``released``) and holds the NIC until it
gets SIGTERM or SIGINT, or the container goes away; then the NIC returns to the host under its own name.
Exit status: 0 done, 1 failed, 2 bad input or the NIC never came, 3 refused by a guard.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading

import dpdkeni


def say(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def hold(target: str, stop: threading.Event) -> None:
    """Block until asked to stop or until the target's namespace is gone (checked once a second)."""
    from dpdkeni.netns import resolve_target

    tgt = resolve_target(target)
    while not stop.wait(1.0):
        if not tgt.alive():
            say("target-gone", target=target)
            return


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mac", required=True, help="the NIC's MAC address")
    parser.add_argument("--to", required=True, help="target: pid:N, netns:NAME, container:ID or a netns path")
    parser.add_argument("--mode", default="netdev", choices=("netdev", "dpdk"))
    parser.add_argument("--ifname", default="eth0")
    parser.add_argument("--address", action="append", default=[], help="CIDR, repeatable")
    parser.add_argument("--gateway")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the NIC")
    args = parser.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        say("waiting", mac=args.mac, timeout=args.timeout)
        nic = dpdkeni.wait_for_nic(mac=args.mac, timeout=args.timeout)
        lease = dpdkeni.attach(nic, args.to, mode=args.mode, ifname=args.ifname, addresses=args.address,
                               gateway=args.gateway)
        say("attached", nic=lease.key, target=lease.target, ifname=args.ifname)
        try:
            hold(args.to, stop)
        finally:
            dpdkeni.release(nic)
            say("released", nic=lease.key)
    except dpdkeni.Error as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return exc.exit_code
    except TimeoutError:
        print(f"orchestrator: no NIC with MAC {args.mac} after {args.timeout:g} s", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
