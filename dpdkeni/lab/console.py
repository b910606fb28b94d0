"""Watch the guest's serial console for a kernel that has wedged or died, so that the lab call in progress fails
at once with the console's words instead of waiting out its timeout.

A soft lockup, an RCU stall, a panic, a ``BUG:`` or an ``Oops`` means the guest will not answer in any useful
time (one livelock seen under multi-threaded TCG never recovered in 500 s; see DESIGN.md, "The lab"). The
watcher reads the console log QEMU writes, a few times a second, and calls ``on_fault`` once with a
:class:`GuestFaultError` that carries the matching line and the lines around it.
"""
from __future__ import annotations

import logging
import re
import threading
from typing import Callable, List, Optional

from ..errors import GuestFaultError
from .looper import Looper

log = logging.getLogger(__name__)

# what a kernel prints when it will not come back by itself (order: the most specific name first)
FAULT_PATTERNS = [
    ("soft lockup", re.compile(r"soft lockup")),
    ("hard lockup", re.compile(r"hard LOCKUP|hard lockup", re.I)),
    ("RCU stall", re.compile(r"rcu_\w+ detected stalls|rcu: INFO: .*detected stall")),
    ("kernel panic", re.compile(r"Kernel panic")),
    ("kernel BUG", re.compile(r"\bBUG:")),
    ("kernel Oops", re.compile(r"\bOops\b")),
]
EXCERPT_BEFORE, EXCERPT_AFTER = 10, 30


def classify(line: str) -> Optional[str]:
    """The kind of fault a console line reports (``"soft lockup"``, ...), or None for an ordinary line."""
    for kind, pattern in FAULT_PATTERNS:
        if pattern.search(line):
            return kind
    return None


class ConsoleWatch(Looper):
    """A thread that tails ``path`` from ``offset`` and reports the first fault line through ``on_fault``.

    ``pending()`` names what the lab was doing (for the error's first line). ``stop()`` ends the thread.
    """

    def __init__(self, path: str, on_fault: Callable[[GuestFaultError], None],
                 pending: Callable[[], str] = lambda: "", interval: float = 0.2, offset: int = 0) -> None:
        super().__init__("lab-console-watch", interval)
        self.path, self.on_fault, self.pending = path, on_fault, pending
        self.offset = offset
        self.fault: Optional[GuestFaultError] = None
        self._lines: List[str] = []
        self._partial = b""
        self._lock = threading.Lock()      # check() runs in the watcher's thread and, on demand, in others

    def tick(self) -> bool:
        return self.check()

    def check(self) -> bool:
        """Read what the console added since the last look; True once a fault was found (and reported)."""
        with self._lock:
            return self._check()

    def _check(self) -> bool:
        if self.fault is not None:
            return True
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return False
        self.offset += len(data)
        data = self._partial + data
        *complete, self._partial = data.split(b"\n")
        start = len(self._lines)
        self._lines += [raw.decode(errors="replace").rstrip("\r") for raw in complete]
        for index in range(start, len(self._lines)):
            if classify(self._lines[index]):
                self._found(index)
                return True
        del self._lines[:-EXCERPT_BEFORE]
        return False

    def _found(self, index: int) -> None:
        line = self._lines[index]
        kind = classify(line) or "fault"
        # the lines a kernel prints right after the first one (stack, registers) are most of the story:
        # give them a moment to arrive, then report
        self._stop.wait(1.0)
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                more = (self._partial + f.read()).decode(errors="replace").splitlines()
        except OSError:
            more = []
        excerpt = (self._lines[max(0, index - EXCERPT_BEFORE):] + more)[:EXCERPT_BEFORE + 1 + EXCERPT_AFTER]
        self.fault = GuestFaultError(kind, line.strip(), self.pending(), "\n".join(excerpt))
        log.info("%s", self.fault.message)
        self.on_fault(self.fault)

