"""Run in the lab guest by tests/vm/test_crash_vm.py (``python3 crashguest.py JSON``): SIGKILL ``dpdkeni`` after
each named step of a dpdk attach or release on one real NIC, run ``dpdkeni recover``, and report the NIC's state
after each case as one JSON document on stdout. Stdlib + dpdkeni only (the guest's python3.11)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from dpdkeni import cli, devcgroup as dc, dpdkmode, handoff  # noqa: F401  (imported once, before the forks)
from dpdkeni.ledger import Ledger

KILL = "DPDKENI_TEST_KILL_AFTER"

POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def dpdkeni(*args: str, kill_after: str = "") -> subprocess.CompletedProcess:
    """``dpdkeni ARGS`` in a child process forked from this one (the library already imported: under TCG a fresh
    ``python3 -m dpdkeni`` spends seconds importing), with the kill hook set; its exit status (-9 when the hook
    killed it), stdout and stderr."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        pid = os.fork()
        if pid == 0:  # the child: the dpdkeni command, as the CLI runs it
            code = 70
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                os.environ.pop(KILL, None)
                if kill_after:
                    os.environ[KILL] = kill_after
                code = cli.main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(args, rc, out.read(), err.read())


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
            "leases": [lease.to_dict() for lease in Ledger().leases().values() if lease.key == pci]}


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
                                    for lease in Ledger().leases().values() if lease.key == case["pci"]]
        rec = dpdkeni("recover", "--json")
        row["recover"] = [rec.returncode, rec.stdout, rec.stderr[-500:]]
        row["after"] = state(case)
        out["cases"].append(row)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
