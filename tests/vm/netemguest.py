"""Run in the lab's guest by tests/vm/test_pmdtest_netem_vm.py: pmdtest's netem cross-checks on a kernel that has
sch_netem (the guest's Debian kernel; this project's host kernel has none, so tests/test_pmdtest_impair.py skips
them there). The same topology, reflector and trial as that host test: namespaces A and B joined by a veth, a tc
mirred reflector on b0, the impairment on b0's root qdisc, our C stream on a0.

    python3 netemguest.py delay|loss|reorder

prints one JSON object with what the test compares. The rates are the emulated CPU's, well below what it carries.
"""
from __future__ import annotations

import json
import sys

from reflectors import mirred, netem, trial
from dpdkeni.testbed.topo import Topo

DELAY_RATE, LOSS_RATE, REORDER_RATE = 500, 2000, 1000
LOSS_FRAMES = 40000     # 1 % of 40,000: the binomial spread is 0.05 %, so +-0.2 % is 4 sigma


def _summary(t) -> dict:
    return {"tx": t.tx_packets, "rx": t.rx_packets, "lost": t.lost, "loss_ratio": t.loss_ratio,
            "reordered": t.reordered, "duplicates": t.duplicates, "rate_ok": t.rate_ok, "note": t.note,
            "kernel": t.kernel}


def main(check: str) -> dict:
    with Topo("direct") as topo:
        mirred(topo)
        if check == "delay":
            base = trial(topo, DELAY_RATE, 2.0)
            netem(topo, "delay 2ms")
            delayed = trial(topo, DELAY_RATE, 2.0)
            return {"base_p50_ns": base.latency.percentile(50), "delayed_p50_ns": delayed.latency.percentile(50),
                    "base": _summary(base), "delayed": _summary(delayed)}
        if check == "loss":
            netem(topo, "loss 1%")
            return _summary(trial(topo, LOSS_RATE, 3 * LOSS_FRAMES / LOSS_RATE, max_frames=LOSS_FRAMES))
        if check == "reorder":
            # the host test's "delay 1ms" at 5000 frames/s has 5 frames in the queue to overtake; at this rate
            # (one frame a ms) 1 ms leaves about none, so 10 ms
            netem(topo, "delay 10ms reorder 25% 50%")
            return _summary(trial(topo, REORDER_RATE, 2.0))
    raise SystemExit(f"netemguest: unknown check {check!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
