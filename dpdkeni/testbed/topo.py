"""Throw-away topologies for the benchmarks: named network namespaces joined by veth pairs, optionally through a
middle "vm" namespace holding a Linux bridge (with or without netfilter) or a forwarder. Everything made here is
removed by :meth:`Topo.close` (use it as a context manager). Addresses only from 198.18.0.0/15."""
from __future__ import annotations

import itertools
import os
import subprocess
from typing import Dict, List, Optional, Tuple

from pyroute2 import IPRoute, NetNS, netns

_seq = itertools.count()


def sysctl_in(ns: str, key: str, value: str) -> None:
    """Write a sysctl inside namespace ``ns`` (net.* keys are per namespace)."""
    netns.pushns(ns)
    try:
        with open("/proc/sys/" + key.replace(".", "/"), "w") as f:
            f.write(value)
    finally:
        netns.popns()


class Topo:
    """``kind``: ``direct`` (A a0 <-> b0 B), ``bridge``/``bridge-nf``/``bridge-ipt`` (A a0 <-> a1 [br0] b1 <-> b0 B
    in namespace M), ``fwd`` (the same without a bridge: a1 and b1 for a forwarder in M)."""

    def __init__(self, kind: str = "direct", tag: Optional[str] = None) -> None:
        self.kind = kind
        self.tag = tag or f"dkb{os.getpid() % 100000}x{next(_seq)}"
        self.ns: Dict[str, str] = {}
        self.macs: Dict[str, str] = {}
        self._tmp: List[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def name(self, role: str) -> str:
        return f"{self.tag}{role}"

    def _mkns(self, role: str) -> str:
        name = self.name(role)
        netns.create(name)
        self.ns[role] = name
        # no IPv6 chatter (router/neighbour solicitations) to disturb packet counts
        sysctl_in(name, "net.ipv6.conf.all.disable_ipv6", "1")
        sysctl_in(name, "net.ipv6.conf.default.disable_ipv6", "1")
        return name

    def _veth(self, left: Tuple[str, str], right: Tuple[str, str]) -> None:
        (lns, lname), (rns, rname) = left, right
        seq = next(_seq)
        tmp_l, tmp_r = f"dkt{os.getpid() % 100000}x{seq}"[:15], f"dku{os.getpid() % 100000}x{seq}"[:15]
        self._tmp.append(tmp_l)
        with IPRoute() as ipr:
            ipr.link("add", ifname=tmp_l, kind="veth", peer=tmp_r)
            for tmp, ns in ((tmp_l, lns), (tmp_r, rns)):
                ipr.link("set", index=ipr.link_lookup(ifname=tmp)[0], net_ns_fd=ns)
        for tmp, ns, name in ((tmp_l, lns, lname), (tmp_r, rns, rname)):
            with NetNS(ns) as n:
                idx = n.link_lookup(ifname=tmp)[0]
                n.link("set", index=idx, ifname=name)
                n.link("set", index=idx, state="up")
                self.macs[name] = n.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        self.macs[f"{lns}/{lname}"] = self.macs[lname]

    def _build(self) -> None:
        a, b = self._mkns("a"), self._mkns("b")
        if self.kind == "direct":
            self._veth((a, "a0"), (b, "b0"))
        else:
            m = self._mkns("m")
            self._veth((a, "a0"), (m, "a1"))
            self._veth((m, "b1"), (b, "b0"))
            if self.kind.startswith("bridge"):
                self._bridge(m)
        self._addresses()

    def _bridge(self, m: str) -> None:
        nf = "1" if self.kind in ("bridge-nf", "bridge-ipt") else "0"
        with NetNS(m) as n:
            n.link("add", ifname="br0", kind="bridge")
            br = n.link_lookup(ifname="br0")[0]
            for port in ("a1", "b1"):
                n.link("set", index=n.link_lookup(ifname=port)[0], master=br)
            n.link("set", index=br, state="up")
        subprocess.run(["modprobe", "br_netfilter"], capture_output=True)
        try:
            sysctl_in(m, "net.bridge.bridge-nf-call-iptables", nf)
        except OSError:
            if nf == "1":
                raise
        if self.kind == "bridge-ipt":
            self._iptables(m)

    def _iptables(self, m: str) -> None:
        """Docker-like FORWARD rules (reference/perf-baseline.md): policy DROP, 10 non-matching rules, conntrack
        ESTABLISHED, physdev-is-bridged ACCEPT."""
        rules: List[List[str]] = [["-P", "FORWARD", "DROP"]]
        rules += [["-A", "FORWARD", "-s", f"198.19.{i}.0/24", "-j", "DROP"] for i in range(10)]
        rules += [["-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                  ["-A", "FORWARD", "-m", "physdev", "--physdev-is-bridged", "-j", "ACCEPT"]]
        for rule in rules:
            subprocess.run(["ip", "netns", "exec", m, "iptables", *rule], check=True, capture_output=True)

    def _addresses(self) -> None:
        for role, ifname, addr, peer_if, peer_addr in (("a", "a0", "198.18.0.1", "b0", "198.18.0.2"),
                                                       ("b", "b0", "198.18.0.2", "a0", "198.18.0.1")):
            with NetNS(self.ns[role]) as n:
                idx = n.link_lookup(ifname=ifname)[0]
                n.addr("add", index=idx, address=addr, prefixlen=24)
                lo = n.link_lookup(ifname="lo")[0]
                n.link("set", index=lo, state="up")
                # static neighbours: no ARP in the measurement
                n.neigh("add", dst=peer_addr, lladdr=self.macs[peer_if], ifindex=idx, state="permanent")

    def exec(self, role: str, *argv: str) -> List[str]:
        """argv prefixed to run inside namespace ``role`` (benchmark helper: ip netns exec)."""
        return ["ip", "netns", "exec", self.ns[role], *argv]

    def close(self) -> None:
        with IPRoute() as ipr:   # a veth left in the root netns by a half-done build
            for tmp in self._tmp:
                for idx in ipr.link_lookup(ifname=tmp):
                    ipr.link("del", index=idx)
        self._tmp.clear()
        for name in self.ns.values():
            try:
                netns.remove(name)
            except OSError:
                pass
        self.ns.clear()

    def __enter__(self) -> "Topo":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def steer(self, role: str, ifname: str, cpu: int) -> None:
        """Receive packet steering: ``ifname``'s received frames are processed on ``cpu`` (RPS on queue 0), not on
        the core of whoever sent them into the veth."""
        subprocess.run(self.exec(role, "sh", "-c", f"echo {1 << cpu:x} > /sys/class/net/{ifname}/queues/rx-0/rps_cpus"),
                       check=True, capture_output=True)

    def rx_packets(self, role: str, ifname: str) -> int:
        """The kernel's count of frames ``ifname`` received (IFLA_STATS64)."""
        with NetNS(self.ns[role]) as n:
            return n.get_links(n.link_lookup(ifname=ifname)[0])[0].get_attr("IFLA_STATS64")["rx_packets"]

    def target(self, role: str) -> str:
        return f"netns:{self.ns[role]}"

    def mac(self, ifname: str) -> Optional[str]:
        return self.macs.get(ifname)
