"""The host side of the guest agent: JSON requests over QEMU's virtio-serial chardev socket."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

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


# how long the agent may take to answer each kind of request that carries no limit of its own (it answers these
# at once unless the guest is starved); requests with a ``limit`` get that plus REPLY_GRACE
OP_TIMEOUTS = {"ping": 5.0, "spawn": 30.0, "poll": 15.0, "read": 30.0, "write": 30.0}
REPLY_GRACE = 15.0


class AgentClient(JsonLineClient):
    """Requests to the guest agent; replies matched by id (several requests may be in flight).

    ``context()`` (the lab's console tail) is added to a "no reply" error, so a hang names its last output.
    """

    error = AgentError
    name = "guest agent"

    def __init__(self, path: str, timeout: float = 30.0, context: Callable[[], str] = lambda: "") -> None:
        super().__init__(path, timeout)
        self.context = context
        self.start_reader()

    def call(self, op: str, timeout: Optional[float] = None, **kw: Any) -> Dict[str, Any]:
        """One request; returns the reply or raises AgentError (error reply, no reply in time).

        ``timeout`` defaults to the request's ``limit`` plus a grace, or to the op's own bound."""
        if timeout is None:
            timeout = kw["limit"] + REPLY_GRACE if "limit" in kw else OP_TIMEOUTS.get(op, 60.0)
        what = f"{op} `{' '.join(kw['argv'])}`" if "argv" in kw else op
        reply = self.request({"op": op, **kw}, what, timeout)
        if "error" in reply:
            raise AgentError(f"guest agent {what}: {reply['error']}")
        return reply

    def no_reply(self, what: str, timeout: float) -> Error:
        tail = self.context().strip()
        last = f"; the guest console's last lines:\n{tail}" if tail else ""
        return AgentError(f"guest agent: no reply to {what} within {timeout:.0f}s{last}")

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
        reply = self.call("run", argv=list(argv), limit=timeout, input=input, env=env or {})
        if reply.get("timeout"):
            out = (reply.get("stdout", "")[-1000:] + "\n" + reply.get("stderr", "")[-1000:]).strip()
            raise AgentError(f"guest: {' '.join(argv)} did not finish within {timeout:.0f}s (killed); "
                             f"its last output: {out or '(none)'}")
        return Result(list(argv), reply["rc"], reply["stdout"], reply["stderr"])
