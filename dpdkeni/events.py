"""NIC hot-plug events: :class:`Watcher` turns kernel/udev uevents into :class:`NicEvent`s, and
:func:`wait_for_nic` waits for one NIC by MAC or PCI address.

The watcher keeps a table of the NICs it has reported and reports only *changes* of that table, so one NIC
yields one ``added`` however many uevents it causes (pci add, virtio add, net add, pci bind), and a re-read
of everything (at start and after the kernel dropped messages, ``ENOBUFS``) reports what was missed and
nothing twice. Since a uevent is handled by reading sysfs as it is *now*, a NIC unplugged and another plugged at
the same PCI address before the watcher got to the first one's uevents is recognised by its model or MAC and
reported as ``removed`` + ``added``. The monitor socket is opened before the first enumeration, so nothing that
happens in between is lost.

Sources: ``udev`` hears devices after udevd processed (renamed) them; when no udevd runs (containers, this
kind of VM) it hears nothing, silently, so ``auto`` picks ``kernel`` there. With the ``kernel`` source a NIC
that udev renames is reported under its kernel name, and the rename as its own ``moved`` event.
"""
from __future__ import annotations

import collections
import errno
import logging
import os
import re
import select
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Deque, Dict, Iterator, List, Optional, Tuple, Union

from . import inventory, specs
from . import models as models_mod
from .errors import InputError, WaitTimeout, boundary
from .inventory import Nic
from .sysfs import Sysfs

log = logging.getLogger(__name__)

ACTIONS = ("added", "removed", "bound", "moved")
SOURCES = ("auto", "udev", "kernel")
UDEV_CONTROL = "run/udev/control"
# How long a NIC in transition (no driver, or a kernel driver without its netdev) may stay so before it is
# reported as it is: covers unbind -> bind (driver_override), net remove -> pci remove (unplug).
SETTLE_S = 0.5
# a NIC whose driver let go is held back this long for what usually follows at once (its removal, on unplug:
# the kernel unbinds, then deletes the device), so an unplug is one ``removed`` even when the remove uevent comes
# late (udevd forwards it after its rules ran: seconds on a loaded host); a NIC left unbound is then ``bound``
UNBIND_SETTLE_S = 5.0
# a NIC whose kernel driver is bound but whose netdev is not there yet is still in its driver's probe (the driver
# link appears before probe runs; e1000's probe reads its EEPROM, slow on a loaded guest): held back this long
# from when it was first seen so, then reported as it is
PROBE_SETTLE_S = 5.0
# with the udev source, a new PCI NIC whose netdev udevd has not announced yet still has its kernel name (udevd
# renames it before it passes the net event on): held back until that event, at most this long (udevd took over
# 3 s on the lab guest while the host ran the rest of the suite; the event ends the hold at once otherwise)
UDEV_NAME_SETTLE_S = 10.0
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_DRAIN_BATCH = 512
RTM_NEWLINK_TYPE = 16

Filter = Union[None, Collection[str], Callable[[Nic], bool]]


@dataclass
class NicEvent:
    """One change of a NIC: ``action`` is ``added``, ``removed``, ``bound`` (driver changed) or ``moved``
    (renamed, or its netdev left or entered this netns). ``nic`` is the NIC as it is now (as it was last seen,
    for ``removed``); ``old`` as it was before; ``resync`` is True when a re-enumeration found the change."""

    action: str
    nic: Nic
    old: Optional[Nic] = None
    seqnum: Optional[int] = None
    resync: bool = False
    time: float = field(default_factory=time.monotonic)

    def to_dict(self) -> Dict[str, object]:
        """A JSON-ready dict (``old`` holds only the fields that changed)."""
        out: Dict[str, object] = {"action": self.action, "nic": self.nic.to_dict(), "resync": self.resync}
        if self.seqnum is not None:
            out["seqnum"] = self.seqnum
        if self.old is not None:
            new = self.nic.to_dict()
            out["old"] = {k: v for k, v in self.old.to_dict().items() if new.get(k) != v}
        return out

    def __str__(self) -> str:
        nic = self.nic
        parts = [f"{self.action:<7}", nic.pci or "-", nic.model, f"if={nic.ifname or '-'}",
                 f"mac={nic.mac or '-'}", f"drv={nic.driver or '-'}"]
        if self.old is not None and self.old.ifname != nic.ifname:
            parts.append(f"was={self.old.ifname or '-'}")
        if self.old is not None and self.old.driver != nic.driver:
            parts.append(f"was_drv={self.old.driver or '-'}")
        return " ".join(parts)


