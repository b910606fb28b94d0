"""The dpdk mode end to end on this host: binding on the simulated PCI core (no vfio here; the lab's
tests/vm/test_dpdk.py::test_attach_dpdk_and_release runs it for real), with real hugepages, a real hugetlbfs mount in a
stand-in container, real v1 and v2 device cgroups and real device nodes (/dev/zero and /dev/full stand in for
/dev/vfio/vfio and the group node)."""
import contextlib
import errno
import fcntl
import os
import stat

import pytest

import hostfacts
from conftest import unique
from dpdkeni import devcgroup as dc, dpdkmode, hugepages as hp
from dpdkeni.errors import StepError
from dpdkeni.inventory import find_nic
from dpdkeni.ledger import Lease, Ledger
from dpdkeni.netns import resolve_target
from dpdkeni.sysfs import Sysfs
from sysfs_tree import SimKernel
from test_devcgroup import NULL, V1, V2, ZERO, probe, runtime_program
from test_hugepages import LOCK, M2

BDF = "0000:00:04.0"


LAYOUTS = ["hybrid", "v2"]


@contextlib.contextmanager
def make_world(layout, sysfs_tree, container_factory, monkeypatch):
    """(kernel, container, cgroups) for one layout: ``hybrid`` puts the container in a v1 devices cgroup and a v2
    cgroup (cgroups = [v1, v2]); ``v2`` only in a v2 cgroup (cgroups = [v2]), with the v1 devices controller
    hidden from the library, as on a pure v2 host (Debian 12's default)."""
    if layout == "hybrid" and not (hostfacts.cgroup_v1_devices() and V2):
        pytest.skip("needs the v1 devices controller and a v2 hierarchy")
    if layout == "v2" and not V2:
        pytest.skip("needs a v2 hierarchy")
    if layout == "v2":
        real = dc._mountpoint
        monkeypatch.setattr(dc, "_mountpoint", lambda fstype, option=None: None if option == "devices"
                            else real(fstype, option))
    k = SimKernel(sysfs_tree)
    k.add_nic(BDF, "virtio-net", ifname="enp0s4", mac="52:54:00:00:00:04", iommu_group=7)
    os.mknod(sysfs_tree.p("dev/vfio/vfio"), stat.S_IFCHR | 0o666, os.makedev(1, 5))
    os.mknod(sysfs_tree.p("dev/vfio/7"), stat.S_IFCHR | 0o666, os.makedev(1, 7))
    monkeypatch.setattr(dpdkmode, "sysfs_for", lambda root: k.sysfs())  # undo through the same simulation
    c = container_factory()
    assert c.run("mount", "-t", "tmpfs", "tmpfs", "/dev").returncode == 0
    cgs = ([f"{V1}/{unique('dkdm')}"] if layout == "hybrid" else []) + [f"{V2}/{unique('dkdm')}"]
    for cg in cgs:
        os.mkdir(cg)
    if layout == "hybrid":
        with open(f"{cgs[0]}/devices.deny", "w") as f:
            f.write("a")
        with open(f"{cgs[0]}/devices.allow", "w") as f:
            f.write("c 1:3 rwm")
    runtime_program(cgs[-1], [dc.rule_for(NULL)])
    for cg in cgs:
        with open(f"{cg}/cgroup.procs", "w") as f:
            f.write(str(c.pid))
    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        yield k, c, cgs
    finally:
        lock.close()
        c.kill()
        fd = os.open(cgs[-1], os.O_RDONLY)
        for pid in dc.query(fd)[1]:
            pfd = dc.prog_fd(pid)
            dc.detach(fd, pfd)
            os.close(pfd)
        os.close(fd)
        for cg in cgs:
            os.rmdir(cg)


@pytest.fixture(params=LAYOUTS)
def world(request, sysfs_tree, state_dir, container_factory, monkeypatch):
    with make_world(request.param, sysfs_tree, container_factory, monkeypatch) as w:
        yield w


@pytest.fixture
def hybrid_world(sysfs_tree, state_dir, container_factory, monkeypatch):
    with make_world("hybrid", sysfs_tree, container_factory, monkeypatch) as w:
        yield w


def layers(cgs):
    """The cgroups to probe one layer at a time: [[v1], [v2]] in the hybrid layout, [[v2]] in the v2 one."""
    return [[cg] for cg in cgs]


def lease_for(target):
    ledger = Ledger()
    with ledger.transaction() as leases:
        leases[BDF] = Lease(BDF, "dpdk", target.spec, {"ifname": "enp0s4"})
    return leases[BDF], ledger


