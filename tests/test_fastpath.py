"""The native forwarder on real veth pairs in namespaces made by each test (both backends; AF_XDP is skipped
only where the host's facts say it cannot run: tests/hostfacts.af_xdp). Rates are bounded (``rate=``/``count=``) so counts agree exactly on a
loaded 2-core machine; nothing asserts on time."""
from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Callable

import hostfacts
import psutil
import pytest
from conftest import needs_root, unique
from pyroute2 import netns

from dpdkeni.errors import InputError, NotFoundError
from dpdkeni.fastpath import Forwarder, have_af_xdp
from dpdkeni.testbed.topo import Topo, sysctl_in

pytestmark = needs_root
BACKENDS = ["af_packet", "af_xdp"]
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def xdp_unavailable() -> str:
    """Why AF_XDP is not expected to work here ('' when it must), from the host's facts (kernel, libxdp/libbpf,
    root), never from the code under test: where AF_XDP must work and does not, the test fails."""
    if hostfacts.af_xdp():
        return ""
    return (f"AF_XDP is not expected here: kernel {'.'.join(map(str, hostfacts.kernel_version()))}, "
            f"libxdp/libbpf {'present' if hostfacts.libxdp() else 'missing'}, "
            f"veth XDP {'yes' if hostfacts.veth_xdp() else 'no'}, root {hostfacts.root()}")


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    if request.param == "af_xdp":
        if xdp_unavailable():
            pytest.skip(xdp_unavailable())
        assert have_af_xdp(), "libxdp/libbpf are installed but the native module was built without AF_XDP"
    return request.param


@pytest.fixture
def direct():
    with Topo("direct", unique("dkf")) as t:
        yield t


def wait_until(pred, timeout: float = 10.0) -> bool:
    """Poll pred (bounded): the tests never assert on time, only on what arrived."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def send_count(topo: Topo, role: str, ifname: str, count: int, backend: str = "af_packet") -> Forwarder:
    src = Forwarder([ifname], mode="txonly", backend=backend, target=topo.target(role), rate=20000,
                    count=count)
    src.run()
    return src


def all_counted(received: int, dropped: int, sent: int) -> None:
    """Every frame is accounted for (received, or dropped where the kernel counted it: PACKET_STATISTICS /
    XDP_STATISTICS) and the loss is bounded: at most a tenth, which only a machine too loaded to keep up with
    these rates drops (the receive rings buffer 0.5 s of a stalled reader)."""
    assert received + dropped == sent, (received, dropped, sent)
    assert dropped <= sent // 10, f"{dropped} of {sent} frames dropped"


def settled(fwd: Forwarder, total: Callable[[], int], want: int) -> None:
    """Wait (bounded) until ``total()`` reaches ``want`` or stops moving for half a second."""
    last, still = -1, 0
    end = time.monotonic() + 15
    while time.monotonic() < end and total() < want and still < 10:
        now = total()
        still = still + 1 if now == last else 0
        last = now
        time.sleep(0.05)


def test_txonly_to_rxonly_counts_agree(direct, backend):
    sink = Forwarder(["b0"], mode="rxonly", backend=backend, target=direct.target("b")).start()
    try:
        src = Forwarder(["a0"], mode="txonly", backend=backend, target=direct.target("a"), rate=20000,
                        count=20000)
        sent = src.run()
        assert sent.backend == backend and sent.ports[0].tx_packets == 20000
        settled(sink, lambda: sink.stats().ports[0].rx_packets, 20000)
    finally:
        sink.stop()
        got = sink.wait()
    p = got.ports[0]
    assert got.backend == backend
    # every frame the sender's kernel took is counted at the sink: received, or dropped by the sink's ring
    # (which only a machine too loaded to sustain 20 kpps does, and not for more than a tenth of them)
    all_counted(p.rx_packets, p.rx_dropped, 20000)
    assert p.rx_bytes == p.rx_packets * 64


def raw_socket(topo: Topo, role: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket on ifname inside the topology's namespace (the test's own far side)."""
    netns.pushns(topo.ns[role])
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((ifname, 0))
    finally:
        netns.popns()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.settimeout(0.2)
    return s


def frames(n: int, src: bytes, dst: bytes):
    # ethertype 0x88b5 (local experimental): no stack on either side acts on these
    return [dst + src + b"\x88\xb5" + i.to_bytes(4, "big") + os.urandom(50 + i % 200) for i in range(n)]


