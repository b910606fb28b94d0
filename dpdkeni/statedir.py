"""The state dir (``DPDKENI_STATE_DIR``, default ``/run/dpdkeni``): made, checked and written through here only.

What is in it drives root's writes (the ledger's undo data names cgroups, pids, mounts and sysfs paths), so it
must be a real directory (not a symlink), owned by root (or by the user running dpdkeni) and writable by nobody
else. Whichever module needs it first makes it 0700 (:func:`ensure`); one that exists and fails the check is
refused (:class:`StateDirError`, one line saying why and what to run). Files in it are opened with
``O_NOFOLLOW`` and made 0600 (:func:`open_file`); replaced atomically from a temp file of a unique name
(``mkstemp``: several threads of one process write at once) with :func:`write_atomic`.
"""
from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import Iterator, Optional

from . import host
from .errors import StateDirError

DEFAULT = host.DEFAULT_STATE_DIR
ENV = host.STATE_DIR_ENV


def path() -> str:
    """The state directory of the current host (:mod:`dpdkeni.host`: ``DPDKENI_STATE_DIR`` or ``/run/dpdkeni``)."""
    return host.current().state_dir


def check(directory: str) -> None:
    """StateDirError unless ``directory`` (which exists) is a real directory owned by root (or this user) and
    not writable by group or others."""
    st = os.lstat(directory)
    why = None
    if stat.S_ISLNK(st.st_mode):
        why = f"a symlink (to {os.readlink(directory)})"
    elif not stat.S_ISDIR(st.st_mode):
        why = "not a directory"
    elif st.st_uid not in (0, os.geteuid()):
        why = f"owned by uid {st.st_uid}, not root"
    elif st.st_mode & 0o022:
        why = f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if why:
        raise StateDirError(f"state dir {directory} is {why}: refusing to use it",
                            f"run 'rm -rf {directory}' to let dpdkeni make it anew (0700, root), or set "
                            f"{ENV} to a root-owned directory of mode 0700")


def verify() -> None:
    """:func:`check` the state dir if it exists (every ``dpdkeni`` command does, before anything else)."""
    if os.path.lexists(path()):
        check(path())


def ensure(directory: Optional[str] = None) -> str:
    """The state dir (or ``directory``, one inside it), made 0700 if missing (its parents 0755), then checked
    (:func:`check`). Returns its path."""
    directory = directory or path()
    try:
        os.mkdir(directory, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        os.makedirs(os.path.dirname(directory) or ".", mode=0o755, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(directory, 0o700)
    check(directory)
    return directory


def subdir(name: str) -> str:
    """A directory ``name`` inside the state dir, both made and checked by :func:`ensure`."""
    return ensure(os.path.join(ensure(), name))


def open_file(file: str, flags: int = os.O_RDONLY, mode: int = 0o600) -> int:
    """An fd on a file in the state dir, never through a symlink (``O_NOFOLLOW``), made ``mode`` when created."""
    return os.open(file, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


@contextlib.contextmanager
def opened(file: str, flags: int = os.O_RDONLY, mode: int = 0o600, text: bool = True) -> Iterator:
    """:func:`open_file` as a file object (``"r"``/``"w"`` from ``flags``), closed at the end of the block."""
    fd = open_file(file, flags, mode)
    writing = flags & (os.O_WRONLY | os.O_RDWR)
    kind = ("a" if flags & os.O_APPEND else "w") if writing else "r"
    with os.fdopen(fd, kind if text else kind + "b",  # type: ignore[call-overload]  # mode built at run time
                   **({"encoding": "utf-8"} if text else {})) as f:
        yield f


def write_atomic(file: str, data: bytes, sync_dir: bool = False, fsync: bool = True) -> None:
    """Replace ``file`` with ``data``: a 0600 temp file of a unique name next to it (``mkstemp``), fsync,
    rename; ``sync_dir`` also fsyncs the directory (the rename survives a crash). ``fsync=False`` skips both
    fsyncs (state that does not outlive a power loss: the rename alone keeps a reader or a killed writer from
    seeing part of a file)."""
    directory = os.path.dirname(file) or "."
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(file) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, file)
        if sync_dir and fsync:
            dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