def begin(world):
    """(kernel, container, cgroups, target, lease, ledger, hugepages before, nic) for one attach."""
    k, c, cgs = world
    target = resolve_target(c.target)
    lease, ledger = lease_for(target)
    return k, c, cgs, target, lease, ledger, hp._pool(Sysfs(), M2, None).total, find_nic(BDF, sysfs=k.sysfs(),
                                                                                          active=set)


def test_attach_then_release(world):
    k, c, cgs, target, lease, ledger, before, nic = begin(world)
    dpdkmode.attach_dpdk(nic, target, lease, ledger, hugepages="4M", driver="vfio-pci", noiommu=False,
                         force=False, dry_run=False, sysfs=k.sysfs())
    try:
        check_attached(k, c, cgs, ledger, before)
    except BaseException:
        dpdkmode.recover_dpdk(ledger.get(BDF), ledger)
        raise
    dpdkmode.release_dpdk(ledger.get(BDF), ledger)
    assert k.driver(BDF) == "virtio-pci" and os.path.exists(k.tree.p("sys/class/net/enp0s4"))
    assert hp._pool(Sysfs(), M2, None).total == before
    assert not [m for m in hp.mounts(c.pid) if m["path"] == "/dev/hugepages"]
    assert c.run("ls", "/dev/vfio").stdout.strip() == ""
    assert probe(cgs, NULL, ZERO, "/dev/full") == {NULL: 0, ZERO: errno.EPERM, "/dev/full": errno.EPERM}


def check_attached(k, c, cgs, ledger, before):
    steps = ledger.get(BDF).steps
    # every step a real attach records, in order: the kill points of tests/vm/test_crash_vm.py are all there are
    assert [(s.name, s.state) for s in steps] == [(n, "done") for n in dpdkmode.ATTACH_STEPS]
    assert dpdkmode.RELEASE_STEPS == tuple(f"undo-{s.name}" for s in reversed(steps))
    assert k.driver(BDF) == "vfio-pci"
    assert hp._pool(Sysfs(), M2, None).total == before + 2
    assert [m["options"] for m in hp.mounts(c.pid) if m["path"] == "/dev/hugepages"] == [
        f"rw,relatime,pagesize=2M,size={2 * M2}"]
    inside = c.run("stat", "-c", "%t:%T", "/dev/vfio/vfio", "/dev/vfio/7").stdout.split()
    assert inside == ["1:5", "1:7"]
    assert probe(cgs, ZERO, "/dev/full") == {ZERO: 0, "/dev/full": 0}


def test_failed_step_undoes_the_ones_before(world):
    k, c, cgs = world
    runtime_program(cgs[-1], [dc.rule_for(NULL)], extra=dc.insn(0x85, imm=15))  # a program with a call: refused
    target = resolve_target(c.target)
    lease, ledger = lease_for(target)
    before = hp._pool(Sysfs(), M2, None).total
    with pytest.raises(StepError, match="devcgroup"):
        dpdkmode.attach_dpdk(find_nic(BDF, sysfs=k.sysfs(), active=set), target, lease, ledger,
                             hugepages="4M", driver="vfio-pci", sysfs=k.sysfs())
    assert k.driver(BDF) == "virtio-pci" and os.path.exists(k.tree.p("sys/class/net/enp0s4"))
    assert hp._pool(Sysfs(), M2, None).total == before
    assert not [m for m in hp.mounts(c.pid) if m["path"] == "/dev/hugepages"]
    for layer in layers(cgs):
        assert probe(layer, ZERO) == {ZERO: errno.EPERM}, layer  # nothing left allowed, in each layer


def test_recover_undoes_a_half_done_attach(world):
    k, c, cgs, target, lease, ledger, before, nic = begin(world)
    dpdkmode.attach_dpdk(nic, target, lease, ledger, hugepages="4M", sysfs=k.sysfs())
    ledger.update(BDF, state="attached", target_id=target.ns_id, params={"target_path": target.path})
    assert dpdkmode.recover_dpdk(ledger.get(BDF), ledger).startswith("kept")  # its container is alive
    ledger.update(BDF, state="attaching")
    ledger.begin_step(BDF, "extra-started-by-crash")  # a crash after this: recover must still undo the rest
    said = dpdkmode.recover_dpdk(ledger.get(BDF), ledger)
    assert said == "undid devnodes, devcgroup, hugetlbfs, hugepages, bind"
    assert k.driver(BDF) == "virtio-pci" and hp._pool(Sysfs(), M2, None).total == before
    assert ledger.get(BDF) is None


