"""dpdkeni-cni driven exactly as a runtime drives it (``CNI_*`` environment, configuration on stdin, the binary as a
subprocess) on real network namespaces of this host, with a veth end as the stand-in NIC and Debian's host-local
as the IPAM plugin. Beside it, Debian's host-device binary runs the same NetworkAttachmentDefinition JSON."""
import json
import os
import threading
import time

import pytest
from pyroute2 import IPRoute, netns as pynetns

from conftest import needs_root, unique
from cnirun import HOST_DEVICE, mounts_under as _mounts_under, run_cni, with_prev

from dpdkeni import cnispec
from dpdkeni.ledger import Ledger

pytestmark = [needs_root, pytest.mark.skipif(not os.path.exists(HOST_DEVICE),
                                             reason="Debian containernetworking-plugins not installed")]


def _conf(tmp_path, version="1.1.0", subnet="198.18.60.0/24", **keys):
    return {"cniVersion": version, "name": unique("net"), "type": "dpdkeni-cni",
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(tmp_path / "ipam"),
                     "routes": [{"dst": "198.18.61.0/24"}]}, **keys}


def _link(name, ns=None):
    """(mac, mtu, up, altnames, alias) of a link, or None."""
    with IPRoute(netns=f"/run/netns/{ns}", flags=0) if ns else IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        alt = link.get_attr("IFLA_PROP_LIST")
        alts = alt.get_attrs("IFLA_ALT_IFNAME") if alt else []
        return (link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_MTU"), bool(link["flags"] & 1), alts,
                link.get_attr("IFLA_IFALIAS"))


def _addresses(name, ns):
    with IPRoute(netns=f"/run/netns/{ns}", flags=0) as ipr:
        idx = ipr.link_lookup(ifname=name)[0]
        return {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)}


def _ipam_leases(tmp_path, conf):
    path = tmp_path / "ipam" / conf["name"]
    return sorted(p for p in os.listdir(path) if p[0].isdigit()) if path.exists() else []


@pytest.fixture
def stand_in(veth_factory):
    """A veth end as the stand-in NIC, with an altname and MTU 1400 as udev and an operator might leave it."""
    nic, peer = veth_factory()
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=nic)[0]
        ipr.link("set", index=idx, mtu=1400, state="up")
        ipr.link("property_add", index=idx, altname=f"{nic}alt")
    return nic


def test_add_check_del_lifecycle_on_a_real_netns(tmp_path, state_dir, stand_in_models, netns_factory, stand_in):
    ns = netns_factory()
    conf = _conf(tmp_path, device=stand_in)
    mac, mtu, up, alts, _ = _link(stand_in)
    add = run_cni("ADD", conf, netns=f"/run/netns/{ns}")
    assert add.returncode == 0, add
    result = add.doc
    (ip,) = result["ips"]
    assert ip["address"].startswith("198.18.60.") and ip["interface"] == 0
    assert result["interfaces"][0] == {"name": "net1", "mac": mac, "sandbox": f"/run/netns/{ns}"}
    assert _link(stand_in) is None, "the NIC left the host namespace"
    assert _link("net1", ns)[0] == mac and ip["address"] in _addresses("net1", ns)
    assert _ipam_leases(tmp_path, conf) == [ip["address"].split("/")[0]]

    check = run_cni("CHECK", with_prev(conf, result), netns=f"/run/netns/{ns}")
    assert check.returncode == 0 and check.doc is None, check

    with IPRoute(netns=f"/run/netns/{ns}", flags=0) as ipr:  # remove the address by hand
        ipr.addr("del", index=ipr.link_lookup(ifname="net1")[0], address=ip["address"].split("/")[0],
                 prefixlen=24)
    bad = run_cni("CHECK", with_prev(conf, result), netns=f"/run/netns/{ns}")
    assert bad.returncode != 0 and bad.doc["code"] == cnispec.CHECK_FAILED, bad
    assert ip["address"] in bad.doc["details"]

    gone = run_cni("DEL", with_prev(conf, result), netns=f"/run/netns/{ns}")
    assert gone.returncode == 0 and gone.doc is None, gone
    assert _link(stand_in)[:4] == (mac, mtu, up, alts), "name, MAC, MTU, link state and altnames restored"
    assert _link("net1", ns) is None
    assert _ipam_leases(tmp_path, conf) == [] and Ledger().leases() == {}

    again = run_cni("DEL", with_prev(conf, result), netns=f"/run/netns/{ns}")
    assert again.returncode == 0, again


