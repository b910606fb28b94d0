"""Kernel-interface handoff on real namespaces: veth ends stand in for NICs, containers are processes in their own
net+mount namespaces, peers are named netns. Addresses from 198.18.0.0/15 only."""
import json
import os
import select
import socket
import subprocess
import time

import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

import hostfacts
from conftest import needs_root, unique
from dpdkeni import handoff, netdev
from dpdkeni.errors import GuardError, InputError, NotFoundError, StepError
from dpdkeni.ledger import Ledger

pytestmark = [needs_root]


def host_state(name):
    """What release must give back: name, MTU, up/down, addresses, altnames (None when not on the host)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        s = netdev.snapshot(ipr, idx[0])
    return {k: s[k] for k in ("ifname", "mtu", "up", "addresses", "altnames", "mac")}


def in_ns(ns, *argv, check=True):
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=check)


def prepare_nic(name, mtu=1400, up=True, altname=None, addresses=()):
    """Give a stand-in NIC some state worth restoring."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        ipr.link("set", index=idx, mtu=mtu)
        if altname:
            ipr.link("property_add", index=idx, altname=altname)
        for a in addresses:
            addr, plen = a.split("/")
            ipr.addr("add", index=idx, address=addr, prefixlen=int(plen))
        if up:
            ipr.link("set", index=idx, state="up")


def capture(ns, ifname):
    """A non-blocking AF_PACKET socket receiving every frame that arrives on ``ifname`` in ``ns``."""
    from pyroute2 import netns as pynetns
    pynetns.pushns(ns)
    try:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
        s.bind((ifname, 0))
    finally:
        pynetns.popns()
    s.setblocking(False)
    return s


def drain(sock):
    """The incoming frames queued on a capture socket (outgoing copies left out)."""
    out = []
    while True:
        try:
            data, addr = sock.recvfrom(65535)
        except BlockingIOError:
            return out
        if addr[2] != 4:  # PACKET_OUTGOING
            out.append(data)


def peer_ns(netns_factory, veth_factory, cidr):
    """A peer namespace holding the other end of a fresh veth, with ``cidr`` on it; returns (nic, ns, peer)."""
    ns = netns_factory()
    nic, peer = veth_factory(peer_netns=ns)
    addr, plen = cidr.split("/")
    in_ns(ns, "ip", "addr", "add", cidr, "dev", peer)
    in_ns(ns, "ip", "link", "set", peer, "up")
    return nic, ns, peer


@pytest.fixture
def env(state_dir, stand_in_models):
    return state_dir


def test_attach_traffic_release(env, netns_factory, veth_factory, container_factory):
    nic, ns, peer = peer_ns(netns_factory, veth_factory, "198.18.10.1/24")
    prepare_nic(nic, mtu=1400, altname=unique("dkalt"))
    before = host_state(nic)
    c = container_factory()
    lease = handoff.attach(nic, c.target, addresses=["198.18.10.2/24"], gateway="198.18.10.1", mtu=1500)
    assert lease.state == "attached" and lease.key == f"if:{nic}"
    assert host_state(nic) is None
    out = c.run("ip", "-j", "addr", "show", "eth0").stdout
    info = json.loads(out)[0]
    assert info["mtu"] == 1500 and "UP" in info["flags"]
    assert [a["local"] for a in info["addr_info"] if a["family"] == "inet"] == ["198.18.10.2"]
    assert "default via 198.18.10.1 dev eth0" in c.run("ip", "route").stdout
    ping = c.run("ping", "-c", "2", "-W", "2", "-i", "0.2", "198.18.10.1")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert Ledger().get(lease.key).params["index"]
    ended = handoff.release(nic)
    assert ended.params["outcome"] == "returned"
    assert host_state(nic) == before
    assert Ledger().leases() == {}
    assert "eth0" not in c.run("ip", "link").stdout


