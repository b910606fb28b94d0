"""The dpdk mode of :func:`dpdkeni.handoff.attach`: bind, hugepages, a capped hugetlbfs mount in the container,
device-cgroup access and the device nodes, each recorded in the ledger before it runs and undone on failure.

Steps (ledger names, in order): ``bind`` (driver.bind; undo: unbind back to the original driver and name),
``hugepages`` (grow the pool on the NIC's NUMA node; undo: shrink it by as much), ``hugetlbfs`` (mount
``/dev/hugepages`` in the container with ``size=``, or, for the container's next DPDK NIC, mount it anew with
the sum of the shares while it is still empty, since DPDK uses one mount per page size and hugetlbfs cannot
change its cap in place; a runtime's uncapped hugetlbfs is used as it is; undo: shrink it back by this NIC's
share, or unmount it with the last one), ``devcgroup`` (allow the vfio or uio nodes
``rw``; undo: revoke exactly what was added), ``devnodes`` (mknod in the container; undo: unlink).
``release_dpdk`` and ``recover_dpdk`` undo the recorded steps in reverse order, each undo recorded in the ledger
(the step's state becomes ``undone``) as soon as it succeeded, so a release or recovery that is killed half-way
is finished by the next ``recover`` without undoing a step twice (a second ``remove_pages`` would shrink another
container's hugepages).

Test hook: with ``DPDKENI_TEST_KILL_AFTER=<name>`` the process SIGKILLs itself right after attach step ``<name>``
(one of :data:`ATTACH_STEPS`) or release step ``undo-<name>`` (:data:`RELEASE_STEPS`) is recorded.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import devcgroup, netdev
from . import driver as drv
from . import hugepages as hp
from .errors import Error, GuardError, InputError, StepError, as_error
from .inventory import Nic
from .ledger import Lease, Ledger
from .sysfs import Sysfs

log = logging.getLogger(__name__)

HUGEPAGES_MOUNT = "/dev/hugepages"
DEFAULT_PAGESIZE = 2 << 20
DEFAULT_HUGEPAGES = "256M"
ATTACH_STEPS = ("bind", "hugepages", "hugetlbfs", "devcgroup", "devnodes")
RELEASE_STEPS = tuple(f"undo-{name}" for name in reversed(ATTACH_STEPS))
UNDONE = "undone"  # the ledger state of a step whose undo ran (release and recovery skip it)


def device_nodes(fs: Sysfs, nic: Nic, driver: str) -> List[Tuple[str, devcgroup.Rule]]:
    """(container path, rule) for the nodes a user-space driver needs: vfio's container and group nodes (the
    no-IOMMU ``noiommu-N`` shown as ``N``), or the NIC's ``/dev/uioN``."""
    pairs = []
    if driver == "vfio-pci":
        group = drv.iommu_group(fs, nic.pci or "")
        hosts = ["/dev/vfio/vfio"] + [p for p in drv.vfio_group_paths(fs, group) if fs.exists(p)][:1] \
            if group is not None else []
        if len(hosts) < 2:
            raise Error(f"{nic.name}: no vfio group node for IOMMU group {group}")
    else:
        hosts = [f"/dev/{u}" for u in fs.listdir(f"sys/bus/pci/devices/{nic.pci}/uio")]
        if not hosts:
            raise Error(f"{nic.name}: uio_pci_generic made no /dev/uioN")
    for host in hosts:
        pairs.append((devcgroup.container_path(host), devcgroup.rule_for(fs.path(host), "rw")))
    return pairs


def _pool_for(fs: Sysfs, nic: Nic, page: int) -> Optional[int]:
    """The NIC's NUMA node when the kernel has a per-node pool there (DPDK wants local memory), else None."""
    node = nic.numa_node
    return node if node is not None and fs.exists(f"{hp.pool_dir(page, node)}/nr_hugepages") else None


class _Steps:
    """Run steps with ledger records (each begun before it runs); ``ran`` keeps what to undo, in order, the
    failed step included (as ``partial``)."""

    def __init__(self, lease: Lease, ledger: Ledger) -> None:
        self.lease, self.ledger = lease, ledger
        self.ran: List[Tuple[str, Dict[str, Any]]] = []

    def run(self, name: str, undo_data: Dict[str, Any], do: Callable[[], Optional[Dict[str, Any]]]) -> None:
        self.ledger.begin_step(self.lease.key, name, undo_data)
        try:
            learned = do() or {}
        except BaseException as exc:
            self.ran.append((name, {**undo_data, "partial": True}))
            if isinstance(exc, GuardError):  # a refusal: exit 3 (CNI 101) as with --dry-run, not a failed step
                raise
            if isinstance(exc, Error):
                raise StepError(name, str(exc)) from exc
            if isinstance(exc, OSError):
                raise StepError(name, exc.strerror or str(exc)) from exc
            raise
        self.ledger.end_step(self.lease.key, name, **learned)
        self.ran.append((name, {**undo_data, **learned}))
        netdev._test_hook(name)


