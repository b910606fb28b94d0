#!/usr/bin/env python3
"""ADD+DEL latency of dpdkeni-cni beside host-device, on the same stand-in NICs, in the same run.

The reference is Debian's ``host-device`` from the ``containernetworking-plugins`` package (the Go build of the
public containernetworking/plugins source). Each round makes one veth pair and one named netns, then runs
ADD+DEL of host-device and of dpdkeni-cni on that same veth end, alternating which goes first, both with
host-local IPAM. Each plugin is driven as a runtime does: environment + configuration on stdin, a subprocess.

    sudo .venv/bin/python benchmarks/cni.py [--rounds 15] [--seconds 60] [--json]
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
from typing import Dict, List

from pyroute2 import IPRoute, netns

HOST_DEVICE = "/usr/lib/cni/host-device"
DPDKENI_CNI = shutil.which("dpdkeni-cni") or os.path.join(os.path.dirname(sys.executable), "dpdkeni-cni")


def _invoke(binary: str, command: str, conf: dict, ns_path: str, cid: str) -> float:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CNI_")}, "CNI_COMMAND": command,
           "CNI_CONTAINERID": cid, "CNI_NETNS": ns_path, "CNI_IFNAME": "net1", "CNI_PATH": "/usr/lib/cni"}
    start = time.perf_counter()
    proc = subprocess.run([binary], input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(binary)} {command} failed: {proc.stdout.decode().strip()}")
    return took


def _round(index: int, data_dir: str, samples: Dict[str, List[float]]) -> None:
    tag = f"bc{os.getpid() % 10000}x{index}"
    nic, peer, ns = f"{tag}a", f"{tag}b", f"{tag}ns"
    with IPRoute() as ipr:
        ipr.link("add", ifname=nic, kind="veth", peer=peer)
    netns.create(ns)
    try:
        order = [HOST_DEVICE, DPDKENI_CNI] if index % 2 == 0 else [DPDKENI_CNI, HOST_DEVICE]
        for binary in order:
            name = os.path.basename(binary)
            conf = {"cniVersion": "1.0.0", "name": f"bench-{name}", "type": name, "device": nic,
                    "ipam": {"type": "host-local", "subnet": "198.18.90.0/24", "dataDir": data_dir}}
            cid = f"{tag}-{name}"
            took = _invoke(binary, "ADD", conf, f"/run/netns/{ns}", cid)
            took += _invoke(binary, "DEL", conf, f"/run/netns/{ns}", cid)
            samples[name].append(took)
    finally:
        netns.remove(ns)
        with IPRoute() as ipr:
            for name in (nic, peer):
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)


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
    samples: Dict[str, List[float]] = {"host-device": [], "dpdkeni-cni": []}
    state = tempfile.mkdtemp(prefix="dpdkeni-bench-")
    os.environ["DPDKENI_STATE_DIR"] = os.path.join(state, "state")
    deadline = time.monotonic() + args.seconds
    try:
        for i in range(args.rounds):
            if time.monotonic() > deadline:
                break
            _round(i, os.path.join(state, "ipam"), samples)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    ref = statistics.median(samples["host-device"])
    rows = [{"plugin": name, "runs": len(v), "p50_ms": round(statistics.median(v) * 1e3, 1),
             "p90_ms": round(_pct(v, 0.9) * 1e3, 1), "ratio_p50_vs_host_device": round(statistics.median(v) / ref, 2)}
            for name, v in samples.items()]
    source = (f"reference: host-device from Debian containernetworking-plugins {_version()} "
              "(the distribution's Go build of the public containernetworking/plugins source)")
    if args.json:
        print(json.dumps({"reference": source, "rows": rows}, indent=2))
        return 0
    print("CNI ADD+DEL latency, veth stand-in NIC, host-local IPAM, same NICs and run for both plugins")
    print(source)
    print(f"{'plugin':<14}{'runs':>6}{'p50 ms':>10}{'p90 ms':>10}{'p50 ratio':>11}")
    for r in rows:
        print(f"{r['plugin']:<14}{r['runs']:>6}{r['p50_ms']:>10}{r['p90_ms']:>10}{r['ratio_p50_vs_host_device']:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
