#!/usr/bin/env python3
"""Reproduce the lab guest's livelock and compare QEMU CPU settings: start and delete runc containers in a loop
and count the kernel faults (soft lockups, RCU stalls, ...) the guest's console reports, per setting.

Why runc: starting a container attaches a cgroup device BPF program, which flips a static key in the guest
kernel, which patches kernel text through ``int3`` on every CPU while the other vCPU runs that code. Under
multi-threaded TCG the guest was seen stuck for good at such a patch site (``asm_exc_int3`` in
``kmem_cache_alloc``). ``--load`` keeps the other vCPU busy in the allocator meanwhile (fork+mmap in a loop), to
make the race likelier.

Each setting boots its own guest. A fault (seen by the lab's console watcher, :mod:`dpdkeni.lab.console`) or a
guest that stops answering is counted, the guest is rebooted, and the loop goes on until the iterations are done
(or ``--max-faults`` faults). The table gives iterations, faults, seconds per iteration (median, over the
iterations that completed) and boot seconds.

    sudo .venv/bin/python benchmarks/lab_lockup.py [--iterations 100] [--setting multi,max,2 ...]
                                                   [--trigger runc|tracepoint ...] [--fresh] [--load] [--json]

A setting is ``THREAD,MODEL,CPUS`` (``multi,max,2`` is what the lab used when the livelock was seen).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

from dpdkeni.errors import Error, GuestFaultError
from dpdkeni.lab import Lab
from dpdkeni.lab.agent import AgentError
from dpdkeni.lab.qemu import CpuSetup

DEFAULT_SETTINGS = ["multi,max,2", "single,max,2", "multi,Nehalem,2", "multi,max,1"]
# what one iteration does in the guest: start and delete a container (runc attaches a cgroup device program,
# which flips the cgroup-BPF static key on and off), and/or switch the kmem_cache_alloc tracepoint on and off
# (a static key whose patch site is the one the livelocked vCPUs sat on)
TRIGGERS = {
    "runc": "runc run -d -b {bundle} {name} </dev/null >/dev/null 2>&1 && runc delete --force {name}",
    "tracepoint": "echo 1 > {tp} && echo 0 > {tp}",
    # the same mechanism, harder and cheap: the schedstats static key (patch sites in the scheduler's hot paths,
    # which the load runs through) on and off ten times; nothing is recorded while it is on
    "schedstats": "for i in 1 2 3 4 5 6 7 8 9 10; do echo 1 > /proc/sys/kernel/sched_schedstats && "
                  "echo 0 > /proc/sys/kernel/sched_schedstats || exit 1; done",
}
TRACEPOINT = "/sys/kernel/tracing/events/kmem/kmem_cache_alloc/enable"
# the other vCPU in the kernel's allocator while runc starts containers: fork, mmap, touch, exit, bounded
LOAD = ("i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); "
        "head -c 4M /dev/zero | cat >/dev/null; ls /proc/self/ >/dev/null; done")


@dataclass
class Outcome:
    """What one setting did."""

    setting: str
    iterations: int = 0
    faults: int = 0
    hangs: int = 0
    seconds: List[float] = field(default_factory=list)
    boots: List[float] = field(default_factory=list)
    lines: List[str] = field(default_factory=list)

    def row(self) -> dict:
        return {"setting": self.setting, "iterations": self.iterations, "lockups": self.faults + self.hangs,
                "faults": self.faults, "hangs": self.hangs,
                "s_per_iteration": round(statistics.median(self.seconds), 3) if self.seconds else None,
                "boot_s": round(statistics.median(self.boots), 1) if self.boots else None,
                "fault_lines": self.lines[:5]}


def parse_setting(text: str) -> CpuSetup:
    """``multi,max,2`` -> CpuSetup; exit 2 with one line on a malformed one."""
    parts = text.split(",")
    try:
        thread, model, cpus = parts
        return CpuSetup(thread=thread, model=model, cpus=int(cpus))
    except (ValueError, Error) as exc:
        raise SystemExit(f"lab_lockup: bad setting {text!r} (THREAD,MODEL,CPUS e.g. multi,max,2): {exc}")


def boot(setup: CpuSetup, load: bool, out: Outcome, quiet: bool) -> tuple:
    """A fresh guest with the container bundle written (and the load started); returns (lab, bundle)."""
    lab = Lab(progress=(lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True)), cpu=setup)
    started = time.monotonic()
    lab.start()
    out.boots.append(time.monotonic() - started)
    bundle = lab.runc_bundle("lk", ["sleep", "3600"])
    lab.sh("mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing", check=True)
    if load:
        for _ in range(max(1, setup.cpus - 1)):
            lab.spawn(["sh", "-c", LOAD])
    return lab, bundle


def run_setting(setup: CpuSetup, iterations: int, load: bool, max_faults: int, seconds: float,
                quiet: bool, triggers: List[str], fresh: bool = False) -> Outcome:
    """Iterate ``triggers`` on guests booted with ``setup`` until done, too many faults or out of time."""
    out = Outcome(setup.describe())
    deadline = time.monotonic() + seconds
    lab: Optional[Lab] = None
    try:
        while out.iterations < iterations and out.faults + out.hangs < max_faults and time.monotonic() < deadline:
            if lab is None:
                lab, bundle = boot(setup, load, out, quiet)
            name = f"lk{out.iterations}"
            t0 = time.monotonic()
            try:
                script = " && ".join(TRIGGERS[t] for t in triggers)
                lab.sh(script.format(bundle=bundle, name=name, tp=TRACEPOINT), timeout=60, check=True)
            except GuestFaultError as exc:
                out.faults += 1
                out.lines.append(exc.line)
                print(f"  {setup.describe()}: iteration {out.iterations}: {exc.kind}: {exc.line}",
                      file=sys.stderr, flush=True)
                lab.stop()
                lab = None
                continue
            except AgentError as exc:
                out.hangs += 1
                out.lines.append(str(exc).splitlines()[0])
                print(f"  {setup.describe()}: iteration {out.iterations}: no answer: {str(exc).splitlines()[0]}",
                      file=sys.stderr, flush=True)
                lab.stop()
                lab = None
                continue
            out.seconds.append(time.monotonic() - t0)
            out.iterations += 1
            if fresh:               # the first container of a boot is the one that switches memcg kmem on
                lab.stop()
                lab = None
            if not quiet and out.iterations % 25 == 0:
                print(f"  {setup.describe()}: {out.iterations} iterations, {out.faults + out.hangs} lockups",
                      file=sys.stderr, flush=True)
    finally:
        if lab is not None:
            lab.stop()
    return out


def table(rows: List[dict]) -> str:
    head = f"{'setting':<34} {'iterations':>10} {'lockups':>8} {'s/iteration':>12} {'boot s':>7}"
    lines = [head, "-" * len(head)]
    base = rows[0]["s_per_iteration"] if rows and rows[0]["s_per_iteration"] else None
    for r in rows:
        spi = r["s_per_iteration"]
        ratio = f" ({spi / base:.2f}x)" if base and spi else ""
        lines.append(f"{r['setting']:<34} {r['iterations']:>10} {r['lockups']:>8} "
                     f"{(f'{spi:.2f}' if spi else '-'):>12}{ratio} {r['boot_s'] or '-':>7}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=100, help="container starts per setting (default 100)")
    ap.add_argument("--setting", action="append", help="THREAD,MODEL,CPUS (repeatable; default: the matrix)")
    ap.add_argument("--trigger", action="append", choices=sorted(TRIGGERS),
                    help="what an iteration does (repeatable; default: runc)")
    ap.add_argument("--fresh", action="store_true",
                    help="a new guest for every iteration (the first container start of a boot, where the "
                         "livelock was seen: runc's pid was 382)")
    ap.add_argument("--load", action="store_true", help="keep the other vCPUs busy in the allocator meanwhile")
    ap.add_argument("--max-faults", type=int, default=3, help="stop a setting after this many lockups")
    ap.add_argument("--seconds", type=float, default=900, help="time bound per setting")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    if not 1 <= args.iterations <= 10000:
        raise SystemExit("lab_lockup: --iterations must be 1..10000")
    setups = [parse_setting(s) for s in (args.setting or DEFAULT_SETTINGS)]
    rows = []
    for setup in setups:
        rows.append(run_setting(setup, args.iterations, args.load, args.max_faults, args.seconds, args.quiet,
                                args.trigger or ["runc"], args.fresh).row())
        if not args.json:
            print(table(rows[-1:]) if len(rows) == 1 else table(rows).splitlines()[-1], flush=True)
    if args.json:
        json.dump(rows, sys.stdout, indent=1)
        print()
    else:
        print("\n" + table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
