#!/usr/bin/env python3
"""ADD+DEL latency of dpdkeni-cni beside host-device, on the same stand-in NICs, in the same run.

dpdkeni-cni runs twice per round: on its own (``dpdkeni-cni``: Python start-up and imports on every call) and
as the thin client of ``dpdkeni cni serve`` (``dpdkeni-cni+serve``: the call is handed to the resident server,
whose CPU for the call is counted in the CPU column).

The reference is Debian's ``host-device`` from the ``containernetworking-plugins`` package (the Go build of the
public containernetworking/plugins source). Each round makes one veth pair and one named netns, then runs
ADD+DEL of host-device and of dpdkeni-cni on that same veth end, in each of the six orders in turn, both with
host-local IPAM. Each plugin is driven as a runtime does: environment + configuration on stdin, a subprocess.

    sudo .venv/bin/python benchmarks/cni.py [--rounds 15] [--seconds 60] [--json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Tuple

import psutil

from pyroute2 import IPRoute, netns

from dpdkeni.ledger import Ledger

HOST_DEVICE = "/usr/lib/cni/host-device"
DPDKENI_CNI = shutil.which("dpdkeni-cni") or os.path.join(os.path.dirname(sys.executable), "dpdkeni-cni")


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


SERVED = "dpdkeni-cni+serve"
PLUGINS = {"host-device": HOST_DEVICE, "dpdkeni-cni": DPDKENI_CNI, SERVED: DPDKENI_CNI}  # label -> binary run
LEASED = {label: 0 for label in PLUGINS}  # ADDs after which dpdkeni's ledger held the NIC


def _server_cpu(server: Optional[subprocess.Popen]) -> float:
    if server is None:
        return 0.0
    times = psutil.Process(server.pid).cpu_times()
    return times.user + times.system


def _invoke(binary: str, command: str, conf: dict, ns_path: str, cid: str,
            server: Optional[subprocess.Popen] = None, socket_path: str = "") -> Tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU counts the plugin and what it ran (IPAM), and the resident server's
    share when one answers, so it holds up on a busy machine where wall time mostly measures the wait for a core."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CNI_")}, "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": ns_path, "CNI_IFNAME": "net1", "CNI_PATH": "/usr/lib/cni",
           "DPDKENI_CNI_SOCKET": socket_path}
    cpu, start = _cpu() + _server_cpu(server), time.perf_counter()
    proc = subprocess.run([binary], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
    took, cpu = time.perf_counter() - start, _cpu() + _server_cpu(server) - cpu
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(binary)} {command} failed: {proc.stdout.decode().strip()}")
    return took, cpu


ORDERS = list(itertools.permutations(PLUGINS.items()))  # (label, binary) in each of the six orders


def _round(index: int, data_dir: str, samples: Dict[str, List[Tuple[float, float]]], server: subprocess.Popen,
           socket_path: str) -> None:
    tag = f"bc{os.getpid() % 10000}x{index}"
    nic, peer, ns = f"{tag}a", f"{tag}b", f"{tag}ns"
    with IPRoute() as ipr:
        ipr.link("add", ifname=nic, kind="veth", peer=peer)
    netns.create(ns)
    try:
        # every order in turn, so each plugin follows each other one equally often (a rotation had the served
        # client follow the in-process one, whose 0.3 s of CPU the next call still feels, in 2 rounds of 3 and
        # host-device never)
        for label, binary in ORDERS[index % len(ORDERS)]:
            name = os.path.basename(binary)
            conf = {"cniVersion": "1.0.0", "name": f"bench-{name}", "type": name, "device": nic,
                    "ipam": {"type": "host-local", "subnet": "198.18.90.0/24", "dataDir": data_dir}}
            cid = f"{tag}-{label.replace('+', '-')}"
            via = (server, socket_path) if label == SERVED else (None, socket_path + ".none")
            add = _invoke(binary, "ADD", conf, f"/run/netns/{ns}", cid, *via)
            LEASED[label] += bool(Ledger().leases())  # dpdkeni's ledger holds the NIC: dpdkeni handled the ADD
            delete = _invoke(binary, "DEL", conf, f"/run/netns/{ns}", cid, *via)
            samples[label].append((add[0] + delete[0], add[1] + delete[1]))
    finally:
        netns.remove(ns)
        with IPRoute() as ipr:
            for name in (nic, peer):
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)


def _tmpfs_unless_one(path: str) -> bool:
    """Mount a private tmpfs on ``path`` unless it is on one already (this VM's /run is on its disk, where each
    rename of the ledger and of host-local's files costs ~1 ms). Both plugins' files are there."""
    kind = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True).stdout.strip()
    if kind == "tmpfs":
        return False
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "dpdkeni-bench", path], check=True)
    return True


def _pct(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _version() -> str:
    try:
        return subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "containernetworking-plugins"],
                              capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=60.0, help="stop starting rounds after this long")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not os.path.exists(HOST_DEVICE):
        print(f"{HOST_DEVICE} missing: apt-get install containernetworking-plugins", file=sys.stderr)
        return 2
    # byte-compile dpdkeni as 'pip install' does: this environment sets PYTHONDONTWRITEBYTECODE, which would make
    # every plugin call compile the package from source
    import compileall

    import dpdkeni
    compileall.compile_dir(os.path.dirname(dpdkeni.__file__), quiet=1)
    samples: Dict[str, List[Tuple[float, float]]] = {"host-device": [], "dpdkeni-cni": [], SERVED: []}
    state = tempfile.mkdtemp(prefix="dpdkeni-bench-", dir="/run")
    tmpfs = _tmpfs_unless_one(state)  # a node's /run (the default state dir /run/dpdkeni) is a tmpfs
    os.environ["DPDKENI_STATE_DIR"] = os.path.join(state, "state")
    models = os.path.join(state, "models.json")  # admit veth ends as stand-in NICs (the model guard's list)
    with open(models, "w", encoding="utf-8") as f:
        json.dump({"model": [], "virtual_kinds": ["veth"]}, f)
    os.environ["DPDKENI_MODELS"] = models
    deadline = time.monotonic() + args.seconds
    socket_path = os.path.join(state, "cni.sock")
    server = subprocess.Popen([sys.executable, "-m", "dpdkeni", "cni", "serve", "--socket", socket_path],
                              stderr=subprocess.PIPE, text=True)
    try:
        server.stderr.readline()  # "listening": it has imported everything
        for i in range(args.rounds):
            if time.monotonic() > deadline:
                break
            _round(i, os.path.join(state, "ipam"), samples, server, socket_path)
    finally:
        server.terminate()
        server.wait(timeout=30)
        if tmpfs:
            subprocess.run(["umount", state], check=False)
        shutil.rmtree(state, ignore_errors=True)
    ref_wall = statistics.median(w for w, _ in samples["host-device"])
    ref_cpu = statistics.median(c for _, c in samples["host-device"])
    rows = []
    for name, pairs in samples.items():
        wall, cpu = [w for w, _ in pairs], [c for _, c in pairs]
        rows.append({"plugin": name, "binary": PLUGINS[name], "runs": len(pairs), "leased": LEASED[name], "p50_ms": round(statistics.median(wall) * 1e3, 1),
                     "p90_ms": round(_pct(wall, 0.9) * 1e3, 1), "ratio_p50": round(statistics.median(wall) / ref_wall, 2),
                     "cpu_p50_ms": round(statistics.median(cpu) * 1e3, 1),
                     "ratio_cpu_p50": round(statistics.median(cpu) / ref_cpu, 2)})
    load = os.getloadavg()[0]
    source = (f"reference: host-device from Debian containernetworking-plugins {_version()} "
              "(the distribution's Go build of the public containernetworking/plugins source)")
    if args.json:
        print(json.dumps({"reference": source, "loadavg_1min": load, "rows": rows}, indent=2))
        return 0
    print("CNI ADD+DEL latency, veth stand-in NIC, host-local IPAM, same NICs and run for every plugin")
    print(source)
    print(f"1-minute load average at the end: {load:.1f} on {os.cpu_count()} CPUs (wall time includes waiting "
          "for a CPU; CPU time does not)")
    print(f"{'plugin':<18}{'runs':>6}{'p50 ms':>9}{'p90 ms':>9}{'ratio':>7}{'CPU p50 ms':>12}{'CPU ratio':>11}")
    for r in rows:
        print(f"{r['plugin']:<18}{r['runs']:>6}{r['p50_ms']:>9}{r['p90_ms']:>9}{r['ratio_p50']:>7}"
              f"{r['cpu_p50_ms']:>12}{r['ratio_cpu_p50']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
