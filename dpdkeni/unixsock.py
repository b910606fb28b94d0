"""Private unix stream sockets for dpdkeni's servers (``cni serve``, ``lab up``): made 0600, one server each."""
from __future__ import annotations

import os
import socket
import stat
import threading
from typing import Callable, Optional

from . import validate
from .errors import Error, InputError


def answers(path: str) -> bool:
    """Whether a server accepts connections on ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
        return True
    except OSError:
        return False
    finally:
        probe.close()


def is_socket(path: str) -> bool:
    """True when ``path`` is a socket, False when nothing is there; anything else there (a file, a directory, a
    symlink) is an InputError: a server never replaces what is not its own kind."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if not stat.S_ISSOCK(st.st_mode):
        raise InputError(f"{path} exists and is not a socket: not replacing it",
                         "give a path where nothing is, or remove what is there yourself")
    return True


def listen(path: str, busy: str, hint: Optional[str] = None, backlog: int = 16,
           accept_timeout: float = 0.2) -> socket.socket:
    """A listening socket at ``path`` (mode 0600, its directory made 0700 if missing). A socket left by a server
    that died is replaced; one that answers is an Error saying ``busy``; anything else at ``path`` (a file, a
    directory, a symlink) is an InputError and stays as it is. ``accept`` times out after ``accept_timeout`` so a
    serve loop can check its stop flag."""
    validate.socket_path(path)
    if is_socket(path):
        if answers(path):
            raise Error(busy, hint)
        os.unlink(path)
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    sock = bound_private(socket.SOCK_STREAM, path)
    sock.listen(backlog)
    sock.settimeout(accept_timeout)
    return sock


def bound_private(kind: int, path: str) -> socket.socket:
    """A unix socket of ``kind`` (SOCK_STREAM, SOCK_DGRAM) bound at ``path`` with mode 0600 from the start (the
    umask is narrowed around the bind, so there is no moment when others may connect)."""
    sock = socket.socket(socket.AF_UNIX, kind)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old)
    return sock


def remove(path: str) -> None:
    """Remove a server's socket file (gone already is fine)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def serve(sock: socket.socket, path: str, stop: threading.Event,
          handle: Callable[[socket.socket], None]) -> None:
    """Accept on ``sock`` until ``stop`` is set, each connection in a thread of its own running ``handle``;
    then close the socket and remove ``path`` (connections under way finish)."""
    try:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    finally:
        sock.close()
        remove(path)
