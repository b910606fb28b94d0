"""Attach+release timed with dpdkeni, the seed's `ip` sequence and the bare kernel move, on the same veth stand-ins.

Run as root from a checkout: ``python benchmarks/attach.py [--rounds 30] [--many 128] [--workers 4]``. It makes its
own veth pairs and stand-in containers (processes in their own net+mount namespaces) and removes them; the ledger
lives on tmpfs under /run for the run. Prints per-NIC p50/p90 with the ratios, then the totals for 128 NICs into
128 containers: dpdkeni's batch API (``attach_many``), dpdkeni one call at a time, the `ip` sequence one NIC at a
time, and the bare kernel moves back to back (the floor: the kernel moves one device at a time under RTNL).
``benchmarks/move_trace.py`` shows where the kernel spends a move.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TAG = f"dkb{os.getpid() % 10000}"


def _container() -> subprocess.Popen:
    proc = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sleep", "600"],
                            stdin=subprocess.DEVNULL)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            if os.readlink(f"/proc/{proc.pid}/ns/net") != os.readlink("/proc/self/ns/net") and \
                    os.readlink(f"/proc/{proc.pid}/exe").endswith("sleep"):
                return proc
        except OSError:
            pass
        time.sleep(0.005)
    proc.kill()
    raise RuntimeError("stand-in container did not start")


def _veths(n: int) -> List[str]:
    from pyroute2 import IPRoute
    names = []
    with IPRoute() as ipr:
        for i in range(n):
            a = f"{TAG}v{i}"
            ipr.link("add", ifname=a, kind="veth", peer=f"{TAG}p{i}")
            ipr.link("set", index=ipr.link_lookup(ifname=a)[0], mtu=1400)
            names.append(a)
    return names


def _cleanup(names: List[str]) -> None:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for name in names:
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)


def _ip(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def ip_attach(nic: str, pid: int, addr: str) -> None:
    """The seed's sequence: move, rename, up, address (four `ip` processes)."""
    _ip("ip", "link", "set", nic, "netns", str(pid))
    _ip("nsenter", "-t", str(pid), "-n", "ip", "link", "set", nic, "name", "eth0")
    _ip("nsenter", "-t", str(pid), "-n", "ip", "link", "set", "eth0", "up")
    _ip("nsenter", "-t", str(pid), "-n", "ip", "addr", "add", addr, "dev", "eth0")


def ip_release(nic: str, pid: int) -> None:
    _ip("nsenter", "-t", str(pid), "-n", "ip", "link", "set", "eth0", "down")
    _ip("nsenter", "-t", str(pid), "-n", "ip", "link", "set", "eth0", "netns", str(os.getpid()), "name", nic)