def exchange(sock: socket.socket, out: list) -> list:
    """Send each frame and collect what comes back in (not our own outgoing copies), bounded in time."""
    for i, f in enumerate(out):
        sock.send(f)
        if i % 20 == 19:
            time.sleep(0.002)
    return collect(sock, len(out), b"\x88\xb5")


def macswap_round(topo: Topo, n: int, **kwargs):
    """n frames from a0 through a macswap forwarder on b0 and back: (its stats, frames sent, frames back)."""
    sock = raw_socket(topo, "a", "a0")
    a_mac = bytes.fromhex(topo.mac("a0").replace(":", ""))
    out = frames(n, a_mac, bytes.fromhex("020000000099"))
    fwd = Forwarder(["b0"], mode="macswap", target=topo.target("b"), **kwargs).start()
    try:
        back = exchange(sock, out)
    finally:
        stats = fwd.stats()
        fwd.close()
        sock.close()
    return stats, out, back


def test_macswap_returns_every_frame_swapped(direct, backend):
    stats, out, back = macswap_round(direct, 300, backend=backend)
    assert stats.ports[0].rx_packets >= 300
    expected = sorted(f[6:12] + f[0:6] + f[12:] for f in out)
    assert sorted(back) == expected      # every frame, byte for byte, MACs swapped


@pytest.mark.parametrize("tx_method", ["sendmmsg", "tx_ring"])
def test_af_packet_tx_methods_send_frames_intact(direct, tx_method):
    """Both AF_PACKET transmit methods (PACKET_TX_RING with its virtio_net_hdr in front of each frame, sendmmsg)
    put every frame on the wire byte for byte, 64 to 268 bytes long."""
    stats, out, back = macswap_round(direct, 200, backend="af_packet", tx_method=tx_method)
    assert ("PACKET_TX_RING" if tx_method == "tx_ring" else "sendmmsg") in stats.details[0]
    assert sorted(back) == sorted(f[6:12] + f[0:6] + f[12:] for f in out)


def test_mac_mode_rewrites_source_and_peer(direct, backend):
    sock = raw_socket(direct, "a", "a0")
    a_mac = bytes.fromhex(direct.mac("a0").replace(":", ""))
    out = frames(50, a_mac, bytes.fromhex("020000000099"))
    fwd = Forwarder(["b0"], mode="mac", backend=backend, target=direct.target("b"),
                    peer="02:00:00:00:00:77").start()
    try:
        back = exchange(sock, out)
    finally:
        b_mac = bytes.fromhex(fwd.mac(0).replace(":", ""))
        fwd.close()
        sock.close()
    assert b_mac == bytes.fromhex(direct.mac("b0").replace(":", ""))
    assert sorted(back) == sorted(bytes.fromhex("020000000077") + b_mac + f[12:] for f in out)


def test_io_forwards_through_middle_namespace(backend):
    with Topo("fwd", unique("dkf")) as t:
        sink = Forwarder(["b0"], mode="rxonly", backend="af_packet", target=t.target("b")).start()
        fwd = Forwarder(["a1", "b1"], mode="io", backend=backend, target=t.target("m")).start()
        try:
            send_count(t, "a", "a0", 10000)
            settled(sink, lambda: sink.stats().ports[0].rx_packets, 10000)
        finally:
            fwd.stop()
            middle = fwd.wait()
            sink.stop()
            got = sink.wait()
    a1, b1 = middle.ports
    sink_p = got.ports[0]
    assert middle.backend == backend
    # every frame is accounted for hop by hop (drops only where a loaded machine cannot keep up)
    all_counted(a1.rx_packets, a1.rx_dropped, 10000)
    all_counted(b1.tx_packets, b1.tx_dropped, a1.rx_packets)
    all_counted(sink_p.rx_packets, sink_p.rx_dropped, b1.tx_packets)
    assert sink_p.rx_packets >= 8000  # a loss bound end to end
    assert a1.tx_packets == 0 and b1.rx_packets == 0          # nothing came back the other way


