"""systemd's notify protocol from the standard library: ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``.

systemd (``Type=notify``) passes ``$NOTIFY_SOCKET``: a unix datagram socket path, or an abstract name written
``@name``. With ``WatchdogSec=`` it also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``, the process meant):
the service must send ``WATCHDOG=1`` more often than that. Without ``$NOTIFY_SOCKET`` every call is a no-op.
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Optional

log = logging.getLogger(__name__)


def _address(path: str) -> str:
    return "\0" + path[1:] if path.startswith("@") else path


def notify(message: str) -> bool:
    """Send ``message`` (``KEY=VALUE`` lines) to ``$NOTIFY_SOCKET``; False when there is none or it failed
    (logged: systemd not listening is no reason to stop serving)."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), _address(path))
    except OSError as exc:
        log.warning("sd_notify %r to %s failed: %s", message, path, exc.strerror or exc)
        return False
    return True


def watchdog_interval() -> Optional[float]:
    """Seconds between two ``WATCHDOG=1`` (half of ``$WATCHDOG_USEC``), or None when no watchdog is asked of
    this process."""
    usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
