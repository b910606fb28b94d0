"""Where the kernel spends a netns move: the RTM_NEWLINK of a veth stand-in into a container and back, traced.

Run as root: ``python benchmarks/move_trace.py [--moves 20]``. Needs tracefs (mounted on /sys/kernel/tracing if it
is not). Kprobes and the function_graph tracer are not needed: the ``sched:sched_switch`` event with a
``stacktrace`` trigger, filtered to this thread, gives the kernel stack each time the request sleeps, and
``sched:sched_wakeup`` when that sleep ends; ``syscalls:sys_{enter,exit}_sendto`` bracket the request (the kernel handles an RTM_NEWLINK
inside sendto). Prints, per move (p50, p90, over ``--moves`` moves each way), the request's wall time and how much
of it was spent asleep in each kernel function (the first frame below the scheduler's), the rest on the CPU.
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TRACING = "/sys/kernel/tracing"
SCHED_FRAMES = ("trace_event", "__traceiter", "__schedule", "schedule", "io_schedule", "wait_for_completion",
                "__wait_for_common", "wait_for_common", "__mutex_lock", "mutex_lock", "__wait_rcu_gp")
SWITCH = re.compile(r"\s(\d+\.\d+): sched_switch: .*prev_pid=(\d+) .*next_pid=(\d+)")
WAKEUP = re.compile(r"\s(\d+\.\d+): sched_wakeup: .*pid=(\d+) ")
EVENTS = ("sched/sched_switch", "sched/sched_wakeup", "syscalls/sys_enter_sendto", "syscalls/sys_exit_sendto")
STAMP = re.compile(r"\s(\d+\.\d+): ")


def _w(path: str, value: str) -> None:
    with open(os.path.join(TRACING, path), "w") as f:
        f.write(value)


def _events(pid: int, on: bool) -> None:
    if on:
        _w("events/sched/sched_switch/filter", f"prev_pid=={pid} || next_pid=={pid}")
        _w("events/sched/sched_switch/trigger", f"stacktrace if prev_pid=={pid}")
        _w("events/sched/sched_wakeup/filter", f"pid=={pid}")
        for d in ("enter", "exit"):
            _w(f"events/syscalls/sys_{d}_sendto/filter", f"common_pid=={pid}")
    for ev in EVENTS:
        _w(f"events/{ev}/enable", "1" if on else "0")
    if not on:
        _w("events/sched/sched_switch/trigger", f"!stacktrace if prev_pid=={pid}")
        for ev in EVENTS:
            _w(f"events/{ev}/filter", "0")


def parse(lines: List[str], pid: int) -> Dict[str, List[Dict[str, float]]]:
    """Per marker label ("there"/"back"): one dict per move, ``total`` ms and ms asleep per kernel function."""
    out: Dict[str, List[Dict[str, float]]] = collections.defaultdict(list)
    label, cur, t_in, t_out, key = None, None, 0.0, None, ""
    i = 0
    while i < len(lines):
        line = lines[i]
        if "tracing_mark_write: MOVE " in line:
            label = line.rsplit("MOVE ", 1)[1].strip()
        elif label and " sys_sendto(" in line and cur is None:
            cur, t_in = collections.defaultdict(float), float(STAMP.search(line).group(1))
        elif cur is not None and "sys_sendto ->" in line:
            cur["total"] = (float(STAMP.search(line).group(1)) - t_in) * 1000
            out[label].append(dict(cur))
            label, cur = None, None
        elif cur is not None and t_out is not None and (m := WAKEUP.search(line)) and int(m.group(2)) == pid:
            cur[f"asleep in {key}"] += (float(m.group(1)) - t_out) * 1000  # woken: the sleep is over
            t_out = None
        elif cur is not None and (m := SWITCH.search(line)):
            ts, prev, nxt = float(m.group(1)), int(m.group(2)), int(m.group(3))
            if prev == pid:
                frames = []
                j = i + 1
                while j < len(lines) and (lines[j].startswith(" =>") or "<stack trace>" in lines[j]):
                    if lines[j].startswith(" =>"):
                        frames.append(lines[j][4:].strip())
                    j += 1
                own = [f for f in frames if not f.startswith(SCHED_FRAMES)]
                key, t_out = (own[0] if own else "?"), ts
            elif nxt == pid and t_out is not None:
                cur[f"asleep in {key}"] += (ts - t_out) * 1000
                t_out = None
        i += 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--moves", type=int, default=20)
    args = ap.parse_args()
    if not os.path.exists(os.path.join(TRACING, "trace")):
        subprocess.run(["mount", "-t", "tracefs", "nodev", TRACING], check=True)
    from pyroute2 import IPRoute
    from attach import KernelMove, _container  # benchmarks/attach.py, next to this script
    proc = _container()
    nic = f"dkt{os.getpid() % 10000}"
    with IPRoute() as ipr:
        ipr.link("add", ifname=nic, kind="veth", peer=nic + "p")
    move = KernelMove(nic, proc.pid)
    pid = os.getpid()  # the main thread: its tid is the pid
    try:
        _w("tracing_on", "0")
        _w("trace", "")
        _w("buffer_size_kb", "8192")
        _events(pid, True)
        with open(os.path.join(TRACING, "trace_marker"), "w") as marker:
            _w("tracing_on", "1")
            for _ in range(args.moves):
                for label, fn in (("there", move.there), ("back", move.back)):
                    marker.write(f"MOVE {label}\n")
                    marker.flush()
                    fn()
                    time.sleep(0.002)
            _w("tracing_on", "0")
        with open(os.path.join(TRACING, "trace")) as f:
            lines = f.read().splitlines()
        if os.environ.get("MOVE_TRACE_RAW"):
            with open(os.environ["MOVE_TRACE_RAW"], "w") as f:
                f.write("\n".join(lines))
    finally:
        _w("tracing_on", "0")
        _events(pid, False)
        _w("trace", "")
        move.close()
        proc.kill()
        proc.wait()
        with IPRoute() as ipr:
            for idx in ipr.link_lookup(ifname=nic):
                ipr.link("del", index=idx)
    moves = parse(lines, pid)
    for label in ("there", "back"):
        runs = moves.get(label, [])
        if not runs:
            print(f"{label}: no moves traced")
            continue
        keys = sorted({k for r in runs for k in r if k != "total"}, key=lambda k: -sum(r.get(k, 0) for r in runs))
        print(f"move {label} ({len(runs)} RTM_NEWLINK), ms          p50      p90")
        for k in ["total"] + keys:
            xs = [r.get(k, 0.0) for r in runs]
            print(f"  {k:<42} {statistics.median(xs):>7.2f} {sorted(xs)[int(0.9 * (len(xs) - 1))]:>8.2f}")
        rest = [r["total"] - sum(v for k, v in r.items() if k != "total") for r in runs]
        print(f"  {'on the CPU (the rest)':<42} {statistics.median(rest):>7.2f} {sorted(rest)[int(0.9 * (len(rest) - 1))]:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
