#!/usr/bin/env python3
"""``dpdkeni bind``+``unbind`` beside ``dpdk-devbind.py -b vfio-pci`` / ``-b <kernel driver>`` on the same
hot-plugged NIC, in the same QEMU guest, in the same run (the lab: :mod:`dpdkeni.lab`).

The reference is ``dpdk-devbind.py`` from Debian's ``dpdk`` package inside the guest. Each round runs both tools,
alternating which goes first, as a user would (a new Python process per command), timed inside the guest so the
agent's round trips do not count. A third row, ``dpdkeni-library``, times ``driver.bind``/``unbind`` inside one
Python process that imported dpdkeni beforehand: the work itself, without interpreter and import start-up (under
TCG, Python start-up and pyroute2's import dominate a CLI call). After every bind the ``driver`` link must be vfio-pci; after every unbind the
NIC must be back on its kernel driver, and the table says whether its interface name came back too.

    sudo .venv/bin/python benchmarks/lab_bind.py [--model virtio-net] [--rounds 5] [--seconds 240] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Dict, List

ROUND = r'''
import json, os, subprocess, sys, time
pci, kdrv, ifname, first = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
dev = "/sys/bus/pci/devices/" + pci

def driver():
    p = dev + "/driver"
    return os.path.basename(os.readlink(p)) if os.path.islink(p) else None

def name():
    for sub in [""] + [d + "/" for d in os.listdir(dev) if d.startswith("virtio")]:
        if os.path.isdir(dev + "/" + sub + "net"):
            return (os.listdir(dev + "/" + sub + "net") or [None])[0]
    return None

def wait_name(deadline=5.0):
    # udev renames the netdev after the kernel driver is back: wait (bounded) for it to settle
    end = time.monotonic() + deadline
    while time.monotonic() < end and name() != ifname:
        time.sleep(0.02)
    return name()

def run(argv):
    t = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    return time.monotonic() - t, p

TOOLS = {
    "dpdkeni": ([sys.executable, "-m", "dpdkeni", "bind", pci, "--driver", "vfio-pci"],
                [sys.executable, "-m", "dpdkeni", "unbind", pci]),
    "dpdk-devbind": (["dpdk-devbind.py", "-b", "vfio-pci", pci], ["dpdk-devbind.py", "-b", kdrv, pci]),
}
from dpdkeni import driver as lib  # imported before timing: this row is the work without process start-up

def in_process():
    t = time.monotonic()
    lib.bind(pci, "vfio-pci")
    tb, bound = time.monotonic() - t, driver()
    t = time.monotonic()
    lib.unbind(pci)
    return {"bind": tb, "unbind": time.monotonic() - t, "bound": bound, "back": driver(), "name": wait_name(),
            "err": ""}

out = {"dpdkeni-library": in_process()}
order = ["dpdkeni", "dpdk-devbind"] if first == "dpdkeni" else ["dpdk-devbind", "dpdkeni"]
for tool in order:
    bind, unbind = TOOLS[tool]
    tb, pb = run(bind)
    bound = driver()
    tu, pu = run(unbind)
    back = driver()
    out[tool] = {"bind": tb, "unbind": tu, "bound": bound, "back": back, "name": wait_name(),
                 "err": (pb.stderr + pu.stderr).strip()[-300:] if pb.returncode or pu.returncode else ""}
print(json.dumps(out))
'''


def _median(xs: List[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def measure(model: str, rounds: int, seconds: float) -> Dict[str, object]:
    """Boot the lab, plug one NIC, run the rounds (bounded by ``seconds`` after boot), unplug."""
    from dpdkeni.lab import Lab

    results: Dict[str, List[dict]] = {"dpdkeni": [], "dpdk-devbind": [], "dpdkeni-library": []}
    with Lab(progress=lambda m: print(m, file=sys.stderr, flush=True)) as lab:
        lab.sh("modprobe vfio-pci", check=True)
        nic = lab.plug(model)
        kdrv = lab.sh(f"basename $(readlink /sys/bus/pci/devices/{nic.pci}/driver)", check=True).stdout.strip()
        deadline = time.monotonic() + seconds
        try:
            for i in range(rounds):
                if time.monotonic() > deadline:
                    print(f"time bound reached after {i} rounds", file=sys.stderr)
                    break
                first = "dpdkeni" if i % 2 == 0 else "dpdk-devbind"
                res = lab.run(["python3", "-c", ROUND, nic.pci, kdrv, nic.ifname, first], timeout=300,
                              check=True)
                for tool, row in json.loads(res.stdout.strip().splitlines()[-1]).items():
                    results[tool].append(row)
        finally:
            lab.sh(f"python3 -m dpdkeni unbind {nic.pci} || true")
            lab.unplug(nic.id)
    return {"model": model, "pci": nic.pci, "ifname": nic.ifname, "kernel_driver": kdrv, "rounds": results}


def table(data: Dict[str, object]) -> str:
    """The comparison table with the dpdkeni/devbind ratio of the median bind+unbind time."""
    rows, medians = [], {}
    for tool, runs in data["rounds"].items():  # type: ignore[union-attr]
        ok = [r for r in runs if r["bound"] == "vfio-pci" and r["back"] == data["kernel_driver"]]
        total = [r["bind"] + r["unbind"] for r in ok]
        medians[tool] = _median(total)
        same_name = sum(1 for r in ok if r["name"] == data["ifname"])
        errors = {r["err"] for r in runs if r["err"]}
        rows.append(f"{tool:<16} {len(ok)}/{len(runs):<5} {_median([r['bind'] for r in ok]):>8.3f} "
                    f"{_median([r['unbind'] for r in ok]):>8.3f} {medians[tool]:>8.3f} "
                    f"{(min(total) if total else float('nan')):>8.3f} {same_name}/{len(ok):<4}"
                    + (f"  errors: {' | '.join(sorted(errors))}" if errors else ""))
    ratio = medians["dpdkeni"] / medians["dpdk-devbind"] if medians.get("dpdk-devbind") else float("nan")
    head = (f"{data['model']} {data['pci']} ({data['kernel_driver']}, if={data['ifname']}) in the QEMU guest\n"
            f"{'tool':<16} {'ok':<7} {'bind s':>8} {'unbind s':>8} {'median':>8} {'min':>8} name-back")
    lib = medians["dpdkeni-library"] / medians["dpdk-devbind"] if medians.get("dpdk-devbind") else float("nan")
    return "\n".join([head, *rows, f"ratio dpdkeni/dpdk-devbind (median bind+unbind, CLI each): {ratio:.2f}",
                      f"ratio dpdkeni library (in one process)/dpdk-devbind CLI: {lib:.2f}"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="virtio-net", choices=["virtio-net", "e1000", "e1000e"])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=240.0, help="bound on the measuring after boot")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    data = measure(args.model, args.rounds, args.seconds)
    print(json.dumps(data, indent=2) if args.json else table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
