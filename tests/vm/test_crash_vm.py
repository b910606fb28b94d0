"""Crash safety on real devices, in the QEMU lab guest: ``dpdkeni`` SIGKILLed after each step of a dpdk attach and
of its release (``DPDKENI_TEST_KILL_AFTER``) on a hot-plugged virtio-net bound to vfio-pci behind the vIOMMU,
then ``dpdkeni recover``: the NIC is back on virtio-pci under its name, the hugepage pool as it was, no
hugetlbfs mount and no device node left in the container, and the container cgroup's device program is the
runtime's again, without dpdkeni's block. One NIC and one container serve every case (tests/vm/crashguest.py
runs the cases inside the guest, so each costs two dpdkeni runs, not a dozen agent round trips)."""
from __future__ import annotations

import json

import pytest

from dpdkeni import dpdkmode

pytestmark = pytest.mark.vm

GUEST_SCRIPT = "/opt/dpdkeni/tests/vm/crashguest.py"
POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
BASE_PAGES = 3   # a pool that is not empty, so that shrinking it twice shows

@pytest.fixture
def hugepage_pool(lab):
    """The guest's 2M pool set to BASE_PAGES for the test, and put back as it was after."""
    before = lab.sh(f"cat {POOL}", check=True).stdout.strip()
    lab.sh(f"echo {BASE_PAGES} > {POOL}", check=True)
    yield BASE_PAGES
    lab.sh(f"echo {before} > {POOL}")


def test_sigkill_after_every_dpdk_step_then_recover(lab, plugged, cgroup_container, hugepage_pool):
    nic = plugged("virtio-net")
    pid, cgroup = cgroup_container
    steps = [["attach", s] for s in dpdkmode.ATTACH_STEPS] + [["release", s] for s in dpdkmode.RELEASE_STEPS]
    case = {"pci": nic.pci, "ifname": nic.ifname, "pid": pid, "cgroup": cgroup, "steps": steps,
            "kernel_driver": "virtio-pci"}
    out = lab.run(["python3", GUEST_SCRIPT, json.dumps(case)], timeout=900).check().json()
    before = out["before"]
    assert before == {"driver": "virtio-pci", "ifname": nic.ifname, "override": "(null)",
                      "nr_hugepages": BASE_PAGES, "hugetlbfs": [], "devnodes": [],
                      "programs": [{"ours": [], "base_len": before["programs"][0]["base_len"]}], "leases": []}
    assert [[row["phase"], row["step"]] for row in out["cases"]] == steps
    for row in out["cases"]:
        where = f"{row['phase']} killed after {row['step']}"
        if row["phase"] == "release":  # a real attach first, with everything in place
            assert row["attached"][0] == 0, (where, row["attached"])
            got = row["attached_state"]
            assert (got["driver"], got["nr_hugepages"], len(got["hugetlbfs"]), len(got["devnodes"]),
                    len(got["programs"][0]["ours"])) == ("vfio-pci", BASE_PAGES + 2, 1, 2, 2), (where, got)
        assert row["killed"][0] == -9, (where, row["killed"])
        # the kill left a half-done lease behind, with the step it was killed after recorded
        [(key, state, recorded)] = row["ledger_after_kill"]
        assert key == nic.pci and state == ("attaching" if row["phase"] == "attach" else "releasing"), (where, row)
        name = row["step"].replace("undo-", "")
        assert [name, "done" if row["phase"] == "attach" else "undone"] in recorded, (where, recorded)
        assert row["recover"][0] == 0, (where, row["recover"])
        assert [(a["key"], a["action"]) for a in json.loads(row["recover"][1])] == [(nic.pci, "dpdk")], where
        assert row["after"] == before, (where, row["after"])


LINK = """
import json, sys
from pyroute2 import IPRoute
with IPRoute() as ipr:
    for link in ipr.get_links():
        if link.get_attr("IFLA_ADDRESS") == sys.argv[1]:
            print(json.dumps({"ifname": link.get_attr("IFLA_IFNAME"), "mtu": link.get_attr("IFLA_MTU"),
                              "up": bool(link["flags"] & 1),
                              "addresses": [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=link["index"])
                                            if a["family"] == 2]}))
"""


def test_sigkill_after_restore_then_recover(lab, plugged):
    """netdev mode: the container dies, its NIC falls back into the guest's root namespace under the container's
    name; a release killed right after ``restore`` (the NIC renamed home and its settings back) is finished by
    ``recover``: the original name and MTU, down, no address, no lease."""
    nic = plugged("virtio-net")
    lab.run(["ip", "link", "set", nic.ifname, "mtu", "1400"], check=True)
    before = lab.run(["python3", "-c", LINK, nic.mac], check=True).json()
    assert before == {"ifname": nic.ifname, "mtu": 1400, "up": False, "addresses": []}
    pid = lab.container()
    try:
        out = lab.dpdkeni("attach", nic.mac, "--to", f"pid:{pid}", "--ifname", "eth0", "--mtu", "1500",
                          "--address", "198.18.77.2/24")
        assert out.rc == 0, out.stderr
    finally:
        lab.kill(lab.containers.pop(pid), signal=9)
    # the netns dies with its last process; the kernel moves the NIC home under the name it had inside
    lab.sh(f"until ip -o link | grep -q {nic.mac}; do sleep 0.1; done", timeout=60, check=True)
    home = lab.run(["python3", "-c", LINK, nic.mac], check=True).json()
    assert home["ifname"] == "eth0", home
    killed = lab.run(["python3", "-m", "dpdkeni", "release", nic.mac],
                     env={"DPDKENI_TEST_KILL_AFTER": "restore"}, timeout=120)
    assert killed.rc == -9, (killed.rc, killed.stderr)
    leases = lab.dpdkeni("leases", "--json", check=True).json()
    assert [(x["state"], [s["name"] for s in x["steps"]][-1]) for x in leases] == [("releasing", "restore")]
    rec = lab.dpdkeni("recover", "--json", check=True).json()
    assert [(a["action"], a["detail"]) for a in rec] == [("released", "reclaimed")], rec
    assert lab.run(["python3", "-c", LINK, nic.mac], check=True).json() == before
    assert lab.dpdkeni("leases", "--json", check=True).json() == []