def attach_dpdk(nic: Nic, target: Any, lease: Lease, ledger: Ledger, *, hugepages: Optional[str] = None,
                driver: str = "vfio-pci", noiommu: bool = False, force: bool = False, dry_run: bool = False,
                sysfs: Optional[Sysfs] = None) -> None:
    """Hand ``nic`` to the container of ``target`` as a DPDK port (see the module doc for the steps).

    ``hugepages``: the container's share (None: 256M; "0": none). ``sysfs`` is the device tree the bind works
    on (default the host's); hugepages are always the host's pools.
    """
    hugepages = DEFAULT_HUGEPAGES if hugepages is None else hugepages
    if hugepages and hp.parse_size(hugepages) == 0:
        hugepages = None
    pid = getattr(target, "pid", None)
    if pid is None:
        raise InputError(f"dpdk mode needs a target with a process (pid:N or container:ID), not {target.spec}",
                         "the hugetlbfs mount and device nodes go into its mount namespace")
    fs = sysfs or Sysfs()
    if dry_run:
        result = drv.bind(nic, driver, noiommu=noiommu, force=force, dry_run=True, sysfs=fs)
        for path, value in result.writes:
            log.warning("dry-run: would write %r to %s", value, path)
        log.warning("dry-run: then reserve %s of hugepages, mount hugetlbfs at %s in pid %s, allow the device "
                    "nodes in its cgroup and make them in its /dev", hugepages or "no", HUGEPAGES_MOUNT, pid)
        return
    steps = _Steps(lease, ledger)
    try:
        _bind_step(steps, fs, nic, driver, noiommu, force)
        if hugepages:
            _hugepage_steps(steps, nic, pid, hugepages)
        nodes = device_nodes(fs, nic, driver)
        rules = [r for _, r in nodes]
        planned = devcgroup.plan(pid, rules)  # recorded before anything is written: exact undo after a crash
        steps.run("devcgroup", {"pid": pid, "key": lease.key, "rules": planned["rules"], "record": planned},
                  lambda: {"record": devcgroup.apply(planned)})
        steps.run("devnodes", {"pid": pid, "key": lease.key, "paths": [p for p, _ in nodes]},
                  lambda: {"made": devcgroup.make_nodes(pid, nodes)})
    except BaseException as exc:
        _, failed = _undo_steps(lease.key, ledger, steps.ran)
        if failed:  # the step's error stays the one raised; the undo failures ride along with it
            exc.undo_errors = failed  # type: ignore[attr-defined]
        raise


def _bind_step(steps: _Steps, fs: Sysfs, nic: Nic, driver: str, noiommu: bool, force: bool) -> None:
    undo = {"pci": nic.pci, "driver": nic.driver, "ifname": nic.ifname, "mac": nic.mac, "root": fs.root}
    steps.run("bind", undo, lambda: {"bound": drv.bind(nic, driver, noiommu=noiommu, force=force,
                                                       sysfs=fs).driver})


def _hugepage_steps(steps: _Steps, nic: Nic, pid: int, size: str) -> None:
    page, fs = DEFAULT_PAGESIZE, Sysfs()
    pages, node = hp.pages_for(size, page), _pool_for(fs, nic, page)
    share = pages * page
    steps.run("hugepages", {"pages": pages, "page_bytes": page, "node": node},
              lambda: {"total": hp.add_pages(pages, page, node, fs)})
    cap = hp.size_cap(pid, HUGEPAGES_MOUNT)
    undo = {"pid": pid, "path": HUGEPAGES_MOUNT, "bytes": share, "page_bytes": page}
    if cap is None:  # the container's first DPDK NIC: its own capped hugetlbfs
        steps.run("hugetlbfs", undo, lambda: {"mounted": hp.mount_hugetlbfs(HUGEPAGES_MOUNT, share, page, pid)})
    elif cap == 0:  # a hugetlbfs the runtime mounted without a cap: the container uses it
        steps.run("hugetlbfs", {**undo, "shared": True}, lambda: {"shared": True})
    else:  # one hugetlbfs per container, capped at the sum of its NICs' shares (DPDK uses one mount per size)
        steps.run("hugetlbfs", undo, lambda: {"grown": _resize(pid, cap + share, page)})