def test_del_with_the_netns_gone_brings_the_nic_home_and_frees_ledger_and_ipam(tmp_path, state_dir,
                                                                                stand_in_models, stand_in):
    """The pod's netns file is deleted before DEL (a veth would die with its namespace): ADD pinned the
    namespace under the state dir, so DEL still brings the NIC home under its own name, then unpins it."""
    ns = unique("dkns")
    pynetns.create(ns)
    mac, mtu, up, alts, _ = _link(stand_in)
    try:
        conf = _conf(tmp_path, device=stand_in)
        add = run_cni("ADD", conf, netns=f"/run/netns/{ns}", container_id="gone1")
        assert add.returncode == 0, add
        assert len(Ledger().leases()) == 1 and len(_ipam_leases(tmp_path, conf)) == 1
        assert len(_mounts_under(state_dir)) == 1, "the pod's netns is pinned"
    finally:
        pynetns.remove(ns)
    deleted = run_cni("DEL", with_prev(conf, add.doc), netns=f"/run/netns/{ns}", container_id="gone1")
    assert deleted.returncode == 0, deleted
    assert _link(stand_in)[:4] == (mac, mtu, up, alts), "home under its own name, MAC, MTU, state, altnames"
    assert Ledger().leases() == {} and _ipam_leases(tmp_path, conf) == []
    assert _mounts_under(state_dir) == [], "the pin is gone with the attachment"
    no_netns = run_cni("DEL", with_prev(conf, add.doc), container_id="gone1")  # CNI_NETNS unset
    assert no_netns.returncode == 0, no_netns


@pytest.mark.parametrize("key", ["device", "hwaddr"])
def test_the_same_nad_json_works_with_host_device_and_dpdkeni(tmp_path, state_dir, stand_in_models, netns_factory, veth_factory,
                                                              key):
    """A host-device NetworkAttachmentDefinition (cniVersion 0.3.1 as the OpenShift docs write it), run by
    Debian's host-device on one veth and, with only ``type`` changed, by dpdkeni-cni on another."""
    results = {}
    for plugin in (HOST_DEVICE, None):
        nic, _ = veth_factory()
        mac = _link(nic)[0]
        nad = {"cniVersion": "0.3.1", "name": "work-network", "type": "host-device",
               key: nic if key == "device" else mac,
               "ipam": {"type": "host-local", "subnet": "198.18.62.0/24", "dataDir": str(tmp_path / "ipam")}}
        if plugin is None:
            nad["type"] = "dpdkeni-cni"
        ns = f"/run/netns/{netns_factory()}"
        kw = {"binary": plugin} if plugin else {}
        cid = unique("ctr")
        add = run_cni("ADD", nad, netns=ns, container_id=cid, **kw)
        assert add.returncode == 0, (plugin, add)
        assert _link(nic) is None and _link("net1", ns.rsplit("/", 1)[1])[0] == mac
        results[plugin or "dpdkeni-cni"] = add.doc
        delete = run_cni("DEL", nad, netns=ns, container_id=cid, **kw)
        assert delete.returncode == 0, (plugin, delete)
        assert _link(nic)[0] == mac
    hd, ours = results[HOST_DEVICE], results["dpdkeni-cni"]
    assert hd["cniVersion"] == ours["cniVersion"] == "0.3.1"
    assert [sorted(i) for i in hd["ips"]] == [sorted(i) for i in ours["ips"]]
    assert hd["interfaces"][0].keys() == ours["interfaces"][0].keys()


def _set_alias(ns, name, alias):
    with IPRoute(netns=f"/run/netns/{ns}", flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], ifalias=alias)


