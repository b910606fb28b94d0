"""Run a small function inside another process's mount namespace: fork, ``setns`` in the child, report back.

Only the child changes namespace (a mount-namespace ``setns`` needs a caller that shares its filesystem
attributes with no other thread, and the parent must stay where it is). Errors in the child come back as one line and
are raised as :class:`~dpdkeni.errors.Error`.

A forked child is not always single-threaded: a library's fork handlers may start threads in it (gRPC's do, which
made ``setns`` fail with EINVAL after the device plugin had run in the same process). The child therefore takes its
own copy of the filesystem attributes (``unshare(CLONE_FS)``) before it enters the namespace.
"""
from __future__ import annotations

import ctypes
import json
import os
from typing import Any, Callable

from .errors import Error, NotFoundError

CLONE_NEWNS = 0x00020000
CLONE_FS = 0x00000200
# the C library already in the process (find_library would run ldconfig, ~3 ms, on every import: a CNI call's)
_libc = ctypes.CDLL(None, use_errno=True)


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


def unshare(flags: int) -> None:
    """unshare(2)."""
    libc_call("unshare", flags)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2)."""
    libc_call("mount", source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
              data.encode() if data else None)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    libc_call("umount2", target.encode(), flags)


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
        try:
            # threads started by fork handlers share this process's fs_struct, and the kernel refuses a mount
            # namespace to a caller whose fs_struct is shared (EINVAL): take a private copy first
            unshare(CLONE_FS)
            setns(nsfd, CLONE_NEWNS)
            stage = ""
            out = {"ok": fn(*args)}
        except BaseException as exc:  # report everything, the child must not unwind into the caller's code
            # which call failed (setns or the work), so an errno such as EINVAL says where it came from
            out = {"error": f"{stage}: {exc}" if stage else str(exc), "errno": getattr(exc, "errno", None)}
        os.write(wfd, json.dumps(out, default=str).encode())
        os._exit(0)
    os.close(wfd)
    os.close(nsfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    os.waitpid(child, 0)
    out = json.loads(data or b'{"error": "child died"}')
    if "error" in out:
        err = out.get("errno")
        if err:
            raise OSError(err, f"in the mount namespace of pid {pid}: {out['error']}")
        raise Error(f"in the mount namespace of pid {pid}: {out['error']}")
    return out["ok"]

