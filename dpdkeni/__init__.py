"""dpdkeni: hand hot-plugged NICs (virtio-net, e1000, e1000e) to containers, as kernel interfaces or DPDK ports.

The public API is imported lazily, so ``import dpdkeni`` stays cheap for udev hooks::

    import dpdkeni
    nic = dpdkeni.wait_for_nic(mac="52:54:00:12:34:56", timeout=30)
    lease = dpdkeni.attach(nic, "pid:4242", mode="netdev", addresses=["198.18.0.2/24"])
    dpdkeni.release(nic)
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import Error, GuardError, HostError, InputError, NotFoundError, StepError, SysfsError

__version__ = "0.1.0"

# public name -> module that defines it (imported on first use)
_LAZY = {
    "Nic": "inventory",
    "list_nics": "inventory",
    "find_nic": "inventory",
    "Sysfs": "sysfs",
    "Model": "models",
    "register_model": "models",
    "attach": "handoff",
    "attach_many": "handoff",
    "release": "handoff",
    "release_many": "handoff",
    "recover": "handoff",
    "Lease": "ledger",
    "Ledger": "ledger",
    "Watcher": "events",
    "NicEvent": "events",
    "wait_for_nic": "events",
    "bind": "driver",
    "unbind": "driver",
    "Forwarder": "fastpath",
}

__all__ = sorted([
    "Error", "GuardError", "HostError", "InputError", "NotFoundError", "StepError", "SysfsError", "__version__",
    *_LAZY,
])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'dpdkeni' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return __all__