def test_target_without_a_process_is_bad_input(world, netns_factory):
    from dpdkeni.errors import InputError
    k, c, cgs = world
    target = resolve_target(f"netns:{netns_factory()}")
    lease, ledger = lease_for(target)
    with pytest.raises(InputError, match="needs a target with a process"):
        dpdkmode.attach_dpdk(find_nic(BDF, sysfs=k.sysfs(), active=set), target, lease, ledger, sysfs=k.sysfs())


BDF2 = "0000:00:05.0"
RANDOM, FULL = "/dev/random", "/dev/full"


def second_nic(k, target):
    """A second virtio NIC (IOMMU group 8) and its lease to the same target."""
    k.add_nic(BDF2, "virtio-net", ifname="enp0s5", mac="52:54:00:00:00:05", iommu_group=8)
    os.mknod(k.tree.p("dev/vfio/8"), stat.S_IFCHR | 0o666, os.makedev(1, 8))  # /dev/random stands in
    ledger = Ledger()
    with ledger.transaction() as leases:
        leases[BDF2] = Lease(BDF2, "dpdk", target.spec, {"ifname": "enp0s5"})
    return leases[BDF2], find_nic(BDF2, sysfs=k.sysfs(), active=set)


def hugetlbfs_in(c):
    return [m["options"] for m in hp.mounts(c.pid) if m["path"] == "/dev/hugepages"]


def test_two_nics_in_one_container_share_one_hugetlbfs(world):
    """DPDK uses one hugetlbfs per page size: the container's second NIC grows the one mount to the sum of the
    shares (not a second mount stacked on the first), and each release shrinks it back by its own share."""
    k, c, cgs, target, lease, ledger, before, nic = begin(world)
    lease2, nic2 = second_nic(k, target)
    dpdkmode.attach_dpdk(nic, target, lease, ledger, hugepages="4M", sysfs=k.sysfs())
    try:
        dpdkmode.attach_dpdk(nic2, target, lease2, ledger, hugepages="2M", sysfs=k.sysfs())
        assert hugetlbfs_in(c) == [f"rw,relatime,pagesize=2M,size={3 * M2}"]
        assert hp._pool(Sysfs(), M2, None).total == before + 3
        assert c.run("stat", "-c", "%t:%T", "/dev/vfio/7", "/dev/vfio/8").stdout.split() == ["1:7", "1:8"]
        dpdkmode.release_dpdk(ledger.get(BDF), ledger)  # the first one goes first: the mount stays for the other
        ledger.remove(BDF)  # as handoff.release does
        assert hugetlbfs_in(c) == [f"rw,relatime,pagesize=2M,size={M2}"]
        assert k.driver(BDF) == "virtio-pci" and k.driver(BDF2) == "vfio-pci"
        # /dev/vfio/vfio (/dev/zero here) is shared: the second NIC keeps it, in v1 and in v2; the first
        # NIC's group (/dev/full) is gone
        for cg in layers(cgs):
            assert probe(cg, ZERO, RANDOM, FULL) == {ZERO: 0, RANDOM: 0, FULL: errno.EPERM}, cg
        assert c.run("ls", "/dev/vfio").stdout.split() == ["8", "vfio"]  # the shared node stays too
        dpdkmode.release_dpdk(ledger.get(BDF2), ledger)
        assert hugetlbfs_in(c) == [] and hp._pool(Sysfs(), M2, None).total == before
        assert c.run("ls", "/dev/vfio").stdout.strip() == ""
        for cg in layers(cgs):
            assert probe(cg, NULL, ZERO, RANDOM) == {NULL: 0, ZERO: errno.EPERM, RANDOM: errno.EPERM}, cg
    finally:
        for key in (BDF, BDF2):
            if ledger.get(key) is not None:
                dpdkmode.recover_dpdk(ledger.get(key), ledger)


