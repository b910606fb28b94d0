"""The host side of the guest agent: JSON requests over QEMU's virtio-serial chardev socket."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from ..errors import Error
from .jsonline import JsonLineClient

log = logging.getLogger(__name__)


class AgentError(Error):
    """The guest agent did not answer, or answered with an error."""


@dataclass
class Result:
    """What a command run in the guest did."""

    argv: List[str]
    rc: Optional[int]
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def check(self) -> "Result":
        """Raise AgentError unless the command exited 0."""
        if self.rc != 0:
            raise AgentError(f"guest: {' '.join(self.argv)} exited {self.rc}: "
                             f"{(self.stderr or self.stdout).strip()[-2000:]}")
        return self

    def json(self) -> Any:
        """stdout parsed as one JSON document."""
        return json.loads(self.stdout)


class AgentClient(JsonLineClient):
    """Requests to the guest agent; replies matched by id (several requests may be in flight)."""

    error = AgentError
    name = "guest agent"

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        super().__init__(path, timeout)
        self.start_reader()

    def call(self, op: str, timeout: float = 60.0, **kw: Any) -> Dict[str, Any]:
        """One request; returns the reply or raises AgentError (error reply, no reply in time)."""
        reply = self.request({"op": op, **kw}, op, timeout)
        if "error" in reply:
            raise AgentError(f"guest agent {op}: {reply['error']}")
        return reply

    def wait_ready(self, timeout: float, alive=lambda: True) -> Dict[str, Any]:
        """Ping until the agent answers (it starts after the guest's init); ``alive()`` False aborts."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not alive():
                raise AgentError("guest agent: QEMU exited before the agent answered")
            try:
                return self.call("ping", timeout=2)
            except AgentError:
                if self.closed:
                    raise
        raise AgentError(f"guest agent: no answer within {timeout:.0f}s of boot")

    def run(self, argv: Sequence[str], timeout: float = 120.0, input: str = "",
            env: Optional[Dict[str, str]] = None) -> Result:
        """Run a command in the guest and wait for it."""
        reply = self.call("run", timeout=timeout + 10, argv=list(argv), limit=timeout, input=input,
                          env=env or {})
        if reply.get("timeout"):
            raise AgentError(f"guest: {' '.join(argv)} did not finish within {timeout:.0f}s: "
                             f"{reply.get('stderr', '')[-2000:]}")
        return Result(list(argv), reply["rc"], reply["stdout"], reply["stderr"])
