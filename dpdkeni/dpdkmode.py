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

from . import devcgroup
from . import driver as drv
from . import hugepages as hp
from .errors import Error, InputError, StepError
from .inventory import Nic
from .ledger import Lease, Ledger, Step
from .modes import Mode, target_of
from .steps import PLANNED, Steps, Undo, UndoTable, Unwinding, raise_undo_errors, unwind
from .sysfs import Sysfs

log = logging.getLogger(__name__)

HUGEPAGES_MOUNT = "/dev/hugepages"
DEFAULT_PAGESIZE = 2 << 20
DEFAULT_HUGEPAGES = "256M"
ATTACH_STEPS = ("bind", "hugepages", "hugetlbfs", "devcgroup", "devnodes")
RELEASE_STEPS = tuple(f"undo-{name}" for name in reversed(ATTACH_STEPS))


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


def _plan_steps(nic: Nic, target: Any, key: str, hugepages: Optional[str], driver: str,
                fs: Sysfs) -> List[Step]:
    """The steps of a dpdk attach, each with what its undo needs as far as it is known before the first one runs
    (the device rules and nodes are known once the NIC is bound: noted then, written before they start)."""
    pid = _pid_of(target)
    steps = [Step("bind", PLANNED, {"pci": nic.pci, "driver": nic.driver, "ifname": nic.ifname, "mac": nic.mac,
                                    "root": fs.root})]
    if hugepages:
        page = DEFAULT_PAGESIZE
        pages = hp.pages_for(hugepages, page)
        steps += [Step("hugepages", PLANNED, {"pages": pages, "page_bytes": page,
                                              "node": _pool_for(Sysfs(), nic, page)}),
                  Step("hugetlbfs", PLANNED, {"pid": pid, "path": HUGEPAGES_MOUNT, "bytes": pages * page,
                                              "page_bytes": page})]
    return steps + [Step("devcgroup", PLANNED, {"pid": pid, "key": key}),
                    Step("devnodes", PLANNED, {"pid": pid, "key": key})]


def _pid_of(target: Any) -> int:
    pid = getattr(target, "pid", None)
    if pid is None:
        raise InputError(f"dpdk mode needs a target with a process (pid:N or container:ID), not {target.spec}",
                         "the hugetlbfs mount and device nodes go into its mount namespace")
    return pid


def _share(hugepages: Optional[str]) -> Optional[str]:
    """The container's hugepage share: None means the default (256M), "0" none."""
    hugepages = DEFAULT_HUGEPAGES if hugepages is None else hugepages
    return hugepages if hugepages and hp.parse_size(hugepages) else None


def _dry_run(nic: Nic, target: Any, hugepages: Optional[str], driver: str, noiommu: bool, force: bool,
             fs: Sysfs) -> None:
    """What an attach would do, logged; the bind's guards run as for real (a refusal is a GuardError)."""
    pid = _pid_of(target)
    result = drv.bind(nic, driver, noiommu=noiommu, force=force, dry_run=True, sysfs=fs)
    for path, value in result.writes:
        log.warning("dry-run: would write %r to %s", value, path)
    log.warning("dry-run: then reserve %s of hugepages, mount hugetlbfs at %s in pid %s, allow the device "
                "nodes in its cgroup and make them in its /dev", hugepages or "no", HUGEPAGES_MOUNT, pid)


def _run_steps(steps: Steps, nic: Nic, target: Any, key: str, hugepages: Optional[str], driver: str,
               noiommu: bool, force: bool, fs: Sysfs) -> None:
    pid = _pid_of(target)
    steps.run("bind", lambda: {"bound": drv.bind(nic, driver, noiommu=noiommu, force=force, sysfs=fs).driver})
    nodes = device_nodes(fs, nic, driver)
    planned = devcgroup.plan(pid, [r for _, r in nodes])  # recorded before anything is written: exact undo
    steps.note("devcgroup", {"pid": pid, "key": key, "rules": planned["rules"], "record": planned})
    steps.note("devnodes", {"pid": pid, "key": key, "paths": [p for p, _ in nodes]})
    if hugepages:
        _hugepage_steps(steps, nic, pid, hugepages)
    steps.run("devcgroup", lambda: {"record": devcgroup.apply(planned)})
    steps.run("devnodes", lambda: {"made": devcgroup.make_nodes(pid, nodes)})


