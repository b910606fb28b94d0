"""Refusals shared by every handoff: a NIC that carries the host's traffic, the management NIC, an unmanaged model.

Each raises :class:`~dpdkeni.errors.GuardError` (exit 3) with the reason; ``force=True`` turns a refusal into a
logged warning. Mode-specific guards (a process holding the device, IOMMU group viability) live with the mode.
"""
from __future__ import annotations

import logging
from typing import Optional

from .errors import GuardError
from .inventory import Nic

log = logging.getLogger(__name__)


def refuse(reason: str, force: bool, hint: Optional[str] = "use --force (force=True) to override") -> None:
    """Raise a GuardError for ``reason``, or only log it when ``force`` is set."""
    if force:
        log.warning("forced past a guard: %s", reason)
        return
    raise GuardError(reason, hint)


def check_handoff(nic: Nic, force: bool = False, allow_unmanaged: bool = False) -> None:
    """The guards every attach and bind runs before changing anything."""
    if nic.active:
        refuse(f"{nic.name} ({nic.ifname}) is active: it has addresses or routes in the host's namespace, "
               "so it carries the host's traffic", force)
    if not nic.managed and not allow_unmanaged:
        refuse(f"{nic.name} is a {nic.model}, not a managed NIC model (virtio-net, e1000, e1000e, or one "
               "added in the models file)", force)