def test_auto_picks_af_xdp_or_says_why(direct):
    fwd = Forwarder(["b0"], mode="rxonly", backend="auto", target=direct.target("b")).open()
    try:
        if xdp_unavailable():
            assert fwd.backend_used == "af_packet" and "AF_XDP unavailable" in fwd.fallback_reason
        else:
            assert fwd.backend_used == "af_xdp" and fwd.fallback_reason is None
    finally:
        fwd.close()


def xdp_prog(topo: Topo, role: str, ifname: str):
    """The id of the XDP program attached to ifname in the topology's namespace (the kernel's view), or None."""
    import json
    out = subprocess.run(["ip", "-n", topo.ns[role], "-j", "-d", "link", "show", "dev", ifname],
                         capture_output=True, text=True, check=True).stdout
    xdp = json.loads(out)[0].get("xdp")
    return xdp.get("prog", {}).get("id") if xdp else None


def test_auto_falls_back_with_reason_when_xdp_is_taken(direct):
    if xdp_unavailable():
        pytest.skip(xdp_unavailable())
    first = Forwarder(["b0"], mode="rxonly", backend="af_xdp", target=direct.target("b")).open()
    try:
        theirs = xdp_prog(direct, "b", "b0")
        assert theirs is not None
        second = Forwarder(["b0"], mode="rxonly", backend="auto", target=direct.target("b")).open()
        try:
            assert second.backend_used == "af_packet"
            assert "AF_XDP unavailable (attaching the XDP program to b0" in second.fallback_reason
            assert "another XDP program is attached" in second.fallback_reason
        finally:
            second.close()
        assert xdp_prog(direct, "b", "b0") == theirs  # the program it found there is left alone
    finally:
        first.close()
    assert xdp_prog(direct, "b", "b0") is None


def test_af_xdp_leaves_no_program_on_a_port_it_found_without_one():
    """AF_XDP attaches its program to each port and takes it away again: after a run, and after an open that
    failed on the second port (which had another program) once the first port had ours."""
    if xdp_unavailable():
        pytest.skip(xdp_unavailable())
    with Topo("fwd", unique("dkf")) as t:
        fwd = Forwarder(["a1", "b1"], mode="io", backend="af_xdp", target=t.target("m")).open()
        try:
            assert xdp_prog(t, "m", "a1") is not None and xdp_prog(t, "m", "b1") is not None
        finally:
            fwd.close()
        assert (xdp_prog(t, "m", "a1"), xdp_prog(t, "m", "b1")) == (None, None)
        holder = Forwarder(["b1"], mode="rxonly", backend="af_xdp", target=t.target("m")).open()
        try:
            theirs = xdp_prog(t, "m", "b1")
            with pytest.raises(Exception, match="another XDP program is attached"):
                Forwarder(["a1", "b1"], mode="io", backend="af_xdp", target=t.target("m")).open()
            assert xdp_prog(t, "m", "a1") is None      # ours, attached to a1 before b1 failed, is gone
            assert xdp_prog(t, "m", "b1") == theirs     # the one it found on b1 stays
        finally:
            holder.close()


def test_live_counters_and_stop_from_another_thread(direct):
    sink = Forwarder(["b0"], mode="rxonly", backend="af_packet", target=direct.target("b"))
    result = {}
    runner = threading.Thread(target=lambda: result.setdefault("s", sink.run()))
    runner.start()
    try:
        assert wait_until(lambda: sink.running)
        src = Forwarder(["a0"], mode="txonly", backend="af_packet", target=direct.target("a"), rate=5000,
                        count=3000).start()
        assert wait_until(lambda: sink.stats().ports[0].rx_packets > 0)   # read while it runs
        src.wait(30)
        settled(sink, lambda: sink.stats().ports[0].rx_packets, 3000)
    finally:
        sink.stop()                                                       # from this thread
        runner.join(30)
    p = result["s"].ports[0]
    assert not runner.is_alive()
    all_counted(p.rx_packets, p.rx_dropped, 3000)


# -- bad input -------------------------------------------------------------------------------------------------

def test_unknown_interface_is_not_found():
    with pytest.raises(NotFoundError, match="no interface dknothere0"):
        Forwarder(["dknothere0"], mode="rxonly", backend="af_packet").open()


