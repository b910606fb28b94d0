"""What the running daemon tells about itself: its counters, a status document served on a unix stream socket
(``<state dir>/daemon-status.sock``, 0600, root peers only by ``SO_PEERCRED``) that ``dpdkeni daemon status``
asks, and the counters as a node_exporter textfile (``--metrics FILE``).

Protocol: one request line ``{"request": "status", "last": N}``, one JSON document back, then the server
closes. A peer that is not root gets nothing (its request is read, then the connection closed). The counters:
``events`` (NIC events handled), ``attached``, ``failed`` (every ``*-failed`` decision), ``released`` (leases
ended because the NIC went) and ``reclaimed`` (leases ended because their target died).
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Any, Callable, Dict, Optional

from . import safefile, unixsock
from .cni_client import MAX_REPLY, peer_cred, read_line
from .errors import Error, InputError

log = logging.getLogger(__name__)

SOCKET_NAME = "daemon-status.sock"
COUNTERS = ("events", "attached", "failed", "released", "reclaimed")
MAX_REQUEST = 4096
READ_TIMEOUT = 5.0  # seconds a peer has to send its request line
DEFAULT_LAST = 20  # decisions in a status document unless asked otherwise

_HELP = {
    "events": "NIC events the daemon handled",
    "attached": "NICs handed over",
    "failed": "attach or release failures (each *-failed decision)",
    "released": "leases ended because their NIC was unplugged",
    "reclaimed": "leases ended because their target (container) died",
}


def socket_path(state: str) -> str:
    """The status socket of the daemon serving state dir ``state``."""
    return os.path.join(state, SOCKET_NAME)


class Counters:
    """Monotonic counters, safe to bump from the loop and the workers at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTERS, 0)

    def add(self, name: str, n: int = 1) -> None:
        """Add ``n`` to counter ``name`` (one of :data:`COUNTERS`)."""
        with self._lock:
            self._values[name] += n

    def snapshot(self) -> Dict[str, int]:
        """The counters now (a copy)."""
        with self._lock:
            return dict(self._values)


class StatusServer:
    """Answer status requests on ``path`` in a thread of its own; ``snapshot(last)`` builds the document."""

    def __init__(self, path: str, snapshot: Callable[[int], Dict[str, Any]]) -> None:
        self.path = path
        self._snapshot = snapshot
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        """Bind the socket (0600; a stale one is replaced) and serve."""
        sock = unixsock.listen(self.path, f"a dpdkeni daemon already answers on {self.path}")
        self._thread = threading.Thread(target=unixsock.serve, args=(sock, self.path, self._stop, self._answer),
                                        name="dpdkeni-status", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving and remove the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            pid, uid, _ = peer_cred(conn)
            conn.settimeout(READ_TIMEOUT)
            try:
                with conn.makefile("rb") as f:
                    line = f.readline(MAX_REQUEST + 1)
            except OSError as exc:
                log.warning("status request from pid %d not read: %s", pid, exc or "timed out")
                return
            if uid != 0:  # read first, so the peer's send never meets a closed socket (EPIPE)
                log.warning("status request from pid %d uid %d refused (root only)", pid, uid)
                return
            try:
                req = json.loads(line)
                last = int(req.get("last", DEFAULT_LAST)) if req.get("request") == "status" else -1
            except (ValueError, TypeError, AttributeError):
                last = -1
            if last < 0:
                log.warning("malformed status request from pid %d ignored", pid)
                reply: Dict[str, Any] = {"error": "malformed request"}
            else:
                reply = self._snapshot(last)
            try:
                conn.sendall(json.dumps(reply, sort_keys=True, default=str).encode() + b"\n")
            except OSError as exc:
                log.warning("status reply to pid %d lost: %s", pid, exc)


def query(state: str, last: int = DEFAULT_LAST, timeout: float = 10.0) -> Dict[str, Any]:
    """Ask the daemon serving ``state`` for its status; Error when none answers, or when the one answering is
    not root's."""
    path = socket_path(state)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except OSError as exc:
            raise Error(f"no dpdkeni daemon answers on {path} ({exc.strerror or exc})",
                        "start one with 'dpdkeni daemon --policy FILE', or set DPDKENI_STATE_DIR to its state "
                        "dir") from None
        _, uid, _ = peer_cred(sock)
        if uid != 0:
            raise Error(f"the process answering on {path} runs as uid {uid}, not root: not asking it")
        sock.sendall(json.dumps({"request": "status", "last": last}).encode() + b"\n")
        try:
            data = read_line(sock, MAX_REPLY)
        except ValueError:
            raise Error(f"the daemon on {path} sent a status reply over {MAX_REPLY >> 20} MiB: not reading it"
                        ) from None
        except OSError as exc:
            raise Error(f"the daemon on {path} sent no status ({exc.strerror or exc})") from None
    try:
        doc = json.loads(data)
    except ValueError:
        raise Error(f"the daemon on {path} sent no status (connection closed)") from None
    if not isinstance(doc, dict) or "error" in doc:
        raise Error(f"the daemon on {path} refused the request: {doc.get('error') if isinstance(doc, dict) else doc}")
    return doc


# ----- the node_exporter textfile
def render_metrics(counters: Dict[str, int], leases: int, waiting: int, uptime_s: float) -> str:
    """The counters and gauges in the Prometheus text format (node_exporter's textfile collector reads it)."""
    lines = []
    for name in COUNTERS:
        metric = f"dpdkeni_daemon_{name}_total"
        lines += [f"# HELP {metric} {_HELP[name]}.", f"# TYPE {metric} counter", f"{metric} {counters[name]}"]
    for metric, help_text, value in (("dpdkeni_daemon_leases", "leases held now", leases),
                                     ("dpdkeni_daemon_waiting", "NICs waiting for their target", waiting),
                                     ("dpdkeni_daemon_uptime_seconds", "seconds since the daemon started",
                                      round(uptime_s, 1))):
        lines += [f"# HELP {metric} {help_text}.", f"# TYPE {metric} gauge", f"{metric} {value}"]
    return "\n".join(lines) + "\n"


def check_metrics_path(path: str) -> None:
    """InputError unless ``path`` is a ``*.prom`` file name in a directory fit for an atomic write (exists, not
    a symlink, root's, writable by root only)."""
    directory, name = os.path.split(os.path.abspath(path))
    if not name.endswith(".prom") or name.startswith("."):
        raise InputError(f"metrics file {path!r} must be named *.prom",
                         "node_exporter's textfile collector reads only *.prom files")
    safefile.check_dir(directory, "metrics directory")


def write_metrics(path: str, text: str) -> None:
    """Replace the metrics file atomically (temp file + rename in its directory, never through a symlink)."""
    directory, name = os.path.split(os.path.abspath(path))
    safefile.replace(directory, name, text.encode(), 0o644, "metrics directory")
