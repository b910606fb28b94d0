"""Notice a guest that wedged without a word on its console: while a request is in flight, ping the agent
every few seconds; no answer for ``silence`` seconds means the guest is gone.

The agent serves every request in its own thread, so it answers a ping even while a long command runs; a guest
whose kernel still schedules answers within a second or two under TCG, a few seconds when it is very busy. The
bound is therefore generous (45 s by default) and still far shorter than a long command's own timeout.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from ..errors import Error, GuestFaultError
from .jsonline import JsonLineClient
from .looper import Looper

log = logging.getLogger(__name__)

SILENCE = 45.0
INTERVAL = 5.0


class Heartbeat(Looper):
    """A thread that pings ``client`` while it has requests in flight and reports a silent guest once."""

    def __init__(self, client: JsonLineClient, on_silence: Callable[[GuestFaultError], None],
                 context: Callable[[], str] = lambda: "", silence: float = SILENCE,
                 interval: float = INTERVAL) -> None:
        super().__init__("lab-heartbeat", interval)
        self.client, self.on_silence, self.context, self.silence = client, on_silence, context, silence

    def tick(self) -> bool:
        if self.client.closed:
            return True
        doing = self.client.doing()
        if not doing:
            return False
        started = time.monotonic()
        try:
            self.client.request({"op": "ping"}, "ping", self.silence, track=False)
            return False
        except Error:
            if self.client.closed or self.stopped():
                return True         # failed or closed meanwhile: whoever did that has said why
        waited = time.monotonic() - started
        fault = GuestFaultError("no answer", f"the guest agent did not answer a ping for {waited:.0f}s", doing,
                                self.context())
        log.info("%s", fault.message)
        self.on_silence(fault)
        return True