def attach_dpdk(nic: Nic, target: Any, lease: Lease, ledger: Ledger, *, hugepages: Optional[str] = None,
                driver: str = "vfio-pci", noiommu: bool = False, force: bool = False, dry_run: bool = False,
                sysfs: Optional[Sysfs] = None) -> None:
    """Hand ``nic`` to the container of ``target`` as a DPDK port (see the module doc for the steps), on
    ``lease`` as claimed in ``ledger`` (its plan is recorded first when it has none). The steps end ``done``; the
    lease's state is the caller's (:func:`dpdkeni.handoff.attach` writes ``attached``).

    ``hugepages``: the container's share (None: 256M; "0": none). ``sysfs`` is the device tree the bind works
    on (default the host's); hugepages are always the host's pools.
    """
    share, fs = _share(hugepages), sysfs or Sysfs()
    if dry_run:
        _dry_run(nic, target, share, driver, noiommu, force, fs)
        return
    plan = _plan_steps(nic, target, lease.key, share, driver, fs)
    with Steps(ledger, lease, UNDO, plan=plan) as steps:
        _run_steps(steps, nic, target, lease.key, share, driver, noiommu, force, fs)
        steps.finish()


def _hugepage_steps(steps: Steps, nic: Nic, pid: int, size: str) -> None:
    page, fs = DEFAULT_PAGESIZE, Sysfs()
    pages, node = hp.pages_for(size, page), _pool_for(fs, nic, page)
    share = pages * page
    steps.run("hugepages", lambda: {"total": hp.add_pages(pages, page, node, fs)})
    cap = hp.size_cap(pid, HUGEPAGES_MOUNT)
    if cap is None:  # the container's first DPDK NIC: its own capped hugetlbfs
        steps.run("hugetlbfs", lambda: {"mounted": hp.mount_hugetlbfs(HUGEPAGES_MOUNT, share, page, pid)})
    elif cap == 0:  # a hugetlbfs the runtime mounted without a cap: the container uses it
        steps.run("hugetlbfs", lambda: {"shared": True})
    else:  # one hugetlbfs per container, capped at the sum of its NICs' shares (DPDK uses one mount per size)
        steps.run("hugetlbfs", lambda: {"grown": _resize(pid, cap + share, page)})


def _resize(pid: int, size: int, page: int) -> int:
    hp.resize_hugetlbfs(HUGEPAGES_MOUNT, size, page, pid)
    return size


# --- undo ------------------------------------------------------------------------------------------------------

def sysfs_for(root: Optional[str]) -> Sysfs:
    """The Sysfs an undo works through, from the root recorded in the ledger (tests point it at a simulation)."""
    return Sysfs(root or "/")


def _undo_bind(u: Unwinding, d: Dict[str, Any]) -> None:
    if d.get("partial") and not d.get("bound"):
        return  # driver.bind restores the original driver itself when it fails
    fs = sysfs_for(d.get("root"))
    if not fs.exists(f"{drv.PCI_DEVICES}/{d['pci']}"):  # unplugged: there is no device to give back
        drv.forget(d["pci"])
        return
    drv.unbind(d["pci"], driver=d.get("driver"), ifname=d.get("ifname"), sysfs=fs)


def _undo_hugepages(u: Unwinding, d: Dict[str, Any]) -> None:
    if d.get("partial"):
        return  # add_pages restores the pool itself when the kernel gives fewer pages
    hp.remove_pages(d["pages"], d["page_bytes"], d.get("node"), Sysfs())


