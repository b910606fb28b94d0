#!/usr/bin/env python3
"""Kernel uevent -> NicEvent latency and storm throughput of ``dpdkeni.events.Watcher``, beside the floor: a
minimal raw ``NETLINK_KOBJECT_UEVENT`` reader (recv + split, nothing else) reading the same uevents in the
same run.

Both readers run as their own processes and note ``time.monotonic()`` (one clock for all processes) when they
see each stand-in NIC (one end of a veth pair, named with this run's prefix). The driver process makes the
links and notes the time just before each ``RTM_NEWLINK``:

- latency: ``--rounds`` veth pairs one at a time, ``--gap`` apart; per NIC, reader time - creation time;
- storm: ``--storm`` pairs back to back from one netlink socket; throughput = NICs / (last seen - first
  created); lost = NICs never reported. The Watcher keeps its default receive buffer (an overflow makes it
  re-enumerate); the floor gets 8 MiB so it loses nothing.

    sudo .venv/bin/python benchmarks/events.py [--rounds 200] [--storm 256] [--json]

Every link this makes is deleted at the end, also on failure or Ctrl-C; the whole run is bounded by --seconds.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List

NETLINK_KOBJECT_UEVENT = 15


def floor_reader(prefix: str) -> Dict[str, float]:
    """The floor: a raw uevent socket; an ``add@.../net/<prefix>…a`` message is one NIC seen."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_KOBJECT_UEVENT)
    sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
    sock.bind((0, 1))
    sock.settimeout(0.2)
    seen: Dict[str, float] = {}
    marker = f"/net/{prefix}".encode()
    print("ready", flush=True)
    while not STOP:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        now = time.monotonic()
        head = data.split(b"\0", 1)[0]
        if head.startswith(b"add@") and marker in head:
            name = head.rsplit(b"/", 1)[1].decode()
            if name.endswith("a"):
                seen.setdefault(name, now)
    return seen


def watcher_reader(prefix: str) -> Dict[str, float]:
    """dpdkeni's Watcher with a filter for this run's stand-ins; the time an ``added`` NicEvent is returned."""
    from dpdkeni.events import Watcher

    mine = lambda nic: nic.model == "veth" and (nic.ifname or "").startswith(prefix) \
        and nic.ifname.endswith("a")  # noqa: E731
    seen: Dict[str, float] = {}
    dupes = 0
    with Watcher(source="kernel", models=mine) as watcher:
        print("ready", flush=True)
        while not STOP:
            for event in watcher.poll(0.2):
                now = time.monotonic()
                if event.action == "added":
                    dupes += event.nic.ifname in seen
                    seen.setdefault(event.nic.ifname, now)
        seen["__stats__"] = {**watcher.stats, "dupes": dupes}  # type: ignore[assignment]
    return seen


STOP = False


def reader_main(kind: str, prefix: str) -> None:
    def stop(*_):
        global STOP
        STOP = True
    signal.signal(signal.SIGTERM, stop)
    seen = (floor_reader if kind == "floor" else watcher_reader)(prefix)
    print(json.dumps(seen), flush=True)


# ----- the driver
def start_reader(kind: str, prefix: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--reader", kind, "--prefix", prefix],
                            stdout=subprocess.PIPE, text=True)
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"{kind} reader did not start")
    return proc