def _timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def _pct(xs: List[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


class KernelMove:
    """The floor: only the kernel's part of an attach, one RTM_NEWLINK moving+renaming the link (and one moving it
    back). Sockets, fds and indexes are ready before the clock starts, so only that request is timed."""

    def __init__(self, nic: str, pid: int) -> None:
        from pyroute2 import IPRoute
        from dpdkeni import netns
        self.nic = nic
        self.tfd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        self.own = netns.open_root()
        self.root = IPRoute()
        self.tip = netns.iproute_in(self.tfd)
        self.index = self.root.link_lookup(ifname=nic)[0]

    def there(self) -> None:
        self.root.link("set", index=self.index, net_ns_fd=self.tfd, ifname="eth0")

    def back(self) -> None:
        self.tip.link("set", index=self.index, net_ns_fd=self.own, ifname=self.nic)

    def close(self) -> None:
        self.root.close()
        self.tip.close()
        os.close(self.tfd)
        os.close(self.own)


def run_pair(nics: List[str], pid: int, rounds: int) -> Dict[str, Dict[str, List[float]]]:
    from dpdkeni import handoff
    res: Dict[str, Dict[str, List[float]]] = {"dpdkeni": {"attach": [], "release": []},
                                               "ip": {"attach": [], "release": []},
                                               "kernel": {"attach": [], "release": []}}
    for r in range(rounds):
        nic = nics[r % len(nics)]
        addr = f"198.18.{r % 200}.2/24"
        res["dpdkeni"]["attach"].append(_timed(lambda: handoff.attach(nic, f"pid:{pid}", addresses=[addr])))
        res["dpdkeni"]["release"].append(_timed(lambda: handoff.release(nic)))
        res["ip"]["attach"].append(_timed(lambda: ip_attach(nic, pid, addr)))
        res["ip"]["release"].append(_timed(lambda: ip_release(nic, pid)))
        move = KernelMove(nic, pid)  # the index survives the moves: the target has no link with that index
        res["kernel"]["attach"].append(_timed(move.there))
        res["kernel"]["release"].append(_timed(move.back))
        move.close()
    return res


def _timed_s(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _addr(i: int) -> str:
    return f"198.18.{i // 200}.{i % 200 + 2}/16"


def _check(results: List[object]) -> None:
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(results)} failed, first: {errors[0]}")


def run_many(nics: List[str], pids: List[int], workers: int) -> Dict[str, float]:
    """The many-NICs totals (seconds): batch API, one call at a time, the `ip` sequence, bare kernel moves."""
    from dpdkeni import handoff
    out: Dict[str, float] = {}
    reqs = [{"nic": nic, "target": f"pid:{pid}", "addresses": [_addr(i)]} for i, (nic, pid) in enumerate(zip(nics, pids))]
    out["batch_attach"] = _timed_s(lambda: _check(handoff.attach_many(reqs, workers=workers)))
    out["batch_release"] = _timed_s(lambda: _check(handoff.release_many(nics, workers=workers)))
    out["loop_attach"] = _timed_s(lambda: [handoff.attach(**r) for r in reqs])
    out["loop_release"] = _timed_s(lambda: [handoff.release(nic) for nic in nics])
    out["ip_attach"] = _timed_s(lambda: [ip_attach(nic, pid, _addr(i)) for i, (nic, pid) in enumerate(zip(nics, pids))])
    out["ip_release"] = _timed_s(lambda: [ip_release(nic, pid) for nic, pid in zip(nics, pids)])
    moves = [KernelMove(nic, pid) for nic, pid in zip(nics, pids)]
    out["kernel_attach"] = _timed_s(lambda: [m.there() for m in moves])
    out["kernel_release"] = _timed_s(lambda: [m.back() for m in moves])
    for m in moves:
        m.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--many", type=int, default=128)
    ap.add_argument("--workers", type=int, default=4, help="threads of attach_many/release_many")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    state = tempfile.mkdtemp(prefix="dpdkeni-bench-", dir="/run")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", state], check=True)
    models = os.path.join(state, "models.json")
    with open(models, "w") as f:
        json.dump({"model": [], "virtual_kinds": ["veth"]}, f)
    os.environ.update(DPDKENI_STATE_DIR=state, DPDKENI_MODELS=models)
    procs: List[subprocess.Popen] = []
    names: List[str] = []
    try:
        names = _veths(max(args.many, 4))
        procs.append(_container())
        pair = run_pair(names[:4], procs[0].pid, args.rounds)
        procs += [_container() for _ in range(args.many)]
        many = run_many(names[:args.many], [p.pid for p in procs[1:]], args.workers) if args.many else {}
    finally:
        for p in procs:
            p.kill()
            p.wait()
        _cleanup(names)
        subprocess.run(["umount", state], check=False)
        shutil.rmtree(state, ignore_errors=True)
    rows = []
    for what in ("attach", "release"):
        d, i, k = pair["dpdkeni"][what], pair["ip"][what], pair["kernel"][what]
        rows.append({"op": what, "dpdkeni_p50": statistics.median(d), "dpdkeni_p90": _pct(d, 0.9),
                     "ip_p50": statistics.median(i), "ip_p90": _pct(i, 0.9),
                     "kernel_p50": statistics.median(k), "kernel_p90": _pct(k, 0.9)})
    if args.json:
        json.dump({"rows": rows, "many": {"n": args.many, "workers": args.workers, **many}}, sys.stdout, indent=2)
        print()
        return 0
    print(f"per NIC, ms  {'dpdkeni p50':>11} {'p90':>6} {'ip p50':>7} {'p90':>6} {'kernel p50':>10} {'p90':>6}"
          f" {'ip/dpdkeni':>10} {'dpdkeni-kernel':>14}")
    for r in rows:
        print(f"{r['op']:<12} {r['dpdkeni_p50']:>11.2f} {r['dpdkeni_p90']:>6.2f} {r['ip_p50']:>7.2f} {r['ip_p90']:>6.2f}"
              f" {r['kernel_p50']:>10.2f} {r['kernel_p90']:>6.2f} {r['ip_p50'] / r['dpdkeni_p50']:>9.2f}x"
              f" {r['dpdkeni_p50'] - r['kernel_p50']:>11.2f} ms")
    print("kernel = one RTM_NEWLINK moving+renaming the link, nothing else: the floor under both (see move_trace.py)")
    print(f"{args.rounds} rounds on the same {min(4, len(names))} veth stand-ins, ledger on tmpfs")
    if many:
        n = args.many
        print(f"\n{n} NICs into {n} containers, s      attach  release  attach/NIC ms  attach vs batch")
        for label, key in ((f"dpdkeni attach_many ({args.workers} threads)", "batch"),
                           ("dpdkeni attach, one at a time", "loop"), ("ip sequence, one at a time", "ip"),
                           ("bare kernel moves (floor)", "kernel")):
            a, r = many[f"{key}_attach"], many[f"{key}_release"]
            print(f"{label:<37} {a:>6.2f} {r:>8.2f} {a / n * 1000:>14.1f} {a / many['batch_attach']:>15.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
