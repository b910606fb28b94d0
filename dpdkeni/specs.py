"""Parsing of the names a user gives a NIC: a PCI address, a MAC address or an interface name."""
from __future__ import annotations

import re
from typing import Tuple

from .errors import InputError
from .validate import ifname as validate_ifname

_PCI_FULL = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")
_PCI_SHORT = re.compile(r"^([0-9a-fA-F]{2}):([0-1][0-9a-fA-F])\.([0-7])$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


def normalize_pci(text: str) -> str:
    """``00:03.0`` or ``0000:00:03.0`` -> ``0000:00:03.0``; anything else is an InputError."""
    m = _PCI_FULL.match(text)
    if m:
        return text.lower()
    m = _PCI_SHORT.match(text)
    if m:
        return "0000:" + text.lower()
    raise InputError(f"malformed PCI address {text!r}: expected DDDD:BB:SS.F or BB:SS.F, like 0000:00:04.0")


def normalize_mac(text: str) -> str:
    """``52-54-00-AB-CD-EF`` or ``52:54:00:ab:cd:ef`` -> ``52:54:00:ab:cd:ef``; else an InputError."""
    if not _MAC.match(text):
        raise InputError(f"malformed MAC address {text!r}: expected six hex pairs, like 52:54:00:12:34:56")
    return text.lower().replace("-", ":")


def classify(spec: str) -> Tuple[str, str]:
    """Say what a NIC spec is: ``("pci", bdf)``, ``("mac", mac)`` or ``("ifname", name)``.

    A spec with ':' is a PCI address when it has a '.', else a MAC; a malformed one of either is an
    InputError rather than a lookup of an interface that cannot exist.
    """
    spec = spec.strip()
    if not spec:
        raise InputError("empty NIC spec: give a PCI address, a MAC address or an interface name")
    if ":" in spec or (spec.count("-") == 5 and len(spec) == 17):
        if "." in spec:
            return "pci", normalize_pci(spec)
        return "mac", normalize_mac(spec)
    return "ifname", validate_ifname(spec)
