"""Attach+release timed with dpdkeni and with the seed's `ip` sequence, on the same veth stand-in NICs, in one run.

Run as root from a checkout: ``python benchmarks/attach.py [--rounds 30] [--many 128]``. It makes its own veth
pairs and stand-in containers (processes in their own net+mount namespaces) and removes them; the ledger lives
on tmpfs under /run for the run. Prints a table with the ratio, and the time to hand 128 NICs to 128 containers.
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


def kernel_move(nic: str, pid: int) -> Callable[[], None]:
    """The floor: only the kernel's part of an attach, one RTM_NEWLINK moving+renaming the link, and back."""
    from pyroute2 import IPRoute
    from dpdkeni import netns

    def there() -> None:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=nic)[0], net_ns_fd=fd, ifname="eth0")
        os.close(fd)

    def back() -> None:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
        with netns.iproute_in(fd) as tip:
            own = netns.open_root()
            tip.link("set", index=tip.link_lookup(ifname="eth0")[0], net_ns_fd=own, ifname=nic)
            os.close(own)
        os.close(fd)

    return there, back


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
        there, back = kernel_move(nic, pid)
        res["kernel"]["attach"].append(_timed(there))
        res["kernel"]["release"].append(_timed(back))
    return res


def run_many(nics: List[str], pids: List[int]) -> Dict[str, float]:
    from dpdkeni import handoff
    t = time.perf_counter()
    for i, (nic, pid) in enumerate(zip(nics, pids)):
        handoff.attach(nic, f"pid:{pid}", addresses=[f"198.18.{i // 200}.{i % 200 + 2}/16"])
    attach_s = time.perf_counter() - t
    t = time.perf_counter()
    for nic in nics:
        handoff.release(nic)
    return {"attach_s": attach_s, "release_s": time.perf_counter() - t}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--many", type=int, default=128)
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
        many = run_many(names[:args.many], [p.pid for p in procs[1:]])
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
        rows.append((what, statistics.median(d), _pct(d, 0.9), statistics.median(i), _pct(i, 0.9),
                     statistics.median(i) / statistics.median(d), statistics.median(k)))
    if args.json:
        json.dump({"rows": rows, "many": {"n": args.many, **many}}, sys.stdout, indent=2)
        print()
        return 0
    print(f"{'per NIC, ms':<12} {'dpdkeni p50':>12} {'p90':>8} {'ip p50':>10} {'p90':>8} {'ip / dpdkeni':>13}"
          f" {'kernel move p50':>16}")
    for what, dp50, dp90, ip50, ip90, ratio, k50 in rows:
        print(f"{what:<12} {dp50:>12.2f} {dp90:>8.2f} {ip50:>10.2f} {ip90:>8.2f} {ratio:>12.1f}x {k50:>16.2f}")
    print("kernel move = one RTM_NEWLINK (move+rename) alone: the floor under both, spent in the kernel")
    print(f"{args.rounds} rounds on the same {min(4, len(names))} veth stand-ins, ledger on tmpfs ({state})")
    print(f"{args.many} NICs into {args.many} containers: attach {many['attach_s']:.2f} s, "
          f"release {many['release_s']:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