def default_source(sysfs: Optional[Sysfs] = None) -> str:
    """``udev`` when a udev daemon runs (its control socket exists), else ``kernel``."""
    return "udev" if (sysfs or Sysfs()).exists(UDEV_CONTROL) else "kernel"


def _change(old: Optional[Nic], new: Nic) -> Optional[str]:
    if old is None:
        return "added"
    if old.driver != new.driver:
        return "bound"
    if old.ifname != new.ifname:
        return "moved"
    return None


def _replaced(old: Nic, new: Nic) -> bool:
    """Whether ``new`` is another device than ``old`` at the same key: a NIC unplugged and another plugged at the
    same PCI address before the watcher read sysfs for the first one's uevents (its model or MAC differ)."""
    return old.model != new.model or bool(old.mac and new.mac and old.mac.lower() != new.mac.lower())


def _settled(nic: Nic) -> bool:
    """A PCI NIC is settled when a driver holds it and, for its kernel driver, its netdev is here."""
    return bool(nic.driver) and (bool(nic.ifname) or nic.driver != nic.kernel_driver)


def _probing(nic: Nic) -> bool:
    """Whether ``nic``'s own kernel driver holds it without its netdev: the driver is probing it still."""
    return bool(nic.driver) and nic.driver == nic.kernel_driver and not nic.ifname


def _bdf_in(devpath: str) -> Optional[str]:
    for part in reversed(devpath.split("/")):
        if _BDF.match(part):
            return part
    return None


