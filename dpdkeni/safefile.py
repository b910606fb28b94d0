"""Replace a file in a checked directory atomically, never through a symlink: for what root writes outside the
state dir (the daemon's metrics file, the persistent driver overrides under ``/etc``).

The directory is opened with ``O_NOFOLLOW`` and refused unless it is a real directory owned by root (or this
user) and not writable by group or others (then nobody else can swap a file in it under us). The data goes to a
temp file made ``O_EXCL | O_NOFOLLOW`` in that directory (through its fd), then renamed over the name, so a
reader sees the old file or the new one, never a part.
"""
from __future__ import annotations

import contextlib
import os
import stat
from typing import Iterator

from .errors import InputError


def check_dir(path: str, what: str) -> None:
    """InputError unless ``path`` is a directory fit for :func:`replace` (see the module doc)."""
    with opened_dir(path, what):
        pass


@contextlib.contextmanager
def opened_dir(path: str, what: str) -> Iterator[int]:
    """An fd on directory ``path``, checked (InputError naming ``what`` otherwise); closed at the end."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"{what} {path}: {exc.strerror or exc}",
                         "give an existing directory (not a symlink)") from None
    try:
        st = os.fstat(fd)
        if st.st_uid not in (0, os.geteuid()) or st.st_mode & 0o022:
            raise InputError(f"{what} {path} is not safe to write in (uid {st.st_uid}, mode "
                             f"{stat.S_IMODE(st.st_mode):04o})", "use a directory of root's that only root may write")
        yield fd
    finally:
        os.close(fd)


def replace(directory: str, name: str, data: bytes, mode: int = 0o644, what: str = "directory") -> str:
    """Write ``data`` to ``directory/name`` atomically (temp file + rename in the same checked directory);
    returns the path. ``name`` is a plain file name."""
    if not name or "/" in name or name in (".", ".."):
        raise InputError(f"bad file name {name!r}")
    with opened_dir(directory, what) as dfd:
        tmp = f".{name}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dfd)  # our own leftover from a killed write
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), mode)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
    return os.path.join(directory, name)


def remove(directory: str, name: str, what: str = "directory") -> bool:
    """Remove ``directory/name`` (through the checked directory's fd); False when it was not there."""
    with opened_dir(directory, what) as dfd:
        try:
            os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            return False
    return True