def test_two_nics_same_ifname_names_from_the_ledger_not_the_alias(tmp_path, state_dir, stand_in_models,
                                                                   netns_factory, veth_factory):
    """Two NICs of one node as net1 in two pods; the link alias is overwritten inside each pod (host-device
    keeps the host name only there); DEL gives each NIC back under its own name."""
    conf = _conf(tmp_path, subnet="198.18.63.0/24")
    pods = []
    for i in range(2):
        nic, _ = veth_factory()
        ns = netns_factory()
        add = run_cni("ADD", {**conf, "device": nic}, netns=f"/run/netns/{ns}", container_id=f"pod{i}")
        assert add.returncode == 0, add
        _set_alias(ns, "net1", "clobbered")
        pods.append((nic, ns, add.doc))
    assert len(Ledger().leases()) == 2
    for i, (nic, ns, result) in enumerate(pods):
        delete = run_cni("DEL", with_prev({**conf, "device": nic}, result), netns=f"/run/netns/{ns}",
                         container_id=f"pod{i}")
        assert delete.returncode == 0, delete
        assert _link(nic)[0] == result["interfaces"][0]["mac"]
    assert Ledger().leases() == {} and _ipam_leases(tmp_path, conf) == []


def test_host_device_loses_the_nic_when_the_alias_is_gone(netns_factory, veth_factory):
    """The complaint the test above answers, shown on Debian's host-device: DEL fails, the NIC stays in the pod."""
    nic, _ = veth_factory()
    ns = netns_factory()
    conf = {"cniVersion": "1.0.0", "name": "hd", "type": "host-device", "device": nic}
    assert run_cni("ADD", conf, binary=HOST_DEVICE, netns=f"/run/netns/{ns}").returncode == 0
    _set_alias(ns, "net1", "")
    delete = run_cni("DEL", conf, binary=HOST_DEVICE, netns=f"/run/netns/{ns}")
    assert delete.returncode != 0 and "original name" in delete.doc["msg"], delete
    assert _link(nic) is None and _link("net1", ns) is not None


def test_add_waits_for_a_nic_being_hot_plugged(tmp_path, state_dir, stand_in_models, netns_factory):
    """ADD starts before the NIC exists (found by MAC); the NIC appears meanwhile; ADD hands it over."""
    ns = netns_factory()
    mac = "02:dd:%02x:%02x:00:01" % (os.getpid() % 256, (os.getpid() >> 8) % 256)
    nic, peer = unique("dkh"), unique("dkq")
    conf = _conf(tmp_path, subnet="198.18.64.0/24", hwaddr=mac, wait=30)
    result = {}
    adder = threading.Thread(target=lambda: result.update(run=run_cni("ADD", conf, netns=f"/run/netns/{ns}")))
    adder.start()
    try:
        time.sleep(0.5)  # let ADD start waiting (the test passes either way: it is not timing anything)
        with IPRoute() as ipr:
            ipr.link("add", ifname=nic, kind="veth", peer=peer, address=mac)
        adder.join(60)
        run = result["run"]
        assert run.returncode == 0, run
        assert run.doc["interfaces"][0]["mac"] == mac and _link("net1", ns)[0] == mac
        assert run_cni("DEL", with_prev(conf, run.doc), netns=f"/run/netns/{ns}").returncode == 0
        assert _link(nic)[0] == mac
    finally:
        adder.join(60)
        with IPRoute() as ipr:
            for idx in (ipr.link_lookup(ifname=nic) + ipr.link_lookup(ifname=peer))[:1]:
                ipr.link("del", index=idx)  # the pair goes with either end


def test_static_addresses_without_ipam(tmp_path, state_dir, stand_in_models, netns_factory, stand_in):
    ns = netns_factory()
    conf = {"cniVersion": "1.0.0", "name": unique("net"), "type": "dpdkeni-cni", "device": stand_in,
            "addresses": ["198.18.65.2/24"], "gateway": "198.18.65.1", "mtu": 1300}
    add = run_cni("ADD", conf, netns=f"/run/netns/{ns}")
    assert add.returncode == 0, add
    assert add.doc["ips"] == [{"address": "198.18.65.2/24", "gateway": "198.18.65.1", "interface": 0}]
    assert add.doc["routes"] == [{"dst": "0.0.0.0/0", "gw": "198.18.65.1"}]
    assert _addresses("net1", ns) >= {"198.18.65.2/24"} and _link("net1", ns)[1] == 1300
    assert run_cni("CHECK", with_prev(conf, add.doc), netns=f"/run/netns/{ns}").returncode == 0
    with IPRoute(netns=f"/run/netns/{ns}", flags=0) as ipr:  # the default route goes missing
        ipr.route("del", dst="0.0.0.0/0", gateway="198.18.65.1")
    bad = run_cni("CHECK", with_prev(conf, add.doc), netns=f"/run/netns/{ns}")
    assert bad.doc["code"] == cnispec.CHECK_FAILED and "0.0.0.0/0 via 198.18.65.1" in bad.doc["details"], bad
    assert run_cni("DEL", conf, netns=f"/run/netns/{ns}").returncode == 0
    assert _link(stand_in)[1] == 1400


