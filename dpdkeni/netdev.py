"""Kernel-interface handoff with pyroute2: a NIC's netdev moved into a container's network namespace and back.

Every change is a named step. A step is recorded in the ledger before it runs, and its undo is pushed on a
:class:`contextlib.ExitStack` as soon as it succeeded, so a failure undoes the steps before it (best effort) and
raises :class:`~dpdkeni.errors.StepError` naming the step.

The move is one RTM_NEWLINK carrying the target netns fd, the new name and the MTU: the kernel moves the device
and renames it inside the target under one hold of RTNL (``do_setlink``), so the device never carries a
transient name in the host's namespace that udev or NetworkManager could react to, and a name taken in the
target fails the step instead of clobbering anything. That is the property host-device gets from its
temporary namespace, without creating and destroying a namespace per attach.

The original state (name, MTU, addresses, altnames, up/down) lives in the lease, not in the link alias, so
release and recovery work even when the alias or the name was lost (a NIC back from a dead namespace as devN).
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import netns as nsmod
from . import steps as steps_mod
from . import validate
from .errors import Error, GuardError, InputError, NotFoundError
from .ledger import Lease, Ledger, Step, peeker
from .modes import Mode, target_of

log = logging.getLogger(__name__)

TEST_KILL_ENV = steps_mod.TEST_KILL_ENV  # the crash tests' kill switch (see dpdkeni.steps)

IFF_UP = 1
RTNH_F_ONLINK = 4
IFA_F_NODAD = 0x02
SCOPE_LINK = 253
RULE_PRIORITY = 1000
TABLE_BASE = 1000
ATTACH_STEPS = ("altnames", "move", "addresses", "up", "routes", "announce", "dhcp")
RELEASE_STEPS = ("dhcp-stop", "rules", "return", "restore")


# --- reading a link -----------------------------------------------------------------------------------------------

def _link(ipr: IPRoute, **key: Any) -> Optional[Any]:
    try:
        return ipr.link("get", **key)[0]
    except NetlinkError as exc:
        if exc.code in (19, 2):  # ENODEV, ENOENT
            return None
        raise


def _altnames(link: Any) -> List[str]:
    props = link.get_attr("IFLA_PROP_LIST")
    return [a for a in props.get_attrs("IFLA_ALT_IFNAME")] if props else []


def snapshot(ipr: IPRoute, index: Optional[int] = None, ifname: Optional[str] = None) -> Dict[str, Any]:
    """What release restores: name, index, MAC, MTU, up/down, addresses (link-local IPv6 left out: the kernel
    makes those) and altnames of link ``index`` (or ``ifname``: one lookup by name instead of two)."""
    link = _link(ipr, index=index) if index else _link(ipr, ifname=ifname)
    if link is None:
        raise NotFoundError(f"link #{index} vanished" if index else f"{ifname} is not in the host's namespace")
    index = link["index"]
    addrs = []
    for family in (socket.AF_INET, socket.AF_INET6):  # per family: such dumps need no RTNL (AF_UNSPEC does)
        for a in ipr.get_addr(index=index, family=family):
            if a["family"] == socket.AF_INET6 and a["scope"] == SCOPE_LINK:
                continue
            addrs.append(f"{a.get_attr('IFA_LOCAL') or a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    return {"ifname": link.get_attr("IFLA_IFNAME"), "index": index, "mac": link.get_attr("IFLA_ADDRESS"),
            "mtu": link.get_attr("IFLA_MTU"), "up": bool(link["flags"] & IFF_UP), "addresses": addrs,
            "altnames": _altnames(link)}


def find_by_mac(ipr: IPRoute, mac: str) -> Optional[Any]:
    """The link with this MAC in ipr's namespace (a real device before a virtual one sharing it)."""
    hits = [lnk for lnk in ipr.get_links() if (lnk.get_attr("IFLA_ADDRESS") or "").lower() == mac.lower()]
    hits.sort(key=lambda lnk: lnk.get_attr("IFLA_LINKINFO") is not None and
              lnk.get_attr("IFLA_LINKINFO").get_attr("IFLA_INFO_KIND") not in (None, "veth"))
    return hits[0] if hits else None


