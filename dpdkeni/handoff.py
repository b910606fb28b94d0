"""Hand a NIC to a container and take it back: claim the lease, run the guards, dispatch by mode, end the lease.

``attach`` claims the NIC in the ledger first (one transaction under flock: exactly one of several concurrent
claimants wins; a NIC leased to another target is refused with GuardError, to the same target it is a no-op),
with the steps its mode plans, then runs them through the mode object (:func:`dpdkeni.modes.get`: netdev in
:mod:`dpdkeni.netdev`, dpdk in :mod:`dpdkeni.dpdkmode`) on the step engine (:mod:`dpdkeni.steps`) and writes
``attached``. A failed attach is undone and its lease removed (kept ``failed`` when an undo failed too).
``recover`` finishes or undoes whatever a crash left half-done; ``reclaim`` is what the daemon calls when a
leased NIC shows up in the host's namespace again (its container died).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from . import host, models, modes, netdev
from .errors import Error, GuardError, InputError, NotFoundError, as_error, boundary
from .guards import check_handoff
from .inventory import Nic, find_nic, lease_key, netdev_name
from .ledger import Lease, Ledger, peeker
from .netns import Target, refuse_host, resolve_target
from .request import AttachRequest
from .steps import Steps

log = logging.getLogger(__name__)

MODES = models.MODES


def find_lease(spec: Union[str, Nic], ledger: Optional[Ledger] = None,
               leases: Optional[Mapping[str, Lease]] = None) -> Optional[Lease]:
    """The lease of a NIC given as a Nic, a lease key, a PCI address, a MAC or its original interface name
    (``leases``: a snapshot already read)."""
    if leases is None:
        leases = (ledger or Ledger()).leases()
    if isinstance(spec, Nic):
        keys = {lease_key(spec)}
        macs = {spec.mac.lower()} if spec.mac else set()
        names: set = set()
    else:
        text = spec.strip()
        keys = {text, f"if:{text}"}
        macs = {text.lower()} if text.count(":") == 5 else set()
        names = {text}
        if text.count(":") in (1, 2) and "." in text:  # a PCI address, full or short
            keys.add(text if text.count(":") == 2 else f"0000:{text}")
    peek = peeker(leases)
    for key in leases:  # on the JSON dicts: only the match is converted
        o = peek(key).get("original") or {}
        if key in keys or (o.get("mac") or "").lower() in macs or o.get("ifname") in names:
            return leases[key]
    return None


def allow_unmanaged(nic: Nic) -> bool:
    """Virtual links of a kind the models file lists under ``virtual_kinds`` (test stand-ins such as veth)."""
    return nic.pci is None and nic.model in models.virtual_kinds()


def check_spec(nic: Union[Nic, str]) -> None:
    """InputError for a malformed NIC spec (PCI address, MAC, interface name, or a lease key ``if:NAME``)."""
    AttachRequest(nic=nic)


def _refused(have: Lease) -> GuardError:
    return GuardError(f"{have.key} is already leased to {have.target} ({have.state})",
                      "release it first ('dpdkeni release')")


def _claim(ledger: Ledger, lease: Lease, target: Target) -> Optional[Lease]:
    """Record ``lease`` (with its planned steps: one write) unless the NIC is leased already: returns the
    existing lease for the same target, raises GuardError for another."""
    with ledger.transaction() as leases:
        have = leases.get(lease.key)
        if have is None:
            leases[lease.key] = lease
            return None
    if have.target_id == target.ns_id and have.state == "attached":
        return have
    raise _refused(have)


@boundary
def attach(nic: Union[Nic, str], target: Union[str, Target], mode: str = "netdev", *, ifname: str = "eth0",
           addresses: netdev.Addresses = (), gateway: Optional[str] = None, mtu: Optional[int] = None,
           dhcp: bool = False, hugepages: Optional[str] = None, driver: str = "vfio-pci", noiommu: bool = False,
           force: bool = False, dry_run: bool = False, table: Optional[int] = None) -> Lease:
    """Hand ``nic`` to ``target`` as a kernel interface (mode "netdev") or a DPDK port (mode "dpdk").

    ``table``: route table for this NIC's routes with a rule from each address (None: automatic, only when
    another NIC is leased into the same namespace; 0: never). With ``dry_run`` nothing changes and the returned
    lease (state ``planned``) holds the plan in ``params["plan"]``. ``addresses`` may be a function returning
    them, called once the NIC is in the target (netdev mode): the CNI plugin's IPAM plugin runs meanwhile.
    """
    return _attach(AttachRequest(
        nic=nic, target=target, mode=mode, ifname=ifname, addresses=addresses, gateway=gateway, mtu=mtu,
        dhcp=dhcp, hugepages=hugepages, driver=driver, noiommu=noiommu, force=force, dry_run=dry_run, table=table))


def _attach(req: AttachRequest) -> Lease:
    """:func:`attach` for a request already made (and so checked)."""
    if req.nic is None or req.target is None:
        raise InputError("an attach needs a NIC and a target")
    ledger = Ledger()
    if isinstance(req.target, Target):  # made by the caller (CNI's dpdk target, the daemon's)
        tgt = req.target
        refuse_host(tgt)
    else:
        tgt = resolve_target(req.target)  # refuses the host's namespace itself (one stat of it fewer)
    leases = ledger.leases()
    have = find_lease(req.nic, leases=leases)
    if have is not None:
        if have.target_id == tgt.ns_id and have.state == "attached":
            return have
        raise _refused(have)
    mode = modes.get(req.mode)
    from pyroute2 import IPRoute
    with IPRoute(strict_check=True) as root:  # one root-namespace socket for the whole attach
        nic = _find(req.nic, ledger, root)
        try:
            original = netdev.original(nic, root)  # also decides nic.active, on the same netlink socket
        except NotFoundError as exc:
            raise _leased_meanwhile(nic, ledger, exc) from None
        check_handoff(nic, force=req.force, allow_unmanaged=allow_unmanaged(nic))
        key = lease_key(nic)
        params: Dict[str, Any] = {"ifname": req.ifname, "addresses": list(req.given), "gateway": req.gateway,
                                  "mtu": req.mtu, "dhcp": req.dhcp, "target_path": tgt.path, "pid": tgt.pid,
                                  **mode.params(req, original, leases, tgt, key)}
        lease = Lease(key=key, mode=req.mode, target=tgt.spec, original=original, target_id=tgt.ns_id,
                      params=params)
        if req.dry_run:
            plan = mode.plan(lease, nic, tgt, req)
            if plan is not None:
                lease.params["plan"] = plan
            lease.state = "planned"
            return lease
        lease.steps = mode.steps(lease, nic, tgt, req)  # recorded with the claim: one ledger write
        existing = _claim(ledger, lease, tgt)
        if existing is not None:
            return existing
        try:
            with Steps(ledger, lease, mode.undo, live={"root": root}) as steps:
                extra = mode.attach(steps, lease, nic, tgt, req)
                return steps.finish(state="attached", params=extra)  # for every mode, written here
        except BaseException as exc:
            if not getattr(exc, "undo_errors", None):  # else it stays ``failed`` with what is left, for recover
                ledger.remove(key)
            raise


BATCH_WORKERS = 4


@boundary
def attach_many(requests: Sequence[Union[Dict[str, Any], AttachRequest]], *, workers: int = BATCH_WORKERS,
                atomic: bool = False) -> List[Union[Lease, Error]]:
    """Attach several NICs at once: each request is an :class:`~dpdkeni.request.AttachRequest` or a dict of
    :func:`attach` arguments (``nic`` and ``target``, optionally ``mode``, ``ifname``, ``addresses``, ...). Returns,
    in request order, the lease of each NIC or the :class:`~dpdkeni.errors.Error` that stopped it (one failure
    does not stop the others, and is undone like a failed :func:`attach`; a malformed request is its InputError).

    ``atomic``: all or nothing: when one failed, the NICs attached are released again (their leases are returned
    with ``params["released_again"]`` True; one whose release failed is returned as that error).

    The kernel moves one device at a time (RTNL), and each move waits for an RCU barrier with the CPU idle;
    ``workers`` threads fill that wait with the next NICs' lookups, ledger writes and netlink requests.
    """
    reqs = [_request(r) for r in requests]
    results: List[Union[Lease, Error]] = _in_threads(
        lambda r: r if isinstance(r, Error) else attach(r.nic, r.target, **r.kwargs()), reqs, workers)
    if atomic and any(isinstance(x, Error) for x in results) and \
            not any(isinstance(r, AttachRequest) and r.dry_run for r in reqs):
        done = [i for i, x in enumerate(results) if not isinstance(x, Error)]
        back = release_many([reqs[i].nic for i in done], workers=workers)  # type: ignore[union-attr]
        for i, went in zip(done, back):
            if isinstance(went, Error):
                results[i] = went
            else:
                results[i].params["released_again"] = True  # type: ignore[union-attr]
    return results


def _request(item: Union[Dict[str, Any], AttachRequest]) -> Union[AttachRequest, InputError]:
    try:
        return item if isinstance(item, AttachRequest) else AttachRequest(**item)
    except InputError as exc:
        return exc
    except TypeError as exc:  # a key attach does not take
        return InputError(f"bad attach request: {exc}")


@boundary
def release_many(nics: Sequence[Union[Nic, str]], *, force: bool = False,
                 workers: int = BATCH_WORKERS) -> List[Union[Lease, None, Error]]:
    """:func:`release` for several NICs, ``workers`` at a time; per NIC the ended lease, None (not leased) or
    the Error that stopped it."""
    return _in_threads(lambda n: release(n, force=force), list(nics), workers)


def _in_threads(fn: Any, items: List[Any], workers: int) -> List[Any]:
    from concurrent.futures import ThreadPoolExecutor

    def guarded(item: Any) -> Any:
        try:
            return fn(item)
        except Error as exc:  # attach and release map system errors at their boundary
            return exc

    if workers <= 1 or len(items) <= 1:
        return [guarded(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items)), thread_name_prefix="dpdkeni") as pool:
        return list(pool.map(host.carried(guarded), items))


def _leased_meanwhile(spec: Union[Nic, str], ledger: Ledger, exc: NotFoundError) -> GuardError:
    """A NIC that vanished from the host while we looked: leased by a concurrent attach (GuardError), or
    really gone (the NotFoundError)."""
    have = find_lease(spec, ledger)
    if have is None:
        return exc  # type: ignore[return-value]
    return _refused(have)


def _find(nic: Union[Nic, str], ledger: Ledger, ipr: Any = None) -> Nic:
    if isinstance(nic, Nic):
        return _current_name(nic)
    try:
        return find_nic(nic, active=set, ipr=ipr)  # activity is read with the snapshot (see _original)
    except NotFoundError as exc:
        raise _leased_meanwhile(nic, ledger, exc) from None


def _current_name(nic: Nic) -> Nic:
    """``nic`` under the name its netdev has now: a PCI NIC seen under its kernel name (``eth0``) may have been
    renamed by udevd since (``enp1s0``); its PCI address is what stays."""
    if not (nic.pci and nic.ifname):
        return nic
    try:
        now = netdev_name(nic.pci)  # one listdir: not the whole NIC, nor the ledger's MACs
    except (Error, OSError):
        return nic
    if now and now != nic.ifname:
        log.info("%s is %s now (was %s when it was seen)", nic.pci, now, nic.ifname)
        return dataclasses.replace(nic, ifname=now)
    return nic


@boundary
def release(nic: Union[Nic, str], *, force: bool = False) -> Optional[Lease]:
    """Take a NIC back from its target: the host gets it under its original name, MTU, addresses and up/down
    state. Returns the ended lease, or None when the NIC was not leased (a malformed spec is an InputError: a
    mistyped address must not read as "not leased")."""
    check_spec(nic)
    ledger = Ledger()
    lease = find_lease(nic, ledger)
    if lease is None:
        return None
    if lease.state in ("attaching", "releasing") and _owner_alive(lease):
        raise GuardError(f"{lease.key} is being {lease.state[:-3]}ed by pid {lease.owner_pid}",
                         "wait for it to finish, or run 'dpdkeni recover' if that process is stuck")
    prior = lease.state
    lease = ledger.update(lease.key, state="releasing")
    try:
        outcome = modes.get(lease.mode).release(lease, ledger, force)
    except GuardError:
        ledger.update(lease.key, state=prior)
        raise
    lease.params["outcome"] = outcome
    ledger.remove(lease.key)
    return lease


@boundary
def recover() -> List[Dict[str, Any]]:
    """Finish or undo what crashed processes left: a half-done attach is undone, a half-done release finished,
    an attached NIC whose target is gone reclaimed. Returns one dict per lease: key, action, detail."""
    ledger = Ledger()
    done = []
    for lease in ledger.leases().values():
        try:
            done.append(_recover_one(lease, ledger))
        except Exception as exc:  # one lease's failure must not stop the others: mapped here, per lease
            err = as_error(exc, f"recovering {lease.key}")
            if err is None:
                raise
            log.error("recovering %s failed: %s", lease.key, err)
            done.append({"key": lease.key, "action": "failed", "detail": str(err)})
    return done


def _owner_alive(lease: Lease) -> bool:
    import psutil
    if lease.owner_pid <= 0 or lease.owner_pid == os.getpid():
        return False
    try:
        return psutil.Process(lease.owner_pid).create_time() <= lease.created + 1
    except psutil.Error:
        return False


def _recover_one(lease: Lease, ledger: Ledger) -> Dict[str, Any]:
    if lease.state in ("attaching", "releasing") and _owner_alive(lease):
        return {"key": lease.key, "action": "busy", "detail": f"pid {lease.owner_pid} is still working on it"}
    return modes.get(lease.mode).recover(lease, ledger)


@boundary
def reclaim(nic: Union[Nic, str]) -> Optional[Dict[str, Any]]:
    """A leased NIC is back in the host's namespace (its container died; the kernel names it devN): restore its
    name and settings, stop its DHCP client, end the lease. None when the NIC is not leased. For the daemon."""
    ledger = Ledger()
    lease = find_lease(nic, ledger)
    if lease is None and isinstance(nic, str):  # a name like devN: look the NIC up for its MAC
        try:
            lease = find_lease(find_nic(nic), ledger)
        except NotFoundError:
            return None
    if lease is None:
        return None
    return modes.get(lease.mode).reclaim(lease, ledger)