def test_find_nic_fast_path_matches_the_full_scan(state_dir, veth_factory):
    """find_nic looks a virtual link up by name or MAC without enumerating every device (what keeps ADD short);
    it must find exactly what the full inventory has."""
    from dpdkeni.inventory import find_nic, list_nics

    nic, _ = veth_factory()
    full = next(n for n in list_nics(all=True) if n.ifname == nic)
    assert full.model == "veth"
    assert find_nic(nic) == full
    assert find_nic(full.mac) == full


def test_dpdk_mode_targets_a_process_in_the_pods_netns(netns_factory, container_factory):
    """DPDK mode needs a process for the vfio nodes and the hugetlbfs mount: /proc/N/ns/net names it, a pod's
    netns file is matched to the process living in it (its sandbox), an empty netns is refused with a pointer
    to CDI (error 7)."""
    import subprocess

    from dpdkeni import cni

    box = container_factory()
    assert cni.dpdk_target(f"/proc/{box.pid}/ns/net").pid == box.pid
    ns = netns_factory()
    with pytest.raises(cnispec.CniError) as err:
        cni.dpdk_target(f"/run/netns/{ns}")
    assert err.value.code == cnispec.INVALID_CONFIG and "CDI" in err.value.details
    sandbox = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", "sleep", "60"])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and os.readlink(f"/proc/{sandbox.pid}/exe").find("sleep") < 0:
            time.sleep(0.01)
        target = cni.dpdk_target(f"/run/netns/{ns}")
        assert target.pid == sandbox.pid and target.path == f"/run/netns/{ns}"
    finally:
        sandbox.kill()
        sandbox.wait()


def test_gc_releases_attachments_the_runtime_no_longer_lists(tmp_path, state_dir, stand_in_models, netns_factory,
                                                             veth_factory):
    """CNI 1.1 GC: of two pods' NICs, the one missing from cni.dev/valid-attachments goes home; IPAM GC frees its
    address."""
    conf = _conf(tmp_path, subnet="198.18.67.0/24")
    nics = []
    for i in range(2):
        nic, _ = veth_factory()
        ns = netns_factory()
        assert run_cni("ADD", {**conf, "device": nic}, netns=f"/run/netns/{ns}", container_id=f"gc{i}").returncode == 0
        nics.append(nic)
    gc_conf = {**conf, "device": nics[0], "cni.dev/valid-attachments": [{"containerID": "gc0", "ifname": "net1"}]}
    gc = run_cni("GC", gc_conf)
    assert gc.returncode == 0, gc
    assert _link(nics[0]) is None and _link(nics[1]) is not None, "gc1's NIC is back, gc0's stays in its pod"
    assert list(Ledger().leases()) == [f"if:{nics[0]}"] and len(_ipam_leases(tmp_path, conf)) == 1


def test_del_renames_a_returned_nic_that_udev_gave_its_name_as_altname(tmp_path, state_dir, stand_in_models,
                                                                       stand_in):
    """What a real NIC goes through when its pod's netns dies (the lab test shows it on virtio-net): it lands in
    the host namespace under another name and udev adds its predictable name -- the original -- as an altname.
    DEL still gives it its own name back."""
    ns = unique("dkns")
    pynetns.create(ns)
    conf = _conf(tmp_path, subnet="198.18.68.0/24", device=stand_in)
    try:
        add = run_cni("ADD", conf, netns=f"/run/netns/{ns}", container_id="back1")
        assert add.returncode == 0, add
        with IPRoute(netns=f"/run/netns/{ns}", flags=0) as ipr, open("/proc/self/ns/net") as root:
            ipr.link("set", index=ipr.link_lookup(ifname="net1")[0], net_ns_fd=root.fileno(), ifname="dev7x")
    finally:
        pynetns.remove(ns)
    with IPRoute() as ipr:
        ipr.link("property_add", index=ipr.link_lookup(ifname="dev7x")[0], altname=stand_in)
    deleted = run_cni("DEL", conf, netns=f"/run/netns/{ns}", container_id="back1")
    assert deleted.returncode == 0, deleted
    assert _link("dev7x") is None and _link(stand_in)[0] == add.doc["interfaces"][0]["mac"]
    assert Ledger().leases() == {}


