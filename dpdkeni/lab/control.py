"""A running lab other processes drive: ``dpdkeni lab up`` boots one and serves its control socket, and
``dpdkeni lab plug|unplug|exec|nics|down`` talk to it, so a person tries orchestration code in the guest while
plugging NICs from the host, as a cloud would, without writing Python.

The socket (``<lab cache>/control.sock``, 0600) carries JSON lines: a request ``{"id", "op", ...}`` gets one
reply ``{"id", "ok": result}`` or ``{"id", "error": message}``. Requests are served one at a time (QMP and the
agent are one conversation each).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import asdict
from typing import Any, Callable, Dict, Optional

from .. import unixsock
from ..errors import Error, NotFoundError
from .image import cache_root
from .jsonline import JsonLineClient
from .lab import Lab

log = logging.getLogger(__name__)


def socket_path() -> str:
    """Where a running lab listens (one lab per cache directory)."""
    return os.path.join(cache_root(), "control.sock")


class ControlServer:
    """Serve ``lab`` on :func:`socket_path` until :attr:`stop` is set (by ``down``, or by the owner)."""

    def __init__(self, lab: Lab, path: Optional[str] = None) -> None:
        self.lab, self.path = lab, path or socket_path()
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._ops: Dict[str, Callable[..., Any]] = {"plug": self._plug, "unplug": self._unplug,
                                                     "exec": self._exec, "nics": self._nics, "down": self._down}

    def open(self) -> None:
        """Bind the socket; refuses when another lab answers there."""
        self._sock = unixsock.listen(self.path, f"a lab is already up (its socket {self.path} answers)",
                                     "stop it: dpdkeni lab down", backlog=8)

    def serve(self) -> None:
        """Accept connections until :attr:`stop` is set; each connection gets a thread."""
        assert self._sock is not None, "open() first"
        sock, self._sock = self._sock, None
        unixsock.serve(sock, self.path, self.stop, self._talk)

    def close(self) -> None:
        """Stop listening and remove the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            unixsock.remove(self.path)

    def _talk(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            for line in reader:
                req: Any = None
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict):
                        raise ValueError("a request is a JSON object")
                    op = self._ops.get(str(req.get("op")))
                    if op is None:
                        raise Error(f"unknown op {req.get('op')!r} (one of {', '.join(self._ops)})")
                    args = {k: v for k, v in req.items() if k not in ("id", "op")}
                    with self._lock:
                        reply = {"id": req.get("id"), "ok": op(**args)}
                except (Error, TypeError, ValueError) as exc:
                    reply = {"id": req.get("id") if isinstance(req, dict) else None, "error": str(exc)}
                conn.sendall(json.dumps(reply).encode() + b"\n")

    # ----- operations
    def _plug(self, model: str, mac: Optional[str] = None, id: Optional[str] = None,
              timeout: float = 60.0) -> Dict[str, Any]:
        return asdict(self.lab.plug(model, mac=mac, id=id, timeout=timeout))

    def _unplug(self, nic: str, timeout: float = 60.0) -> Dict[str, Any]:
        nic_id = self._find(nic)
        self.lab.unplug(nic_id, timeout=timeout)
        return {"id": nic_id}

    def _find(self, nic: str) -> str:
        for nic_id, plugged in self.lab.nics.items():
            if nic in (nic_id, plugged.mac, plugged.pci):
                return nic_id
        raise NotFoundError(f"no plugged NIC {nic!r}", f"plugged: {', '.join(self.lab.nics) or 'none'}")

    def _exec(self, argv: list, timeout: float = 120.0, input: str = "") -> Dict[str, Any]:
        result = self.lab.run(argv, timeout=timeout, input=input)
        return {"rc": result.rc, "stdout": result.stdout, "stderr": result.stderr}

    def _nics(self) -> list:
        return [asdict(n) for n in self.lab.nics.values()]

    def _down(self) -> Dict[str, Any]:
        self.stop.set()
        return {"stopping": True}


class ControlClient(JsonLineClient):
    """Talk to the lab that ``dpdkeni lab up`` runs: ``call(op, **args)`` returns the result or raises Error."""

    name = "lab"

    def __init__(self, path: Optional[str] = None) -> None:
        path = path or socket_path()
        if not os.path.exists(path) or not unixsock.answers(path):
            raise NotFoundError("no lab is up", "start one in another shell: dpdkeni lab up")
        super().__init__(path, timeout=5.0)
        self.start_reader()

    def call(self, op: str, timeout: float = 600.0, **args: Any) -> Any:
        """One request; the lab's error comes back as Error."""
        reply = self.request({"op": op, **args}, op, timeout)
        if "error" in reply:
            raise Error(f"lab: {reply['error']}")
        return reply["ok"]
