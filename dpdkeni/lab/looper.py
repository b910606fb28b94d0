"""``Looper``: a daemon thread that calls ``tick()`` every ``interval`` seconds until ``tick`` returns True or
``stop()`` is called (what the lab's console watcher and heartbeat share)."""
from __future__ import annotations

import threading
from typing import TypeVar

L = TypeVar("L", bound="Looper")


class Looper:
    """Subclasses define :meth:`tick`; ``start()`` returns self, ``stop()`` ends the thread (idempotent)."""

    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self: L) -> L:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def stopped(self) -> bool:
        return self._stop.is_set()

    def tick(self) -> bool:
        """One look; True ends the loop."""
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            if self.tick():
                return