def test_a_hugetlbfs_in_use_is_not_remounted_and_the_attach_is_undone(world):
    k, c, cgs, target, lease, ledger, before, nic = begin(world)
    lease2, nic2 = second_nic(k, target)
    dpdkmode.attach_dpdk(nic, target, lease, ledger, hugepages="4M", sysfs=k.sysfs())
    try:
        assert c.run("touch", "/dev/hugepages/rtemap_0").returncode == 0  # an application holds a page file
        with pytest.raises(StepError, match="hugetlbfs.*in use"):
            dpdkmode.attach_dpdk(nic2, target, lease2, ledger, hugepages="2M", sysfs=k.sysfs())
        assert hugetlbfs_in(c) == [f"rw,relatime,pagesize=2M,size={2 * M2}"]  # untouched
        assert k.driver(BDF2) == "virtio-pci" and hp._pool(Sysfs(), M2, None).total == before + 2
    finally:
        c.run("rm", "-f", "/dev/hugepages/rtemap_0")
        dpdkmode.recover_dpdk(ledger.get(BDF), ledger)
    assert hugetlbfs_in(c) == [] and hp._pool(Sysfs(), M2, None).total == before


def test_recover_denies_the_v1_lines_of_an_interrupted_devcgroup_step(hybrid_world):
    """A crash after the first v1 line was written: the plan recorded before writing says what to deny."""
    k, c, cgs, target, lease, ledger, before, nic = begin(hybrid_world)
    rules = [dc.rule_for(ZERO), dc.rule_for(FULL)]
    planned = dc.plan(c.pid, rules)
    assert planned["v1"]["added"] == ["c 1:5 rw", "c 1:7 rw"]
    ledger.begin_step(BDF, "devcgroup", {"pid": c.pid, "key": BDF, "rules": planned["rules"], "record": planned})
    dc.write_v1(planned["v1"]["cgroup"], planned["v1"]["added"][:1])  # ... and the process died here
    assert probe(cgs[:1], ZERO, FULL) == {ZERO: 0, FULL: errno.EPERM}
    assert dpdkmode.recover_dpdk(ledger.get(BDF), ledger) == "undid devcgroup"
    assert probe(cgs, NULL, ZERO, FULL) == {NULL: 0, ZERO: errno.EPERM, FULL: errno.EPERM}


def test_a_guard_refusal_in_dpdk_mode_exits_3_and_is_cni_101_as_with_dry_run(sysfs_tree, state_dir,
                                                                            container_factory, monkeypatch, capsys):
    """driver.bind's guard (no IOMMU group and no --noiommu) refuses inside ``attach --mode dpdk``: a GuardError,
    exit 3 and CNI code 101, exactly as ``--dry-run`` says, and nothing is left (lease, driver)."""
    from dpdkeni import cli, cni, handoff
    from dpdkeni.errors import GuardError
    k = SimKernel(sysfs_tree)
    k.add_nic(BDF, "virtio-net", ifname=None)  # no netdev to snapshot, no IOMMU group
    monkeypatch.setenv("DPDKENI_SYSFS_ROOT", sysfs_tree.root)
    c = container_factory()
    with pytest.raises(GuardError) as info:
        handoff.attach(BDF, c.target, mode="dpdk", hugepages="0")
    assert info.value.exit_code == 3 and cni._error_code(info.value) == 101
    assert Ledger().leases() == {} and k.driver(BDF) == "virtio-pci"
    for extra in ([], ["--dry-run"]):
        capsys.readouterr()
        assert cli.main(["attach", BDF, "--to", c.target, "--mode", "dpdk", "--hugepages", "0", *extra]) == 3
        err = capsys.readouterr().err
        assert err == (f"dpdkeni: error: {BDF} has no IOMMU group (no IOMMU on this host); vfio-pci would need the "
                       "unsafe no-IOMMU mode (pass --noiommu (noiommu=True) to enable it, or use uio_pci_generic)\n")
    assert Ledger().leases() == {} and k.driver(BDF) == "virtio-pci"
    from cnirun import run_cni  # the plugin binary, as a runtime runs it (no resident server at this socket)
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "dpdkeni-cni", "pciBusID": BDF, "mode": "dpdk",
            "hugepages": "0", "wait": 1}
    out = run_cni("ADD", conf, netns=f"/proc/{c.pid}/ns/net",
                  extra_env={"DPDKENI_CNI_SOCKET": os.path.join(state_dir, "no-server.sock")})
    assert out.returncode == 1 and (out.doc["code"], out.doc["msg"]) == (
        101, f"{BDF} has no IOMMU group (no IOMMU on this host); vfio-pci would need the unsafe no-IOMMU mode")
    assert Ledger().leases() == {} and k.driver(BDF) == "virtio-pci"


BDF3 = "0000:00:06.0"