def _undo_hugetlbfs(u: Unwinding, d: Dict[str, Any]) -> None:
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


def _undo_devcgroup(u: Unwinding, d: Dict[str, Any]) -> None:
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


def _undo_devnodes(u: Unwinding, d: Dict[str, Any]) -> None:
    paths = d.get("made", d.get("paths", []))
    others = _sharers(d, "devnodes")
    needed = {p for _, undo in others for p in undo.get("paths", [])}
    kept = [p for p in paths if p in needed]
    if paths and len(kept) < len(paths):
        devcgroup.remove_nodes(d["pid"], [p for p in paths if p not in needed])
    if kept:
        _hand_over(others[0][0], "devnodes", _add_nodes(kept))


UNDO: UndoTable = {name: Undo(fn, exact=True) for name, fn in (
    ("bind", _undo_bind), ("hugepages", _undo_hugepages), ("hugetlbfs", _undo_hugetlbfs),
    ("devcgroup", _undo_devcgroup), ("devnodes", _undo_devnodes))}  # exact: a second remove_pages would shrink
# another container's hugepages, so each undo is recorded as it ran


def release_dpdk(lease: Lease, ledger: Ledger) -> None:
    """Undo every recorded dpdk step of ``lease``, newest first: nodes, cgroup rules, mount, pages, and the NIC
    back on its kernel driver under its original name. The first failure is raised after trying the rest (the
    lease stays ``failed`` with what is left)."""
    _, failed = unwind(Unwinding(ledger, lease), UNDO)
    raise_undo_errors("release", failed)


def _target_alive(lease: Lease) -> bool:
    target = target_of(lease)
    return bool(target.path and target.ns_id and target.alive())


def recover_dpdk(lease: Lease, ledger: Ledger) -> str:
    """Undo what a crashed attach or release left (steps ``started`` included), and reclaim a NIC whose
    container is gone; an attached lease with a live container is kept. The lease ends when undone."""
    if lease.state == "attached" and _target_alive(lease):
        return f"kept: attached to {lease.target}"
    done, failed = unwind(Unwinding(ledger, lease), UNDO)
    if failed:  # kept in the ledger as failed, with what is left
        raise StepError("recover", f"undid {', '.join(done) or 'nothing'}; {'; '.join(str(e) for e in failed)}")
    ledger.remove(lease.key)
    return f"undid {', '.join(done)}" if done else "nothing to undo"


class DpdkMode(Mode):
    """The NIC bound to a user-space driver and handed to the target's container (see the module doc)."""

    name = "dpdk"
    undo = UNDO

    def params(self, req: Any, original: Dict[str, Any], leases: Any, target: Any, key: str) -> Dict[str, Any]:
        return {"hugepages": req.hugepages, "driver": req.driver, "noiommu": req.noiommu}

    def plan(self, lease: Lease, nic: Nic, target: Any, req: Any) -> None:
        _dry_run(nic, target, _share(req.hugepages), req.driver, req.noiommu, req.force, Sysfs())

    def steps(self, lease: Lease, nic: Nic, target: Any, req: Any) -> List[Step]:
        return _plan_steps(nic, target, lease.key, _share(req.hugepages), req.driver, Sysfs())

    def attach(self, steps: Steps, lease: Lease, nic: Nic, target: Any, req: Any) -> Dict[str, Any]:
        _run_steps(steps, nic, target, lease.key, _share(req.hugepages), req.driver, req.noiommu, req.force,
                   Sysfs())
        return {}

    def release(self, lease: Lease, ledger: Ledger, force: bool) -> str:
        release_dpdk(lease, ledger)
        return "returned"

    def recover(self, lease: Lease, ledger: Ledger) -> Dict[str, Any]:
        return {"key": lease.key, "action": "dpdk", "detail": recover_dpdk(lease, ledger)}


MODE = DpdkMode()