def test_benchmark_runs_both_plugins_on_the_same_nics(monkeypatch):
    """benchmarks/cni.py, one round: both plugins (dpdkeni-cni alone and through its server) measured, the
    reference named as Debian's build."""
    import subprocess
    import sys

    monkeypatch.delenv("DPDKENI_MODELS", raising=False)  # the benchmark sets up its own stand-in models file
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "cni.py")
    out = subprocess.run([sys.executable, script, "--rounds", "1", "--json"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert "Debian containernetworking-plugins" in doc["reference"]
    rows = {r["plugin"]: r for r in doc["rows"]}
    assert set(rows) == {"host-device", "dpdkeni-cni", "dpdkeni-cni+serve"}
    assert rows["host-device"]["ratio_p50"] == 1.0
    assert rows["dpdkeni-cni"]["runs"] == rows["dpdkeni-cni+serve"]["runs"] == rows["host-device"]["runs"] == 1


def test_the_binary_hands_calls_to_the_resident_server(tmp_path, state_dir, netns_factory, stand_in, cni_server):
    """With ``dpdkeni cni serve`` up, dpdkeni-cni (stdlib only) passes ADD, CHECK and DEL to it: the same results
    as in-process, and the server logs each call. SIGTERM stops it and removes its socket."""
    sock, proc = cni_server
    ns, via = netns_factory(), {"DPDKENI_CNI_SOCKET": sock}
    conf = _conf(tmp_path, subnet="198.18.62.0/24", device=stand_in)
    mac = _link(stand_in)[0]
    add = run_cni("ADD", conf, netns=f"/run/netns/{ns}", extra_env=via)
    assert add.returncode == 0, add
    assert add.doc["interfaces"][0] == {"name": "net1", "mac": mac, "sandbox": f"/run/netns/{ns}"}
    assert _link("net1", ns)[0] == mac
    check = run_cni("CHECK", with_prev(conf, add.doc), netns=f"/run/netns/{ns}", extra_env=via)
    assert check.returncode == 0 and check.doc is None, check
    bad = run_cni("ADD", {**conf, "device": "nosuchnic0", "wait": 0}, netns=f"/run/netns/{ns}", extra_env=via)
    assert bad.returncode == 1 and bad.doc["code"] == 11 and "nosuchnic0 not found" in bad.doc["msg"], bad
    gone = run_cni("DEL", with_prev(conf, add.doc), netns=f"/run/netns/{ns}", extra_env=via)
    assert gone.returncode == 0 and _link(stand_in)[0] == mac and Ledger().leases() == {}
    proc.send_signal(15)
    assert proc.wait(timeout=30) == 0 and not os.path.exists(sock)
    log = proc.stderr.read()
    for call in ("ADD c0ffee net1 -> 0", "CHECK c0ffee net1 -> 0", "ADD c0ffee net1 -> 1", "DEL c0ffee net1 -> 0"):
        assert call in log, log


def test_an_ipam_failure_during_add_leaves_the_nic_home_and_nothing_behind(tmp_path, state_dir, stand_in_models,
                                                                           netns_factory, stand_in):
    """IPAM runs while the kernel moves the NIC: when it fails (here host-local with a range outside its
    subnet), the NIC that already moved comes back, and the error is IPAM's own."""
    ns = netns_factory()
    mac, mtu, up, alts, _ = _link(stand_in)
    conf = _conf(tmp_path, subnet="198.18.69.0/24", device=stand_in)
    conf["ipam"]["rangeStart"] = "198.18.70.5"
    add = run_cni("ADD", conf, netns=f"/run/netns/{ns}")
    assert add.returncode == 1 and add.doc["msg"].startswith("host-local"), add
    assert _link(stand_in)[:4] == (mac, mtu, up, alts) and _link("net1", ns) is None
    assert Ledger().leases() == {} and _mounts_under(state_dir) == []
    assert os.listdir(os.path.join(state_dir, "cni")) == []