def test_release_restores_addresses_when_forced(env, veth_factory, container_factory):
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1280, up=False, addresses=["198.18.11.1/32"])
    before = host_state(nic)
    c = container_factory()
    with pytest.raises(GuardError, match="active"):
        handoff.attach(nic, c.target)
    handoff.attach(nic, c.target, ifname="net1", force=True)
    assert "net1" in c.run("ip", "link").stdout
    handoff.release(nic)
    assert host_state(nic) == before and before["addresses"] == ["198.18.11.1/32"] and not before["up"]


def test_same_target_is_noop_other_target_refused(env, veth_factory, container_factory, cli):
    nic, _ = veth_factory()
    c1, c2 = container_factory(), container_factory()
    first = handoff.attach(nic, c1.target)
    again = handoff.attach(nic, c1.target)
    assert again.created == first.created
    r = cli("attach", nic, "--to", c2.target)
    assert r.returncode == 3 and "already leased" in r.stderr and r.stderr.count("\n") == 1
    assert "eth0" in c1.run("ip", "link").stdout and "eth0" not in c2.run("ip", "link").stdout
    handoff.release(nic)


def test_unmanaged_model_refused_without_models_file(state_dir, veth_factory, container_factory, cli):
    nic, _ = veth_factory()
    c = container_factory()
    r = cli("attach", nic, "--to", c.target)
    assert r.returncode == 3 and "not a managed NIC model" in r.stderr
    assert host_state(nic) is not None and Ledger().leases() == {}


def test_guard_on_host_route_nic_dry_run(env, container_factory, cli):
    """The NIC the host's default route leaves by (found at run time) is refused as active."""
    found = hostfacts.route_nic()
    if found is None:
        pytest.skip("no PCI NIC carries the default route here")
    ifname, pci = found
    before = subprocess.run(["ip", "-j", "addr", "show", ifname], capture_output=True, text=True).stdout
    c = container_factory()
    r = cli("attach", ifname, "--to", c.target, "--dry-run")
    assert r.returncode == 3, r.stderr
    assert f"{pci} ({ifname}) is active" in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
    assert subprocess.run(["ip", "-j", "addr", "show", ifname], capture_output=True, text=True).stdout == before
    assert Ledger().leases() == {}


def test_dry_run_prints_plan_changes_nothing(env, veth_factory, container_factory, cli):
    nic, _ = veth_factory()
    before = host_state(nic)
    c = container_factory()
    r = cli("attach", nic, "--to", c.target, "--address", "198.18.12.2/24", "--gateway", "198.18.99.1",
            "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "move:" in r.stdout and "198.18.12.2/24" in r.stdout and "nothing changed" in r.stdout
    assert host_state(nic) == before and Ledger().leases() == {}
    r = cli("attach", nic, "--to", c.target, "--dry-run", "--json")
    assert json.loads(r.stdout)["state"] == "planned"


@pytest.mark.parametrize("args,msg", [
    (["--address", "198.18.0.300/24"], "bad address"), (["--address", "198.18.0.3"], "bad address"),
    (["--gateway", "nope"], "bad gateway"), (["--ifname", "a/b"], "bad interface name"),
    (["--mtu", "10"], "bad MTU"),
])
def test_bad_input_one_line_exit_2(env, veth_factory, container_factory, cli, args, msg):
    nic, _ = veth_factory()
    c = container_factory()
    r = cli("attach", nic, "--to", c.target, *args)
    assert r.returncode == 2 and msg in r.stderr and r.stderr.count("\n") == 1
    assert host_state(nic) is not None


def test_bad_target_exit_2(env, veth_factory, cli):
    nic, _ = veth_factory()
    r = cli("attach", nic, "--to", "pid:999999999")
    assert r.returncode == 2 and "no process" in r.stderr


def test_container_already_has_eth0(env, veth_factory, container_factory):
    nic, _ = veth_factory()
    prepare_nic(nic)
    before = host_state(nic)
    c = container_factory()
    c.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0")
    with pytest.raises(InputError, match="already has an interface named 'eth0'"):
        handoff.attach(nic, c.target)
    assert host_state(nic) == before and Ledger().leases() == {}
    handoff.attach(nic, c.target, ifname="eth1")
    assert "eth1" in c.run("ip", "link").stdout
    handoff.release(nic)
    assert host_state(nic) == before


def test_host_name_taken_at_release(env, veth_factory, container_factory, cli):
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400)
    c = container_factory()
    lease = handoff.attach(nic, c.target)
    with IPRoute() as ipr:  # a new link takes the NIC's original name on the host
        ipr.link("add", ifname=nic, kind="veth", peer=unique("dksq"))
    try:
        r = cli("release", nic)
        assert r.returncode == 3 and f"already has a link named '{nic}'" in r.stderr
        assert "eth0" in c.run("ip", "link").stdout  # nothing lost: still in the container, still leased
        assert Ledger().get(lease.key).state == "attached"
        ended = handoff.release(nic, force=True)
        assert ended.params["outcome"] == "returned"
        back = host_state(f"dkr{lease.original['index']}")
        assert back and back["mac"] == lease.original["mac"] and back["mtu"] == 1400
    finally:
        with IPRoute() as ipr:
            for name in (nic, f"dkr{lease.original['index']}"):
                for idx in ipr.link_lookup(ifname=name):
                    ipr.link("del", index=idx)