def _resize(pid: int, size: int, page: int) -> int:
    hp.resize_hugetlbfs(HUGEPAGES_MOUNT, size, page, pid)
    return size


# --- undo ------------------------------------------------------------------------------------------------------

def sysfs_for(root: Optional[str]) -> Sysfs:
    """The Sysfs an undo works through, from the root recorded in the ledger (tests point it at a simulation)."""
    return Sysfs(root or "/")


def _undo_bind(d: Dict[str, Any]) -> None:
    if d.get("partial") and not d.get("bound"):
        return  # driver.bind restores the original driver itself when it fails
    fs = sysfs_for(d.get("root"))
    if not fs.exists(f"{drv.PCI_DEVICES}/{d['pci']}"):  # unplugged: there is no device to give back
        drv.forget(d["pci"])
        return
    drv.unbind(d["pci"], driver=d.get("driver"), ifname=d.get("ifname"), sysfs=fs)


def _undo_hugepages(d: Dict[str, Any]) -> None:
    if d.get("partial"):
        return  # add_pages restores the pool itself when the kernel gives fewer pages
    hp.remove_pages(d["pages"], d["page_bytes"], d.get("node"), Sysfs())


def _undo_hugetlbfs(d: Dict[str, Any]) -> None:
    if d.get("shared") or (d.get("partial") and not (d.get("mounted") or d.get("grown"))):
        return
    try:
        cap = hp.size_cap(d["pid"], d["path"])
        if cap is None:
            return
        left = cap - d["bytes"] if "bytes" in d else 0  # older ledgers recorded no share: unmount
        if left > 0:  # other NICs of this container still use it: shrink it to their shares
            hp.resize_hugetlbfs(d["path"], left, d.get("page_bytes", DEFAULT_PAGESIZE), d["pid"])
        else:
            hp.umount_hugetlbfs(d["path"], d["pid"])
    except (Error, OSError) as exc:  # a container that is gone took its mount namespace with it
        log.info("hugetlbfs of pid %s not unmounted or shrunk: %s", d["pid"], exc)


def _undo_devcgroup(d: Dict[str, Any]) -> None:
    record = d.get("record")
    if not record:  # begun by an older version, which recorded no plan: our v2 block holds only our rules
        if d.get("rules"):
            with contextlib.suppress(Error, OSError):
                dirs = devcgroup.cgroup_dirs(d["pid"])
                if "v2" in dirs:
                    devcgroup.revoke_v2(dirs["v2"], [devcgroup.Rule(**r) for r in d["rules"]])
        return
    keep, owner = _needed_by_others(d)
    if d.get("partial") and "v2" in record:  # interrupted: the program may or may not have been swapped, and
        with contextlib.suppress(Error, OSError):  # removing our rules from our block is safe either way
            devcgroup.revoke({"rules": record["rules"], "v2": {**record["v2"], "state": "replaced"}}, keep=keep)
        record = {k: v for k, v in record.items() if k != "v2"}
    kept = devcgroup.revoke(record, keep=keep)
    if kept and owner:
        _hand_over(owner, "devcgroup", _add_v1_lines(kept))


