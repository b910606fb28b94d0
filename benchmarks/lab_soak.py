#!/usr/bin/env python3
"""A soak of the policy daemon in the QEMU lab: N plug/unplug cycles of mixed models (virtio-net, e1000, e1000e)
through one ``dpdkeni daemon``, alternating the netdev and the dpdk mode, each NIC hot-plugged from the host,
handed over by the daemon, then unplugged, its lease ended by the daemon.

Per cycle: plug (``device_add``) -> the daemon's ``attached`` -> unplug (``device_del``) -> its ``released``;
the cycle time is that whole span. At the end (and every ``--check-every`` cycles): no lease in the ledger, the
2M hugepage pool as at the start, no hugetlbfs mount and no device node left in the dpdk container, no device rule
of dpdkeni's in its cgroup, no ``*-failed`` decision; the daemon's RSS and open fds after the warm-up and at the
end. Not a timed test: run it under the lab lock, and read the numbers.

    sudo flock /tmp/lab.lock nice -n 10 .venv/bin/python benchmarks/lab_soak.py --cycles 200 [--seconds 3000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any, Dict, List

MODELS = ("virtio-net", "e1000", "e1000e")
POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"
LOG = "/tmp/dk-soak-daemon.log"
TRACE = "/tmp/dk-soak-trace.txt"   # benchmarks/soak_tracemalloc.py writes it (--tracemalloc)
POLICY = """
[[rule]]
name = "soak-netdev"
match = {{ mac = [{netdev}] }}
mode = "netdev"
target = "pid:{netdev_pid}"
ifname = "eth1"
addresses = ["198.18.90.2/24"]

