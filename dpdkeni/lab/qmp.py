"""A small QMP (QEMU Machine Protocol) client: commands with ids, and events kept for ``wait_event``."""
from __future__ import annotations

import json
import logging
import time
from typing import Any, Callable, Dict, List, Optional

from ..errors import QMPError
from .jsonline import JsonLineClient

log = logging.getLogger(__name__)


class QMP(JsonLineClient):
    """One connection to QEMU's QMP socket: commands by id, events kept for ``wait_event``."""

    error = QMPError
    name = "QMP"

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__(path, timeout)
        self.events: List[Dict[str, Any]] = []
        greeting = json.loads(self.file.readline() or b"{}")
        if "QMP" not in greeting:
            raise QMPError(f"QMP: unexpected greeting {greeting!r}")
        self.start_reader()
        self.execute("qmp_capabilities")

    def on_message(self, msg: Dict[str, Any]) -> None:
        if "event" in msg:
            self.events.append(msg)

    def execute(self, command: str, timeout: float = 30.0, **arguments: Any) -> Any:
        """Run one QMP command and return its ``return`` value; raises QMPError on an ``error`` reply."""
        msg: Dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        log.debug("qmp -> %s", msg)
        reply = self.request(msg, command, timeout)
        if "error" in reply:
            raise QMPError(f"QMP {command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def wait_event(self, name: str, match: Optional[Callable[[Dict[str, Any]], bool]] = None,
                   timeout: float = 30.0) -> Dict[str, Any]:
        """Wait for (and consume) the first event called ``name`` whose data ``match`` accepts."""
        def find() -> Optional[Dict[str, Any]]:
            for ev in self.events:
                if ev["event"] == name and (match is None or match(ev.get("data", {}))):
                    self.events.remove(ev)
                    return ev
            return None

        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                ev = find()
                if ev is not None:
                    return ev
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    raise QMPError(f"QMP: no {name} event within {timeout:.0f}s")
                self.cond.wait(left)