def test_failed_step_undoes_everything(env, veth_factory, container_factory, monkeypatch):
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400, altname=unique("dkalt"))
    before = host_state(nic)
    c = container_factory()

    def boom(*a, **kw):
        raise NetlinkError(22, "injected")

    monkeypatch.setattr(netdev, "add_routes", boom)
    with pytest.raises(StepError) as err:
        handoff.attach(nic, c.target, addresses=["198.18.13.2/24"], gateway="198.18.13.1", mtu=1500)
    assert err.value.step == "routes" and err.value.exit_code == 1
    assert host_state(nic) == before and Ledger().leases() == {}
    assert "eth0" not in c.run("ip", "link").stdout


def test_two_nics_replies_leave_by_their_own_nic(env, netns_factory, veth_factory, container_factory):
    """The cross-VPC case: each NIC has a gateway; a peer off-subnet pings each address; the reply must leave
    by the NIC the request came in on (per-NIC table + rule), checked with the peers' counters."""
    nic0, ns0, p0 = peer_ns(netns_factory, veth_factory, "198.18.20.1/24")
    nic1, ns1, p1 = peer_ns(netns_factory, veth_factory, "198.18.21.1/24")
    for ns, peer in ((ns0, p0), (ns1, p1)):  # the same remote client behind each gateway
        in_ns(ns, "ip", "addr", "add", "198.19.50.5/32", "dev", "lo")
        in_ns(ns, "ip", "link", "set", "lo", "up")
    c = container_factory()
    handoff.attach(nic0, c.target, ifname="eth0", addresses=["198.18.20.2/24"], gateway="198.18.20.1")
    l1 = handoff.attach(nic1, c.target, ifname="eth1", addresses=["198.18.21.2/24"], gateway="198.18.21.1")
    assert l1.params["table"]
    rules = c.run("ip", "rule").stdout
    assert "from 198.18.21.2 lookup" in rules

    def tx_packets(ns, dev):
        return json.loads(in_ns(ns, "ip", "-j", "-s", "link", "show", dev).stdout)[0]["stats64"]["rx"]["packets"]

    wrong = capture(ns0, p0)  # every frame arriving at peer 0 from now on
    try:
        before = tx_packets(ns1, p1)
        r = in_ns(ns1, "ping", "-c", "5", "-i", "0.2", "-W", "2", "-I", "198.19.50.5", "198.18.21.2", check=False)
        replies_via_eth0 = [f for f in drain(wrong) if f[12:14] == b"\x08\x00" and f[30:34] == bytes([198, 19, 50, 5])]
    finally:
        wrong.close()
    assert len(replies_via_eth0) == 0  # not one reply out through eth0 to peer 0
    assert r.returncode == 0, r.stdout + r.stderr
    assert tx_packets(ns1, p1) - before >= 5  # the replies came back to peer 1
    handoff.release(nic1)
    assert "from 198.18.21.2" not in c.run("ip", "rule").stdout
    handoff.release(nic0)
    assert host_state(nic0) and host_state(nic1)


