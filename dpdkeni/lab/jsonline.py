"""JSON lines over a unix socket, with replies matched by id: what the QMP client and the agent client share."""
from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from typing import Any, Dict, Optional, Type

from ..errors import Error


def connect_unix(path: str, timeout: float) -> socket.socket:
    """Connect to a unix socket that QEMU may not have created yet."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise Error(f"lab: QEMU socket {path} did not appear within {timeout:.0f}s")
            time.sleep(0.05)


class JsonLineClient:
    """A reader thread files each incoming message with an ``id`` as a reply (``on_message`` sees the others);
    ``request`` sends one message and waits for its reply."""

    error: Type[Error] = Error
    name = "peer"

    def __init__(self, path: str, timeout: float = 30.0) -> None:
        self.sock = connect_unix(path, timeout)
        self.file = self.sock.makefile("rb")
        self.ids = itertools.count(1)
        self.replies: Dict[int, Dict[str, Any]] = {}
        self.cond = threading.Condition()
        self.closed = False
        self.failure: Optional[Error] = None
        self.pending: Dict[int, str] = {}
        self.wlock = threading.Lock()

    def start_reader(self) -> None:
        threading.Thread(target=self._read_loop, name=f"{self.name}-reader", daemon=True).start()

    def _read_loop(self) -> None:
        try:
            for line in self.file:
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                with self.cond:
                    if msg.get("id") is not None:
                        self.replies[msg["id"]] = msg
                    else:
                        self.on_message(msg)
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def on_message(self, msg: Dict[str, Any]) -> None:
        """A message that is not a reply (called with the lock held)."""

    def fail(self, failure: Error) -> None:
        """Make every request in flight, and every later one, raise ``failure`` at once (the peer is known
        to be gone: e.g. the guest's kernel wedged)."""
        with self.cond:
            self.failure = failure
            self.closed = True
            self.cond.notify_all()

    def doing(self) -> str:
        """What the requests in flight are (``"run ['runc', ...]"``), oldest first; empty when idle."""
        with self.cond:
            return "; ".join(self.pending.values())

    def no_reply(self, what: str, timeout: float) -> Error:
        """The error for a request that got no reply in time (subclasses add what they know)."""
        return self.error(f"{self.name}: no reply to {what} within {timeout:.0f}s")

    def request(self, msg: Dict[str, Any], what: str, timeout: float, track: bool = True) -> Dict[str, Any]:
        """Send ``msg`` with a fresh id and return the reply with that id (``track=False``: not listed by
        :meth:`doing`, for the lab's own liveness pings)."""
        if self.failure is not None:
            raise self.failure
        rid = msg["id"] = next(self.ids)
        with self.cond:
            if track:
                self.pending[rid] = what
        try:
            with self.wlock:
                self.sock.sendall(json.dumps(msg).encode() + b"\n")
            with self.cond:
                if not self.cond.wait_for(lambda: rid in self.replies or self.closed, timeout):
                    raise self.no_reply(what, timeout)
                if rid not in self.replies:
                    if self.failure is not None:
                        raise self.failure
                    raise self.error(f"{self.name}: connection closed during {what}")
                return self.replies.pop(rid)
        finally:
            with self.cond:
                self.pending.pop(rid, None)

    def close(self) -> None:
        """Close the connection."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