def test_interface_in_another_namespace(direct):
    with pytest.raises(NotFoundError, match="another network namespace"):
        Forwarder(["b0"], mode="rxonly", backend="auto").open()


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "bogus"}, "bad mode"), ({"burst": 0}, "bad burst 0"), ({"burst": 1025}, "ring holds"),
    ({"backend": "dpdk"}, "bad backend"), ({"queues": 0}, "bad queues"), ({"pkt_size": 20}, "bad packet size"),
    ({"peer": "zz"}, "bad peer"), ({"ports": []}, "one or two ports"), ({"ports": ["a", "b", "c"]}, "one or two"),
])
def test_bad_arguments(kwargs, match):
    args = {"ports": ["lo"], "mode": "rxonly", **kwargs}
    with pytest.raises(InputError, match=match):
        Forwarder(**args)


def test_negative_duration_is_refused_and_nothing_opened():
    fwd = Forwarder(["lo"], mode="rxonly", backend="af_packet")
    with pytest.raises(InputError, match="bad duration"):
        fwd.run(-1)
    assert fwd._fwd is None


def test_cli_bad_input_one_line(cli):
    for args, text in ((["--mode", "rxonly", "--port", "dknothere0"], "no interface dknothere0"),
                       (["--mode", "rxonly", "--port", "lo", "--burst", "0"], "bad burst 0"),
                       (["--mode", "rxonly", "--port", "lo", "--burst", "99999"], "ring holds"),
                       (["--mode", "rxonly", "--port", "lo", "--seconds", "-1"], "bad --seconds"),
                       (["--mode", "nope", "--port", "lo"], "invalid choice")):
        r = cli("fwd", *args)
        assert r.returncode == 2, r.stderr
        assert text in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


# -- nothing left open ---------------------------------------------------------------------------------------

def _usage(p: psutil.Process):
    gc.collect()
    return p.num_fds(), p.memory_info().rss, p.num_threads()


def test_no_fd_or_memory_growth_over_200_cycles(direct, backend):
    me = psutil.Process()

    def cycle():
        fwd = Forwarder(["b0"], mode="macswap", backend=backend, target=direct.target("b"))
        fwd.start()
        fwd.stop()
        fwd.wait()
        with pytest.raises(NotFoundError):      # a failed open leaves nothing either
            Forwarder(["dknothere0"], mode="io", backend=backend, target=direct.target("b")).open()

    for _ in range(10):
        cycle()
    fds, rss, threads = _usage(me)
    for _ in range(200):
        cycle()
    fds2, rss2, threads2 = _usage(me)
    assert fds2 == fds and threads2 == threads
    if os.environ.get("DPDKENI_SANITIZE"):
        return      # ASan's quarantine holds freed memory on purpose: RSS says nothing under it
    assert rss2 - rss < 4 << 20, f"RSS grew by {(rss2 - rss) >> 10} KiB over 200 cycles"


# -- CLI -----------------------------------------------------------------------------------------------------

def test_cli_fwd_json_summary(direct, cli):
    sink = Forwarder(["b0"], mode="rxonly", backend="af_packet", target=direct.target("b")).start()
    try:
        r = cli("fwd", "--mode", "txonly", "--port", "a0", "--target", direct.target("a"), "--count", "2000",
                "--rate", "10000", "--backend", "af_packet", "--json")
        assert wait_until(lambda: sink.stats().ports[0].rx_packets >= 2000)
    finally:
        got = sink.wait(0) or (sink.stop() or sink.wait())
    assert r.returncode == 0, r.stderr
    import json
    doc = json.loads(r.stdout)
    assert doc["ports"][0]["tx_packets"] == 2000 and doc["backend"] == "af_packet"
    assert got.ports[0].rx_packets == 2000