def test_container_death_reclaim(env, netns_factory, veth_factory):
    """Synthetic container death: the target netns goes away and the NIC is back in the host's namespace as
    devN (as the kernel does with a real NIC); recover restores the name and settings and ends the lease."""
    ns = netns_factory()
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400, altname=unique("dkalt"))
    before = host_state(nic)
    handoff.attach(nic, f"netns:{ns}", addresses=["198.18.30.2/24"])
    devn = unique("dev")
    in_ns(ns, "ip", "link", "set", "eth0", "down")
    in_ns(ns, "ip", "link", "set", "eth0", "netns", str(os.getpid()), "name", devn)
    subprocess.run(["ip", "netns", "del", ns], check=True)
    done = handoff.recover()
    assert done == [{"key": f"if:{nic}", "action": "reclaimed", "detail": "reclaimed"}]
    assert host_state(nic) == before and Ledger().leases() == {}


def test_reclaim_for_the_daemon(env, netns_factory, veth_factory):
    ns = netns_factory()
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400)
    before = host_state(nic)
    handoff.attach(nic, f"netns:{ns}")
    devn = unique("dev")
    in_ns(ns, "ip", "link", "set", "eth0", "netns", str(os.getpid()), "name", devn)
    assert handoff.reclaim(devn)["action"] == "reclaimed"
    assert host_state(nic) == before and Ledger().leases() == {}
    assert handoff.reclaim(nic) is None


def test_gratuitous_arp_updates_the_peer(env, netns_factory, veth_factory, container_factory):
    """The peer had the address at another MAC: the kernel's GARP on up (arp_notify) corrects it at once."""
    nic, ns, peer = peer_ns(netns_factory, veth_factory, "198.18.14.1/24")
    in_ns(ns, "ip", "neigh", "replace", "198.18.14.2", "lladdr", "02:00:00:00:00:01", "dev", peer, "nud", "stale")
    time.sleep(1.2)  # the kernel ignores ARP for an entry updated less than locktime (1 s) ago
    c = container_factory()
    handoff.attach(nic, c.target, addresses=["198.18.14.2/24"])
    mac = Ledger().get(f"if:{nic}").original["mac"]
    assert wait_until(lambda: mac in in_ns(ns, "ip", "neigh", "show", "198.18.14.2").stdout)
    handoff.release(nic)


