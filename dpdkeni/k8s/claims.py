"""What the device plugin does to the NICs pods get: Allocate's binding and ledger record, its answer, and giving
the NIC back when the pod has ended.

**Allocate** takes the NICs of one container request all or nothing: each NIC's lease is claimed in the ledger
(mode ``dpdk``, target ``k8s:<resource>``, step ``bind`` recorded before it runs), then :func:`dpdkeni.driver.bind`
runs with its guards (an active NIC, a process holding the device, a group that is not viable: a
:class:`~dpdkeni.errors.GuardError` whose one line the kubelet gets). A NIC leased by anything else is refused.
``dpdkeni leases`` shows the NIC; ``dpdkeni recover`` undoes it once its holder is gone (the lease's target
namespace is the plugin's until a pod opens the device, then the pod's process's).

**The pod's end.** The kubelet never tells a device plugin that a pod ended, so the plugin watches the device
nodes: a claimed NIC whose vfio group node (``/dev/vfio/N``; uio: ``/dev/uioN``) a process had open and then no
process has open for ``release_grace`` seconds (a container restart reopens it within that) is freed: unbound
back to its kernel driver under its original name, its lease ended, and it is ``Healthy`` in the pool again. A NIC
allocated but never opened stays bound (the kubelet may still start the container). A claimed NIC that was
unplugged is dropped the same way when its last holder lets go, and at once when it never had one.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set

from .. import cdi
from .. import driver as drv
from .. import hugepages as hp
from ..errors import Error, GuardError, NotFoundError
from ..inventory import Nic, netlink_active_ifnames, pci_nic
from ..ledger import Lease, Ledger, Step
from ..sysfs import Sysfs
from .pools import Config, Pool
from .table import TARGET_PREFIX, Table

log = logging.getLogger(__name__)

HUGEPAGES_PATH = "/dev/hugepages"
VFIO_CONTAINER = "/dev/vfio/vfio"


@dataclass
class Claim:
    """A NIC the kubelet allocated: its device nodes (host paths) and what the holder watch has seen."""

    pci: str
    pool: str
    nodes: List[str]
    held: bool = False
    free_since: Optional[float] = None
    holder: Optional[int] = None


@dataclass
class Answer:
    """One ContainerAllocateResponse, as plain data: devices (container path, host path, permissions), env,
    mounts (container path, host path, read-only) and CDI device names."""

    devices: List[tuple] = field(default_factory=list)
    envs: Dict[str, str] = field(default_factory=dict)
    mounts: List[tuple] = field(default_factory=list)
    cdi_devices: List[str] = field(default_factory=list)


def _ns_id(path: str) -> str:
    return f"net:[{os.stat(path).st_ino}]"


def find_hugetlbfs() -> Optional[str]:
    """The host's hugetlbfs mount to hand to pods: ``/dev/hugepages`` when mounted, else the first one."""
    paths = [m["path"] for m in hp.mounts()]
    return HUGEPAGES_PATH if HUGEPAGES_PATH in paths else (paths[0] if paths else None)


