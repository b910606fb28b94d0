"""The NICs of this host: PCI network devices of the managed models and, on request, every netdev.

Everything is read from sysfs under :class:`~dpdkeni.sysfs.Sysfs`'s root; whether a NIC is *active* (carries the
host's traffic: an IPv4 or global IPv6 address, or a route through it) is read with netlink when the root is the
real one.
"""
from __future__ import annotations

import contextlib
import logging
import re
import socket
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, Iterable, List, Optional, Set

from . import models, specs
from .errors import NotFoundError, boundary
from .sysfs import Sysfs

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = logging.getLogger(__name__)

PCI_DEVICES = "sys/bus/pci/devices"
CLASS_NET = "sys/class/net"
NETWORK_CLASS_PREFIX = "0x02"


@dataclass
class Nic:
    """One network device as dpdkeni sees it. ``pci`` is None for virtual links (veth, bridge, …)."""

    pci: Optional[str]
    model: str
    vendor: Optional[str] = None
    device: Optional[str] = None
    driver: Optional[str] = None
    ifname: Optional[str] = None
    mac: Optional[str] = None
    numa_node: Optional[int] = None
    iommu_group: Optional[int] = None
    operstate: Optional[str] = None
    mtu: Optional[int] = None
    active: bool = False
    managed: bool = False
    kernel_driver: Optional[str] = None
    pmd: Optional[str] = None
    netns: Optional[str] = None
    unused: List[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The most telling name: the PCI address, else the interface name."""
        return self.pci or self.ifname or "?"

    @property
    def on_dpdk_driver(self) -> bool:
        """Whether the NIC is bound to a user-space driver (vfio-pci, uio)."""
        return self.driver in models.DPDK_DRIVERS

    def to_dict(self) -> Dict[str, object]:
        """A JSON-ready dict of every field."""
        return asdict(self)


ActiveFn = Callable[[], Set[str]]


def lease_key(nic: Nic) -> str:
    """The ledger key of a NIC: its PCI address, or ``if:<ifname>`` for a virtual stand-in."""
    return nic.pci or f"if:{nic.ifname}"


def netlink_active_ifnames() -> Set[str]:
    """Interface names in this netns with an IPv4 address, a global IPv6 address, or a route.

    IPv6 link-local addresses and the routes the kernel adds for them are ignored: every link that is up
    has them, and a freshly plugged NIC that udev brought up must not count as carrying traffic.
    """
    from pyroute2 import IPRoute

    active_idx: Set[int] = set()
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for addr in ipr.get_addr():
            if addr["family"] == socket.AF_INET or addr["scope"] == 0:
                active_idx.add(addr["index"])
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family):
                table = route.get_attr("RTA_TABLE") or route["table"]
                dst = route.get_attr("RTA_DST") or ""
                if table == 255 or dst.startswith(("fe80:", "ff00:")):
                    continue
                oif = route.get_attr("RTA_OIF")
                if oif:
                    active_idx.add(oif)
                for hop in route.get_attr("RTA_MULTIPATH") or []:
                    active_idx.add(hop["oif"])
    return {names[i] for i in active_idx if i in names}


def _netlink_kinds() -> Dict[str, str]:
    from pyroute2 import IPRoute

    kinds = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            info = link.get_attr("IFLA_LINKINFO")
            kind = info.get_attr("IFLA_INFO_KIND") if info else None
            name = link.get_attr("IFLA_IFNAME")
            kinds[name] = kind or ("loopback" if name == "lo" else "unknown")
    return kinds


def _ifname_of(fs: Sysfs, dev: str) -> Optional[str]:
    names = fs.listdir(f"{dev}/net")
    if not names:  # virtio puts the netdev one level down, under virtioN/net
        for sub in fs.listdir(dev):
            if sub.startswith("virtio"):
                names = fs.listdir(f"{dev}/{sub}/net")
                if names:
                    break
    return names[0] if names else None


def netdev_name(bdf: str, sysfs: Optional[Sysfs] = None) -> Optional[str]:
    """The name of the netdev of the PCI device at ``bdf`` now (None: it has none, or the device is gone)."""
    return _ifname_of(sysfs or Sysfs(), f"{PCI_DEVICES}/{bdf}")


def pci_nic(bdf: str, sysfs: Optional[Sysfs] = None) -> Nic:
    """The NIC at one PCI address, read from sysfs (``active`` is not computed: see :func:`list_nics`)."""
    return _pci_nic(sysfs or Sysfs(), bdf, _ledger_macs())


def is_network_device(fs: Sysfs, bdf: str) -> bool:
    """Whether the PCI device at ``bdf`` is a network controller (class 0x02)."""
    return _is_network_device(fs, bdf)


def _ledger_macs() -> Dict[str, str]:
    """MACs the ledger remembers by PCI address (a NIC bound to vfio has no netdev to read it from)."""
    try:
        from .ledger import Ledger
    except ImportError:
        return {}
    try:
        return Ledger().known_macs()
    except Exception as exc:  # the ledger is a hint here; a broken one is reported by its own commands
        log.debug("ledger unreadable for MACs: %s", exc)
        return {}


def _pci_nic(fs: Sysfs, bdf: str, known_macs: Dict[str, str]) -> Nic:
    dev = f"{PCI_DEVICES}/{bdf}"
    vendor = (fs.read(f"{dev}/vendor") or "").removeprefix("0x")
    device = (fs.read(f"{dev}/device") or "").removeprefix("0x")
    model = models.model_for(vendor, device)
    ifname = _ifname_of(fs, dev)
    numa = fs.read_int(f"{dev}/numa_node", default=None, base=10)
    group = fs.link_name(f"{dev}/iommu_group")
    nic = Nic(
        pci=bdf, model=model.name if model else "other", vendor=vendor, device=device,
        driver=fs.link_name(f"{dev}/driver"), ifname=ifname,
        numa_node=numa if numa is not None and numa >= 0 else None,
        iommu_group=int(group) if group and group.isdigit() else None,
        managed=model is not None,
        kernel_driver=model.kernel_driver if model else None, pmd=model.pmd if model else None,
    )
    if ifname:
        net = f"{CLASS_NET}/{ifname}"
        nic.mac = fs.read(f"{net}/address")
        nic.operstate = fs.read(f"{net}/operstate")
        nic.mtu = fs.read_int(f"{net}/mtu", base=10)
    else:
        nic.mac = known_macs.get(bdf)
    if model:
        nic.unused = [d for d in (model.kernel_driver, "vfio-pci") if d != nic.driver]
    return nic


def _is_network_device(fs: Sysfs, bdf: str) -> bool:
    return (fs.read(f"{PCI_DEVICES}/{bdf}/class") or "").startswith(NETWORK_CLASS_PREFIX)


def _virtual_nic(fs: Sysfs, ifname: str, kind: str) -> Nic:
    net = f"{CLASS_NET}/{ifname}"
    return Nic(pci=None, model=kind, driver=kind, ifname=ifname, mac=fs.read(f"{net}/address"),
               operstate=fs.read(f"{net}/operstate"), mtu=fs.read_int(f"{net}/mtu", base=10))


def _virtual_nics(fs: Sysfs, seen: Iterable[str]) -> List[Nic]:
    kinds = _netlink_kinds() if fs.root == "/" else {}
    return [_virtual_nic(fs, ifname, kinds.get(ifname, "unknown")) for ifname in fs.listdir(CLASS_NET)
            if ifname not in seen and not fs.exists(f"{CLASS_NET}/{ifname}/device")]


def _netlink_kind(ifname: str, ipr: Optional["IPRoute"] = None) -> str:
    """The link kind of one interface (one RTM_GETLINK instead of a dump of every link; on ``ipr`` when given)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with contextlib.ExitStack() as stack:
        if ipr is None:
            ipr = stack.enter_context(IPRoute())
        try:
            (link,) = ipr.link("get", ifname=ifname)
        except NetlinkError:
            return "unknown"
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info else None
    return kind or ("loopback" if ifname == "lo" else "unknown")


def _find_virtual(fs: Sysfs, kind: str, value: str, ipr: Optional["IPRoute"] = None) -> Optional[Nic]:
    """A virtual link named by interface name or MAC, found without enumerating every device; None when the
    spec may name a PCI NIC (those keep precedence, so the full scan decides)."""
    if kind == "pci" or (kind == "mac" and value in {m.lower() for m in _ledger_macs().values()}):
        return None  # a leased PCI NIC on vfio has no netdev left to show the MAC: the full scan has it
    names = [value] if kind == "ifname" else [n for n in fs.listdir(CLASS_NET)
                                             if (fs.read(f"{CLASS_NET}/{n}/address") or "").lower() == value]
    names = [n for n in names if fs.exists(f"{CLASS_NET}/{n}")]
    if len(names) != 1 or fs.exists(f"{CLASS_NET}/{names[0]}/device"):
        return None
    return _virtual_nic(fs, names[0], _netlink_kind(names[0], ipr) if fs.root == "/" else "unknown")


@boundary
def list_nics(all: bool = False, sysfs: Optional[Sysfs] = None,
              active: Optional[ActiveFn] = None) -> List[Nic]:
    """The managed NICs of this host (``all=True``: every PCI network device and every netdev).

    ``active`` returns the interface names that carry traffic; by default netlink is asked when the sysfs
    root is the real one, and nothing is active in a synthetic tree.
    """
    fs = sysfs or Sysfs()
    known_macs = _ledger_macs()
    nics = [_pci_nic(fs, bdf, known_macs) for bdf in fs.listdir(PCI_DEVICES) if _is_network_device(fs, bdf)]
    if not all:
        nics = [n for n in nics if n.managed]
    else:
        nics += _virtual_nics(fs, {n.ifname for n in nics if n.ifname})
    if active is None:
        active = netlink_active_ifnames if fs.root == "/" else (lambda: set())
    busy = active()
    for nic in nics:
        nic.active = bool(nic.ifname and nic.ifname in busy)
    return nics


def _pci_of_netdev(fs: Sysfs, ifname: str) -> Optional[str]:
    """The PCI address behind a netdev (virtio's sits one level up, above virtioN), or None (virtual)."""
    if not fs.exists(f"{CLASS_NET}/{ifname}/device"):
        return None
    for part in reversed(fs.realpath(f"{CLASS_NET}/{ifname}/device").split("/")):
        if _BDF.match(part):
            return part
    return None


_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


def netlink_active_one(ifname: str) -> Set[str]:
    """:func:`netlink_active_ifnames` for one link: ``{ifname}`` when it carries traffic, else empty."""
    from pyroute2 import IPRoute

    with IPRoute(strict_check=True) as ipr:  # strict: the kernel filters the dumps by link
        idx = ipr.link_lookup(ifname=ifname)
        if not idx:
            return set()
        for addr in ipr.get_addr(index=idx[0]):
            if addr["family"] == socket.AF_INET or addr["scope"] == 0:
                return {ifname}
        return {ifname} if has_routes(ipr, idx[0]) else set()


def has_routes(ipr: "IPRoute", index: int) -> bool:
    """Whether a route other than the kernel's local and IPv6 link-local ones goes through link ``index``
    (``ipr`` with ``strict_check`` has the kernel filter the dump). One dump per family: those need no RTNL,
    an AF_UNSPEC dump waits for it (behind every namespace move in progress)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family, oif=index):
            dst = route.get_attr("RTA_DST") or ""
            if (route.get_attr("RTA_TABLE") or route["table"]) != 255 and not dst.startswith(("fe80:", "ff00:")):
                return True
    return False


def _one_pci_nic(fs: Sysfs, kind: str, value: str) -> Optional[Nic]:
    """A PCI NIC named by its address or interface name, without scanning every device (attach is on a hot
    path); None when the spec needs the full scan."""
    if kind == "ifname":
        bdf = _pci_of_netdev(fs, value) if fs.exists(f"{CLASS_NET}/{value}") else None
    else:
        bdf = value if kind == "pci" else None
    if not bdf or not fs.exists(f"{PCI_DEVICES}/{bdf}") or not _is_network_device(fs, bdf):
        return None
    return _pci_nic(fs, bdf, _ledger_macs())


@boundary
def find_nic(spec: str, sysfs: Optional[Sysfs] = None, active: Optional[ActiveFn] = None,
             ipr: Optional["IPRoute"] = None) -> Nic:
    """The NIC named by a PCI address (full or short), a MAC or an interface name (``ipr``: a root-namespace
    netlink socket to reuse).

    Unmanaged devices are found too (the guards decide what may be done with them). A MAC matches a PCI
    device before a virtual link that shares it (a veth or macvlan copying an ENI's MAC is not the ENI).
    """
    kind, value = specs.classify(spec)
    fs = sysfs or Sysfs()
    nic = _find_virtual(fs, kind, value, ipr) or _one_pci_nic(fs, kind, value)
    if nic is not None:
        if nic.ifname and active is None:
            nic.active = bool(fs.root == "/" and netlink_active_one(nic.ifname))
        elif nic.ifname and active is not None:
            nic.active = nic.ifname in active()
        return nic
    for nic in list_nics(all=True, sysfs=fs, active=active):
        if (kind == "pci" and nic.pci == value) or (kind == "ifname" and nic.ifname == value) or (
                kind == "mac" and nic.mac and nic.mac.lower() == value):
            return nic
    raise NotFoundError(f"no NIC {spec!r} on this host",
                        "see 'dpdkeni list --all' for the NICs there are")
