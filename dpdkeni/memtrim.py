"""Hand freed heap memory back to the kernel (glibc's ``malloc_trim``), for the services that run for weeks.

A Python service that does its work on a pool of threads frees what it allocated, but the C heap (glibc's
per-thread arenas, and what Python's allocator asks it for) keeps the freed pages, fragmented among live ones, so
its RSS creeps up with the history of its allocations rather than following what it holds. ``malloc_trim(0)``
returns the free pages of every arena (``madvise(MADV_DONTNEED)`` on the free chunks, not only the top of the
heap). :class:`Trimmer` calls it when the service is idle, at most once a period. A C library without
``malloc_trim`` (musl) makes it a no-op.
"""
from __future__ import annotations

import ctypes
import time
from typing import Any, Callable, Optional

_UNSET: Any = object()
_malloc_trim: Any = _UNSET


def _function() -> Optional[Callable[[int], int]]:
    global _malloc_trim
    if _malloc_trim is _UNSET:
        _malloc_trim = None
        # the C library already loaded in this process (no find_library: it runs ldconfig, on the daemon's loop)
        _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
        if _malloc_trim is not None:
            _malloc_trim.argtypes = [ctypes.c_size_t]
            _malloc_trim.restype = ctypes.c_int
    return _malloc_trim


def trim() -> bool:
    """Return the C heap's free pages to the kernel; True when some were (False too where it cannot)."""
    fn = _function()
    return bool(fn(0)) if fn is not None else False


def rss_kib(status: str = "/proc/self/status") -> int:
    """This process's resident set, KiB (0 where /proc does not say)."""
    try:
        with open(status, encoding="ascii") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0


class Trimmer:
    """``maybe(idle)``: :func:`trim` when ``idle`` and ``period`` seconds passed since the last trim."""

    def __init__(self, period: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.period, self.clock = period, clock
        self.last = clock()
        self.trims = 0

    def maybe(self, idle: bool) -> bool:
        """Trim if it is time and the caller is idle; True when a trim ran."""
        now = self.clock()
        if not idle or now - self.last < self.period:
            return False
        self.last = now
        self.trims += 1
        trim()
        return True
