"""dpdkeni.testbed.xdpgen, the in-kernel generator behind the io forwarding benchmark: its frames reach the peer
byte for byte, it stops at the count or the time it is given, and bad input is one line."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import needs_root, unique
from pyroute2 import netns
from test_fastpath import collect, raw_socket  # noqa: E402

from dpdkeni.testbed.topo import Topo
from dpdkeni.testbed.xdpgen import generate, link_mac, udp_frame, xdp_pass

pytestmark = needs_root
SCRIPT = ["-m", "dpdkeni.testbed.xdpgen"]


def test_frames_arrive_intact_and_count_is_exact():
    with Topo("direct", unique("dkg")) as t, xdp_pass(t.ns["b"], "b0"):
        sock = raw_socket(t, "b", "b0")
        frame = udp_frame(t.mac("a0"), "02:00:00:00:00:02")
        netns.pushns(t.ns["a"])
        try:
            assert link_mac("a0") == t.mac("a0")
            sent = generate("a0", 10.0, frame, frames=200, batch=16)
        finally:
            netns.popns()
        got = collect(sock, 200, b"\x08\x00")
        sock.close()
        counted = t.rx_packets("b", "b0")    # the benchmark's io sink: b0's own receive counter
    assert sent == 200
    # 200 frames fit in the peer veth's receive ring (256) even if b0 does not run until the call returns, and in
    # the capture socket's 4 MiB buffer: every one arrives, byte for byte
    assert len(got) == 200 and counted == 200
    assert all(g == frame for g in got)
    assert len(frame) == 64 and frame[23] == 17 and frame[26:34] == bytes([198, 18, 0, 1, 198, 18, 0, 2])


def test_time_bound_and_json_line():
    """--seconds 0.5: it runs that long and stops within one more call (each is sized to the time left, at most
    CALL_SECONDS; the bound below is generous for a loaded machine, a generator that ignores the time misses it)."""
    import json

    from dpdkeni.testbed.xdpgen import CALL_SECONDS
    with Topo("direct", unique("dkg")) as t, xdp_pass(t.ns["b"], "b0"):
        out = subprocess.run(t.exec("a", sys.executable, *SCRIPT, "--ifname", "a0", "--seconds", "0.5"),
                             capture_output=True, text=True, timeout=60)
        counted = t.rx_packets("b", "b0")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert out.stderr == "" and set(doc) == {"frames", "seconds"}
    assert 0.5 <= doc["seconds"] <= 0.5 + CALL_SECONDS + 3.0, doc
    assert doc["frames"] >= 1024 and 0 < counted <= doc["frames"]


@pytest.mark.parametrize("args, code, text", [
    (["--ifname", "a0", "--seconds", "0"], 2, "must be positive"),
    (["--ifname", "nosuch0", "--seconds", "1"], 1, "nosuch0"),
])
def test_bad_input_is_one_line(args, code, text):
    out = subprocess.run([sys.executable, *SCRIPT, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == code and text in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_steer_sets_the_receive_cpu_mask():
    with Topo("direct", unique("dkg")) as t:
        t.steer("b", "b0", 1)
        out = subprocess.run(t.exec("b", "cat", "/sys/class/net/b0/queues/rx-0/rps_cpus"), capture_output=True,
                             text=True, check=True)
    assert int(out.stdout.strip().replace(",", ""), 16) == 0b10
