"""Persistent driver bindings, driverctl's way: a file ``pci-<bdf>`` in the overrides directory holds the name of
the driver the device is bound to whenever it appears (boot or re-plug); the udev rule of
:func:`dpdkeni.udev.rules_text` applies it, ``dpdkeni bind --persist`` writes it, ``dpdkeni unbind --persist``
removes it, ``dpdkeni overrides`` lists them.

The directory is ``/etc/dpdkeni/overrides`` (``$DPDKENI_OVERRIDES_DIR`` for tests). Files are written atomically
through :mod:`dpdkeni.safefile` (the directory must be root's and writable by root only; never through a
symlink) and read with ``O_NOFOLLOW``.
"""
from __future__ import annotations

import os
import re
from typing import Any, Dict, List

from . import safefile, specs, udev
from .errors import InputError

ENV = "DPDKENI_OVERRIDES_DIR"
DEFAULT = udev.OVERRIDES_DIR
PREFIX = "pci-"
_DRIVER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def directory() -> str:
    """The overrides directory, read at call time."""
    return os.environ.get(ENV) or DEFAULT


def _name(pci: str) -> str:
    return PREFIX + specs.normalize_pci(pci)


def check_driver(driver: str) -> str:
    """A driver name as the kernel spells one (letters, digits, ``_ . -``); InputError otherwise."""
    if not isinstance(driver, str) or not _DRIVER.match(driver):
        raise InputError(f"bad driver name {driver!r}: letters, digits, '_', '.', '-' (like vfio-pci)")
    return driver


def write(pci: str, driver: str) -> str:
    """Make the binding of ``pci`` to ``driver`` persistent; returns the file's path."""
    name, driver = _name(pci), check_driver(driver)
    where = directory()
    if where == DEFAULT:
        os.makedirs(where, mode=0o755, exist_ok=True)
    return safefile.replace(where, name, f"{driver}\n".encode(), 0o644, "overrides directory")


def remove(pci: str) -> bool:
    """Drop the persistent binding of ``pci``; False when there was none."""
    name, where = _name(pci), directory()
    if not os.path.isdir(where):
        return False
    return safefile.remove(where, name, "overrides directory")


def _read(where: str, name: str) -> Dict[str, Any]:
    entry: Dict[str, Any] = {"pci": name[len(PREFIX):], "driver": None, "path": os.path.join(where, name)}
    try:
        fd = os.open(entry["path"], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            text = f.read(256).decode(errors="replace").strip()
        entry["driver"] = check_driver(text)
    except (OSError, InputError) as exc:
        entry["error"] = getattr(exc, "message", None) or getattr(exc, "strerror", None) or str(exc)
    return entry


def listing() -> List[Dict[str, Any]]:
    """The persistent bindings, by PCI address: ``{"pci", "driver", "path"}`` (``driver`` None and an ``error``
    for a file that holds no driver name)."""
    where = directory()
    try:
        names = os.listdir(where)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise InputError(f"overrides directory {where}: {exc.strerror or exc}") from None
    out = []
    for name in sorted(names):
        if not name.startswith(PREFIX):
            continue
        try:
            specs.normalize_pci(name[len(PREFIX):])
        except InputError:
            continue
        out.append(_read(where, name))
    return out
