"""How many ledger writes an attach and a release cost, per mode (each write is a flock, an encode and a rename
on the CNI's hot path): the step engine records the plan with the claim and marks steps done in batches."""
import os
import stat

import pytest

from conftest import needs_root
from dpdkeni import dpdkmode, handoff, ledger as ledgermod
from dpdkeni.ledger import Ledger
from test_dpdkmode import world  # noqa: F401  (the fixture)


BDF9 = "0000:00:09.0"


@pytest.fixture
def writes(monkeypatch):
    """The number of ledger writes so far (a list of one counter)."""
    count = [0]
    real = ledgermod.Ledger._store

    def counted(self, leases):
        count[0] += 1
        return real(self, leases)
    monkeypatch.setattr(ledgermod.Ledger, "_store", counted)
    return count


@needs_root
def test_netdev_attach_and_release_writes(state_dir, stand_in_models, veth_factory, container_factory, writes):
    nic, _ = veth_factory()
    c = container_factory()
    handoff.attach(nic, c.target, addresses=["198.18.50.2/24"], gateway="198.18.50.1")
    attach = writes[0]
    handoff.release(nic)
    # attach: the claim with the plan, then the done marks with "attached"; release: releasing, the end
    assert (attach, writes[0] - attach) == (2, 2)


def test_dpdk_attach_and_release_writes(world, monkeypatch, writes):  # noqa: F811
    k, c, cgs = world
    k.add_nic(BDF9, "virtio-net", ifname=None, iommu_group=9)  # no netdev on the host to snapshot
    os.mknod(k.tree.p("dev/vfio/9"), stat.S_IFCHR | 0o666, os.makedev(1, 9))
    os.makedirs(k.tree.p("sys/kernel/mm"), exist_ok=True)
    os.symlink("/sys/kernel/mm/hugepages", k.tree.p("sys/kernel/mm/hugepages"))  # the host's pools
    monkeypatch.setenv("DPDKENI_SYSFS_ROOT", k.tree.root)
    monkeypatch.setattr(dpdkmode, "Sysfs", lambda *a, **kw: k.sysfs())
    writes[0] = 0
    handoff.attach(BDF9, c.target, mode="dpdk", hugepages="4M")
    attach = writes[0]
    handoff.release(BDF9)
    assert Ledger().leases() == {}
    # attach: the claim with the plan (each step "planned"), then one write per step boundary, each marking the
    # next step started and the one before done (bind started; bind done with the device rules and nodes noted
    # and hugepages started; hugetlbfs; devcgroup; devnodes), and the last step done with "attached" (12 before
    # the engine: a begin and an end per step); release: releasing, each exact undo recorded as it ran, the end
    assert (attach, writes[0] - attach) == (7, 7)
