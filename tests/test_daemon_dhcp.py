"""32 NICs at once through the daemon, each with a DHCP rule, against dnsmasq (Debian's dnsmasq-base) on a
bridge in a server namespace: all are configured in about the time of one exchange, not 32 of them. The figures
(one NIC alone, then 32 at once) are logged; README and DESIGN give them."""
from __future__ import annotations

import ipaddress
import logging
import subprocess
import time

import hostfacts
import psutil
import pytest
from conftest import needs_root
from test_daemon import prefix, running, wait_until  # noqa: F401  (fixtures)

from dpdkeni.events import Watcher

DNSMASQ = hostfacts.command("dnsmasq")
pytestmark = [needs_root, pytest.mark.skipif(DNSMASQ is None, reason="dnsmasq not installed")]
log = logging.getLogger(__name__)
COUNT = 32


def _sh(*argv):
    subprocess.run(argv, check=True, capture_output=True, timeout=60)


@pytest.fixture
def dhcp_servers(netns_factory, tmp_path):
    """``serve(names)``: for each NIC name, a veth pair whose host end is ``name + 'x'`` (matching no rule yet)
    and whose peer is in a server netns of its own with dnsmasq on it (198.18.61.1/24, offering .10-.200): each
    exchange is a real one with dnsmasq's defaults (it pings an address before it offers it, about 3 s), and
    the servers do not queue behind each other. All are stopped at teardown."""
    procs = []

    def serve(names):
        for name in names:
            ns, peer = netns_factory(), name[:-1] + "p" + name[-1]
            _sh("ip", "link", "add", name + "x", "type", "veth", "peer", "name", peer, "netns", ns)
            _sh("ip", "netns", "exec", ns, "ip", "addr", "add", "198.18.61.1/24", "dev", peer)
            _sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, DNSMASQ, "--no-daemon", "--conf-file=/dev/null", "--port=0",
                 f"--interface={peer}", "--bind-interfaces",
                 "--dhcp-range=198.18.61.10,198.18.61.200,255.255.255.0,10m",
                 "--dhcp-option=option:router,198.18.61.1", f"--dhcp-leasefile={tmp_path / (name + '.leases')}",
                 "--pid-file", "--user=root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    yield serve
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(10)


@pytest.fixture
def no_client_left(state_dir):
    yield
    for p in psutil.process_iter(["cmdline"]):  # a failed test must not leave a DHCP client behind
        if "dpdkeni.dhcp" in (p.info["cmdline"] or []) and state_dir in (p.info["cmdline"] or []):
            p.kill()


def _placed(daemon, keys, timeout):
    """Wait until every NIC of ``keys`` has its decision; returns {key: seconds since the call}."""
    t0, when = time.monotonic(), {}
    deadline = t0 + timeout
    while len(when) < len(keys):
        assert time.monotonic() < deadline, [d for d in daemon.decisions if d.get("nic") in keys]
        for d in daemon.decisions:
            if d.get("nic") in keys and d["nic"] not in when and d["decision"] != "ignore":
                when[d["nic"]] = time.monotonic() - t0
        time.sleep(0.02)
    return when


def test_32_nics_with_dhcp_are_configured_in_about_the_time_of_one_exchange(
        state_dir, stand_in_models, container_factory, prefix, running, dhcp_servers, no_client_left):  # noqa: F811
    names = [f"{prefix}{i:02d}" for i in range(COUNT + 1)]  # the first one alone, for the baseline
    boxes = [container_factory() for _ in names]
    policy = "".join(f'[[rule]]\nname = "n{i}"\nmatch = {{ ifname = "{n}" }}\ntarget = "{b.target}"\n'
                     f'ifname = "eth1"\ndhcp = true\n\n' for i, (n, b) in enumerate(zip(names, boxes)))
    mine = lambda nic: nic.model == "veth" and (nic.ifname or "").startswith(prefix)  # noqa: E731
    daemon = running(policy, Watcher(source="kernel", models=mine, existing=True))
    dhcp_servers(names)
    rename = lambda n: _sh("ip", "link", "set", n + "x", "name", n)  # noqa: E731  # now it matches its rule

    rename(names[0])
    one = _placed(daemon, {f"if:{names[0]}"}, 60)[f"if:{names[0]}"]
    t0 = time.monotonic()
    for n in names[1:]:
        rename(n)
    renamed = time.monotonic() - t0
    when = _placed(daemon, {f"if:{n}" for n in names[1:]}, 180)
    total = max(when.values()) + renamed
    log.info("one NIC alone: %.2f s; %d NICs at once: all configured %.2f s after the first rename (renames "
             "took %.2f s; first done %.2f s, median %.2f s)", one, COUNT, total, renamed, min(when.values()),
             sorted(when.values())[COUNT // 2])
    decisions = [d for d in daemon.decisions if d["decision"] not in ("ignore",)]
    assert [d["decision"] for d in decisions] == ["attached"] * (COUNT + 1), decisions
    got = []
    for b in boxes:
        out = b.run("ip", "-4", "-o", "addr", "show", "dev", "eth1").stdout.split()
        got.append(ipaddress.ip_interface(out[out.index("inet") + 1]))
    assert len(got) == COUNT + 1 and all(a.network == ipaddress.ip_network("198.18.61.0/24") for a in got)
    # one after the other: 32 x one (about 105 s); 8 at a time (the daemon's pool before): 14.9 s. At once: one
    # exchange plus the CPU of 32 moves and 32 DHCP client processes on 2 cores (6.8 s measured, one 3.2 s); the
    # bound leaves a loaded machine twice that CPU time
    assert total < 3 * one + 4.0, f"{COUNT} NICs took {total:.1f} s, one alone {one:.1f} s"
    for b in boxes:
        b.kill()
    wait_until(lambda: sum(d["decision"] == "released" for d in daemon.decisions) == COUNT + 1, "the reclaims", 120)
