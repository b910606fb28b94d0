"""Run a small function inside another process's mount namespace: fork, ``setns`` in the child, report back.

Only the child changes namespace (a mount-namespace ``setns`` needs a single-threaded caller, and the parent
must stay where it is). Errors in the child come back as one line and are raised as :class:`~dpdkeni.errors.Error`.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import logging
import os
from typing import Any, Callable

from .errors import Error, NotFoundError

log = logging.getLogger(__name__)

CLONE_NEWNS = 0x00020000
_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def libc_call(name: str, *args: Any) -> int:
    """Call a libc function; raise OSError from errno on -1."""
    ret = getattr(_libc, name)(*args)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def setns(fd: int, nstype: int) -> None:
    """setns(2) (``os.setns`` exists only from Python 3.12)."""
    libc_call("setns", fd, nstype)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2)."""
    libc_call("mount", source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
              data.encode() if data else None)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    libc_call("umount2", target.encode(), flags)


def _setns_retrying(fd: int, nstype: int, tries: int = 20, pause: float = 0.01) -> None:
    """setns(2), tried again on EINVAL for up to ``tries * pause`` seconds: clean-clone CI runs saw joining a
    container's mount namespace fail with EINVAL from a forked child holding a valid fd (cause not found: the
    kernel refuses CLONE_NEWNS while the caller's fs_struct has another user)."""
    import errno
    import time
    for attempt in range(tries):
        try:
            setns(fd, nstype)
            return
        except OSError as exc:
            if exc.errno != errno.EINVAL or attempt == tries - 1:
                raise
            time.sleep(pause)


def _fd_target(fd: int) -> str:
    """What fd ``fd`` of this process refers to (``mnt:[4026531841]`` for a mount namespace), or ``""``."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def in_mount_ns(pid: int | None, fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn(*args)`` in the mount namespace of ``pid`` (here when ``pid`` is None); return its JSON-able
    result. Runs in a forked child so this process never changes namespace."""
    if pid is None:
        return fn(*args)
    try:
        nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NotFoundError(f"process {pid} is gone") from exc
    rfd, wfd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        os.close(rfd)
        stage = "entering it"
        seen = ""
        try:
            seen = _fd_target(nsfd)
            if not seen.startswith("mnt:"):
                # the fd number was closed and reused by another thread of the parent before the fork (a CI run
                # saw setns fail with EINVAL here): open the namespace again, in this single-threaded child
                nsfd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
            _setns_retrying(nsfd, CLONE_NEWNS)
            stage = ""
            out = {"ok": fn(*args)}
        except BaseException as exc:  # report everything, the child must not unwind into the caller's code
            # which call failed (setns or the work), so an errno such as EINVAL says where it came from
            out = {"error": f"{stage}: {exc}" if stage else str(exc), "errno": getattr(exc, "errno", None)}
        if seen and not seen.startswith("mnt:"):
            out["fd_was"] = seen
        os.write(wfd, json.dumps(out, default=str).encode())
        os._exit(0)
    os.close(wfd)
    os.close(nsfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    os.waitpid(child, 0)
    out = json.loads(data or b'{"error": "child died"}')
    if out.get("fd_was"):
        log.warning("the mount namespace fd of pid %d was %s in the child: another thread closed it and the "
                    "number was reused (opened again there)", pid, out["fd_was"])
    if "error" in out:
        err = out.get("errno")
        if err:
            raise OSError(err, f"in the mount namespace of pid {pid}: {out['error']}")
        raise Error(f"in the mount namespace of pid {pid}: {out['error']}")
    return out["ok"]