def wait_until(pred, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_cli_json_attach_release(env, veth_factory, container_factory, cli):
    nic, _ = veth_factory()
    c = container_factory()
    r = cli("attach", nic, "--to", c.target, "--ifname", "net0", "--address", "198.18.15.2/24", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["state"] == "attached" and doc["params"]["ifname"] == "net0" and doc["original"]["ifname"] == nic
    (lease,) = json.loads(cli("leases", "--json").stdout)  # the ledger, as the CLI shows it
    assert (lease["key"], lease["target"], lease["state"]) == (f"if:{nic}", c.target, "attached")
    table = cli("leases").stdout.splitlines()
    assert table[0].split() == ["NIC", "MODE", "STATE", "TARGET", "AS", "ADDRESSES", "SINCE", "WAS"]
    row = table[1].split()
    assert row[:6] == [f"if:{nic}", "netdev", "attached", c.target, "net0", "198.18.15.2/24"] and row[-1] == nic
    r = cli("release", nic, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["params"]["outcome"] == "returned"
    r = cli("release", nic, "--json")
    assert r.returncode == 0 and json.loads(r.stdout) is None
    assert json.loads(cli("leases", "--json").stdout) == [] and cli("leases").stderr.strip() == "no leases"


def test_name_taken_during_the_move_is_undone(env, veth_factory, container_factory, monkeypatch):
    """eth0 appears in the container after the check: the kernel moves the NIC, then fails the rename; the NIC
    must come back home, not stay inside under its host name."""
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400)
    before = host_state(nic)
    c = container_factory()
    real = netdev.index_in

    def racing_index(fd, ifname):
        if ifname == "eth0" and "eth0" not in c.run("ip", "link").stdout:
            c.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "x0")
            return None  # the check saw no eth0; it exists by the time of the move
        return real(fd, ifname)

    monkeypatch.setattr(netdev, "index_in", racing_index)
    with pytest.raises(StepError) as err:
        handoff.attach(nic, c.target)
    assert err.value.step == "move" and "exists" in str(err.value)
    assert host_state(nic) == before and Ledger().leases() == {}


def test_release_refuses_a_lease_another_process_is_working_on(env, veth_factory, container_factory):
    nic, _ = veth_factory()
    c = container_factory()
    handoff.attach(nic, c.target)
    Ledger().update(f"if:{nic}", state="attaching", owner_pid=c.pid)  # a live process, started before the lease
    with pytest.raises(GuardError, match=f"being attached by pid {c.pid}"):
        handoff.release(nic)
    assert "eth0" in c.run("ip", "link").stdout
    Ledger().update(f"if:{nic}", state="attached", owner_pid=os.getpid())
    handoff.release(nic)


def test_attach_many_and_release_many(env, veth_factory, container_factory):
    """A batch in threads: each NIC lands in its own container with its address; a bad request (no such NIC) is
    returned as its error without stopping the others; release_many brings every NIC back as it was."""
    nics = [veth_factory()[0] for _ in range(4)]
    for nic in nics:
        prepare_nic(nic, mtu=1400)
    before = {nic: host_state(nic) for nic in nics}
    cs = [container_factory() for _ in nics]
    reqs = [{"nic": nic, "target": c.target, "addresses": [f"198.18.50.{i + 2}/24"]}
            for i, (nic, c) in enumerate(zip(nics, cs))]
    reqs.insert(2, {"nic": "dknosuch0", "target": cs[0].target})
    out = handoff.attach_many(reqs, workers=3)
    assert isinstance(out[2], NotFoundError) and "dknosuch0" in str(out[2])
    leases = out[:2] + out[3:]
    assert [lease.state for lease in leases] == ["attached"] * 4
    for i, (nic, c, lease) in enumerate(zip(nics, cs, leases)):
        assert lease.key == f"if:{nic}" and lease.target == c.target
        assert f"198.18.50.{i + 2}/24" in c.run("ip", "addr", "show", "eth0").stdout
        assert host_state(nic) is None
    assert sorted(Ledger().leases()) == sorted(f"if:{nic}" for nic in nics)
    back = handoff.release_many(nics + ["dknosuch0"], workers=3)
    assert [b.params["outcome"] for b in back[:4]] == ["returned"] * 4 and back[4] is None
    assert {nic: host_state(nic) for nic in nics} == before and Ledger().leases() == {}


def test_a_route_alone_makes_an_up_link_active_and_a_down_link_is_read_without_route_dumps(netns_factory):
    """The active guard's snapshot (netdev.original) in a namespace of the test: a link that is up with only a
    route through it is active; a link that is down is not, and is decided without dumping routes (the kernel
    flushed them at down)."""
    from dpdkeni import netns as nsmod
    from dpdkeni.inventory import Nic

    fd = os.open(f"/run/netns/{netns_factory()}", os.O_RDONLY)
    try:
        with nsmod.entered(fd):
            ipr = IPRoute(strict_check=True)
    finally:
        os.close(fd)
    with ipr:
        ipr.link("add", ifname="dkr0", kind="veth", peer="dkr1")
        idx, peer = ipr.link_lookup(ifname="dkr0")[0], ipr.link_lookup(ifname="dkr1")[0]
        nic = Nic(pci=None, model="veth", ifname="dkr0")
        netdev.original(nic, ipr)
        assert not nic.active
        for i in (peer, idx):
            ipr.link("set", index=i, state="up")
        ipr.route("add", dst="198.18.12.0/24", oif=idx)
        netdev.original(nic, ipr)
        assert nic.active, "a route through it: it carries traffic"
        ipr.link("set", index=idx, state="down")
        assert list(ipr.get_routes(family=2, oif=idx)) == [], "the kernel flushed the route at down"
        netdev.original(nic, ipr)
        assert not nic.active


def test_a_watcher_sees_no_intermediate_name_on_the_host(env, veth_factory, container_factory):
    """Attach moves and renames in one step, release returns under the original name in one step: a Watcher
    running meanwhile sees the NIC leave the host under its own name and come back under it, and nothing else
    (no temporary name, no rename on the host)."""
    from dpdkeni.events import Watcher
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1400)
    mac = host_state(nic)["mac"]
    c = container_factory()

    def until(w, action):
        events, deadline = [], time.monotonic() + 20
        while not any(e.action == action for e in events) and time.monotonic() < deadline:
            events += w.poll(deadline - time.monotonic())
        return [(e.action, e.nic.ifname) for e in events]

    with IPRoute() as ipr:
        index = ipr.link_lookup(ifname=nic)[0]
    with Watcher(models=lambda n: n.model == "veth" and (n.mac or "").lower() == mac.lower()) as w, \
            IPRoute() as monitor:
        monitor.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)  # other suites make links too
        monitor.bind()  # every link message of the host's namespace, renames included, however brief
        handoff.attach(nic, c.target, ifname="eth0", addresses=["198.18.73.2/24"])
        assert until(w, "removed") == [("removed", nic)]
        handoff.release(nic)
        assert until(w, "added") == [("added", nic)]
        assert w.poll(0.5) == []
        names = []  # every message was queued before release returned (the kernel sends them in the call)
        while select.select([monitor], [], [], 0.2)[0]:
            names += [m.get_attr("IFLA_IFNAME") for m in monitor.get() if m["event"] == "RTM_NEWLINK"
                      and (m.get_attr("IFLA_ADDRESS") or "").lower() == mac.lower()]
    assert set(names) == {nic}, names
    assert host_state(nic)["mtu"] == 1400