def _sharers(d: Dict[str, Any], name: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(key, undo data) of step ``name`` of the other DPDK leases of the same container (same pid) that are
    not being released: what they hold must stay (all NICs of a container share ``/dev/vfio/vfio``)."""
    out = []
    for key, lease in Ledger().leases().items():
        if key == d.get("key") or lease.mode != "dpdk" or lease.state == "releasing":
            continue
        step = lease.step(name)
        if step is not None and step.state == "done" and step.undo.get("pid") == d["pid"]:
            out.append((key, step.undo))
    return out


def _needed_by_others(d: Dict[str, Any]) -> Tuple[List[devcgroup.Rule], Optional[str]]:
    """The device rules other DPDK leases of the same container hold, and one such lease's key."""
    others = _sharers(d, "devcgroup")
    keep = [devcgroup.Rule(**r) for _, undo in others for r in undo.get("rules", [])]
    return keep, (others[0][0] if others else None)


def _hand_over(owner: str, name: str, add: Callable[[Dict[str, Any]], None]) -> None:
    """What this lease made and another still needs becomes that lease's to undo when it goes."""
    with Ledger().transaction() as leases:
        step = leases[owner].step(name) if owner in leases else None
        if step is not None:
            add(step.undo)


def _add_v1_lines(lines: List[str]) -> Callable[[Dict[str, Any]], None]:
    def add(undo: Dict[str, Any]) -> None:
        v1 = (undo.get("record") or {}).get("v1")
        if isinstance(v1, dict):
            v1["added"] = list(dict.fromkeys([*v1.get("added", []), *lines]))
    return add


def _add_nodes(paths: List[str]) -> Callable[[Dict[str, Any]], None]:
    def add(undo: Dict[str, Any]) -> None:
        undo["made"] = list(dict.fromkeys([*undo.get("made", []), *paths]))
    return add


def _undo_devnodes(d: Dict[str, Any]) -> None:
    paths = d.get("made", d.get("paths", []))
    others = _sharers(d, "devnodes")
    needed = {p for _, undo in others for p in undo.get("paths", [])}
    kept = [p for p in paths if p in needed]
    if paths and len(kept) < len(paths):
        devcgroup.remove_nodes(d["pid"], [p for p in paths if p not in needed])
    if kept:
        _hand_over(others[0][0], "devnodes", _add_nodes(kept))


_UNDO = {"bind": _undo_bind, "hugepages": _undo_hugepages, "hugetlbfs": _undo_hugetlbfs,
         "devcgroup": _undo_devcgroup, "devnodes": _undo_devnodes}


def _undo(name: str, data: Dict[str, Any]) -> None:
    log.info("undo %s", name)
    _UNDO[name](data)


def _undo_steps(key: str, ledger: Ledger, ran: List[Tuple[str, Dict[str, Any]]]) -> Tuple[List[str], List[Error]]:
    """Undo ``ran`` ((name, data) in the order they ran) newest first, trying every one; an undo failure is
    logged, never raised. Returns the names undone and the undo errors; when there are errors the lease stays in
    the ledger as ``failed`` with only the steps still to undo, for ``recover`` to finish."""
    done: List[str] = []
    failed: List[Error] = []
    left: List[str] = []
    for name, data in reversed(ran):
        try:
            _undo(name, data)
            _mark_undone(ledger, key, name)
            done.append(name)
            netdev._test_hook(f"undo-{name}")
        except Exception as exc:
            err = StepError(f"undo {name}", str(as_error(exc) or f"{type(exc).__name__}: {exc}"))
            log.error("%s for %s failed: %s", err.step, key, err.message)
            failed.append(err)
            left.append(name)
    if failed:
        _keep_failed(ledger, key, left, failed)
    return done, failed


def _keep_failed(ledger: Ledger, key: str, left: List[str], errors: List[Error]) -> None:
    with ledger.transaction() as leases:
        lease = leases.get(key)
        if lease is None:
            return
        lease.steps = [s for s in lease.steps if s.name in left]
        lease.state = "failed"
        lease.params["undo_errors"] = [str(e) for e in errors]
        leases[key] = lease


def _undo_all(lease: Lease, ledger: Ledger) -> Tuple[List[str], List[Error]]:
    ran = [(s.name, dict(s.undo, partial=s.state != "done")) for s in lease.steps
           if s.name in _UNDO and s.state != UNDONE]
    return _undo_steps(lease.key, ledger, ran)


def _mark_undone(ledger: Ledger, key: str, name: str) -> None:
    """Record that step ``name`` of lease ``key`` is undone (one ledger write)."""
    with ledger.transaction() as leases:
        step = leases[key].step(name) if key in leases else None
        if step is not None:
            step.state = UNDONE


def release_dpdk(lease: Lease, ledger: Ledger) -> None:
    """Undo every recorded dpdk step of ``lease``, newest first: nodes, cgroup rules, mount, pages, and the NIC
    back on its kernel driver under its original name. The first failure is raised after trying the rest."""
    _, failed = _undo_all(lease, ledger)
    if failed:
        exc = StepError("release", failed[0].message)
        exc.undo_errors = failed  # type: ignore[attr-defined]
        raise exc


def _target_alive(lease: Lease) -> bool:
    from .netns import Target
    path = lease.params.get("target_path") or ""
    return bool(path and lease.target_id and Target(lease.target, path, lease.target_id).alive())


def recover_dpdk(lease: Lease, ledger: Ledger) -> str:
    """Undo what a crashed attach or release left (steps ``started`` included), and reclaim a NIC whose
    container is gone; an attached lease with a live container is kept. The lease ends when undone."""
    if lease.state == "attached" and _target_alive(lease):
        return f"kept: attached to {lease.target}"
    done, failed = _undo_all(lease, ledger)
    if failed:  # kept in the ledger as failed, with what is left
        raise StepError("recover", f"undid {', '.join(done) or 'nothing'}; {'; '.join(str(e) for e in failed)}")
    ledger.remove(lease.key)
    return f"undid {', '.join(done)}" if done else "nothing to undo"