[[rule]]
name = "soak-dpdk"
match = {{ mac = [{dpdk}] }}
mode = "dpdk"
target = "pid:{dpdk_pid}"
hugepages = "32M"
"""
LEASES = "import json; from dpdkeni.ledger import Ledger; print(json.dumps(sorted(Ledger().leases())))"


def _macs(prefix: str, n: int) -> List[str]:
    return [f"52:54:00:{prefix}:00:{i:02x}" for i in range(n)]


def _count(lab: Any, text: str) -> int:
    return int(lab.sh(f"grep -c -- '{text}' {LOG} || true").stdout.strip() or 0)


def _wait_count(lab: Any, text: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _count(lab, text) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{want} x {text!r} not in the daemon's log after {timeout:.0f} s:\n"
                               + lab.sh(f"tail -20 {LOG}").stdout)
        time.sleep(0.2)


def _wait_file_has(lab: Any, path: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while lab.sh(f"grep -c -- '{text}' {path} || true").stdout.strip() in ("", "0"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{text!r} not in {path} after {timeout:.0f} s")
        time.sleep(1)


def _rss_fds(lab: Any, pid: int) -> Dict[str, int]:
    rss = lab.sh(f"awk '/^VmRSS/ {{print $2}}' /proc/{pid}/status").stdout.strip()
    fds = lab.sh(f"ls /proc/{pid}/fd | wc -l").stdout.strip()
    return {"rss_kib": int(rss), "fds": int(fds)}


def _leaks(lab: Any, dpdk_pid: int, cgroup: str, pool: str) -> Dict[str, Any]:
    """What would be left behind: each entry empty (or equal to the start) when nothing leaked."""
    return {"leases": lab.python(LEASES).json(),
            "pool_changed": lab.sh(f"cat {POOL}").stdout.strip() != pool,
            "hugetlbfs": [line for line in lab.sh(f"grep hugetlbfs /proc/{dpdk_pid}/mounts || true").stdout.splitlines()
                          if "size=" in line],
            "dev_nodes": lab.sh(f"nsenter -t {dpdk_pid} -m ls /dev/vfio 2>/dev/null || true").stdout.split(),
            "cgroup_rules": lab.device_rules(cgroup),
            "failed": _count(lab, "-failed: ")}


def soak(cycles: int, seconds: float, check_every: int, warmup: int, trace: bool = False) -> Dict[str, Any]:
    """Boot a lab, run the cycles (bounded by ``seconds`` after boot), return the figures."""
    from dpdkeni.lab import Lab

    out: Dict[str, Any] = {"cycles_asked": cycles, "cycles": [], "checks": []}
    with Lab(progress=lambda m: print(m, file=sys.stderr, flush=True)) as lab:
        netdev_pid = lab.container()
        dpdk_pid, cgroup = lab.cgroup_container("dksoak")
        pool = lab.sh(f"cat {POOL}", check=True).stdout.strip()
        netdev_macs, dpdk_macs = _macs("5a", 8), _macs("5b", 8)
        lab.write("/tmp/dk-soak.toml", POLICY.format(
            netdev=", ".join(f'"{m}"' for m in netdev_macs), dpdk=", ".join(f'"{m}"' for m in dpdk_macs),
            netdev_pid=netdev_pid, dpdk_pid=dpdk_pid))
        daemon = "python3 /opt/dpdkeni/benchmarks/soak_tracemalloc.py" if trace else "python3 -m dpdkeni"
        handle = lab.spawn(["sh", "-c", f"exec {daemon} -v daemon --policy /tmp/dk-soak.toml 2>{LOG}"])
        daemon_pid = lab.pid_of(handle)
        deadline = time.monotonic() + seconds
        try:
            _wait_count(lab, "daemon ready", 1, 120)
            out["start"] = _rss_fds(lab, daemon_pid)
            for i in range(cycles):
                if time.monotonic() > deadline:
                    print(f"time bound reached after {i} cycles", file=sys.stderr)
                    break
                mode = "dpdk" if i % 2 else "netdev"
                model = MODELS[(i // 2) % len(MODELS)]
                mac = (dpdk_macs if mode == "dpdk" else netdev_macs)[(i // 2) % 8]
                t0 = time.monotonic()
                nic = lab.plug(model, mac=mac, wait=False)
                _wait_count(lab, "attached: ", i + 1, 300)
                attached = time.monotonic() - t0
                lab.unplug(nic.id)
                _wait_count(lab, "released: ", i + 1, 300)
                row = {"i": i, "mode": mode, "model": model, "attach_s": round(attached, 2),
                       "cycle_s": round(time.monotonic() - t0, 2)}
                out["cycles"].append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
                if i + 1 == warmup:
                    out["warm"] = _rss_fds(lab, daemon_pid)
                    if trace:
                        lab.sh(f"rm -f {TRACE}; kill -USR2 {daemon_pid}", check=True)
                if check_every and (i + 1) % check_every == 0:
                    out["checks"].append({"after": i + 1, **_leaks(lab, dpdk_pid, cgroup, pool),
                                          **_rss_fds(lab, daemon_pid)})
            out["end"] = _rss_fds(lab, daemon_pid)
            if trace:
                lab.sh(f"kill -USR2 {daemon_pid}", check=True)
                # the snapshot and its comparison take a while on the emulated CPU
                _wait_file_has(lab, TRACE, "since the baseline", 300)
                out["trace"] = lab.sh(f"cat {TRACE}").stdout
            out["fd_kinds"] = lab.sh(f"ls -l /proc/{daemon_pid}/fd | awk 'NR > 1 {{print $NF}}' | "
                                     "sed 's/[0-9][0-9]*/N/g' | sort | uniq -c").stdout.strip()
            out["leaks"] = _leaks(lab, dpdk_pid, cgroup, pool)
            out["released_lines"] = lab.sh(f"grep -- 'released: ' {LOG} | sed 's/.*outcome=//' | sort | uniq -c"
                                           ).stdout.strip()
        finally:
            lab.kill(handle)
            lab.kill(lab.containers.pop(netdev_pid), signal=9)
            lab.kill(lab.containers.pop(dpdk_pid), signal=9)
    return out


def summary(data: Dict[str, Any]) -> str:
    """The soak in a few lines: cycles, cycle times by mode, leaks, RSS and fds."""
    rows = data["cycles"]
    lines = [f"cycles: {len(rows)} of {data['cycles_asked']} asked"]
    for mode in ("netdev", "dpdk"):
        times = [r["cycle_s"] for r in rows if r["mode"] == mode]
        if times:
            q = statistics.quantiles(times, n=10) if len(times) >= 10 else [max(times)] * 9
            lines.append(f"{mode:<7} {len(times):>4} cycles: median {statistics.median(times):.1f} s, "
                         f"p90 {q[8]:.1f} s, max {max(times):.1f} s (plug -> attached median "
                         f"{statistics.median(r['attach_s'] for r in rows if r['mode'] == mode):.1f} s)")
    leaks = data.get("leaks", {})
    lines.append("leaks at the end: " + json.dumps(leaks, sort_keys=True))
    for check in data["checks"]:
        bad = {k: v for k, v in check.items() if k in ("leases", "hugetlbfs", "dev_nodes", "cgroup_rules") and v}
        bad.update({k: check[k] for k in ("pool_changed", "failed") if check[k]})
        lines.append(f"  after {check['after']}: rss {check['rss_kib']} KiB, fds {check['fds']}"
                     + (f", LEFT: {bad}" if bad else ", nothing left"))
    for when in ("start", "warm", "end"):
        if when in data:
            lines.append(f"daemon {when}: RSS {data[when]['rss_kib']} KiB, {data[when]['fds']} fds")
    lines.append("daemon fds by kind at the end: " + " | ".join(" ".join(x.split()) for x in
                                                             data.get("fd_kinds", "").splitlines()))
    lines.append("released outcomes: " + " ".join(data.get("released_lines", "").split()))
    if data.get("trace"):
        lines.append("Python allocations grown between the warm reading and the end (tracemalloc):")
        lines.append(data["trace"].rstrip())
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=3000.0, help="bound on the cycling after boot")
    ap.add_argument("--check-every", type=int, default=25, help="look for leaks every N cycles (0: at the end only)")
    ap.add_argument("--warmup", type=int, default=10, help="cycles before the warm RSS reading")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="run the daemon under tracemalloc and show what grew between the warm reading and the end")
    args = ap.parse_args()
    if not 1 <= args.cycles <= 100000 or args.seconds <= 0:
        print("lab_soak: error: --cycles 1..100000 and --seconds > 0", file=sys.stderr)
        return 2
    data = soak(args.cycles, args.seconds, args.check_every, args.warmup, args.tracemalloc)
    print(json.dumps(data, indent=2) if args.json else summary(data))
    leaks = data.get("leaks", {})
    return 1 if any(leaks.get(k) for k in ("leases", "pool_changed", "hugetlbfs", "dev_nodes", "cgroup_rules",
                                           "failed")) else 0


if __name__ == "__main__":
    sys.exit(main())
