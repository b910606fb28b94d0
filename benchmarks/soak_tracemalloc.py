"""``dpdkeni ARGS`` with tracemalloc on, for ``lab_soak.py --tracemalloc`` (runs in the guest).

The first SIGUSR2 takes the baseline snapshot; each later one writes to ``DPDKENI_SOAK_TRACE`` the Python
allocations that grew since the baseline, largest first, with where they were made. Not part of the package: an
instrument to tell a leak in our code from allocator growth outside Python's objects.
"""
from __future__ import annotations

import gc
import os
import signal
import sys
import tracemalloc

FRAMES = 8
TOP = 20
_baseline = []


def _snapshot() -> tracemalloc.Snapshot:
    gc.collect()
    return tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])


def _dump(*_: object) -> None:
    path = os.environ.get("DPDKENI_SOAK_TRACE", "/tmp/dk-soak-trace.txt")
    snap = _snapshot()
    traced, peak = tracemalloc.get_traced_memory()
    with open(path, "a", encoding="utf-8") as out:
        if not _baseline:
            _baseline.append(snap)
            out.write(f"baseline: traced {traced} B (peak {peak} B)\n")
            return
        stats = snap.compare_to(_baseline[0], "traceback")
        grown = sum(s.size_diff for s in stats)
        out.write(f"\nsince the baseline: traced {traced} B (peak {peak} B), net {grown:+d} B\n")
        for s in stats[:TOP]:
            out.write(f"{s.size_diff:+d} B in {s.count_diff:+d} blocks\n")
            for line in s.traceback.format(most_recent_first=True)[:2 * FRAMES]:
                out.write(f"    {line}\n")


if __name__ == "__main__":
    tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR2, _dump)
    from dpdkeni.cli import main
    sys.exit(main(sys.argv[1:]))
