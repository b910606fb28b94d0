"""One attach request, checked once: :class:`AttachRequest`.

``dpdkeni attach`` (single and ``--batch``), :func:`dpdkeni.handoff.attach`, a policy rule and a CNI network
configuration all build one, and its constructor checks every value by the one validator of its kind
(:mod:`dpdkeni.validate`), so a value is accepted or refused the same way whichever door it came in by. A policy
rule or a CNI configuration does not know its NIC (or target) until later: ``nic``/``target`` None, filled in
with :meth:`AttachRequest.bind`, which checks again. Standard library only (the CNI client imports it).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from . import models, validate
from .errors import InputError

AddressesLater = Callable[[], Any]  # called once the NIC is in the target (the CNI plugin's IPAM runs meanwhile)


def _spec(value: Any) -> None:
    from .specs import classify
    if isinstance(value, str) and value.startswith("if:"):
        validate.ifname(value[3:])
    elif isinstance(value, str):
        classify(value)
    elif value is not None and not hasattr(value, "pci"):  # a Nic
        raise InputError(f"bad NIC {value!r}: a PCI address, MAC or interface name")


def _target(value: Any) -> None:
    if isinstance(value, str) or (value is not None and not hasattr(value, "ns_id")):  # a str, or not a Target
        validate.target(value)


def _flag(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise InputError(f"bad {name} {value!r}: true or false")
    return check


def _addresses(value: Any) -> None:
    if not callable(value):
        validate.addresses(value)


# field -> its check (InputError names the value; the request adds ``field`` to it for the policy's file:line)
_CHECKS: Dict[str, Callable[[Any], Any]] = {
    "nic": _spec, "target": _target,
    "mode": lambda v: validate.choice(v, "mode", models.MODES),
    "ifname": validate.ifname, "addresses": _addresses, "gateway": validate.gateway, "mtu": validate.mtu,
    "table": validate.table, "hugepages": validate.hugepages,
    "driver": lambda v: validate.choice(v, "driver", models.USER_DRIVERS),
    "dhcp": _flag("dhcp"), "noiommu": _flag("noiommu"), "force": _flag("force"), "dry_run": _flag("dry_run"),
}


@dataclass(frozen=True)
class AttachRequest:
    """What to hand over, where and how; the arguments of :func:`dpdkeni.handoff.attach`. Every value is
    checked when the request is made (InputError, exit 2, with ``field`` naming the bad one)."""

    nic: Any = None                      # a PCI address, MAC, interface name, lease key ``if:NAME`` or a Nic
    target: Any = None                   # pid:N, netns:NAME, container:ID, a netns path, or a resolved Target
    mode: str = "netdev"
    ifname: str = "eth0"
    addresses: Union[Sequence[str], AddressesLater] = ()
    gateway: Optional[str] = None
    mtu: Optional[int] = None
    dhcp: bool = False
    hugepages: Optional[str] = None
    driver: str = "vfio-pci"
    noiommu: bool = False
    force: bool = False
    dry_run: bool = False
    table: Optional[int] = None

    def __post_init__(self) -> None:
        if isinstance(self.addresses, list):
            object.__setattr__(self, "addresses", tuple(self.addresses))
        for name, check in _CHECKS.items():
            try:
                check(getattr(self, name))
            except InputError as exc:
                exc.field = name  # type: ignore[attr-defined]
                raise
        if self.dhcp and self.addresses:
            err = InputError("--dhcp and --address exclude each other")
            err.field = "dhcp"  # type: ignore[attr-defined]
            raise err

    @property
    def later(self) -> Optional[AddressesLater]:
        """The function giving the addresses once the NIC moved, or None when they are given."""
        return self.addresses if callable(self.addresses) else None

    @property
    def given(self) -> Tuple[str, ...]:
        """The addresses known now (none when they come :attr:`later`)."""
        return () if callable(self.addresses) else tuple(self.addresses)

    def bind(self, **values: Any) -> "AttachRequest":
        """This request with some values set (a rule's NIC and target), checked again."""
        return dataclasses.replace(self, **values)

    def kwargs(self) -> Dict[str, Any]:
        """Everything but ``nic`` and ``target``, as :func:`dpdkeni.handoff.attach` keywords."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del out["nic"], out["target"]
        return out


FIELDS = tuple(f.name for f in dataclasses.fields(AttachRequest))
