"""The device plugin's pools: which NICs are offered under which extended resource, read from TOML or JSON.

::

    prefix = "dpdkeni.io"              # resource names are <prefix>/<pool name>
    hugepages_mount = "/dev/hugepages" # the host's hugetlbfs handed to pods ("" for none; default: found)
    cdi_spec = "/etc/cdi/dpdkeni.json" # written on each Allocate, its names in the answer ("" for none)
    release_grace = 5                  # seconds a freed NIC waits before it goes back to its kernel driver

    [[pool]]
    name = "virtio"                    # -> dpdkeni.io/virtio
    model = "virtio-net"               # any of model, mac, pci (a string or a list; mac and pci are globs)
    mac = "52:54:00:*"
    pci = "0000:00:0[4-9].0"
    driver = "vfio-pci"                # or uio_pci_generic

A NIC goes to the first pool whose every selector matches. The file is checked once, at start: an error is one
line ``file:line: pool N: ...`` (:class:`~dpdkeni.errors.PolicyError`, exit 2).
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .. import models, policy
from ..errors import PolicyError
from ..inventory import Nic

POOL_KEYS = ("name", "model", "mac", "pci", "driver")
SELECTORS = ("model", "mac", "pci")
TOP_KEYS = ("prefix", "hugepages_mount", "cdi_spec", "release_grace", "pool")
DEFAULT_PREFIX = "dpdkeni.io"
DEFAULT_CDI_SPEC = "/etc/cdi/dpdkeni.json"
DEFAULT_GRACE = 5.0
DRIVERS = ("vfio-pci", "uio_pci_generic")
# a resource name's last part: a DNS label (the kubelet checks it), short enough for the env var and socket name
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$")
_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,61}[a-z0-9])?$")
_MAC_GLOB = re.compile(r"^[0-9a-f:*?\[\]!-]+$")
_PCI_GLOB = re.compile(r"^[0-9a-f:.*?\[\]!-]+$")


@dataclass
class Pool:
    """One pool: its name, the resource it is offered as, its selectors (lists of patterns) and driver."""

    name: str
    resource: str
    selectors: Dict[str, List[str]]
    driver: str = "vfio-pci"
    line: int = 0

    def matches(self, nic: Nic) -> bool:
        """Whether every selector holds for ``nic`` (a selector with a list matches any of its patterns)."""
        values = {"model": nic.model, "mac": (nic.mac or "").lower(), "pci": nic.pci or ""}
        return all(any(fnmatch.fnmatchcase(values[k], p) for p in pats) for k, pats in self.selectors.items())

    @property
    def socket_name(self) -> str:
        """The plugin's socket file in the kubelet's device-plugins dir."""
        return f"dpdkeni-{self.name}.sock"


@dataclass
class Config:
    """The whole file."""

    pools: List[Pool]
    prefix: str = DEFAULT_PREFIX
    hugepages_mount: Optional[str] = None   # None: look for the host's hugetlbfs; "": none
    cdi_spec: str = DEFAULT_CDI_SPEC
    release_grace: float = DEFAULT_GRACE
    path: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def pool_for(self, nic: Nic) -> Optional[Pool]:
        """The first pool that takes ``nic``, or None."""
        return next((p for p in self.pools if p.matches(nic)), None)


def _patterns(value: Any, key: str) -> List[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{key} must be a string or a list of strings", key)
    items = [v.lower() if key != "model" else v for v in items]
    if key == "model":
        known = [m.name for m in models.all_models()]
        for v in items:
            if not any(fnmatch.fnmatchcase(k, v) for k in known):
                raise ValueError(f"model {v!r} matches no known model ({', '.join(known)})", key)
    check = {"mac": _MAC_GLOB, "pci": _PCI_GLOB}.get(key)
    for v in items:
        if check is not None and not check.match(v):
            raise ValueError(f"{key} pattern {v!r} is not a {key.upper()} glob (hex digits, ':', '.', * ? [ ])",
                             key)
    return items


def _pool(raw: Any, prefix: str) -> Pool:
    policy.check_table(raw, "pool", POOL_KEYS)
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"name {name!r} must be a DNS label of at most 40 characters (a-z, 0-9, '-')", "name")
    selectors = {k: _patterns(raw[k], k) for k in SELECTORS if k in raw}
    if not selectors:
        raise ValueError("give at least one of model, mac, pci")
    driver = raw.get("driver", "vfio-pci")
    if driver not in DRIVERS:
        raise ValueError(f"driver {driver!r} must be one of {', '.join(DRIVERS)}", "driver")
    return Pool(name, f"{prefix}/{name}", selectors, driver)


def _top(data: Dict[str, Any]) -> Dict[str, Any]:
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})", unknown[0])
    out: Dict[str, Any] = {}
    prefix = data.get("prefix", DEFAULT_PREFIX)
    if not isinstance(prefix, str) or not _PREFIX.match(prefix) or "." not in prefix:
        raise ValueError(f"prefix {prefix!r} must be a domain name such as dpdkeni.io", "prefix")
    out["prefix"] = prefix
    for key in ("hugepages_mount", "cdi_spec"):
        if key in data:
            value = data[key]
            if not isinstance(value, str) or (value and not value.startswith("/")):
                raise ValueError(f"{key} must be an absolute path or \"\"", key)
            out[key] = value
    if "release_grace" in data:
        grace = data["release_grace"]
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not 0 <= grace <= 3600:
            raise ValueError("release_grace must be a number of seconds from 0 to 3600", "release_grace")
        out["release_grace"] = float(grace)
    return out


def parse(text: str, path: str = "<pools>") -> Config:
    """Parse and check a pools file; a PolicyError names ``path`` and the line of the offending pool or key."""
    is_json = path.endswith(".json")
    data = policy.load_syntax(text, path, is_json)
    if not isinstance(data, dict):
        raise PolicyError(f"{path}:1: expected a table (JSON: an object) with [[pool]] entries")
    try:
        top = _top(data)
    except ValueError as exc:
        raise PolicyError(f"{path}:{policy.key_line(text, 1, None, exc.args[1])}: {exc.args[0]}") from None
    raw_pools = data.get("pool")
    if not isinstance(raw_pools, list) or not raw_pools:
        raise PolicyError(f"{path}:1: no pools: expected one or more [[pool]] tables (JSON: \"pool\": [...])")
    starts = policy.table_lines(text, "pool", is_json)
    pools: List[Pool] = []
    for i, raw in enumerate(raw_pools):
        start = starts[i] if i < len(starts) else 1
        end = starts[i + 1] if i + 1 < len(starts) else None
        try:
            pool = _pool(raw, top["prefix"])
            if any(p.name == pool.name for p in pools):
                raise ValueError(f"name {pool.name!r} is taken by an earlier pool", "name")
        except ValueError as exc:
            key = exc.args[1] if len(exc.args) > 1 else None
            line = policy.key_line(text, start, end, key) if key else start
            raise PolicyError(f"{path}:{line}: pool {i + 1}: {exc.args[0]}") from None
        pool.line = start
        pools.append(pool)
    return Config(pools, path=path, **top)


def load(path: str) -> Config:
    """Read and parse a pools file (TOML, or JSON by the ``.json`` extension)."""
    return parse(policy.read_text(path, "pools"), path)