# --- checking input ----------------------------------------------------------------------------------------------

def needs_onlink(gateway: ipaddress._BaseAddress, addresses: Sequence[Any]) -> bool:
    """Whether the gateway lies outside every subnet of the NIC (then the route needs ``onlink``)."""
    return not any(gateway.version == a.version and gateway in a.network for a in addresses)


def plan(original: Dict[str, Any], target: str, ifname: str, addresses: Sequence[str], gateway: Optional[str],
         mtu: Optional[int], table: Optional[int], dhcp: bool) -> List[str]:
    """The steps an attach would take, as sentences (``--dry-run``)."""
    name = original.get("ifname")
    lines = []
    if original.get("altnames"):
        lines.append(f"altnames: drop {', '.join(original['altnames'])} from {name}")
    lines.append(f"move: {name} into {target} as {ifname}" + (f" with MTU {mtu}" if mtu else ""))
    if addresses:
        lines.append(f"addresses: add {', '.join(addresses)} on {ifname}")
    lines.append(f"up: set {ifname} up")
    if gateway or table:
        where = f"table {table} with a rule from each address" if table else "the main table"
        lines.append(f"routes: default via {gateway or '-'} in {where}")
    lines.append(f"announce: gratuitous ARP (the kernel's arp_notify as {ifname} comes up) / unsolicited NA")
    if dhcp:
        lines.append(f"dhcp: run a DHCP client for {ifname} inside {target}, renewing while attached")
    return lines


# --- steps ---------------------------------------------------------------------------------------------------------

def _why(exc: BaseException) -> str:
    return steps_mod.why(exc)


def planned_steps(original: Dict[str, Any], target: "nsmod.Target", ifname: str, addresses: Sequence[str],
                  gateway: Optional[str], table: Optional[int]) -> List[Step]:
    """The attach steps recorded with the claim, before any runs: all but ``dhcp`` (whose client records its
    own pid as it starts). Their undo is moving the NIC home and dropping its rules, which is what recovery
    does for a lease that is still ``attaching``."""
    steps = [Step("altnames")] if original.get("altnames") else []
    steps.append(Step("move", undo={"ns_id": target.ns_id, "ifname": ifname}))
    if addresses:
        steps.append(Step("addresses", undo={"addresses": list(addresses)}))
    steps.append(Step("up"))
    if gateway is not None or table:
        steps.append(Step("routes", undo={"table": table, "addresses": list(addresses)}))
    if _announces(validate.addresses(addresses)):
        steps.append(Step("announce"))
    return steps


def _announces(nets: Sequence[Any]) -> bool:
    """Whether the announce step runs: the kernel announces a single IPv4 address itself (arp_notify)."""
    return len([a for a in nets if a.version == 4]) > 1 or any(a.version == 6 for a in nets)


# --- attach --------------------------------------------------------------------------------------------------------

def _route_args(gateway: Any, addresses: Sequence[Any], index: int) -> Dict[str, Any]:
    args: Dict[str, Any] = {"gateway": str(gateway), "oif": index,
                            "family": socket.AF_INET6 if gateway.version == 6 else socket.AF_INET,
                            "dst": "::/0" if gateway.version == 6 else "0.0.0.0/0"}
    if needs_onlink(gateway, addresses):
        args["flags"] = RTNH_F_ONLINK
    return args


def add_routes(ipr: IPRoute, index: int, addresses: Sequence[Any], gateway: Any, table: Optional[int]) -> None:
    """Default route via ``gateway`` (onlink when outside the subnets); with ``table``: the connected and
    default routes in that table and a rule from each address to it, so replies leave by this NIC."""
    if table:
        for a in addresses:
            fam = socket.AF_INET6 if a.version == 6 else socket.AF_INET
            ipr.route("replace", dst=str(a.network), oif=index, table=table, scope=SCOPE_LINK,
                      prefsrc=str(a.ip), family=fam)
            ipr.rule("add", src=str(a.ip), src_len=a.max_prefixlen, table=table, priority=RULE_PRIORITY,
                     family=fam)
    if gateway is not None:
        ipr.route("replace", table=table or 254, **_route_args(gateway, addresses, index))


