"""Kernel-side reflectors and impairments for the pmdtest tests, set up inside a topology's namespace (tc): no user
space on the reflecting side, so its own jitter stays out of what the tests compare."""
from __future__ import annotations

import os
import subprocess

from pyroute2 import NetNS

from dpdkeni import bpfsys
from dpdkeni.pmdstream import Stream
from dpdkeni.pmdtest import KernelCounters, PmdTest

BPF_PROG_TYPE_SCHED_CLS = 3
CLSACT_INGRESS = 0xFFFFFFF2


def mirred(topo, role: str = "b", ifname: str = "b0", twice: bool = False, only_to: tuple = ()) -> None:
    """Everything ``ifname`` receives goes straight back out of it (clsact ingress, u32 match-all, mirred egress
    redirect), through its root qdisc: an impairment there is on the reflector's link. ``twice``: a copy goes
    back first (mirred mirror), so every frame returns twice. ``only_to``: only frames to these destination MACs
    (a reflector that filters like a NIC out of promiscuous mode)."""
    copy = ["action", "mirred", "egress", "mirror", "dev", ifname] if twice else []
    subprocess.run(topo.exec(role, "tc", "qdisc", "add", "dev", ifname, "clsact"), check=True)
    matches = [["match", "ether", "dst", mac] for mac in only_to] or [["match", "u32", "0", "0"]]
    for match in matches:
        subprocess.run(topo.exec(role, "tc", "filter", "add", "dev", ifname, "ingress", "prio", "2", "u32", *match,
                                 *copy, "action", "mirred", "egress", "redirect", "dev", ifname), check=True)


def random_drop(topo, ratio: float, role: str = "b", ifname: str = "b0") -> None:
    """Drop a random ``ratio`` of what ``ifname`` receives, before the reflector (a tc BPF filter: the kernel's
    prandom against a threshold; this host's kernel has no netem)."""
    ins = bpfsys.insn
    thresh = int(ratio * 2 ** 32)
    # r0 = prandom(); if r0 > thresh: continue to the next filter (TC_ACT_UNSPEC) else drop (TC_ACT_SHOT)
    code = (ins(0x85, imm=7) + ins(0x25, 0, off=2, imm=thresh) + ins(0xB7, 0, imm=2) + ins(0x95)
            + ins(0xB7, 0, imm=-1) + ins(0x95))
    fd = bpfsys.load(BPF_PROG_TYPE_SCHED_CLS, code, "dkdrop")
    try:
        with NetNS(topo.ns[role]) as n:
            idx = n.link_lookup(ifname=ifname)[0]
            n.tc("add-filter", "bpf", idx, ":1", fd=fd, name="dkdrop", parent=CLSACT_INGRESS, classid=1,
                 direct_action=True, prio=1)
    finally:
        os.close(fd)


def netem(topo, spec: str, role: str = "b", ifname: str = "b0") -> None:
    """``tc qdisc replace dev IF root netem SPEC`` (with a queue long enough for the test's rates)."""
    subprocess.run(topo.exec(role, "tc", "qdisc", "replace", "dev", ifname, "root", "netem", *spec.split(),
                             "limit", "100000"), check=True)


def trial(topo, rate: int, seconds: float, **kw):
    """One pmdtest trial of 64 B frames from a0 (namespace A) at ``rate`` for ``seconds`` against the reflector
    on the other end, with the kernel's counters around it (``kw``: e.g. ``max_frames``)."""
    with Stream(["a0"], target=topo.target("a")) as s:
        pt = PmdTest(s, [], counters=KernelCounters(["a0"], topo.target("a")), warmup=0.2, drain=0.5)
        return pt.trial(rate, seconds, [64], **kw)