def test_an_undo_that_fails_keeps_the_error_and_a_failed_lease_that_recover_finishes(world, monkeypatch, capsys):
    """The devcgroup step is refused (a runtime program with a call), and the bind's undo then fails for real
    (the simulated virtio-pci probe fails): the devcgroup error is the one raised, the undo failure rides on it,
    the lease stays ``failed`` with the bind left to undo, ``leases`` shows it and ``recover`` finishes it."""
    import json
    from dpdkeni import cli, handoff
    k, c, cgs = world
    k.add_nic(BDF3, "virtio-net", ifname=None, iommu_group=9)
    os.mknod(k.tree.p("dev/vfio/9"), stat.S_IFCHR | 0o666, os.makedev(1, 9))
    monkeypatch.setenv("DPDKENI_SYSFS_ROOT", k.tree.root)
    monkeypatch.setattr(dpdkmode, "Sysfs", lambda *a, **kw: k.sysfs())  # binds through the simulated kernel
    runtime_program(cgs[-1], [dc.rule_for(NULL)], extra=dc.insn(0x85, imm=15))  # a program with a call: refused
    k.failing.add("virtio-pci")
    with pytest.raises(StepError) as info:
        handoff.attach(BDF3, c.target, mode="dpdk", hugepages="0")
    assert info.value.step == "devcgroup"
    assert [(e.step, e.message) for e in info.value.undo_errors] == [
        ("undo bind", f"undo bind: writing '{BDF3}' to /sys/bus/pci/drivers/virtio-pci/bind: Invalid argument "
                      "(the kernel rejected the value)")]
    lease = Ledger().get(BDF3)
    assert lease.state == "failed" and [(s.name, s.state) for s in lease.steps] == [("bind", "done")]
    assert k.driver(BDF3) is None
    capsys.readouterr()
    assert cli.main(["leases", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [(x["key"], x["state"], [s["name"] for s in x["steps"]]) for x in shown] == [(BDF3, "failed", ["bind"])]
    assert handoff.recover() == [{"key": BDF3, "action": "failed", "detail": (
        f"recover: undid nothing; undo bind: writing '{BDF3}' to /sys/bus/pci/drivers/virtio-pci/bind: Invalid "
        "argument (the kernel rejected the value)")}]  # still failing: kept, with what is left
    assert Ledger().get(BDF3).state == "failed" and [s.name for s in Ledger().get(BDF3).steps] == ["bind"]
    k.failing.clear()
    assert handoff.recover() == [{"key": BDF3, "action": "dpdk", "detail": "undid bind"}]
    assert Ledger().leases() == {} and k.driver(BDF3) == "virtio-pci"
    for layer in layers(cgs):
        assert probe(layer, ZERO) == {ZERO: errno.EPERM}, layer


def test_what_the_ledger_holds_at_each_kill_point(world, monkeypatch):
    """At each attach step's kill point (DPDKENI_TEST_KILL_AFTER, as tests/vm/test_crash_vm.py kills there) the
    lease is still ``attaching``, that step and every one before it ``done``, and the steps after it ``planned``:
    never started, so ``recover`` leaves them alone (a planned ``devnodes`` must not remove nodes the container
    had). Snapshots taken by the hook itself, for every step in one attach."""
    from dpdkeni import steps as stepsmod
    k, c, cgs, target, lease, ledger, before, nic = begin(world)
    seen = {}

    def hook(name):
        held = Ledger().get(BDF)
        seen[name] = (held.state, [(s.name, s.state) for s in held.steps])
    monkeypatch.setattr(stepsmod, "test_hook", hook)
    monkeypatch.setenv(stepsmod.TEST_KILL_ENV, "devnodes")  # the last one: its done mark is written on its own
    dpdkmode.attach_dpdk(nic, target, lease, ledger, hugepages="4M", sysfs=k.sysfs())
    try:
        names = list(dpdkmode.ATTACH_STEPS)
        assert list(seen) == names
        for i, name in enumerate(names):
            assert seen[name] == ("attaching", [(n, "done") for n in names[:i + 1]] +
                                  [(n, "started") for n in names[i + 1:i + 2]] +
                                  [(n, "planned") for n in names[i + 2:]]), name
    finally:
        dpdkmode.recover_dpdk(ledger.get(BDF), ledger)


def test_recover_leaves_a_planned_step_alone(world):
    """A crash right after the bind leaves devnodes ``planned`` with the paths it would make noted: the container's
    own node at such a path (made by its runtime) stays; only the started bind is undone."""
    k, c, cgs, target, lease, ledger, before, nic = begin(world)
    dc.make_nodes(c.pid, [("/dev/vfio/vfio", dc.rule_for(ZERO))])  # the runtime's, before any attach
    dpdkmode.attach_dpdk(nic, target, lease, ledger, hugepages="0", sysfs=k.sysfs())
    with ledger.transaction() as leases:  # as a crash after the bind leaves it
        held = leases[BDF]
        held.steps = [held.step("bind"), held.step("devnodes")]
        held.steps[1].state = "planned"
        assert held.steps[1].undo["paths"] == ["/dev/vfio/vfio", "/dev/vfio/7"]
    assert dpdkmode.recover_dpdk(ledger.get(BDF), ledger) == "undid bind"
    assert k.driver(BDF) == "virtio-pci" and c.run("ls", "/dev/vfio").stdout.split() == ["7", "vfio"]


def test_killed_after_the_last_step_the_lease_is_not_attached_yet(world, monkeypatch):
    """Through handoff.attach, the kill point after ``devnodes`` (the last step) sees it done and the lease still
    ``attaching``: "attached" comes in a write after it (only when the hook is armed; else with the done mark)."""
    from dpdkeni import handoff, steps as stepsmod
    k, c, cgs = world
    k.add_nic(BDF3, "virtio-net", ifname=None, iommu_group=9)
    os.mknod(k.tree.p("dev/vfio/9"), stat.S_IFCHR | 0o666, os.makedev(1, 9))
    monkeypatch.setenv("DPDKENI_SYSFS_ROOT", k.tree.root)
    monkeypatch.setattr(dpdkmode, "Sysfs", lambda *a, **kw: k.sysfs())
    seen = {}
    monkeypatch.setattr(stepsmod, "test_hook", lambda name: seen.setdefault(name, Ledger().get(BDF3).state))
    monkeypatch.setenv(stepsmod.TEST_KILL_ENV, "devnodes")
    lease = handoff.attach(BDF3, c.target, mode="dpdk", hugepages="0")
    try:
        assert seen == {"bind": "attaching", "devcgroup": "attaching", "devnodes": "attaching"}
        assert lease.state == "attached" and Ledger().get(BDF3).state == "attached"
    finally:
        handoff.release(BDF3)
    assert Ledger().leases() == {} and k.driver(BDF3) == "virtio-pci"


def test_an_unplugged_nics_dpdk_lease_ends_in_the_daemon_and_leaves_nothing(world, state_dir):
    """The daemon's unplug of a DPDK NIC (the device gone from the simulated PCI core): the lease ends through the
    public release path, the container's device nodes and cgroup rules go, the bind record goes, and there is
    no driver to give the device back to (no error for it). No hugepages here (the host's pools stay as they
    are); the lab's tests/vm/test_daemon_vm.py ends a lease with hugepages and a mount the same way."""
    from dpdkeni.daemon import Daemon
    from dpdkeni.driver import remembered
    from dpdkeni.events import Watcher
    from dpdkeni.policy import parse
    k, c, cgs, target, lease, ledger, _, nic = begin(world)
    dpdkmode.attach_dpdk(nic, target, lease, ledger, hugepages="0", driver="vfio-pci", noiommu=False,
                         force=False, dry_run=False, sysfs=k.sysfs())
    ledger.update(BDF, state="attached")
    assert c.run("stat", "-c", "%t:%T", "/dev/vfio/vfio", "/dev/vfio/7").stdout.split() == ["1:5", "1:7"]
    assert probe(cgs, ZERO, "/dev/full") == {ZERO: 0, "/dev/full": 0} and remembered(BDF)
    k.unplug(BDF)
    daemon = Daemon(parse('[[rule]]\nmatch = { pci = "0000:00:04.0" }\ntarget = "pid:1"\n', "t.toml"),
                    watcher=Watcher(source="kernel"), state=state_dir)
    daemon._end_unplugged(nic, BDF)  # what the daemon runs in the NIC's lane for its 'removed'
    assert daemon.decisions == [{"decision": "released", "nic": BDF, "why": "unplugged", "outcome": "gone"}]
    assert daemon.counters.snapshot()["released"] == 1
    assert Ledger().leases() == {} and remembered(BDF) == {}
    assert c.run("ls", "/dev/vfio").stdout.strip() == ""
    assert probe(cgs, NULL, ZERO, "/dev/full") == {NULL: 0, ZERO: errno.EPERM, "/dev/full": errno.EPERM}
