"""JSON lines over a unix socket, with replies matched by id: what the QMP client and the agent client share."""
from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from typing import Any, Dict, Type

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

    def request(self, msg: Dict[str, Any], what: str, timeout: float) -> Dict[str, Any]:
        """Send ``msg`` with a fresh id and return the reply with that id."""
        rid = msg["id"] = next(self.ids)
        with self.wlock:
            self.sock.sendall(json.dumps(msg).encode() + b"\n")
        with self.cond:
            if not self.cond.wait_for(lambda: rid in self.replies or self.closed, timeout):
                raise self.error(f"{self.name}: no reply to {what} within {timeout:.0f}s")
            if rid not in self.replies:
                raise self.error(f"{self.name}: connection closed during {what}")
            return self.replies.pop(rid)

    def close(self) -> None:
        """Close the connection."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