def del_rules(ipr: IPRoute, addresses: Sequence[str], table: Optional[int]) -> None:
    """Remove the rules :func:`add_routes` added (rules outlive the link they point at)."""
    if not table:
        return
    for a in validate.addresses(addresses):
        fam = socket.AF_INET6 if a.version == 6 else socket.AF_INET
        with contextlib.suppress(NetlinkError):
            ipr.rule("del", src=str(a.ip), src_len=a.max_prefixlen, table=table, priority=RULE_PRIORITY,
                     family=fam)


def add_addresses(ipr: IPRoute, index: int, addresses: Sequence[Any]) -> None:
    """Add addresses (IPv6 without DAD: the address is ours by lease, and must answer at once)."""
    for a in addresses:
        kw: Dict[str, Any] = {"index": index, "address": str(a.ip), "prefixlen": a.network.prefixlen}
        if a.version == 6:
            kw.update(family=socket.AF_INET6, flags=IFA_F_NODAD)
        try:
            ipr.addr("add", **kw)
        except NetlinkError as exc:
            if exc.code != 17:  # EEXIST: already there (a re-run after a crash)
                raise


def _garp(mac: str, ip: str) -> bytes:
    hw = bytes.fromhex(mac.replace(":", ""))
    addr = socket.inet_aton(ip)
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, hw, addr, b"\0" * 6, addr)
    return b"\xff" * 6 + hw + b"\x08\x06" + arp


def _unsolicited_na(mac: str, ip: str) -> bytes:
    hw = bytes.fromhex(mac.replace(":", ""))
    # type 136, code 0, checksum (kernel fills it in for raw ICMPv6), flags: override; target; option 2 = TLLA
    return struct.pack("!BBHI16sBB6s", 136, 0, 0, 0x20000000, socket.inet_pton(socket.AF_INET6, ip), 2, 1, hw)


def arp_notify_on(ns_fd: int, ifname: str) -> None:
    """Let the kernel send the gratuitous ARP for the first IPv4 address when the link comes up
    (``arp_notify``) and unsolicited NAs on address changes (``ndisc_notify``), in the target's namespace.
    An AF_PACKET socket would do it too, but closing one waits for an RCU grace period (~20 ms here)."""
    with nsmod.entered(ns_fd):
        for path in (f"/proc/sys/net/ipv4/conf/{ifname}/arp_notify", f"/proc/sys/net/ipv6/conf/{ifname}/ndisc_notify"):
            try:
                with open(path, "w", encoding="ascii") as f:
                    f.write("1")
            except FileNotFoundError:  # IPv6 disabled in that namespace
                pass


def announce(ns_fd: int, ifname: str, index: int, mac: str, addresses: Sequence[Any]) -> None:
    """A gratuitous ARP for each IPv4 address after the first (the kernel announced that one on up) and an
    unsolicited neighbour advertisement per IPv6 address, so peers and switches learn the new location at once
    (sriov-cni does the same after ADD)."""
    v4 = [a for a in addresses if a.version == 4][1:]
    v6 = [a for a in addresses if a.version == 6]
    with nsmod.entered(ns_fd):
        if v4:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806)) as s:
                s.bind((ifname, 0x0806))
                for a in v4:
                    s.send(_garp(mac, str(a.ip)))
        if v6:
            with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                for a in v6:
                    s.sendto(_unsolicited_na(mac, str(a.ip)), ("ff02::1", 0, 0, index))


def move_link(ipr: IPRoute, index: int, ns_fd: int, ifname: str, mtu: Optional[int] = None,
              up: bool = False) -> None:
    """Move link ``index`` into ``ns_fd`` named ``ifname`` (and MTU, up) in one RTM_NEWLINK."""
    kw: Dict[str, Any] = {"index": index, "net_ns_fd": ns_fd, "ifname": ifname}
    if mtu:
        kw["mtu"] = mtu
    if up:
        kw["state"] = "up"
    ipr.link("set", **kw)


