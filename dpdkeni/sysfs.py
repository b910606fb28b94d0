"""Every read and write under /sys, /dev and /proc, relative to a root.

The root defaults to ``/`` and is read at call time (env ``DPDKENI_SYSFS_ROOT``), so tests can repoint the
library at a synthetic tree, and a ``dry_run`` instance records writes instead of doing them.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from . import host
from .errors import os_error_message

log = logging.getLogger(__name__)


def default_root() -> str:
    """The filesystem root that sysfs paths are resolved against: the current host's (:mod:`dpdkeni.host`:
    ``DPDKENI_SYSFS_ROOT`` or ``/``)."""
    return host.current().sysfs_root


@dataclass
class Sysfs:
    """Paths under a root; reads return ``default`` when the file is missing, writes may be recorded only."""

    root: str = field(default_factory=default_root)
    dry_run: bool = False
    writes: List[Tuple[str, str]] = field(default_factory=list)

    def path(self, rel: str) -> str:
        """The absolute path of ``rel`` (e.g. ``sys/bus/pci/devices``) under the root."""
        return os.path.join(self.root, rel.lstrip("/"))

    def exists(self, rel: str) -> bool:
        """Whether ``rel`` exists under the root."""
        return os.path.exists(self.path(rel))

    def read(self, rel: str, default: Optional[str] = None) -> Optional[str]:
        """The stripped text of a file, or ``default`` when it does not exist or cannot be read."""
        try:
            with open(self.path(rel), encoding="ascii", errors="replace") as f:
                return f.read().strip()
        except (FileNotFoundError, NotADirectoryError, PermissionError, OSError):
            return default

    def read_int(self, rel: str, default: Optional[int] = None, base: int = 0) -> Optional[int]:
        """A file read as an integer (``0x``-prefixed hex accepted), or ``default``."""
        text = self.read(rel)
        if text is None:
            return default
        try:
            return int(text, base)
        except ValueError:
            return default

    def link_name(self, rel: str) -> Optional[str]:
        """The last component of the symlink target at ``rel`` (a driver, an IOMMU group), or None."""
        try:
            return os.path.basename(os.readlink(self.path(rel)))
        except OSError:
            return None

    def realpath(self, rel: str) -> str:
        """The resolved path of ``rel`` relative to the root (symlinks followed)."""
        real = os.path.realpath(self.path(rel))
        root = os.path.realpath(self.root)
        return "/" + os.path.relpath(real, root) if root != "/" else real

    def listdir(self, rel: str) -> List[str]:
        """Sorted entries of a directory, or an empty list when it does not exist."""
        try:
            return sorted(os.listdir(self.path(rel)))
        except OSError:
            return []

    def write(self, rel: str, value: str) -> None:
        """Write ``value`` to ``rel``; in dry-run mode only record it. Errors become dpdkeni errors."""
        self.writes.append((rel if rel.startswith("/") else "/" + rel, value))
        if self.dry_run:
            log.info("dry-run: would write %r to /%s", value, rel.lstrip("/"))
            return
        log.debug("write %r to /%s", value, rel.lstrip("/"))
        try:
            with open(self.path(rel), "w", encoding="ascii") as f:
                f.write(value)
        except OSError as exc:
            raise os_error_message(exc, f"writing {value!r} to /{rel.lstrip('/')}") from exc
