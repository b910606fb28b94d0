#!/usr/bin/env python3
"""An in-kernel frame generator for the benchmarks: the kernel's XDP live-frames test run (``BPF_PROG_TEST_RUN``
with ``BPF_F_TEST_XDP_LIVE_FRAMES``, the engine of xdp-tools' ``xdp-trafficgen``) sends copies of one frame out of
an interface from a two-instruction ``XDP_TX`` program. No socket buffers and no system call per frame: on a veth
this offers several times what a user-space sender reaches, so a forwarder behind it is the bottleneck, not the
generator.

On a veth the frames land in the peer's XDP receive ring, which exists only while the peer has an XDP program (an
AF_XDP forwarder brings its own; :func:`xdp_pass` attaches a ``return XDP_PASS`` for the others, so that they
receive what the stack would).

Run in the sender's network namespace: ``python -m dpdkeni.testbed.xdpgen --ifname a0 --seconds 4`` prints
``{"frames": N, "seconds": S}`` (frames the generator handed to the interface, including those the peer's ring had
no room for).
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import socket
import struct
import sys
import time
from typing import Iterator, Optional

from .. import bpfsys
from ..fastpath import DEFAULT_PEER, inet_checksum

XDP_PASS, XDP_TX = 2, 3
XDP_FLAGS_DRV_MODE = 4
FIRST_CALL = 1 << 16            # the first call measures the rate; later ones are sized to CALL_SECONDS of it
CALL_SECONDS = 0.5              # each call also sleeps ~26 ms in its teardown (RCU): long calls keep the gaps small


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def udp_frame(src_mac: str, dst_mac: str = DEFAULT_PEER, size: int = 64) -> bytes:
    """testpmd's txonly frame: Ethernet / IPv4 198.18.0.1 -> 198.18.0.2 / UDP 1024 -> 9, zero payload, ``size``
    bytes without the FCS (as dpdkeni's txonly builds it)."""
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, size - 14, 0, 0, 64, 17, 0, bytes([198, 18, 0, 1]),
                               bytes([198, 18, 0, 2])))
    struct.pack_into("!H", ip, 10, inet_checksum(bytes(ip)))
    udp = struct.pack("!HHHH", 1024, 9, size - 34, 0)
    frame = mac_bytes(dst_mac) + mac_bytes(src_mac) + b"\x08\x00" + bytes(ip) + udp
    return frame.ljust(size, b"\0")


def link_mac(ifname: str) -> str:
    """The interface's MAC in the caller's network namespace (SIOCGIFHWADDR: /sys may be another namespace's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = fcntl.ioctl(s.fileno(), 0x8927, struct.pack("256s", ifname.encode()[:15]))
    return ":".join(f"{b:02x}" for b in raw[18:24])


def generate(ifname: str, seconds: float, frame: Optional[bytes] = None, frames: Optional[int] = None,
             batch: int = 64) -> int:
    """Send copies of ``frame`` (default :func:`udp_frame` from the interface's MAC) out of ``ifname`` for
    ``seconds``, or exactly ``frames`` of them, as fast as the kernel goes; returns how many were sent. (It cannot
    be paced: every call costs a page pool's setup and an RCU wait, so only long calls are smooth.)"""
    ifindex = socket.if_nametoindex(ifname)
    frame = frame or udp_frame(link_mac(ifname))
    fd = bpfsys.load(bpfsys.BPF_PROG_TYPE_XDP, bpfsys.return_const(XDP_TX), "dpdkeni_gen")
    start = time.monotonic()
    sent, end, speed = 0, start + seconds, 0.0
    try:
        while time.monotonic() < end and (frames is None or sent < frames):
            left = end - time.monotonic()
            if speed:
                n = max(1024, int(speed * min(CALL_SECONDS, left)))
            else:
                n = FIRST_CALL
            if frames is not None:
                n = min(n, frames - sent)
            t0 = time.monotonic()
            bpfsys.xdp_live_frames(fd, frame, ifindex, n, batch)
            speed = n / max(time.monotonic() - t0, 1e-6)
            sent += n
    finally:
        os.close(fd)
    return sent


@contextlib.contextmanager
def xdp_pass(netns: str, ifname: str) -> Iterator[None]:
    """A ``return XDP_PASS`` program on ``ifname`` in ``netns`` (native mode) while the block runs."""
    from pyroute2 import NetNS
    fd = bpfsys.load(bpfsys.BPF_PROG_TYPE_XDP, bpfsys.return_const(XDP_PASS), "dpdkeni_pass")
    try:
        with NetNS(netns) as ns:
            idx = ns.link_lookup(ifname=ifname)[0]
            ns.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE)]})
            try:
                yield
            finally:
                ns.link("set", index=idx, xdp={"attrs": [("IFLA_XDP_FD", -1),
                                                         ("IFLA_XDP_FLAGS", XDP_FLAGS_DRV_MODE)]})
    finally:
        os.close(fd)


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ifname", required=True)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--frames", type=int, help="stop after this many frames")
    ap.add_argument("--dst-mac", default=DEFAULT_PEER)
    args = ap.parse_args(argv)
    if args.seconds <= 0 or (args.frames is not None and args.frames <= 0):
        print("xdpgen: --seconds and --frames must be positive", file=sys.stderr)
        return 2
    try:
        t0 = time.monotonic()
        sent = generate(args.ifname, args.seconds, udp_frame(link_mac(args.ifname), args.dst_mac), args.frames)
    except OSError as exc:
        print(f"xdpgen: {args.ifname}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(json.dumps({"frames": sent, "seconds": round(time.monotonic() - t0, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