@contextlib.contextmanager
def opened(target_path: str) -> Iterator[int]:
    """An fd on a namespace file, closed after the block."""
    fd = os.open(target_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        yield fd
    finally:
        os.close(fd)


def index_in(ns_fd: int, ifname: str) -> Optional[int]:
    """The index of link ``ifname`` in the namespace ``ns_fd`` (an ioctl there, not a netlink round trip), or
    None."""
    with nsmod.entered(ns_fd):
        try:
            return socket.if_nametoindex(ifname)
        except OSError:
            return None


Addresses = Union[Sequence[str], Callable[[], Sequence[str]]]  # a function: called once the NIC moved


def _attach_steps(steps: "steps_mod.Steps", lease: Lease, target: "nsmod.Target", req: Any) -> Dict[str, Any]:
    """Run the netdev attach steps of ``lease`` (in the root namespace, as ``lease.original``) into ``target``
    for request ``req``; returns the params the attached lease gets: ``index`` (the link's index inside the
    target) and ``addresses``. A function for ``req.addresses`` is called right after the move (whatever it
    raises undoes the move)."""
    orig = lease.original
    root = steps.unwinding.live["root"]
    addresses = list(req.given)  # the list from here on (filled after the move when the addresses come later)
    nets = validate.addresses(addresses)
    gw = validate.gateway(req.gateway)
    table, ifname = lease.params.get("table"), req.ifname
    tfd = target.open()
    steps.callback(os.close, tfd)
    tip = nsmod.iproute_in(tfd)
    steps.callback(tip.close)
    steps.unwinding.live["tip"] = tip
    if index_in(tfd, ifname) is not None:
        raise InputError(f"target {target.spec} already has an interface named {ifname!r}",
                         "pick another --ifname; nothing was changed")
    index = orig["index"]
    if orig.get("altnames"):
        steps.run("altnames", lambda: root.link("property_del", index=index, altname=orig["altnames"]))

    def do_move() -> Dict[str, Any]:
        try:
            move_link(root, index, tfd, ifname, req.mtu)
        except NetlinkError:
            # the kernel moves first and renames after: a name taken meanwhile fails the rename with the NIC
            # already inside, under its host name
            stray = find_by_mac(tip, orig["mac"]) if orig.get("mac") else None
            if stray is not None:
                return_home(lease, tip, stray["index"], force=True, root=root)
            raise
        inside = index_in(tfd, ifname)
        if inside is None:
            raise Error(f"{ifname} vanished from {target.spec} right after the move")
        arp_notify_on(tfd, ifname)  # the kernel announces the first IPv4 address as the link comes up
        return {"index": inside}

    tidx = steps.run("move", do_move, record={"ns_id": target.ns_id, "ifname": ifname})["index"]
    if req.later is not None:  # the kernel's wait in the move is over: now the addresses are needed
        addresses = list(req.later())
        nets = validate.addresses(addresses)
    if nets:
        steps.run("addresses", lambda: add_addresses(tip, tidx, nets), record={"addresses": list(addresses)})
    # up after the addresses (arp_notify announces the first IPv4 one), before routes (the kernel refuses
    # routes through a link that is down)
    steps.run("up", lambda: tip.link("set", index=tidx, state="up"))
    if gw is not None or table:
        steps.run("routes", lambda: add_routes(tip, tidx, nets, gw, table),
                  record={"table": table, "addresses": list(addresses)})
    if _announces(nets):
        steps.run("announce", lambda: _announce_quietly(tfd, ifname, tidx, orig["mac"], nets))
    if req.dhcp:
        from . import dhcp as dhcpmod
        steps.run("dhcp", lambda: dhcpmod.start(lease, target, ifname))
    return {"index": tidx, "addresses": list(addresses)}


def _announce_quietly(fd: int, ifname: str, index: int, mac: str, nets: Sequence[Any]) -> None:
    try:
        announce(fd, ifname, index, mac, nets)
    except OSError as exc:  # peers learn the address on their next ARP anyway
        log.warning("announcing %s failed: %s", ifname, exc)


def _readd_altnames(orig: Dict[str, Any]) -> None:
    with IPRoute() as ipr:
        link = find_by_mac(ipr, orig["mac"]) if orig.get("mac") else _link(ipr, index=orig["index"])
        if link is not None:
            have = set(_altnames(link))
            missing = [a for a in orig["altnames"] if a not in have]
            if missing:
                ipr.link("property_add", index=link["index"], altname=missing)


# --- going home ----------------------------------------------------------------------------------------------------

def _fallback_name(orig: Dict[str, Any]) -> str:
    return f"dkr{orig['index']}"[:15]


def _host_index(name: str) -> Optional[int]:
    """The index of link ``name`` in this thread's namespace (the host's), by ioctl, or None."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


def home_name(lease: Lease, force: bool) -> str:
    """The name the NIC of ``lease`` gets back on the host: its original one, or when a link on the host has
    that name a GuardError (the NIC stays where it is), unless ``force``: then ``dkr<index>``."""
    orig = lease.original
    name = orig["ifname"]
    taken = _host_index(name)
    if taken is None:
        return name
    if not force:
        raise GuardError(f"cannot return {lease.key}: the host already has a link named {name!r} "
                         f"(index {taken}); the NIC stays in {lease.target}",
                         "rename or remove that link, or use --force to return the NIC as "
                         f"{_fallback_name(orig)}")
    log.warning("%s returns as %s: %s is taken on the host", lease.key, _fallback_name(orig), name)
    return _fallback_name(orig)


def return_home(lease: Lease, tip: IPRoute, index: int, force: bool = False,
                root: Optional[IPRoute] = None) -> str:
    """Move link ``index`` (in tip's namespace) back to the root namespace under its original name and MTU,
    then restore addresses, altnames and up/down (``root``: a socket in the root namespace to use). Returns
    the name it got.

    When the root namespace already has a link with the original name, this refuses (GuardError, the NIC stays
    where it is) unless ``force``: then the NIC comes back as ``dkr<index>``.
    """
    orig = lease.original
    name = home_name(lease, force)
    rfd = nsmod.open_root()
    try:
        tip.link("set", index=index, net_ns_fd=rfd, ifname=name, mtu=orig["mtu"])
    finally:
        os.close(rfd)
    if not (orig.get("up") or orig.get("addresses")):
        # the move named it and set its MTU, a link moved between namespaces arrives down (the kernel closes it
        # first), and the altnames come back by the undo of the "altnames" step, which follows the move's: nothing
        # left to restore, no socket and no lookup (a pod's DEL is ~0.9 ms faster)
        return name
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(IPRoute())
        restore(root, name, orig)
    return name


def restore(root: IPRoute, name: str, orig: Dict[str, Any]) -> None:
    """Give link ``name`` (in the root namespace) its original MTU, addresses, altnames and up/down state."""
    link = _link(root, ifname=name)
    if link is None:
        raise Error(f"{name} is not in the host's namespace")
    index = link["index"]
    if link.get_attr("IFLA_MTU") != orig["mtu"]:
        root.link("set", index=index, mtu=orig["mtu"])
    add_addresses(root, index, validate.addresses(orig.get("addresses", [])))
    missing = [a for a in orig.get("altnames", []) if a not in _altnames(link)]
    if missing:
        try:
            root.link("property_add", index=index, altname=missing)
        except NetlinkError as exc:  # an altname now used by another link: the NIC still works without it
            log.warning("altnames %s not restored on %s: %s", missing, name, _why(exc))
    if bool(link["flags"] & IFF_UP) != bool(orig.get("up")):
        root.link("set", index=index, state="up" if orig.get("up") else "down")


def rename_home(root: IPRoute, link: Any, orig: Dict[str, Any], force: bool) -> str:
    """A NIC already back in the root namespace (container death: often as devN): its original name when free,
    then its settings. Returns the name it has now."""
    name, index = orig["ifname"], link["index"]
    current = link.get_attr("IFLA_IFNAME")
    if current != name:
        taken = _link(root, ifname=name)
        if taken is not None and taken["index"] == index:
            # udev gave the NIC its predictable name as an altname when it came back (the kernel resolves
            # altnames as names): drop it, then rename, as sriov-cni does
            root.link("property_del", index=index, altname=[name])
            taken = None
        if taken is not None:
            log.warning("%s stays %s: %s is taken on the host", orig.get("mac"), current, name)
            name = current
        else:
            if link["flags"] & IFF_UP:
                root.link("set", index=index, state="down")
            root.link("set", index=index, ifname=name)
    restore(root, name, orig)
    return name


# --- the undo of each step, by name: a failed attach, a release and recover all run these -----------------------

def _undo_altnames(u: steps_mod.Unwinding, data: Dict[str, Any]) -> None:
    if u.lease.original.get("altnames"):
        _readd_altnames(u.lease.original)


def _undo_move(u: steps_mod.Unwinding, data: Dict[str, Any]) -> Optional[str]:
    """Bring the NIC home: from the target (``tip`` in ``u.live``: the target is alive) under its original name,
    or, when it is not there, from the host's namespace, where a dead container (or a move cut short) left it.
    A NIC found nowhere is ``gone``; without ``force`` only when its name is free on the host (else that link
    may be the NIC: refused, as for a NIC still in the target)."""
    lease, orig = u.lease, u.lease.original
    tip = u.live.get("tip")
    if tip is not None:
        link = _find_in(tip, data.get("index"), data.get("ifname"), orig.get("mac"))
        if link is not None:
            return_home(lease, tip, link["index"], force=u.force, root=u.live.get("root"))
            u.outcome = "returned"
            return "return"
    with IPRoute() as root:
        link = find_by_mac(root, orig["mac"]) if orig.get("mac") else None
        if link is None:
            if not u.force:
                home_name(lease, False)
            u.outcome = "gone"
            return "gone"
        u.mark("restore")
        rename_home(root, link, orig, u.force)
    u.outcome = "reclaimed"
    return "restore"


def _undo_routes(u: steps_mod.Unwinding, data: Dict[str, Any]) -> None:
    tip = u.live.get("tip")
    if tip is not None:
        del_rules(tip, data.get("addresses", u.lease.params.get("addresses") or []),
                  data.get("table", u.lease.params.get("table")))


def _undo_dhcp(u: steps_mod.Unwinding, data: Dict[str, Any]) -> None:
    from . import dhcp as dhcpmod
    dhcpmod.stop(u.ledger.get(u.lease.key) or u.lease)  # the client's pid is recorded as it starts


UNDO: steps_mod.UndoTable = {
    "altnames": steps_mod.Undo(_undo_altnames),
    "move": steps_mod.Undo(_undo_move, label="return"),
    "routes": steps_mod.Undo(_undo_routes, label="rules"),
    "dhcp": steps_mod.Undo(_undo_dhcp, label="dhcp-stop", mark=True),
}  # addresses, up and announce go with the move: the NIC comes home with its original addresses


def release_netdev(lease: Lease, ledger: Ledger, *, force: bool = False) -> str:
    """Bring a leased NIC home: stop its DHCP client, drop its rules, move it back, restore its settings (the
    undo of every recorded step, newest first).

    Works from any point of a half-done attach or release (recover uses it too). Returns what happened:
    ``returned``, ``reclaimed`` (it was already in the root namespace) or ``gone`` (it no longer exists).
    """
    if lease.step("move") is None:  # claimed without a plan (an older ledger): the NIC may be home already
        lease = dataclasses.replace(lease, steps=[Step("move"), *lease.steps])
    u = steps_mod.Unwinding(ledger, lease, force=force)
    target = target_of(lease)
    with contextlib.ExitStack() as stack:
        if target.path and target.alive():
            tfd = stack.enter_context(opened(target.path))
            u.live["tip"] = stack.enter_context(nsmod.iproute_in(tfd))
        _, errors = steps_mod.unwind(u, UNDO, stop_on_guard=True)
    steps_mod.raise_undo_errors("release", errors)
    return u.outcome or "gone"


def _find_in(ipr: IPRoute, index: Optional[int], name: Optional[str], mac: Optional[str]) -> Optional[Any]:
    """The leased link inside the target: by index and MAC, else by MAC alone (a name may have changed)."""
    link = _link(ipr, index=index) if index else (_link(ipr, ifname=name) if name else None)
    if link is not None and (not mac or (link.get_attr("IFLA_ADDRESS") or "").lower() == mac.lower()):
        return link
    return find_by_mac(ipr, mac) if mac else None


# --- the mode ------------------------------------------------------------------------------------------------------

def original(nic: Any, ipr: IPRoute) -> Dict[str, Any]:
    """The NIC's state before the handoff, from netlink (its netdev, on ``ipr``: a root-namespace socket with
    ``strict_check``) and the inventory; sets ``nic.active`` (an IPv4 or global IPv6 address, or a route through
    it, as :mod:`dpdkeni.inventory` defines it). Both modes record it: release gives the NIC back as it was."""
    from .inventory import has_routes
    base: Dict[str, Any] = {"pci": nic.pci, "driver": nic.driver, "mac": nic.mac, "ifname": nic.ifname,
                            "model": nic.model}
    if not nic.ifname:
        return base
    base.update(snapshot(ipr, ifname=nic.ifname))
    # a link that is down carries no routes (the kernel flushes them at down and refuses new ones): no dumps for
    # the usual hot-plugged or stand-in NIC, two fewer netlink round trips on a pod's start
    nic.active = bool(base["addresses"]) or (base["up"] and has_routes(ipr, base["index"]))
    return base


class NetdevMode(Mode):
    """The NIC's netdev moved into the target's network namespace (see the module doc)."""

    name = "netdev"
    undo = UNDO

    def params(self, req: Any, original: Dict[str, Any], leases: Any, target: "nsmod.Target",
               key: str) -> Dict[str, Any]:
        """``table``: policy routing when another NIC is already leased into the same namespace (the cross-VPC
        case), unless the request sets one (0: never)."""
        if req.table is not None:
            return {"table": req.table or None}
        peek = peeker(leases)
        others = [k for k in leases if peek(k).get("target_id") == target.ns_id and k != key]
        return {"table": TABLE_BASE + (original.get("index") or 0) if others else None}

    def plan(self, lease: Lease, nic: Any, target: "nsmod.Target", req: Any) -> List[str]:
        p = lease.params
        return plan(lease.original, target.spec, p["ifname"], p["addresses"], p["gateway"], p["mtu"],
                    p.get("table"), p["dhcp"])

    def steps(self, lease: Lease, nic: Any, target: "nsmod.Target", req: Any) -> List[Step]:
        return planned_steps(lease.original, target, req.ifname, list(req.given), req.gateway,
                             lease.params.get("table"))

    def attach(self, steps: "steps_mod.Steps", lease: Lease, nic: Any, target: "nsmod.Target",
               req: Any) -> Dict[str, Any]:
        return _attach_steps(steps, lease, target, req)

    def release(self, lease: Lease, ledger: Ledger, force: bool) -> str:
        return release_netdev(lease, ledger, force=force)

    def recover(self, lease: Lease, ledger: Ledger) -> Dict[str, Any]:
        """An attached NIC whose target lives is kept (its DHCP client restarted when it died); anything else
        comes home: a half-done or failed attach rolled back, a half-done release finished, an attached NIC
        whose target is gone reclaimed."""
        target = target_of(lease)
        if lease.state == "attached" and target.path and target.alive():
            if lease.params.get("dhcp"):
                from . import dhcp as dhcpmod
                dhcpmod.ensure_running(lease, ledger)
            return {"key": lease.key, "action": "kept", "detail": f"attached to {lease.target}"}
        action = {"attaching": "rolled-back", "failed": "rolled-back", "releasing": "released"}.get(lease.state,
                                                                                                   "reclaimed")
        return self._home(lease, ledger, action)

    def reclaim(self, lease: Lease, ledger: Ledger) -> Optional[Dict[str, Any]]:
        return self._home(lease, ledger, "reclaimed")

    def _home(self, lease: Lease, ledger: Ledger, action: str) -> Dict[str, Any]:
        import time
        lease = ledger.update(lease.key, state="releasing", owner_pid=os.getpid(), created=time.time())
        outcome = release_netdev(lease, ledger, force=True)
        ledger.remove(lease.key)
        return {"key": lease.key, "action": action, "detail": outcome}


MODE = NetdevMode()
