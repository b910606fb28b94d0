"""``dpdkeni cni serve``: the resident CNI plugin that :mod:`dpdkeni.cni_client` hands its calls to.

The process has imported everything once, so a call costs the work itself. A unix stream socket (0600 in the
state dir, root peers only, by SO_PEERCRED); each connection carries one call (one request line, one reply
line ``{"rc", "stdout"}``; a request line over 1 MiB is refused with error 6, one not sent within 10 s is
dropped) and gets its own thread: a call that waits for a hot-plugged NIC does not hold up the others.
Namespaces are entered per thread (setns changes only the calling thread) and the ledger takes its own lock, as
with separate processes. The C client (``dpdkeni-cni``) and the Python one (``dpdkeni-cni-py``)
speak the same protocol. A sweeper thread brings home the NICs of pods that went without a DEL
(:mod:`dpdkeni.cni_sweep`).
"""
from __future__ import annotations

import io
import json
import logging
import os
import socket
import threading
import time
from typing import Optional

from . import cni, cni_sweep, host, statedir, unixsock
from .cni_client import decode_request, peer_cred, socket_path

log = logging.getLogger(__name__)

MAX_REQUEST = 1 << 20  # bytes of one request line: a CNI configuration is a few KiB
READ_TIMEOUT = 10.0  # seconds a caller has to send its request line


class CniServer:
    """Serve CNI calls on ``path`` (default :func:`~dpdkeni.cni_client.socket_path`) until :attr:`stop`."""

    def __init__(self, path: Optional[str] = None) -> None:
        self.path = path or socket_path()
        self.stop = threading.Event()
        self.calls = 0
        self._sock: Optional[socket.socket] = None

    def open(self) -> None:
        """Bind the socket (a stale one of a server that died is replaced; a live one is an error)."""
        if os.path.dirname(os.path.abspath(self.path)) == os.path.abspath(statedir.path()):
            statedir.ensure()
        self._sock = unixsock.listen(self.path, f"a dpdkeni cni server already listens on {self.path}",
                                     backlog=64)
        cni.warm_up()
        log.info("cni server listening on %s", self.path)

    def serve(self) -> None:
        """Accept calls until :attr:`stop` is set, then remove the socket (calls under way finish)."""
        if self._sock is None:
            self.open()
        sock, self._sock = self._sock, None
        sweeper = threading.Thread(target=self._sweep, daemon=True)
        sweeper.start()
        unixsock.serve(sock, self.path, self.stop, self._call)
        sweeper.join()

    def _sweep(self) -> None:
        """Every second, bring home the NICs of pods that went without a DEL (see :mod:`dpdkeni.cni_sweep`)."""
        suspects: set = set()
        while not self.stop.wait(cni_sweep.EVERY):
            try:
                cni_sweep.sweep(suspects)
            except Exception:  # the sweeper must not die; the next pass retries
                log.exception("cni sweep failed")

    def _call(self, conn: socket.socket) -> None:
        with conn:
            pid, uid, _ = peer_cred(conn)
            if uid != 0:
                log.warning("cni call from pid %d uid %d refused (root only)", pid, uid)
                return
            conn.settimeout(READ_TIMEOUT)
            try:
                with conn.makefile("rb") as f:
                    line = f.readline(MAX_REQUEST + 1)
            except OSError as exc:  # socket.timeout included: a caller that sends nothing holds no thread
                log.warning("cni call from pid %d not read: %s", pid, exc or "timed out")
                return
            if len(line) > MAX_REQUEST or not line.endswith(b"\n"):
                log.warning("cni call from pid %d refused: %s", pid, "longer than %d bytes" % MAX_REQUEST
                            if len(line) > MAX_REQUEST else "no complete request line")
                self._reply(conn, pid, 1, _refusal(f"request longer than {MAX_REQUEST} bytes or incomplete"))
                return
            try:
                environ, stdin = decode_request(line)
            except (ValueError, KeyError, TypeError):
                log.warning("malformed cni call from pid %d ignored", pid)
                self._reply(conn, pid, 1, _refusal("malformed request line"))
                return
            out = io.StringIO()
            start = time.monotonic()
            with host.using(host.Host.from_env(environ)):  # the client's state dir, sysfs root and models
                rc = cni.main(environ, io.BytesIO(stdin), out)
            self.calls += 1
            log.info("%s %s %s -> %d (%.1f ms)", environ.get("CNI_COMMAND"), environ.get("CNI_CONTAINERID"),
                     environ.get("CNI_IFNAME"), rc, (time.monotonic() - start) * 1e3)
            self._reply(conn, pid, rc, out.getvalue())

    @staticmethod
    def _reply(conn: socket.socket, pid: int, rc: int, stdout: str) -> None:
        try:
            conn.sendall(json.dumps({"rc": rc, "stdout": stdout}).encode() + b"\n")
        except OSError as exc:  # the runtime gave up on the call
            log.warning("cni reply to pid %d lost: %s", pid, exc)


def _refusal(why: str) -> str:
    """The CNI error document for a request the server would not read."""
    from .cnispec import DECODING_FAILURE, CniError

    return json.dumps(CniError(DECODING_FAILURE, f"dpdkeni cni server: {why}").to_json()) + "\n"
