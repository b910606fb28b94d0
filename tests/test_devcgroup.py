"""Real device cgroups on this host: v1 (devices controller) and v2 (BPF_PROG_TYPE_CGROUP_DEVICE programs on
the unified hierarchy). A probe process moves itself into the test's cgroup and opens device nodes; /dev/null,
/dev/zero and /dev/full stand in for /dev/vfio/vfio and /dev/vfio/N, which this host does not have."""
import errno
import os
import subprocess
import sys

import pytest

from conftest import unique
from dpdkeni import devcgroup as dc
from dpdkeni.errors import Error

V1 = "/sys/fs/cgroup/devices"
V2 = next((p for p in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup") if os.path.exists(f"{p}/cgroup.procs")
           and os.path.exists(f"{p}/cgroup.controllers")), None)
NULL, ZERO, FULL = "/dev/null", "/dev/zero", "/dev/full"
PROBE = """
import os, sys
for procs in sys.argv[1].split(","):
    with open(procs, "w") as f:
        f.write(str(os.getpid()))
for path in sys.argv[2:]:
    try:
        os.close(os.open(path, os.O_RDWR))
        print(path, 0)
    except OSError as exc:
        print(path, exc.errno)
"""


def probe(cgroups, *paths):
    """Open each path read-write from a process inside ``cgroups``: path -> 0 or errno."""
    out = subprocess.run([sys.executable, "-c", PROBE, ",".join(f"{c}/cgroup.procs" for c in cgroups), *paths],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return {line.split()[0]: int(line.split()[1]) for line in out.splitlines()}


@pytest.fixture
def v1_cgroup():
    if not os.path.exists(f"{V1}/devices.allow"):
        pytest.skip("no cgroup v1 devices controller")
    path = f"{V1}/{unique('dkdev')}"
    os.mkdir(path)
    try:
        with open(f"{path}/devices.deny", "w") as f:
            f.write("a")  # what a runtime does: deny all, then allow its list
        with open(f"{path}/devices.allow", "w") as f:
            f.write("c 1:3 rwm")  # the runtime allowed /dev/null
        yield path
    finally:
        os.rmdir(path)


@pytest.fixture
def v2_cgroup():
    if V2 is None:
        pytest.skip("no cgroup v2 hierarchy")
    path = f"{V2}/{unique('dkdev')}"
    os.mkdir(path)
    try:
        yield path
    finally:
        fd = os.open(path, os.O_RDONLY)
        for pid in dc.query(fd)[1]:
            pfd = dc.prog_fd(pid)
            dc.detach(fd, pfd)
            os.close(pfd)
        os.close(fd)
        os.rmdir(path)


def runtime_program(cgroup, allowed, flags=dc.BPF_F_ALLOW_MULTI, extra=b""):
    """Attach what a runtime would: allow ``allowed``, deny everything else."""
    code = dc.rule_checks(allowed) + extra + dc.insn(0xB7, 0, imm=0) + dc.insn(0x95)
    fd, cfd = dc.load(code, "runtime"), os.open(cgroup, os.O_RDONLY)
    try:
        dc.attach(cfd, fd, flags)
    finally:
        os.close(fd)
        os.close(cfd)


def test_v1_allow_then_revoke(v1_cgroup):
    assert probe([v1_cgroup], NULL, ZERO) == {NULL: 0, ZERO: errno.EPERM}
    added = dc.allow_v1(v1_cgroup, [dc.rule_for(ZERO), dc.rule_for(NULL)])
    assert added == ["c 1:5 rw"]  # /dev/null was already allowed: not ours to add, nor to revoke
    assert probe([v1_cgroup], NULL, ZERO, FULL) == {NULL: 0, ZERO: 0, FULL: errno.EPERM}
    assert "c 1:5 rw" in open(f"{v1_cgroup}/devices.list").read()  # rw, never m
    dc.revoke_v1(v1_cgroup, added)
    assert probe([v1_cgroup], NULL, ZERO) == {NULL: 0, ZERO: errno.EPERM}


def test_v2_keeps_the_runtime_rules_adds_ours_and_revokes(v2_cgroup):
    runtime_program(v2_cgroup, [dc.rule_for(NULL)])
    assert probe([v2_cgroup], NULL, ZERO, FULL) == {NULL: 0, ZERO: errno.EPERM, FULL: errno.EPERM}
    assert dc.allow_v2(v2_cgroup, [dc.rule_for(ZERO)]) == "replaced"
    assert probe([v2_cgroup], NULL, ZERO, FULL) == {NULL: 0, ZERO: 0, FULL: errno.EPERM}
    fd = os.open(v2_cgroup, os.O_RDONLY)
    assert len(dc.query(fd)[1]) == 1  # replaced, not stacked
    os.close(fd)
    dc.allow_v2(v2_cgroup, [dc.rule_for(FULL)])  # a second NIC: both rules kept
    assert probe([v2_cgroup], NULL, ZERO, FULL) == {NULL: 0, ZERO: 0, FULL: 0}
    dc.revoke_v2(v2_cgroup, [dc.rule_for(ZERO), dc.rule_for(FULL)])
    assert probe([v2_cgroup], NULL, ZERO, FULL) == {NULL: 0, ZERO: errno.EPERM, FULL: errno.EPERM}


def test_v2_read_access_only_when_rule_is_r(v2_cgroup):
    runtime_program(v2_cgroup, [], flags=0)  # a single non-multi program, deny all
    dc.allow_v2(v2_cgroup, [dc.Rule("c", 1, 5, "r")])
    code = "import os\ntry:\n os.open('/dev/zero', os.O_RDWR)\nexcept OSError as e: print(e.errno)\n" \
           "os.open('/dev/zero', os.O_RDONLY); print('read ok')"
    out = subprocess.run([sys.executable, "-c", f"open('{v2_cgroup}/cgroup.procs','w').write(str(__import__('os')"
                          f".getpid()))\n" + code], capture_output=True, text=True, timeout=30).stdout.split()
    assert out == [str(errno.EPERM), "read", "ok"]


def test_v2_without_a_program_is_unrestricted_and_says_so(v2_cgroup, caplog):
    assert dc.allow_v2(v2_cgroup, [dc.rule_for(ZERO)]) == "unrestricted"
    assert "not restricted" in caplog.text
    fd = os.open(v2_cgroup, os.O_RDONLY)
    assert dc.query(fd)[1] == []  # nothing attached by us
    os.close(fd)


def test_v2_refuses_a_program_it_cannot_reuse(v2_cgroup):
    call = dc.insn(0x85, imm=15)  # bpf_get_current_uid_gid: a helper call
    runtime_program(v2_cgroup, [dc.rule_for(NULL)], extra=call)
    with pytest.raises(Error, match="calls helpers"):
        dc.allow_v2(v2_cgroup, [dc.rule_for(ZERO)])
    assert probe([v2_cgroup], ZERO) == {ZERO: errno.EPERM}  # unchanged


def test_allow_and_revoke_by_pid_on_both_hierarchies(v1_cgroup, v2_cgroup, container_factory):
    c = container_factory()
    for cg in (v1_cgroup, v2_cgroup):
        with open(f"{cg}/cgroup.procs", "w") as f:
            f.write(str(c.pid))
    runtime_program(v2_cgroup, [dc.rule_for(NULL)])
    assert dc.cgroup_dirs(c.pid) == {"v1": v1_cgroup, "v2": v2_cgroup}
    record = dc.allow(c.pid, [dc.rule_for(ZERO)])
    assert record["v1"]["added"] == ["c 1:5 rw"] and record["v2"]["state"] == "replaced"
    assert probe([v1_cgroup, v2_cgroup], NULL, ZERO, FULL) == {NULL: 0, ZERO: 0, FULL: errno.EPERM}
    dc.revoke(record)
    assert probe([v1_cgroup, v2_cgroup], NULL, ZERO) == {NULL: 0, ZERO: errno.EPERM}
    c.kill()  # the cgroups must be empty for rmdir
    for cg in (v1_cgroup, v2_cgroup):
        with open(f"{cg}/cgroup.procs") as f:
            assert f.read().strip() == ""


def test_device_nodes_in_the_container_with_noiommu_naming(container_factory):
    c = container_factory()
    assert c.run("mount", "-t", "tmpfs", "tmpfs", "/dev").returncode == 0  # a private /dev, as runtimes give
    assert dc.container_path("/dev/vfio/noiommu-7") == "/dev/vfio/7"
    assert dc.container_path("/dev/vfio/7") == "/dev/vfio/7"
    nodes = [("/dev/vfio/vfio", dc.rule_for(ZERO)), (dc.container_path("/dev/vfio/noiommu-7"), dc.rule_for(FULL))]
    made = dc.make_nodes(c.pid, nodes)
    assert made == ["/dev/vfio/vfio", "/dev/vfio/7"]
    out = c.run("stat", "-c", "%F %t:%T %a", "/dev/vfio/vfio", "/dev/vfio/7")
    assert out.stdout.split("\n")[:2] == ["character special file 1:5 666", "character special file 1:7 666"]
    assert not os.path.exists("/dev/vfio/7")  # only inside the container
    assert dc.make_nodes(c.pid, nodes) == []  # already there with the same numbers
    dc.remove_nodes(c.pid, made)
    assert c.run("ls", "/dev/vfio").stdout.strip() == ""
