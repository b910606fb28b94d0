"""The device plugin's table of NICs: which pool each NIC of the node is in, and how healthy it is.

A NIC joins the first pool whose selectors it matches when it is first seen, and stays in it (keyed by PCI
address) while it is on the machine: a NIC bound to vfio-pci has no netdev to read its MAC from, so a MAC selector
is judged once. Health, per ListAndWatch list: ``Unhealthy`` for a NIC that is unplugged while a pod holds it (it
stays listed until its claim ends), a NIC that carries the host's traffic (addresses or routes: Allocate would
refuse it), and a NIC leased by something else (``dpdkeni attach``, the daemon); else ``Healthy``. An unplugged
NIC nobody holds leaves the list.

Every change of a pool's list bumps :attr:`Table.version` and wakes :meth:`Table.wait` (the ListAndWatch streams).
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Set, Tuple

from ..inventory import Nic, list_nics
from ..ledger import Ledger
from ..sysfs import Sysfs
from .api import HEALTHY, UNHEALTHY
from .pools import Config, Pool

log = logging.getLogger(__name__)

TARGET_PREFIX = "k8s:"  # the ledger target of a NIC the device plugin allocated: k8s:<resource>

# (ID, health, NUMA node or None): one device of a ListAndWatch list
Row = Tuple[str, str, Optional[int]]


@dataclass
class Member:
    """A NIC of a pool: as last seen, whether it is on the machine, and why it is unhealthy (None: healthy)."""

    nic: Nic
    pool: Pool
    present: bool = True
    why_unhealthy: Optional[str] = None


class Table:
    """The pools' NICs. ``claimed`` (a callable returning the PCI addresses pods hold) keeps an unplugged NIC
    listed as ``Unhealthy``; ``active`` returns the interface names that carry traffic (default: netlink when
    ``sysfs`` is the real one)."""

    def __init__(self, config: Config, sysfs: Optional[Sysfs] = None,
                 active: Optional[Callable[[], Set[str]]] = None,
                 claimed: Callable[[], Set[str]] = set) -> None:
        self.config = config
        self.fs = sysfs or Sysfs()
        self.active = active
        self.claimed = claimed
        self.members: Dict[str, Member] = {}
        self.version = 0
        self.cond = threading.Condition()
        self._scan = threading.Lock()
        self._lists: Dict[str, List[Row]] = {p.name: [] for p in config.pools}

    def rescan(self) -> bool:
        """Re-read the NICs (sysfs, the ledger) and update the lists; True when a pool's list changed."""
        claimed = self.claimed()  # first: the claims' lock is never taken while the scan lock is held
        with self._scan:  # one scan at a time, so an older reading never overwrites a newer one
            nics = {n.pci: n for n in list_nics(sysfs=self.fs, active=self.active) if n.pci}
            return self._update(nics, self._foreign_leases(), claimed)

    def _update(self, nics: Dict[str, Nic], foreign: Dict[str, str], claimed: Set[str]) -> bool:
        with self.cond:
            for pci, nic in nics.items():
                member = self.members.get(pci)
                if member is None or member.nic.model != nic.model:
                    pool = self.config.pool_for(nic)
                    if pool is None:
                        continue
                    member = self.members[pci] = Member(nic, pool)
                    log.info("%s (%s, %s) joins pool %s", pci, nic.model, nic.mac, pool.name)
                member.nic, member.present = nic, True
                member.why_unhealthy = (f"leased to {foreign[pci]}" if pci in foreign else
                                        "active in the host's namespace" if nic.active else None)
            for pci in [p for p in self.members if p not in nics]:
                if pci in claimed:
                    self.members[pci].present = False
                    self.members[pci].why_unhealthy = "unplugged while a pod holds it"
                else:
                    log.info("%s left pool %s (unplugged)", pci, self.members.pop(pci).pool.name)
            return self._publish()

    def _foreign_leases(self) -> Dict[str, str]:
        """PCI address -> target of the leases the device plugin did not make."""
        leases = Ledger().leases()
        out = {}
        for key in leases:
            target = leases.peek(key).get("target") or ""
            if not target.startswith(TARGET_PREFIX):
                out[key] = target
        return out

    def _publish(self) -> bool:
        lists: Dict[str, List[Row]] = {p.name: [] for p in self.config.pools}
        for pci in sorted(self.members):
            m = self.members[pci]
            lists[m.pool.name].append((pci, UNHEALTHY if m.why_unhealthy else HEALTHY, m.nic.numa_node))
        if lists == self._lists:
            return False
        self._lists = lists
        self.version += 1
        self.cond.notify_all()
        return True

    def rows(self, pool: str) -> Tuple[int, List[Row]]:
        """(version, the pool's list) as of now."""
        with self.cond:
            return self.version, list(self._lists.get(pool, []))

    def wait(self, version: int, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for a version newer than ``version``; returns the version now."""
        with self.cond:
            self.cond.wait_for(lambda: self.version != version, timeout)
            return self.version

    def wake(self) -> None:
        """Wake every :meth:`wait` (at stop)."""
        with self.cond:
            self.cond.notify_all()

    def member(self, pci: str) -> Optional[Member]:
        """The member at ``pci``, or None."""
        with self.cond:
            return self.members.get(pci)