class _Links:
    """Kinds of virtual links (``veth``, ``bridge``, …), asked of netlink once per ifindex.

    The request is a pyroute2 ``ifinfmsg``; of the reply only IFLA_LINKINFO/IFLA_INFO_KIND is read, by walking
    the attributes: a full pyroute2 decode costs 0.8 ms per link on this kind of VM and an ``IPRoute`` call
    3-4 ms, on the path of every uevent (the latency goal is 5 ms over a raw uevent reader).
    """

    _RTA = struct.Struct("HH")
    IFLA_LINKINFO, IFLA_INFO_KIND, NLA_TYPE_MASK = 18, 1, 0x3FFF

    def __init__(self) -> None:
        self._ipr = None
        self._sock: Optional[socket.socket] = None
        self._seq = 0
        self._kinds: Dict[int, str] = {}

    def _ensure(self):
        if self._ipr is None:
            from pyroute2 import IPRoute
            self._ipr = IPRoute()
        return self._ipr

    @staticmethod
    def _kind(link) -> str:
        info = link.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info else None
        return kind or ("loopback" if link.get_attr("IFLA_IFNAME") == "lo" else "unknown")

    @classmethod
    def _attrs(cls, data: bytes, offset: int, end: int) -> Iterator[Tuple[int, bytes]]:
        while offset + 4 <= end:
            length, kind = cls._RTA.unpack_from(data, offset)
            if length < 4:
                return
            yield kind & cls.NLA_TYPE_MASK, data[offset + 4:offset + length]
            offset += (length + 3) & ~3

    def _ask(self, ifindex: int) -> Optional[str]:
        from pyroute2.netlink import NLM_F_REQUEST
        from pyroute2.netlink.rtnl import RTM_GETLINK
        from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
        if self._sock is None:
            self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
            self._sock.bind((0, 0))
        self._seq += 1
        msg = ifinfmsg()
        msg["index"] = ifindex
        msg["header"].update(type=RTM_GETLINK, flags=NLM_F_REQUEST, sequence_number=self._seq)
        msg["attrs"] = [("IFLA_EXT_MASK", 8)]  # RTEXT_FILTER_SKIP_STATS
        msg.encode()
        self._sock.send(msg.data)
        while True:
            data = self._sock.recv(65536)
            length, mtype, _, seq = struct.unpack_from("IHHI", data)
            if seq == self._seq:
                break
        if mtype != RTM_NEWLINK_TYPE:
            return None  # NLMSG_ERROR: no such link (any more)
        name = None
        for kind, payload in self._attrs(data, 32, length):  # nlmsghdr 16 + ifinfomsg 16
            if kind == 3:  # IFLA_IFNAME
                name = payload.rstrip(b"\0").decode()
            if kind == self.IFLA_LINKINFO:
                for sub, value in self._attrs(payload, 0, len(payload)):
                    if sub == self.IFLA_INFO_KIND:
                        return value.rstrip(b"\0").decode()
        return "loopback" if name == "lo" else "unknown"

    def kind(self, ifindex: int) -> Optional[str]:
        if ifindex not in self._kinds:
            kind = self._ask(ifindex)
            if kind is None:
                return None
            self._kinds[ifindex] = kind
        return self._kinds[ifindex]

    def dump(self) -> Dict[int, tuple]:
        """ifindex -> (name, kind) of every link without a parent device (the virtual ones)."""
        out = {}
        for link in self._ensure().get_links():
            if link.get_attr("IFLA_PARENT_DEV_NAME"):
                continue
            self._kinds[link["index"]] = kind = self._kind(link)
            out[link["index"]] = (link.get_attr("IFLA_IFNAME"), kind)
        return out

    def forget(self, ifindex: int) -> None:
        self._kinds.pop(ifindex, None)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watcher:
    """NIC events from uevents, over pyudev.

    ``models``: None for the managed models (virtio-net, e1000, e1000e, …, plus the link kinds the models file
    lists under ``virtual_kinds``: test stand-ins), a collection of model names
    (``"veth"`` and other link kinds included), or a callable ``filter(nic) -> bool``; ``all=True`` admits every
    network device. ``existing=True`` reports the NICs already present as ``added`` when the watcher starts.
    ``rcvbuf`` sets the socket's receive buffer (bytes; small values make the kernel drop messages, which the
    watcher recovers from by re-enumerating)::

        with Watcher() as events:
            for event in events:
                print(event.action, event.nic.pci, event.nic.ifname)
    """

    def __init__(self, source: str = "auto", models: Filter = None, all: bool = False, *,
                 existing: bool = False, settle: float = SETTLE_S, rcvbuf: Optional[int] = None,
                 sysfs: Optional[Sysfs] = None) -> None:
        if source not in SOURCES:
            raise InputError(f"unknown event source {source!r}: one of {', '.join(SOURCES)}")
        self.fs = sysfs or Sysfs()
        self.source = default_source(self.fs) if source == "auto" else source
        self.all = all
        self.models = models
        self.existing = existing
        self.settle = settle
        self.rcvbuf = rcvbuf
        # link kinds the models file admits as stand-in NICs (tests: veth); none unless it says so
        self._stand_ins = frozenset(models_mod.virtual_kinds()) if models is None and not all else frozenset()
        self.stats: collections.Counter = collections.Counter()
        self._known: Dict[str, Nic] = {}
        self._pending: Dict[str, float] = {}
        self._probe_until: Dict[str, float] = {}
        self._udev_named: set = set()  # PCI NICs whose netdev udev has announced (named) since we started
        self._out: Deque[NicEvent] = collections.deque()
        self._links = _Links()
        self._monitor: Any = None  # pyudev.Monitor once started
        self._sock: Any = None  # a dup of the monitor's socket, to peek for ENOBUFS
        self._poller = select.poll()

    # ----- lifecycle
    def start(self) -> "Watcher":
        """Open the monitor socket, then enumerate (the baseline, or ``added`` events with ``existing``).
        Starting again after :meth:`close` reports what changed while the watcher was stopped."""
        if self._monitor is not None:
            return self
        import pyudev
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=self.source)
        monitor.filter_by("net")
        monitor.filter_by("pci")
        if self.rcvbuf:
            monitor.set_receive_buffer_size(self.rcvbuf)
        monitor.start()
        self._monitor = monitor
        # a second handle on the socket to read (and so clear) a pending ENOBUFS, which pyudev cannot do
        self._sock = socket.socket(fileno=os.dup(monitor.fileno()))
        self._poller.register(monitor.fileno(), select.POLLIN | select.POLLERR)
        baseline = bool(self._known)
        self.resync(emit=self.existing or baseline)
        log.debug("watching NIC events (source %s)", self.source)
        return self

    def close(self) -> None:
        """Stop listening (the table of known NICs is kept for a later :meth:`start`)."""
        if self._monitor is not None:
            self._poller.unregister(self._monitor.fileno())
            self._sock.close()
            self._monitor = None
            self._sock = None
        self._links.close()

    def __enter__(self) -> "Watcher":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def fileno(self) -> int:
        """The monitor socket (readable when uevents wait); for callers running their own poll loop."""
        return self.start()._monitor.fileno()

    def known(self) -> List[Nic]:
        """The NICs reported so far (or found present at start), as last seen."""
        return list(self._known.values())

    # ----- reading
    def __iter__(self) -> Iterator[NicEvent]:
        return self.events()

    def events(self, timeout: Optional[float] = None) -> Iterator[NicEvent]:
        """Yield events until ``timeout`` seconds pass without one (forever when None)."""
        while True:
            batch = self.poll(timeout)
            if not batch:
                return
            yield from batch

    def poll(self, timeout: Optional[float] = None) -> List[NicEvent]:
        """Wait up to ``timeout`` seconds (forever when None) for events; return them (empty on timeout)."""
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._expire()
            if self._out:
                out = list(self._out)
                self._out.clear()
                return out
            waits = [t for t in (deadline, self.next_deadline()) if t is not None]
            wait = max(0.0, min(waits) - time.monotonic()) if waits else None
            ready = self._poller.poll(None if wait is None else int(wait * 1000 + 0.999))
            if ready:
                self._read(ready[0][1])
            elif deadline is not None and time.monotonic() >= deadline:
                self._expire()
                out = list(self._out)
                self._out.clear()
                return out

    def next_deadline(self) -> Optional[float]:
        """When (``time.monotonic()``) the next NIC in transition is reported as it is; None if none waits."""
        return min(self._pending.values(), default=None)

    def _read(self, revents: int) -> None:
        if revents & select.POLLERR:
            self._check_overflow()
        for _ in range(_DRAIN_BATCH):
            try:
                device = self._monitor.poll(0)
            except OSError as exc:  # pyudev: "Error while polling fd" (POLLERR) or a failed receive
                log.debug("monitor: %s", exc)
                self._check_overflow(always=True)
                return
            if device is None:
                return
            self.stats["uevents"] += 1
            self._on_uevent(device)

    def _check_overflow(self, always: bool = False) -> None:
        # a failed receive inside pyudev may itself have consumed the ENOBUFS: then assume the worst
        try:
            self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            lost = always
        except BlockingIOError:
            lost = always
        except OSError as exc:
            lost = exc.errno == errno.ENOBUFS or always
        if lost:
            self.stats["overflows"] += 1
            log.info("uevent socket overflowed (ENOBUFS): re-enumerating NICs")
            self.resync()

    # ----- the table
    def _admit(self, nic: Nic) -> bool:
        if self.all:
            return True
        if self.models is None:
            return nic.managed or (nic.pci is None and nic.model in self._stand_ins)
        if callable(self.models):
            return bool(self.models(nic))
        return nic.model in self.models

    @property
    def _wants_virtual(self) -> bool:
        return self.all or self.models is not None or bool(self._stand_ins)

    def _emit(self, action: str, nic: Nic, old: Optional[Nic], seqnum: Optional[int], resync: bool) -> None:
        event = NicEvent(action, nic, old, seqnum, resync)
        log.debug("event %s", event)
        self.stats[action] += 1
        self._out.append(event)

    def _set(self, key: str, nic: Nic, seqnum: Optional[int] = None, resync: bool = False) -> None:
        self._pending.pop(key, None)
        self._probe_until.pop(key, None)
        old = self._known.get(key)
        if old is not None and _replaced(old, nic):
            self._emit("removed", old, None, seqnum, resync)
            old = None
        self._known[key] = nic
        action = _change(old, nic)
        if action:
            self._emit(action, nic, old, seqnum, resync)

    def _drop(self, key: str, seqnum: Optional[int] = None, resync: bool = False) -> None:
        self._pending.pop(key, None)
        self._probe_until.pop(key, None)
        old = self._known.pop(key, None)
        if old is not None:
            self._emit("removed", old, None, seqnum, resync)

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, t in self._pending.items() if t <= now]:
            self._refresh_pci(key, None, final=True)

    # ----- PCI NICs (keyed by PCI address)
    def _read_pci(self, bdf: str) -> Optional[Nic]:
        if not self.fs.exists(f"{inventory.PCI_DEVICES}/{bdf}"):
            return None
        return inventory.pci_nic(bdf, self.fs)

    def _unnamed(self, bdf: str, nic: Nic) -> bool:
        """With the udev source, a netdev udev has not announced yet still has its kernel name (udev renames
        it before it passes the net event on, after the pci bind event it already passed)."""
        return self.source == "udev" and bool(nic.ifname) and bdf not in self._udev_named \
            and bdf not in self._known

    def _refresh_pci(self, bdf: str, seqnum: Optional[int], final: bool = False, resync: bool = False) -> None:
        nic = self._read_pci(bdf)
        if nic is None or not self._admit(nic):
            self._drop(bdf, seqnum, resync)
        elif self._unnamed(bdf, nic) and self._pending.get(bdf, float("inf")) > time.monotonic():
            self._hold_for_udev(bdf)
        elif _probing(nic) and self._hold_probe(bdf, nic):
            pass
        elif final or _settled(nic):
            self._set(bdf, nic, seqnum, resync)
        elif self._lost_driver(bdf, nic):
            self._pending.setdefault(bdf, time.monotonic() + max(self.settle, UNBIND_SETTLE_S))
        else:
            self._pending[bdf] = time.monotonic() + self.settle

    def _hold_for_udev(self, bdf: str) -> None:
        """Hold an unnamed new NIC back until udevd's net event, at most :data:`UDEV_NAME_SETTLE_S` from when it
        was first held."""
        self._pending.setdefault(bdf, time.monotonic() + max(self.settle, UDEV_NAME_SETTLE_S))

    def _hold_probe(self, bdf: str, nic: Nic) -> bool:
        """Hold back a NIC its kernel driver is still probing, up to :data:`PROBE_SETTLE_S` from when it was first
        seen so; True while it is held (its netdev's uevent ends the hold sooner)."""
        old = self._known.get(bdf)
        if old is not None and old.driver == nic.driver:
            return False  # the same driver as before: its netdev left for another namespace (``moved``)
        now = time.monotonic()
        until = self._probe_until.setdefault(bdf, now + max(self.settle, PROBE_SETTLE_S))
        if now >= until:
            return False
        self._pending[bdf] = until
        return True

    def _lost_driver(self, bdf: str, nic: Nic) -> bool:
        """A known NIC that had a driver and has none now (the same device: not another one plugged at its address
        meanwhile): an unbind, or the first half of an unplug."""
        old = self._known.get(bdf)
        return old is not None and bool(old.driver) and not nic.driver and not _replaced(old, nic)

    # ----- virtual links (keyed by ifindex: stable across renames)
    def _virtual(self, ifname: str, ifindex: int, kind: Optional[str] = None) -> Optional[Nic]:
        net = f"{inventory.CLASS_NET}/{ifname}"
        if self.fs.read_int(f"{net}/ifindex", base=10) != ifindex:
            return None  # renamed or gone since: a later uevent (or a resync) tells
        kind = kind or self._links.kind(ifindex)
        if kind is None:
            return None
        return Nic(pci=None, model=kind, driver=kind, ifname=ifname, mac=self.fs.read(f"{net}/address"),
                   operstate=self.fs.read(f"{net}/operstate"), mtu=self.fs.read_int(f"{net}/mtu", base=10))

    def _on_virtual(self, action: str, props, seqnum: Optional[int]) -> None:
        ifindex = int(props.get("IFINDEX") or 0)
        key = f"ifindex:{ifindex}"
        if action == "remove":
            self._links.forget(ifindex)
            self._drop(key, seqnum)
            return
        nic = self._virtual(props.get("INTERFACE", ""), ifindex)
        if nic is not None and self._admit(nic):
            self._set(key, nic, seqnum)

    # ----- dispatch
    def _on_uevent(self, device) -> None:
        props = device.properties
        action = device.action
        seqnum = int(props.get("SEQNUM") or 0) or None
        if device.subsystem == "pci":
            if int(props.get("PCI_CLASS") or "0", 16) >> 16 != 2:  # not a network controller
                return
            self._on_pci(device.sys_name, action, seqnum)
            return
        bdf = _bdf_in(props.get("DEVPATH", ""))
        if bdf:
            if action == "remove":
                self._udev_named.discard(bdf)
            elif self.source == "udev":
                self._udev_named.add(bdf)
            self._on_pci(bdf, action, seqnum)
        elif self._wants_virtual:
            self._on_virtual(action, props, seqnum)

    def _on_pci(self, bdf: str, action: str, seqnum: Optional[int]) -> None:
        # 'bind' comes once probing finished: the NIC is as settled as it will get
        self._refresh_pci(bdf, seqnum, final=(action == "bind"))

    def resync(self, emit: bool = True) -> None:
        """Re-read every NIC and report what differs from the table (``emit=False``: only fill the table)."""
        self.stats["resyncs"] += 1
        seen = set()
        for bdf in self.fs.listdir(inventory.PCI_DEVICES):
            if not inventory.is_network_device(self.fs, bdf):
                continue
            nic = inventory.pci_nic(bdf, self.fs)
            if not self._admit(nic):
                continue
            seen.add(bdf)
            if emit and self._unnamed(bdf, nic):
                # a resync (the daemon runs one per hook message) must not report a new NIC under the kernel
                # name udevd is about to replace: held for udevd's net event, as a uevent would be
                self._hold_for_udev(bdf)
            elif emit and not _settled(nic) and bdf not in self._known:
                self._pending.setdefault(bdf, time.monotonic() + self.settle)
            elif emit:
                self._set(bdf, nic, resync=True)
            else:
                self._known[bdf] = nic
        if self._wants_virtual:
            for ifindex, (name, kind) in self._links.dump().items():
                link = self._virtual(name, ifindex, kind)
                if link is None or not self._admit(link):
                    continue
                key = f"ifindex:{ifindex}"
                seen.add(key)
                if emit:
                    self._set(key, link, resync=True)
                else:
                    self._known[key] = link
        for key in [k for k in self._known if k not in seen and k not in self._pending]:
            if emit:
                self._drop(key, resync=True)
            else:
                del self._known[key]