def test_cli_fwd_stops_on_sigint_with_testpmd_summary(direct):
    p = subprocess.Popen([sys.executable, "-m", "dpdkeni", "fwd", "--mode", "rxonly", "--port", "b0",
                          "--target", direct.target("b"), "--backend", "af_packet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        end = time.monotonic() + 30
        while "Press Ctrl-C" not in line and time.monotonic() < end:
            line = p.stdout.readline()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "Forward statistics for port 0 (b0)" in out and "Accumulated forward statistics" in out
    assert "stopped by signal" in out


def collect(sock: socket.socket, want: int, ethertype: bytes = b"\x08\x00") -> list:
    """Incoming frames of ``ethertype`` on sock until ``want`` arrived (bounded in time)."""
    got = []
    end = time.monotonic() + 10
    while len(got) < want and time.monotonic() < end:
        try:
            data, addr = sock.recvfrom(4096)
        except socket.timeout:
            continue
        if addr[2] != PACKET_OUTGOING and data[12:14] == ethertype:
            got.append(data)
    return got


@pytest.mark.parametrize("size, flows", [(64, 1), (128, 4)])
def test_txonly_frames_on_two_ports(size, flows):
    """txonly on two ports: each port's frames carry its own MAC, the peer, UDP 198.18.0.1 -> 198.18.0.2 with a
    valid IPv4 checksum, the asked size, and ``flows`` source ports."""
    from dpdkeni.fastpath import inet_checksum
    with Topo("fwd", unique("dkf")) as t:
        socks = [raw_socket(t, "a", "a0"), raw_socket(t, "b", "b0")]
        try:
            gen = Forwarder(["a1", "b1"], mode="txonly", backend="af_packet", target=t.target("m"), rate=2000,
                            count=40, pkt_size=size, flows=flows, peer="02:00:00:00:00:42")
            stats = gen.run()
            got = [collect(s, 40) for s in socks]
        finally:
            for s in socks:
                s.close()
    assert [p.tx_packets for p in stats.ports] == [40, 40]
    for frames_in, src_if in zip(got, ("a1", "b1")):
        assert len(frames_in) == 40
        mac = bytes.fromhex(t.mac(src_if).replace(":", ""))
        for f in frames_in:
            assert len(f) == size and f[:6] == bytes.fromhex("020000000042") and f[6:12] == mac
            assert f[14] == 0x45 and f[23] == 17 and inet_checksum(f[14:34]) == 0
            assert f[26:30] == bytes([198, 18, 0, 1]) and f[30:34] == bytes([198, 18, 0, 2])
        ports = {int.from_bytes(f[34:36], "big") for f in frames_in}
        assert ports == set(range(1024, 1024 + flows))


def test_fanout_queues_share_the_port(direct):
    """queues=2: two receive sockets in one PACKET_FANOUT (hash) group, one thread each; the port's counters are
    their sum and every frame is counted once."""
    sink = Forwarder(["b0"], mode="rxonly", backend="af_packet", queues=2, target=direct.target("b")).start()
    try:
        Forwarder(["a0"], mode="txonly", backend="af_packet", target=direct.target("a"), rate=10000, count=4000,
                  flows=64).run()
        settled(sink, lambda: sink.stats().ports[0].rx_packets, 4000)
    finally:
        sink.stop()
        got = sink.wait()
    assert "fanout hash" in got.details[0]
    p = got.ports[0]
    all_counted(p.rx_packets, p.rx_dropped, 4000)


def test_runs_inside_a_container_target(container_factory, netns_factory):
    """target=pid:N: the forwarder opens its sockets in the container's netns (the NIC as it was handed)."""
    from pyroute2 import IPRoute, NetNS
    box, peer_ns = container_factory(), netns_factory()
    for key in ("all", "default"):      # no IPv6 chatter from the sending side into the count
        sysctl_in(peer_ns, f"net.ipv6.conf.{key}.disable_ipv6", "1")
    inside, outside = unique("dkc"), unique("dko")
    with IPRoute() as ipr:
        ipr.link("add", ifname=inside, kind="veth", peer=outside)
        ipr.link("set", index=ipr.link_lookup(ifname=outside)[0], net_ns_fd=peer_ns)
        ipr.link("set", index=ipr.link_lookup(ifname=inside)[0], net_ns_pid=box.pid)
    with NetNS(peer_ns) as ns:
        ns.link("set", index=ns.link_lookup(ifname=outside)[0], state="up")
    assert box.run("ip", "link", "set", inside, "up").returncode == 0
    sink = Forwarder([inside], mode="rxonly", backend="af_packet", target=box.target).start()
    try:
        Forwarder([outside], mode="txonly", backend="af_packet", target=f"netns:{peer_ns}", rate=5000,
                  count=500).run()
        settled(sink, lambda: sink.stats().ports[0].rx_packets, 500)
    finally:
        sink.stop()
        got = sink.wait()
    p = got.ports[0]
    all_counted(p.rx_packets, p.rx_dropped, 500)
    with pytest.raises(NotFoundError, match=f"no interface {inside}"):      # not in the caller's netns
        Forwarder([inside], mode="rxonly", backend="af_packet").open()
