"""Guards on real objects in the QEMU lab guest: a process holding a NIC's ``/dev/uioN``, a NIC that is a port of
a bond and of a bridge (the same ``master`` link, from two drivers), and cgroup v2 device
programs dpdkeni must not edit (one that uses a BPF map, one attached to an ancestor cgroup). Each refusal names
its reason and leaves the NIC on its kernel driver under its name."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.vm

HOLD = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
print("HELD", flush=True)
time.sleep(600)
"""

# the runtime's device program on a cgroup, attached with ALLOW_MULTI: "allow" is r0 = 1; "map" also loads a
# BPF array map's address into r1 (a ld_imm64 with BPF_PSEUDO_MAP_FD), as programs that keep rules in maps do
PROGRAM = """
import os, struct, sys
from dpdkeni import bpfsys, devcgroup as dc
cg, kind = sys.argv[1], sys.argv[2]
code = bpfsys.return_const(1)
if kind == "map":
    map_fd, _ = bpfsys.call(0, struct.pack("<IIII", 2, 4, 4, 1), "map create")  # BPF_MAP_TYPE_ARRAY
    code = bpfsys.insn(0x18, 1, 1, imm=map_fd) + bpfsys.insn(0) + code
cfd = os.open(cg, os.O_RDONLY | os.O_DIRECTORY)
dc.attach(cfd, dc.load(code, "runtime_dev"), dc.BPF_F_ALLOW_MULTI)
print(dc.query(cfd)[1])
"""


def _driver(lab, pci):
    return lab.sh(f"basename $(readlink /sys/bus/pci/devices/{pci}/driver) 2>/dev/null").stdout.strip() or None


def _ifname(lab, pci):
    return lab.sh(f"ls /sys/bus/pci/devices/{pci}/net /sys/bus/pci/devices/{pci}/virtio*/net 2>/dev/null "
                  "| grep -v : | head -1").stdout.strip() or None


def _refused_as_port_of(lab, nic, kernel_driver: str, master: str, make: str, driver: str) -> None:
    """Enslave ``nic`` to a new ``master`` (``make`` creates it); binding it to ``driver`` is refused (exit 3) and
    the NIC stays on its kernel driver under its name; the master is deleted after."""
    lab.sh(f"{make} && ip link set {nic.ifname} down && ip link set {nic.ifname} master {master}", check=True)
    try:
        assert lab.sh(f"basename $(readlink /sys/class/net/{nic.ifname}/master)").stdout.strip() == master
        out = lab.dpdkeni("bind", nic.pci, "--driver", driver)
        assert out.rc == 3, out.stderr
        assert f"{nic.pci} ({nic.ifname}) is busy: it is a port of {master}" in out.stderr, out.stderr
        assert (_driver(lab, nic.pci), _ifname(lab, nic.pci)) == (kernel_driver, nic.ifname)
    finally:
        lab.sh(f"ip link del {master}", check=True)


def test_bind_refuses_a_bond_port(lab, plugged):
    lab.sh("modprobe bonding max_bonds=0", check=True)
    _refused_as_port_of(lab, plugged("e1000e"), "e1000e", "dkbond0", "ip link add dkbond0 type bond mode active-backup",
                        "vfio-pci")


def test_bind_refuses_a_bridge_port_and_a_held_uio_node(lab, plugged):
    nic = plugged("e1000")
    _refused_as_port_of(lab, nic, "e1000", "dkbr0", "ip link add dkbr0 type bridge", "uio_pci_generic")
    lab.sh(f"ip link set {nic.ifname} up", check=True)
    lab.sh("modprobe uio_pci_generic && modprobe vfio-pci", check=True)
    assert lab.dpdkeni("bind", nic.pci, "--driver", "uio_pci_generic").rc == 0
    uio = lab.sh(f"ls /sys/bus/pci/devices/{nic.pci}/uio", check=True).stdout.strip()
    holder = lab.spawn(["python3", "-c", HOLD, f"/dev/{uio}"])
    try:
        lab.wait(holder, timeout=60, until="HELD")
        out = lab.dpdkeni("bind", nic.pci, "--driver", "vfio-pci")
        assert out.rc == 3, out.stderr
        assert f"{nic.pci} is held by python3[{lab.pid_of(holder)}] (it has the device node open)" in out.stderr, \
            out.stderr
        assert _driver(lab, nic.pci) == "uio_pci_generic"
    finally:
        lab.kill(holder, signal=9)
    back = lab.dpdkeni("unbind", nic.pci)
    assert back.rc == 0, back.stderr
    assert (_driver(lab, nic.pci), _ifname(lab, nic.pci)) == ("e1000", nic.ifname)


def test_dpdk_attach_leaves_device_programs_it_cannot_edit(lab, plugged):
    """A container whose cgroup's device program uses a map, then one whose parent cgroup carries the program:
    the devcgroup step fails with the reason (exit 1), everything before it is undone, and the programs are
    exactly as they were."""
    nic = plugged("virtio-net")
    lab.sh("modprobe vfio-pci", check=True)
    pid = lab.container()
    parent = f"/sys/fs/cgroup/dkguard{pid}"
    child = f"{parent}/ctr"
    try:
        lab.sh(f"mkdir -p {child} && echo {pid} > {child}/cgroup.procs", check=True)
        cases = [(child, "map", "uses 1 BPF map(s)"),
                 (parent, "allow", f"a device program on an ancestor of {child} also decides access")]
        for where, kind, reason in cases:
            before = lab.run(["python3", "-c", PROGRAM, where, kind], check=True).stdout.strip()
            out = lab.dpdkeni("attach", nic.pci, "--to", f"pid:{pid}", "--mode", "dpdk", "--hugepages", "0")
            assert out.rc == 1 and "devcgroup" in out.stderr and reason in out.stderr, (kind, out.stderr)
            assert (_driver(lab, nic.pci), _ifname(lab, nic.pci)) == ("virtio-pci", nic.ifname), kind
            assert lab.dpdkeni("leases", "--json", check=True).json() == []
            now = lab.run(["python3", "-c", "import os, sys; from dpdkeni import devcgroup as dc; "
                           "print(dc.query(os.open(sys.argv[1], os.O_RDONLY))[1])", where], check=True)
            assert now.stdout.strip() == before.splitlines()[-1], kind  # the same program, not replaced
            lab.sh(f"echo {pid} > /sys/fs/cgroup/cgroup.procs; rmdir {child} {parent}; "
                   f"mkdir -p {child} && echo {pid} > {child}/cgroup.procs", check=True)  # a fresh pair
    finally:
        lab.kill(lab.containers.pop(pid), signal=9)
        lab.sh(f"rmdir {child} {parent}")