def _matcher(mac: Optional[str], pci: Optional[str]) -> Tuple[Callable[[Nic], bool], str]:
    if (mac is None) == (pci is None):
        raise InputError("give exactly one of mac= or pci=")
    if mac is not None:
        want = specs.normalize_mac(mac)
        return (lambda nic: bool(nic.ifname) and (nic.mac or "").lower() == want), f"MAC {want}"
    want = specs.normalize_pci(pci or "")
    return (lambda nic: nic.pci == want), f"PCI address {want}"


@boundary
def wait_for_nic(mac: Optional[str] = None, pci: Optional[str] = None, timeout: float = 30.0, *,
                 source: str = "auto", models: Filter = None, all: bool = False,
                 sysfs: Optional[Sysfs] = None) -> Nic:
    """Return the NIC with this MAC (present and named) or PCI address as soon as it is there.

    A NIC already present counts. Event-driven: the watcher is listening before the present NICs are read, so
    a NIC appearing in between is not missed. Only the managed models count by default (a veth that shares the
    ENI's MAC is not the ENI); ``models``/``all`` widen that as for :class:`Watcher`. Raises
    :class:`WaitTimeout` (exit status 1) after ``timeout`` seconds.
    """
    match, what = _matcher(mac, pci)
    deadline = time.monotonic() + timeout
    with Watcher(source, models=models, all=all, sysfs=sysfs) as watcher:
        for nic in watcher.known():
            if match(nic):
                return nic
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for event in watcher.poll(remaining):
                if event.action != "removed" and match(event.nic):
                    return event.nic
    raise WaitTimeout(f"no NIC with {what} appeared within {timeout:g} s",
                      "is it attached? 'dpdkeni list' shows the NICs there are")
