"""Run in the lab guest by tests/vm/test_crash_vm.py (``python3 crashguest.py JSON``): SIGKILL ``dpdkeni`` after
each named step of a dpdk attach or release on one real NIC, run ``dpdkeni recover``, and report the NIC's state
after each case as one JSON document on stdout. Stdlib + dpdkeni only (the guest's python3.11)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from dpdkeni import devcgroup as dc
from dpdkeni.ledger import Ledger

POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def dpdkeni(*args: str, kill_after: str = "") -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("DPDKENI_TEST_KILL_AFTER", None)
    if kill_after:
        env["DPDKENI_TEST_KILL_AFTER"] = kill_after
    return subprocess.run([sys.executable, "-m", "dpdkeni", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def link(path: str) -> str:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return ""


def wait_ifname(pci: str, want: str, timeout: float = 30.0) -> str:
    """The NIC's netdev name once udev (if it renames) is done with it: ``want`` or whatever it is at the end."""
    deadline = time.monotonic() + timeout
    name = ""
    while time.monotonic() < deadline:
        dev = f"/sys/bus/pci/devices/{pci}"
        dirs = [os.path.join(dev, d, "net") for d in os.listdir(dev) if d.startswith("virtio")] + [f"{dev}/net"]
        names = [n for d in dirs if os.path.isdir(d) for n in os.listdir(d)]
        name = names[0] if names else ""
        if name == want:
            return name
        time.sleep(0.1)
    return name


def programs(cgroup: str) -> list:
    """For each device program on ``cgroup``: whether it carries dpdkeni's block, and its rules."""
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        out = []
        for pid_ in dc.query(fd)[1]:
            pfd = dc.prog_fd(pid_)
            try:
                rules, base = dc.split_program(dc.prog_info(pfd).insns)
                out.append({"ours": [r.v1() for r in rules], "base_len": len(base)})
            finally:
                os.close(pfd)
        return out
    finally:
        os.close(fd)


def state(case: dict) -> dict:
    pci, pid = case["pci"], case["pid"]
    mounts = [line for line in read(f"/proc/{pid}/mounts").splitlines() if " hugetlbfs " in line]
    driver = link(f"/sys/bus/pci/devices/{pci}/driver")
    return {"driver": driver,
            "ifname": wait_ifname(pci, case["ifname"]) if driver == case["kernel_driver"] else "",
            "override": read(f"/sys/bus/pci/devices/{pci}/driver_override"),
            "nr_hugepages": int(read(POOL) or -1),
            "hugetlbfs": [m for m in mounts if "size=" in m],
            "devnodes": sorted(os.listdir(f"/proc/{pid}/root/dev/vfio")) if os.path.isdir(
                f"/proc/{pid}/root/dev/vfio") else [],
            "programs": programs(case["cgroup"]),
            "leases": [lease.to_dict() for lease in Ledger().leases().values()]}


def main() -> None:
    case = json.loads(sys.argv[1])
    attach = ["attach", case["pci"], "--to", f"pid:{case['pid']}", "--mode", "dpdk", "--hugepages", "4M"]
    out = {"before": state(case), "cases": []}
    for phase, step in case["steps"]:
        row = {"phase": phase, "step": step}
        if phase == "release":
            ok = dpdkeni(*attach)
            row["attached"] = [ok.returncode, ok.stderr[-500:]]
            row["attached_state"] = state(case)
            killed = dpdkeni("release", case["pci"], kill_after=step)
        else:
            killed = dpdkeni(*attach, kill_after=step)
        row["killed"] = [killed.returncode, killed.stderr[-500:]]
        row["ledger_after_kill"] = [[lease.key, lease.state, [[st.name, st.state] for st in lease.steps]]
                                    for lease in Ledger().leases().values()]
        rec = dpdkeni("recover", "--json")
        row["recover"] = [rec.returncode, rec.stdout, rec.stderr[-500:]]
        row["after"] = state(case)
        out["cases"].append(row)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