class Claims:
    """The NICs pods hold. Thread-safe: Allocate runs in gRPC's threads, :meth:`check` in the plugin's loop."""

    def __init__(self, config: Config, table: Table, sysfs: Optional[Sysfs] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.table = table
        self.fs = sysfs or Sysfs()
        self.clock = clock
        self.items: Dict[str, Claim] = {}
        self.lock = threading.RLock()
        self.hugetlbfs = config.hugepages_mount if config.hugepages_mount is not None else find_hugetlbfs()

    def pcis(self) -> Set[str]:
        """The PCI addresses claimed now."""
        with self.lock:
            return set(self.items)

    # ----- start
    def adopt(self) -> List[str]:
        """Take over the leases an earlier run of the plugin made (a restart must not forget what pods hold):
        each is watched as held, so one whose pod ended meanwhile is freed after the grace period."""
        leases = Ledger().leases()
        adopted = []
        with self.lock:
            for key in leases:
                raw = leases.peek(key)
                target = raw.get("target") or ""
                pool = (raw.get("params") or {}).get("pool")
                if not target.startswith(TARGET_PREFIX) or pool not in {p.name for p in self.config.pools}:
                    continue
                self.items[key] = Claim(key, pool, (raw.get("params") or {}).get("nodes") or [], held=True)
                adopted.append(key)
        return adopted

    # ----- Allocate
    def allocate(self, pool: Pool, ids: List[str]) -> Answer:
        """Bind the NICs ``ids`` of ``pool`` (all or nothing) and return the container's answer."""
        with self.lock:
            for pci in ids:
                member = self.table.member(pci)
                if member is None or member.pool.name != pool.name or not member.present:
                    raise NotFoundError(f"{pci} is not a device of {pool.resource} on this node")
            done: List[str] = []
            try:
                nics = []
                for pci in ids:
                    nics.append(self._claim(pool, pci))
                    done.append(pci)
            except BaseException:
                for pci in reversed(done):
                    if pci in self.items and not self.items[pci].held:
                        self._free(self.items.pop(pci), "allocate failed")
                raise
            finally:
                self.table.rescan()
            return self.answer(pool, nics)

    def _claim(self, pool: Pool, pci: str) -> Nic:
        if pci in self.items:  # allocated again (the kubelet is the authority on who has it): already bound
            claim = self.items[pci]
            claim.held, claim.free_since, claim.holder = False, None, None
            return pci_nic(pci, self.fs)
        nic = pci_nic(pci, self.fs)
        ledger = Ledger()
        me = f"/proc/{os.getpid()}/ns/net"
        original = {"pci": pci, "driver": nic.driver, "ifname": nic.ifname, "mac": nic.mac, "model": nic.model}
        undo = {"pci": pci, "driver": nic.driver, "ifname": nic.ifname, "mac": nic.mac, "root": self.fs.root}
        with ledger.transaction() as leases:
            if pci in leases:
                other = leases.peek(pci)
                raise GuardError(f"{pci} is leased to {other.get('target')} ({other.get('state')})",
                                 "release it first: dpdkeni release " + pci)
            leases[pci] = Lease(pci, "dpdk", f"{TARGET_PREFIX}{pool.resource}", original, "attaching",
                                target_id=_ns_id(me), steps=[Step("bind", "started", undo)],
                                params={"pool": pool.name, "driver": pool.driver, "target_path": me})
        try:
            nic.active = bool(nic.ifname and nic.ifname in self._active_names())
            drv.bind(nic, pool.driver, sysfs=self.fs)
        except BaseException:
            ledger.remove(pci)  # driver.bind restored the original driver itself
            raise
        try:
            bound = pci_nic(pci, self.fs)
            nodes = self._nodes(bound, pool.driver)
            ledger.advance(pci, done={"bind": {"bound": pool.driver}}, params={"nodes": nodes}, state="attached")
        except BaseException:
            # bound but not answerable (no group or uio node, a ledger write failed): back to its driver, and the
            # lease ends (or stays for 'dpdkeni recover' when the unbind fails too: _free logs it)
            self._free(Claim(pci, pool.name, []), "allocate failed after the bind")
            raise
        self.items[pci] = Claim(pci, pool.name, nodes)
        log.info("allocated %s (%s) to %s: bound to %s", pci, nic.mac, pool.resource, pool.driver)
        return bound

    def _active_names(self) -> Set[str]:
        """The interface names that carry traffic now (the bind's first guard), as the table judges them."""
        if self.table.active is not None:
            return self.table.active()
        return netlink_active_ifnames() if self.fs.root == "/" else set()

    def _nodes(self, nic: Nic, driver: str) -> List[str]:
        """The host device nodes of a bound NIC: its vfio group (or no-IOMMU group) node, or its uio node."""
        if driver == "vfio-pci":
            group = drv.iommu_group(self.fs, nic.pci or "")
            if group is None:
                raise Error(f"{nic.pci} is on vfio-pci but has no IOMMU group")
            paths = drv.vfio_group_paths(self.fs, group)
            return [next((p for p in paths if self.fs.exists(p)), paths[0])]
        nodes = [f"/dev/{u}" for u in self.fs.listdir(f"sys/bus/pci/devices/{nic.pci}/uio")]
        if not nodes:  # an answer without the node would hand the container nothing it can open
            raise Error(f"{nic.pci} is on {driver} but has no uio device (nothing in "
                        f"/sys/bus/pci/devices/{nic.pci}/uio)")
        return nodes

    def answer(self, pool: Pool, nics: List[Nic]) -> Answer:
        """The ContainerAllocateResponse for ``nics`` (bound): device nodes rw, the SR-IOV plugin's env, the
        hugetlbfs mount and the CDI names."""
        out = Answer()
        vfio = pool.driver == "vfio-pci"
        if vfio:
            out.devices.append((VFIO_CONTAINER, VFIO_CONTAINER, "rw"))
        info: Dict[str, Dict] = {}
        for nic in nics:
            pci = nic.pci or ""
            nodes = self.items[pci].nodes if pci in self.items else self._nodes(nic, pool.driver)
            for host in nodes:
                inside = f"/dev/vfio/{host.rsplit('-', 1)[-1].rsplit('/', 1)[-1]}" if vfio else host
                out.devices.append((inside, host, "rw"))
                info[pci] = cdi.device_info(pci, inside) if vfio else \
                    {"generic": {"deviceID": pci}, "uio": {"dev-mount": inside}}
            out.envs[cdi.nic_var(pci)] = pci
        var = cdi.env_name(self.config.prefix, pool.name)
        out.envs[var] = ",".join(n.pci or "" for n in nics)
        out.envs[f"{var}_INFO"] = json.dumps(info, separators=(",", ":"), sort_keys=True)
        if self.hugetlbfs:
            out.mounts.append((HUGEPAGES_PATH, self.hugetlbfs, False))
        if vfio and self.config.cdi_spec and self._write_cdi():
            out.cdi_devices = [f"{cdi.KIND}={n.pci}" for n in nics]
        return out

    def _write_cdi(self) -> bool:
        try:
            cdi.write(cdi.generate(sysfs=self.fs), self.config.cdi_spec)
            return True
        except Error as exc:
            log.error("CDI spec %s not written, so the answer names no CDI device: %s", self.config.cdi_spec, exc)
            return False

    # ----- the pod's end
    def check(self) -> bool:
        """Look at who holds each claimed NIC; free the ones whose holders went ``release_grace`` seconds ago.
        True when a NIC was freed."""
        freed = False
        with self.lock:
            for claim in list(self.items.values()):
                procs = drv.holders([self.fs.path(p) for p in claim.nodes]) if claim.nodes else []
                now = self.clock()
                if procs:
                    if not claim.held or claim.holder not in {p.pid for p in procs}:
                        self._held_by(claim, procs[0].pid, procs[0].info.get("name") or "?")
                    claim.held, claim.free_since = True, None
                elif not self.fs.exists(f"sys/bus/pci/devices/{claim.pci}") and not claim.held:
                    self._free(self.items.pop(claim.pci), "unplugged before its pod opened it")
                    freed = True
                elif claim.held:
                    claim.free_since = claim.free_since if claim.free_since is not None else now
                    if now - claim.free_since >= self.config.release_grace:
                        self._free(self.items.pop(claim.pci), "its pod ended")
                        freed = True
        if freed:
            self.table.rescan()
        return freed

    def _held_by(self, claim: Claim, pid: int, name: str) -> None:
        claim.holder = pid
        path = f"/proc/{pid}/ns/net"
        try:
            ns = _ns_id(path)
        except OSError:
            return
        log.info("%s is held by %s[%d]", claim.pci, name, pid)
        try:
            Ledger().advance(claim.pci, params={"target_path": path, "holder": f"{name}[{pid}]"}, target_id=ns)
        except (Error, KeyError) as exc:
            log.warning("ledger: %s", exc)

    def _free(self, claim: Claim, why: str) -> None:
        """Give the NIC back to its kernel driver and end its lease (an unplugged one: only the lease)."""
        ledger = Ledger()
        lease = ledger.get(claim.pci)
        if lease is not None:
            ledger.update(claim.pci, state="releasing", owner_pid=os.getpid(), created=time.time())
        present = self.fs.exists(f"sys/bus/pci/devices/{claim.pci}")
        try:
            if present:
                original = (lease.original if lease else {}) or {}
                drv.unbind(claim.pci, driver=original.get("driver"), ifname=original.get("ifname"), sysfs=self.fs)
        except Error as exc:
            log.error("freeing %s: %s (its lease stays for 'dpdkeni recover')", claim.pci, exc)
            return
        if lease is not None:
            ledger.remove(claim.pci)
        log.info("freed %s (%s): %s", claim.pci, why, "back on its kernel driver" if present else "unplugged")
