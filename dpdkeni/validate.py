"""The values a request carries, checked before anything moves: one function per kind of value.

Every place a value enters today (``dpdkeni attach`` and :func:`dpdkeni.handoff.attach`, ``attach --batch``, the
policy file, a CNI network configuration) calls the same function here, so a value is accepted or refused the
same way whichever door it came in by. Each returns the value in its normal form or raises
:class:`~dpdkeni.errors.InputError` (exit 2) with a message naming the value and what is expected.
Standard library only: the CNI client and the udev hook import nothing heavy.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import InputError

IpInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
IpAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# runc and containerd take [A-Za-z0-9][A-Za-z0-9_.+-]*, docker and podman names [a-zA-Z0-9][a-zA-Z0-9_.-]+,
# containerd caps identifiers at 76 characters and docker ids are 64 hex digits; '+' is left out (no runtime
# generates it), so is '..' (no id needs it, and it is what a path trick looks like)
_CONTAINER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
CONTAINER_ID_MAX = 128
PATH_MAX = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MTU_RANGE = (68, 65535)
# the kernel's own tables: 253 default, 254 main, 255 local (0 here means "no table of its own")
RESERVED_TABLES = (253, 254, 255)
TABLE_MAX = 2 ** 32 - 1


def _show(text: Any, limit: int = 80) -> str:
    """A value for an error message: repr'd (control characters escaped) and cut, so a huge or hostile value
    still gives one readable line."""
    shown = repr(text)
    return shown if len(shown) <= limit else shown[:limit] + f"... ({len(str(text))} characters)"


def container_id(text: Any) -> str:
    """A container runtime's id or name: 1-128 characters of ``[A-Za-z0-9_.-]`` starting with a letter or digit,
    no ``..``. It is joined into runtime state paths, so nothing that could leave them gets through."""
    if not isinstance(text, str) or not text:
        raise InputError(f"bad container id {_show(text)}: empty", "container:ID with the runtime's id or name")
    if len(text) > CONTAINER_ID_MAX or not _CONTAINER_ID.fullmatch(text) or ".." in text:
        raise InputError(f"bad container id {_show(text)}",
                         f"1-{CONTAINER_ID_MAX} of A-Z a-z 0-9 _ . -, starting with a letter or digit, no '..'")
    return text


def target(spec: Any) -> Tuple[str, str]:
    """The form of a target spec: ``("pid", "N")``, ``("netns", NAME)``, ``("container", ID)`` or
    ``("path", PATH)``. Only the form is checked here; :func:`dpdkeni.netns.resolve_target` looks it up."""
    if not isinstance(spec, str) or not spec:
        raise InputError(f"bad target {_show(spec)}: expected pid:N, netns:NAME, container:ID or a netns path")
    if _CONTROL.search(spec) or len(spec) > PATH_MAX:
        raise InputError(f"bad target {_show(spec)}: control characters or longer than {PATH_MAX}")
    kind, sep, value = spec.partition(":")
    if sep and kind == "pid":
        if not value.isascii() or not value.isdigit() or int(value) <= 0:
            raise InputError(f"bad target {_show(spec)}: pid:N with N a process id")
        return "pid", str(int(value))
    if sep and kind == "netns":
        if not value or "/" in value or value in (".", "..") or len(value.encode()) > 255:
            raise InputError(f"bad target {_show(spec)}: netns:NAME with NAME in /run/netns")
        return "netns", value
    if sep and kind == "container":
        return "container", container_id(value)
    if spec.startswith("/"):
        return "path", spec
    raise InputError(f"bad target {_show(spec)}: expected pid:N, netns:NAME, container:ID or a path to a netns file")


def ifname(text: Any) -> str:
    """A Linux interface name: 1-15 bytes, not ``.`` or ``..``, no whitespace, control characters, '/' or ':'
    (the kernel's ``dev_valid_name``, plus control characters)."""
    if not isinstance(text, str) or not text or len(text.encode()) > 15 or text in (".", "..") \
            or re.search(r"[\s/:\x00-\x1f\x7f]", text):
        raise InputError(f"bad interface name {_show(text)}: 1-15 characters, no spaces, '/' or ':'")
    return text


def addresses(values: Any) -> List[IpInterface]:
    """CIDR strings (``198.18.0.2/24``) -> interfaces; a missing prefix length is refused."""
    if isinstance(values, str) or not isinstance(values, (list, tuple)):
        raise InputError(f"bad addresses {_show(values)}: a list of CIDRs like 198.18.0.2/24")
    out = []
    for text in values:
        try:
            if not isinstance(text, str) or "/" not in text:
                raise ValueError("no prefix length")
            out.append(ipaddress.ip_interface(text))
        except ValueError as exc:
            raise InputError(f"bad address {_show(text)}: {exc}", "use CIDR, like 198.18.0.2/24") from None
    return out


def gateway(text: Any) -> Optional[IpAddress]:
    """A gateway: an IP address (not a network, not multicast or unspecified), or None."""
    if text is None:
        return None
    try:
        if not isinstance(text, str):
            raise ValueError
        gw = ipaddress.ip_address(text)
    except ValueError:
        raise InputError(f"bad gateway {_show(text)}: not an IP address") from None
    if gw.is_multicast or gw.is_unspecified:
        raise InputError(f"bad gateway {_show(text)}: a multicast or unspecified address cannot be a next hop")
    return gw


def routes(values: Any) -> List[Dict[str, Any]]:
    """CNI-style routes: a list of ``{"dst": CIDR, "gw": IP (optional), "priority": N (optional)}``."""
    if not isinstance(values, list):
        raise InputError(f"bad routes {_show(values)}: a list of {{\"dst\": CIDR, \"gw\": IP}}")
    for route in values:
        if not isinstance(route, dict) or not route.get("dst") or set(route) - {"dst", "gw", "priority", "mtu",
                                                                                   "advmss", "table", "scope"}:
            raise InputError(f"bad route {_show(route)}: {{\"dst\": CIDR, \"gw\": IP}}")
        try:
            if not isinstance(route["dst"], str):
                raise ValueError
            ipaddress.ip_network(route["dst"], strict=False)
        except ValueError:
            raise InputError(f"bad route destination {_show(route['dst'])}: a CIDR like 0.0.0.0/0") from None
        if route.get("gw") is not None:
            gateway(route["gw"])
        if route.get("priority") is not None:
            _integer(route["priority"], "route priority", "priority", 0, TABLE_MAX)
    return list(values)


def _integer(value: Any, what: str, key: str, low: int, high: int) -> int:
    """An int (not a bool) in [low, high]; the message names the value's kind and its config key."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"bad {what}: {key} {_show(value)} is not an integer from {low} to {high}")
    return value


def mtu(value: Any) -> Optional[int]:
    """An MTU (68..65535), or None."""
    return None if value is None else _integer(value, "MTU", "mtu", *MTU_RANGE)


def table(value: Any) -> Optional[int]:
    """A route table for a NIC's routes (0: none of its own; not the kernel's 253-255), or None (automatic)."""
    if value is None:
        return None
    number = _integer(value, "route table", "table", 0, TABLE_MAX)
    if number in RESERVED_TABLES:
        raise InputError(f"bad route table {number}: 253-255 are the kernel's default, main and local tables")
    return number


SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def size(text: Any) -> int:
    """Bytes from ``256M``, ``1G``, ``2048k``, ``2MiB`` or a plain byte count (at most 15 digits)."""
    m = re.fullmatch(r"\s*(\d{1,15})\s*([kKmMgGtT]?)(i?[bB])?\s*", text) if isinstance(text, str) else None
    if not m:
        raise InputError(f"malformed size {_show(text)}", "use e.g. 256M, 1G or 2M")
    return int(m.group(1)) * SIZE_UNITS[m.group(2).upper()]


def hugepages(text: Any) -> Optional[str]:
    """A hugepage share like ``256M`` (``0``: none; the forms of :func:`size`), or None."""
    if text is not None:
        size(text)
    return text


SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1


def socket_path(text: Any) -> str:
    """A path for a unix socket: absolute (what a server may replace must not depend on its working
    directory), no control characters, short enough for ``sun_path``."""
    if not isinstance(text, str) or not text.startswith("/") or _CONTROL.search(text) \
            or len(text.encode()) > SUN_PATH_MAX:
        raise InputError(f"bad socket path {_show(text)}",
                         f"an absolute path of at most {SUN_PATH_MAX} bytes, no control characters")
    return text


def choice(value: Any, what: str, allowed: Sequence[str]) -> str:
    """One of ``allowed`` (a mode, a driver)."""
    if value not in allowed:
        raise InputError(f"bad {what} {_show(value)}", f"one of {', '.join(allowed)}")
    return value
