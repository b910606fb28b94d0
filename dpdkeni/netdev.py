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
import ipaddress
import logging
import os
import signal
import socket
import struct
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Union

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import cancel, validate
from . import netns as nsmod
from .errors import Error, GuardError, InputError, NotFoundError, StepError
from .ledger import Lease, Ledger, Step

log = logging.getLogger(__name__)

TEST_KILL_ENV = "DPDKENI_TEST_KILL_AFTER"  # test hook: SIGKILL this process right after the named step
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
    if isinstance(exc, NetlinkError):
        return f"{os.strerror(exc.code)} (netlink errno {exc.code})"
    if isinstance(exc, Error):
        return exc.message
    return str(exc) or type(exc).__name__


def _test_hook(step: str) -> None:
    if os.environ.get(TEST_KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def _best_effort(step: str, undo: Callable[[], Any], failed: List[Error]) -> None:
    try:
        undo()
    except Exception as exc:  # an undo must not hide the error that started the unwinding: it rides along
        log.error("undoing %s failed: %s", step, _why(exc))
        failed.append(StepError(f"undo {step}", _why(exc)))


class Steps:
    """Run named steps: each is recorded in the ledger (``started``, with what its undo needs) before it runs,
    its undo pushed on ``stack`` once it succeeded, a failure raised as StepError.

    A step is recorded either ahead, with the lease when it was claimed (:func:`planned_steps`), or in a write
    of its own; ``done`` marks wait for the next write (at the latest :meth:`finish`). Recovery treats a
    ``started`` step as possibly done, so recording ahead is only more careful, and an attach costs two ledger
    writes instead of one per step."""

    def __init__(self, ledger: Ledger, lease: Lease, stack: contextlib.ExitStack) -> None:
        self.ledger, self.key, self.stack = ledger, lease.key, stack
        self.recorded = {s.name for s in lease.steps}
        self.done: Dict[str, Dict[str, Any]] = {}  # steps run, not yet marked done in the ledger
        self.undo_errors: List[Error] = []
        stack.push(self._report_undo_errors)  # pushed first, so it runs after every undo

    def _report_undo_errors(self, _type: Any, exc: Optional[BaseException], _tb: Any) -> None:
        if exc is not None and self.undo_errors:
            exc.undo_errors = list(self.undo_errors)  # type: ignore[attr-defined]

    def run(self, name: str, fn: Callable[[], Optional[Dict[str, Any]]],
            undo: Optional[Callable[[], Any]] = None, record: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Record ``name`` as started unless it is already, run ``fn``, push ``undo``; ``fn``'s dict result is
        kept with the step. A handoff cancelled meanwhile (:mod:`dpdkeni.cancel`) stops here, undone."""
        cancel.check()
        if name not in self.recorded:
            self.ledger.advance(self.key, done=self.done, begin=[Step(name, "started", record or {})])
            self.done = {}
            self.recorded.add(name)
        try:
            result = fn()
        except (StepError, GuardError):
            raise
        except (NetlinkError, OSError, Error) as exc:
            raise StepError(name, _why(exc)) from exc
        if undo is not None:
            self.stack.callback(_best_effort, name, undo, self.undo_errors)
        result = result if isinstance(result, dict) else {}
        self.done[name] = result
        _test_hook(name)
        return result

    def finish(self, **changes: Any) -> Lease:
        """Mark the steps run done and set lease fields, in one write."""
        done, self.done = self.done, {}
        return self.ledger.advance(self.key, done=done, **changes)


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
        steps.append(Step("routes", undo={"table": table}))
    nets = validate.addresses(addresses)
    if len([a for a in nets if a.version == 4]) > 1 or any(a.version == 6 for a in nets):
        steps.append(Step("announce"))
    return steps


RELEASE_PLAN = (Step("rules"), Step("return"))  # recorded with the ``releasing`` mark (see handoff.release)


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


def attach_netdev(lease: Lease, ledger: Ledger, target: "nsmod.Target", *, ifname: str,
                  addresses: Addresses, gateway: Optional[str], mtu: Optional[int], table: Optional[int],
                  dhcp: bool, root: Optional[IPRoute] = None) -> Lease:
    """Hand the NIC of ``lease`` (in the root namespace, as ``lease.original``) to ``target``.

    ``root``: a netlink socket in the root namespace to use (default: one of its own). ``addresses`` may be a
    function, called right after the move (whatever it raises undoes the move). Returns the lease as stored,
    state ``attached``, with ``params["index"]`` the link's index inside the target. On failure every step done
    is undone and StepError names the failed one.
    """
    orig = lease.original
    later = addresses if callable(addresses) else None
    addresses = [] if callable(addresses) else list(addresses)   # the list from here on (filled later if late)
    nets = [] if later else validate.addresses(addresses)
    gw = validate.gateway(gateway)
    # two stacks: the undos (dropped on success) and what this attach opened (always closed; it used to go with
    # the undos on success: a netns fd and a netlink socket leaked per attach, 300 fds in a 200-cycle soak)
    with contextlib.ExitStack() as opened, contextlib.ExitStack() as stack:
        steps = Steps(ledger, lease, stack)
        if root is None:
            root = opened.enter_context(IPRoute())
        tfd = target.open()
        opened.callback(os.close, tfd)
        tip = nsmod.iproute_in(tfd)
        opened.callback(tip.close)
        if index_in(tfd, ifname) is not None:
            raise InputError(f"target {target.spec} already has an interface named {ifname!r}",
                             "pick another --ifname; nothing was changed")
        index = orig["index"]
        if orig.get("altnames"):
            steps.run("altnames", lambda: root.link("property_del", index=index, altname=orig["altnames"]),
                      undo=lambda: _readd_altnames(orig))
        where: Dict[str, Any] = {}

        def do_move() -> Dict[str, Any]:
            try:
                move_link(root, index, tfd, ifname, mtu)
            except NetlinkError:
                # the kernel moves first and renames after: a name taken meanwhile fails the rename with the NIC
                # already inside, under its host name
                stray = find_by_mac(tip, orig["mac"]) if orig.get("mac") else None
                if stray is not None:
                    return_home(lease, tip, stray["index"], force=True, root=root)
                raise
            where["index"] = index_in(tfd, ifname)
            if where["index"] is None:
                raise Error(f"{ifname} vanished from {target.spec} right after the move")
            arp_notify_on(tfd, ifname)  # the kernel announces the first IPv4 address as the link comes up
            return {"index": where["index"]}

        steps.run("move", do_move, undo=lambda: return_home(lease, tip, where["index"], root=root),
                  record={"ns_id": target.ns_id, "ifname": ifname})
        tidx = where["index"]
        if later is not None:  # the kernel's wait in the move is over: now the addresses are needed
            addresses = list(later())
            nets = validate.addresses(addresses)
        if nets:
            steps.run("addresses", lambda: add_addresses(tip, tidx, nets), record={"addresses": list(addresses)})
        # up after the addresses (arp_notify announces the first IPv4 one), before routes (the kernel refuses
        # routes through a link that is down)
        steps.run("up", lambda: tip.link("set", index=tidx, state="up"))
        if gw is not None or table:
            steps.run("routes", lambda: add_routes(tip, tidx, nets, gw, table),
                      undo=lambda: del_rules(tip, addresses, table), record={"table": table})
        if len([a for a in nets if a.version == 4]) > 1 or any(a.version == 6 for a in nets):
            steps.run("announce", lambda: _announce_quietly(tfd, ifname, tidx, orig["mac"], nets))
        if dhcp:
            from . import dhcp as dhcpmod
            steps.run("dhcp", lambda: dhcpmod.start(lease, target, ifname),
                      undo=lambda: dhcpmod.stop(ledger.get(lease.key) or lease))
        done = steps.finish(state="attached", params={"index": tidx, "addresses": list(addresses)})
        stack.pop_all()
        return done


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


def return_home(lease: Lease, tip: IPRoute, index: int, force: bool = False,
                root: Optional[IPRoute] = None) -> str:
    """Move link ``index`` (in tip's namespace) back to the root namespace under its original name and MTU,
    then restore addresses, altnames and up/down (``root``: a socket in the root namespace to use). Returns
    the name it got.

    When the root namespace already has a link with the original name, this refuses (GuardError, the NIC stays
    where it is) unless ``force``: then the NIC comes back as ``dkr<index>``.
    """
    orig = lease.original
    name = orig["ifname"]
    with contextlib.ExitStack() as stack:
        if root is None:
            root = stack.enter_context(IPRoute())
        taken = _host_index(name)
        if taken is not None:
            if not force:
                raise GuardError(f"cannot return {lease.key}: the host already has a link named {name!r} "
                                 f"(index {taken}); the NIC stays in {lease.target}",
                                 "rename or remove that link, or use --force to return the NIC as "
                                 f"{_fallback_name(orig)}")
            name = _fallback_name(orig)
            log.warning("%s returns as %s: %s is taken on the host", lease.key, name, orig["ifname"])
        rfd = nsmod.open_root()
        try:
            tip.link("set", index=index, net_ns_fd=rfd, ifname=name, mtu=orig["mtu"])
        finally:
            os.close(rfd)
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


def release_netdev(lease: Lease, ledger: Ledger, *, force: bool = False) -> str:
    """Bring a leased NIC home: stop its DHCP client, drop its rules, move it back, restore its settings.

    Works from any point of a half-done attach or release (recover uses it too). Returns what happened:
    ``returned``, ``reclaimed`` (it was already in the root namespace) or ``gone`` (it no longer exists).
    """
    orig = lease.original
    steps = Steps(ledger, lease, contextlib.ExitStack())  # going home has no undo: it is the undo
    moved = lease.step("move")
    if lease.params.get("dhcp") or lease.step("dhcp"):
        from . import dhcp as dhcpmod
        steps.run("dhcp-stop", lambda: dhcpmod.stop(lease))
    target = nsmod.Target(lease.target, lease.params.get("target_path", ""), lease.target_id or "")
    if moved is not None and target.path and target.alive():
        with opened(target.path) as tfd, nsmod.iproute_in(tfd) as tip:
            link = _find_in(tip, moved.undo.get("index"), moved.undo.get("ifname"), orig.get("mac"))
            steps.run("rules", lambda: del_rules(tip, lease.params.get("addresses") or [],
                                                 lease.params.get("table")))
            if link is not None:
                index = link["index"]
                steps.run("return", lambda: {"as": return_home(lease, tip, index, force=force)})
                return "returned"
    with IPRoute() as root:
        link = find_by_mac(root, orig["mac"]) if orig.get("mac") else None
        if link is None:
            return "gone"
        steps.run("restore", lambda: {"as": rename_home(root, link, orig, force)})
        return "reclaimed"


def _find_in(ipr: IPRoute, index: Optional[int], name: Optional[str], mac: Optional[str]) -> Optional[Any]:
    """The leased link inside the target: by index and MAC, else by MAC alone (a name may have changed)."""
    link = _link(ipr, index=index) if index else (_link(ipr, ifname=name) if name else None)
    if link is not None and (not mac or (link.get_attr("IFLA_ADDRESS") or "").lower() == mac.lower()):
        return link
    return find_by_mac(ipr, mac) if mac else None