def stop_reader(proc: subprocess.Popen) -> Dict[str, float]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def pct(values: List[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


def make_links(ipr, names: List[str], gap: float, deadline: float) -> Dict[str, float]:
    created = {}
    for name in names:
        if time.monotonic() > deadline:
            break
        created[name] = time.monotonic()
        ipr.link("add", ifname=name, kind="veth", peer=name[:-1] + "b")
        if gap:
            time.sleep(gap)
    return created


def cleanup(prefix: str) -> None:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for link in ipr.get_links():
            if (link.get_attr("IFLA_IFNAME") or "").startswith(prefix) and \
                    link.get_attr("IFLA_IFNAME").endswith("a"):
                try:
                    ipr.link("del", index=link["index"])  # deletes the peer too
                except Exception:
                    pass


def phase(prefix: str, names: List[str], gap: float, deadline: float) -> Dict[str, dict]:
    from pyroute2 import IPRoute
    readers = {kind: start_reader(kind, prefix) for kind in ("floor", "watcher")}
    try:
        with IPRoute() as ipr:
            created = make_links(ipr, names, gap, deadline)
        wait = time.monotonic() + 10
        time.sleep(0.5)
        while time.monotonic() < min(wait, deadline + 10):
            time.sleep(0.2)  # let the readers catch up (bounded)
            break
        results = {kind: stop_reader(proc) for kind, proc in readers.items()}
    finally:
        for proc in readers.values():
            if proc.poll() is None:
                proc.kill()
        cleanup(prefix)
    out = {}
    floor_seen, watcher_seen = results["floor"], results["watcher"]
    behind = [(watcher_seen[n] - floor_seen[n]) * 1000 for n in created if n in floor_seen and n in watcher_seen]
    for kind, seen in results.items():
        stats = seen.pop("__stats__", {})
        lat = [(seen[n] - created[n]) * 1000 for n in created if n in seen]
        last = max((seen[n] for n in created if n in seen), default=float("nan"))
        span = last - min(created.values())
        out[kind] = {"n": len(created), "seen": len(lat), "lost": len(created) - len(lat),
                     "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "max_ms": max(lat, default=float("nan")),
                     "per_s": len(lat) / span if span > 0 else float("nan"), "stats": stats}
    out["behind"] = {"p50_ms": pct(behind, 0.5), "p99_ms": pct(behind, 0.99), "max_ms": max(behind, default=0)}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, help="NICs made one at a time for the latency")
    ap.add_argument("--gap", type=float, default=0.02, help="seconds between them")
    ap.add_argument("--storm", type=int, default=256, help="NICs made back to back")
    ap.add_argument("--seconds", type=float, default=120, help="bound on the whole run")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--reader", choices=("floor", "watcher"), help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reader:
        reader_main(args.reader, args.prefix)
        return 0
    deadline = time.monotonic() + args.seconds
    tag = f"bq{os.getpid() % 10000}"
    lat = phase(tag + "l", [f"{tag}l{i}a" for i in range(args.rounds)], args.gap, deadline - args.seconds / 3)
    storm = phase(tag + "s", [f"{tag}s{i}a" for i in range(args.storm)], 0.0, deadline)
    report = {"latency": lat, "storm": storm}
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    f, w = lat["floor"], lat["watcher"]
    print(f"uevent -> seen, {f['n']} stand-in NICs one at a time ({args.gap * 1000:g} ms apart)")
    print(f"{'reader':<32}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'lost':>6}")
    print(f"{'raw NETLINK_KOBJECT_UEVENT':<32}{f['p50_ms']:>9.2f}{f['p99_ms']:>9.2f}{f['max_ms']:>9.2f}{f['lost']:>6}")
    print(f"{'dpdkeni Watcher (NicEvent)':<32}{w['p50_ms']:>9.2f}{w['p99_ms']:>9.2f}{w['max_ms']:>9.2f}{w['lost']:>6}")
    print(f"{'watcher - floor':<32}{w['p50_ms'] - f['p50_ms']:>9.2f}{w['p99_ms'] - f['p99_ms']:>9.2f}")
    print(f"{'watcher / floor':<32}{w['p50_ms'] / f['p50_ms']:>9.2f}{w['p99_ms'] / f['p99_ms']:>9.2f}")
    b = lat["behind"]
    print(f"{'per NIC, watcher behind floor':<32}{b['p50_ms']:>9.2f}{b['p99_ms']:>9.2f}{b['max_ms']:>9.2f}")
    f, w = storm["floor"], storm["watcher"]
    print(f"\nstorm: {f['n']} stand-in NICs back to back")
    print(f"{'reader':<32}{'NICs/s':>9}{'lost':>6}{'twice':>7}  watcher stats")
    print(f"{'raw NETLINK_KOBJECT_UEVENT':<32}{f['per_s']:>9.0f}{f['lost']:>6}{'-':>7}")
    print(f"{'dpdkeni Watcher (NicEvent)':<32}{w['per_s']:>9.0f}{w['lost']:>6}{w['stats'].get('dupes', 0):>7}  "
          + ", ".join(f"{k}={v}" for k, v in sorted(w["stats"].items()) if k != "dupes"))
    print(f"{'watcher / floor':<32}{w['per_s'] / f['per_s']:>9.2f}")
    ok = lat["watcher"]["p99_ms"] - lat["floor"]["p99_ms"] <= 5 and w["lost"] == 0
    print(f"\ngoal (p99 within 5 ms of the floor, zero lost): {'met' if ok else 'NOT met'} "
          f"(p99 difference {lat['watcher']['p99_ms'] - lat['floor']['p99_ms']:.2f} ms, lost {w['lost']}); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