def test_a_pci_nic_seen_under_its_kernel_name_is_attached_under_the_name_it_has_now(sysfs_tree, monkeypatch):
    """The daemon got the NIC's event while it still had its kernel name (eth0: udevd had not renamed it within
    the watcher's hold); by the attach udevd has named it enp1s0. The attach follows the PCI address to the
    netdev's name now, keeping what else the caller's Nic says; a NIC without a PCI address, or whose device is
    gone, is left as given (the attach then says what is wrong)."""
    import dataclasses

    from dpdkeni.inventory import Nic, pci_nic
    monkeypatch.setenv("DPDKENI_SYSFS_ROOT", sysfs_tree.root)
    bdf = "0000:01:00.0"
    sysfs_tree.add_nic(bdf, "virtio-net", ifname="enp1s0", mac="52:54:00:7e:00:31")
    seen = dataclasses.replace(pci_nic(bdf), ifname="eth0", active=True)
    now = handoff._current_name(seen)
    assert now == dataclasses.replace(seen, ifname="enp1s0")      # only the name changed
    assert handoff._current_name(now) is now
    veth = Nic(pci=None, model="veth", driver="veth", ifname="dkv1", mac="aa:bb:cc:00:00:01")
    assert handoff._current_name(veth) is veth
    gone = dataclasses.replace(seen, pci="0000:02:00.0")
    assert handoff._current_name(gone) is gone


@pytest.mark.parametrize("extra", ["none", "altname"])
def test_a_down_nic_comes_home_exactly_as_it_was(env, veth_factory, container_factory, extra):
    """A NIC that was down without addresses (the usual hot-plugged one) comes home from the move alone: named,
    its MTU, down (a moved link arrives down); one with an altname gets it back too."""
    nic, _ = veth_factory()
    prepare_nic(nic, mtu=1300, up=False, altname=unique("dkalt") if extra == "altname" else None)
    before = host_state(nic)
    assert before["up"] is False and before["addresses"] == [] and bool(before["altnames"]) == (extra == "altname")
    c = container_factory()
    handoff.attach(nic, c.target, ifname="net1", mtu=1500)  # up inside, as every attach
    assert json.loads(c.run("ip", "-j", "link", "show", "net1").stdout)[0]["mtu"] == 1500
    assert handoff.release(nic).params["outcome"] == "returned"
    assert host_state(nic) == before
