"""A bounded pool of worker threads with one lane per key: the jobs of one key run one after the other, in the
order given; jobs of different keys run side by side, at most ``workers`` at once.

The daemon keys its work by NIC, so one NIC's events are handled in order and a slow handoff (a DHCP exchange,
a target command) delays no other NIC.
"""
from __future__ import annotations

import collections
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Deque, Dict, List, Tuple

log = logging.getLogger(__name__)

_Job = Tuple[Callable[..., Any], Tuple[Any, ...]]


class Lanes:
    """``submit(key, func, *args)``: run ``func(*args)`` after the jobs of ``key`` submitted before it."""

    def __init__(self, workers: int, name: str = "lane") -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)
        self._lock = threading.Lock()
        self._lanes: Dict[str, Deque[_Job]] = {}  # key -> its jobs not done yet (the first one running)
        self._closed = False

    def submit(self, key: str, func: Callable[..., Any], *args: Any) -> None:
        """Queue ``func(*args)`` in ``key``'s lane (dropped once :meth:`close` was called)."""
        with self._lock:
            if self._closed:
                return
            lane = self._lanes.get(key)
            if lane is not None:
                lane.append((func, args))
                return
            self._lanes[key] = collections.deque([(func, args)])
        self._pool.submit(self._run, key)

    def busy(self, key: str) -> bool:
        """Whether ``key`` has a job running or queued."""
        with self._lock:
            return key in self._lanes

    def keys(self) -> List[str]:
        """The keys with a job running or queued, sorted."""
        with self._lock:
            return sorted(self._lanes)

    def pending(self) -> int:
        """How many keys have work running or queued."""
        with self._lock:
            return len(self._lanes)

    def _run(self, key: str) -> None:
        while True:
            with self._lock:
                func, args = self._lanes[key][0]
            try:
                func(*args)
            except Exception:  # noqa: BLE001  # the caller guards its jobs; this only keeps the lane going
                log.exception("job of %s failed", key)
            with self._lock:
                lane = self._lanes[key]
                lane.popleft()
                if not lane or self._closed:
                    del self._lanes[key]
                    return

    def close(self) -> None:
        """Drop the queued jobs and wait for the running ones to end."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True)
