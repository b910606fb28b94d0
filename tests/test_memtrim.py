"""memtrim: glibc's malloc_trim gives a fragmented heap's free pages back (measured on a real process), and the
daemon's Trimmer calls it only when idle, at most once a period."""
from __future__ import annotations

import json
import subprocess
import sys

from dpdkeni.memtrim import Trimmer

# a heap fragmented by threads: 4 threads each allocate 60,000 blocks of 2 KiB (past Python's small-object
# allocator, so glibc's, in per-thread arenas) and free all but every 50th, so no arena can shrink from its top
FRAGMENT = r"""
import json, sys, threading
sys.path.insert(0, sys.argv[1])
from dpdkeni import memtrim

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))

kept = []
def work():
    blocks = [bytearray(2048) for _ in range(60000)]
    kept.extend(blocks[::50])
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
before = rss()
trimmed = memtrim.trim()
print(json.dumps({"before": before, "after": rss(), "trimmed": trimmed, "kept": len(kept)}))
"""


def test_trim_gives_a_fragmented_heaps_free_pages_back():
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", FRAGMENT, root], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    # 480 MB were allocated, 9.6 MB are still held: most of the rest must leave the RSS
    assert got["trimmed"] is True and got["kept"] == 4800, got
    assert got["before"] - got["after"] > 200 * 1024, got


def test_the_trimmer_runs_only_when_idle_and_once_a_period():
    now = [100.0]
    t = Trimmer(period=30.0, clock=lambda: now[0])
    assert (t.maybe(idle=True), t.trims) == (False, 0)      # not a period since it started
    now[0] = 131.0
    assert (t.maybe(idle=False), t.trims) == (False, 0)     # busy: not now
    assert (t.maybe(idle=True), t.trims) == (True, 1)
    now[0] = 150.0
    assert (t.maybe(idle=True), t.trims) == (False, 1)      # within the period of the last
    now[0] = 161.5
    assert (t.maybe(idle=True), t.trims) == (True, 2)
