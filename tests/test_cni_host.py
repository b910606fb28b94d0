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
from cnirun import DEBIAN_CNI_DIR, DPDKENI_CNI, HOST_DEVICE, mounts_under as _mounts_under, run_cni, with_prev

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
    """ADD starts before the NIC exists (found by MAC) and says it is waiting; only then does the NIC appear, and
    ADD hands it over: the NIC was found by the wait, not by the first look."""
    import subprocess
    ns = netns_factory()
    mac = "02:dd:%02x:%02x:00:01" % (os.getpid() % 256, (os.getpid() >> 8) % 256)
    nic, peer = unique("dkh"), unique("dkq")
    conf = _conf(tmp_path, subnet="198.18.64.0/24", hwaddr=mac, wait=30)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CNI_")}, "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": "c0ffee", "CNI_IFNAME": "net1", "CNI_PATH": DEBIAN_CNI_DIR,
           "CNI_NETNS": f"/run/netns/{ns}", "DPDKENI_CNI_DEBUG": "1", "DPDKENI_CNI_SOCKET": str(tmp_path / "none")}
    proc = subprocess.Popen([DPDKENI_CNI], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env)
    lines, waiting = [], threading.Event()

    def read_log():  # the debug log can be long: read all of it, and say when the plugin is waiting
        for line in proc.stderr:
            lines.append(line.decode(errors="replace"))
            if f"NIC {mac} is not here yet: waiting up to 30 s" in lines[-1]:
                waiting.set()

    reader = threading.Thread(target=read_log)
    reader.start()
    try:
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
        assert waiting.wait(60), "".join(lines)
        with IPRoute() as ipr:
            ipr.link("add", ifname=nic, kind="veth", peer=peer, address=mac)
        out = proc.stdout.read()
        assert proc.wait(60) == 0, (out, "".join(lines))
        doc = json.loads(out)
        assert doc["interfaces"][0]["mac"] == mac and _link("net1", ns)[0] == mac
        assert run_cni("DEL", with_prev(conf, doc), netns=f"/run/netns/{ns}").returncode == 0
        assert _link(nic)[0] == mac
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(60)
        reader.join(60)
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
    assert rows["dpdkeni-cni"]["runs"] == rows["dpdkeni-cni+serve"]["runs"] == rows["host-device"]["runs"] == 1
    # each row ran its own plugin: Debian's Go host-device, and dpdkeni's entry point (alone and served)
    assert rows["host-device"]["binary"] == HOST_DEVICE
    assert os.path.basename(rows["dpdkeni-cni"]["binary"]) == "dpdkeni-cni" == \
        os.path.basename(rows["dpdkeni-cni+serve"]["binary"])
    # every ratio is that row against host-device's row (not a row against itself)
    ref = rows["host-device"]
    for r in rows.values():
        for ratio, key in (("ratio_p50", "p50_ms"), ("ratio_cpu_p50", "cpu_p50_ms")):  # within their rounding
            exact = r[key] / ref[key]  # from values rounded to 0.05 ms; the ratio itself to 0.005
            slack = exact * (0.05 / max(r[key], 0.05) + 0.05 / ref[key]) + 0.006
            assert abs(r[ratio] - exact) <= slack, (ratio, r, ref)
    # and the work was done by the plugin each row names: after each dpdkeni ADD its ledger held the NIC
    assert [rows[p]["leased"] for p in ("host-device", "dpdkeni-cni", "dpdkeni-cni+serve")] == [0, 1, 1], rows


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


def test_the_clients_state_dir_decides_with_and_without_the_server(tmp_path, state_dir, netns_factory, stand_in,
                                                                   cni_server):
    """The server was started with the test's state dir; a client whose DPDKENI_STATE_DIR names another one gets
    its lease, its CNI record and its netns pin there, and the same result document, exactly as the same client
    with no server (the plugin in-process): the server serves each call with the host of the client's
    environment (dpdkeni.host), not its own."""
    sock, proc = cni_server
    other = tmp_path / "client-state"
    other.mkdir(mode=0o700)
    ns = netns_factory()
    conf = _conf(tmp_path, subnet="198.18.63.0/24", device=stand_in)
    seen = []
    for n, via in enumerate((sock, str(tmp_path / "no-server.sock"))):
        env = {"DPDKENI_CNI_SOCKET": via, "DPDKENI_STATE_DIR": str(other)}
        conf["ipam"]["dataDir"] = str(tmp_path / f"ipam{n}")  # host-local would hand out the next address
        add = run_cni("ADD", conf, netns=f"/run/netns/{ns}", extra_env=env)
        assert add.returncode == 0, add
        leases = Ledger(str(other)).leases()
        records = sorted(os.listdir(other / "cni"))
        seen.append((add.doc, sorted(leases), [leases[k].target for k in leases], records))
        assert Ledger(state_dir).leases() == {} and not os.path.exists(os.path.join(state_dir, "cni")), via
        gone = run_cni("DEL", with_prev(conf, add.doc), netns=f"/run/netns/{ns}", extra_env=env)
        assert gone.returncode == 0 and Ledger(str(other)).leases() == {} and os.listdir(other / "cni") == []
    assert seen[0] == seen[1] and seen[0][1] == [f"if:{stand_in}"] and len(seen[0][3]) == 2  # record + pin
    proc.send_signal(15)
    assert proc.wait(timeout=30) == 0
    log = proc.stderr.read()
    assert log.count("ADD c0ffee net1 -> 0") == 1 and log.count("DEL c0ffee net1 -> 0") == 1, log  # 1st only


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


@pytest.fixture
def open_cni_server(open_dir, tmp_path, state_dir, stand_in_models):
    """``dpdkeni -v cni serve`` with its socket in a directory any user may traverse (only the socket's own mode
    and the server's peer check stand), its log in a file: (socket, process, log path)."""
    import subprocess
    import sys
    sock, logpath = os.path.join(open_dir, "cni.sock"), str(tmp_path / "serve.log")
    with open(logpath, "w") as logf:
        proc = subprocess.Popen([sys.executable, "-m", "dpdkeni", "-v", "cni", "serve", "--socket", sock],
                                stderr=logf)
    try:
        assert _wait_log(logpath, "cni server listening"), open(logpath).read()
        yield sock, proc, logpath
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_log(path, text, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(path) as f:
            if text in f.read():
                return True
        time.sleep(0.05)
    return False


def test_cni_server_refuses_a_non_root_peer(open_cni_server):
    """A real uid 65534 process: the 0600 socket refuses its connect; with the socket opened up to it, the server
    reads its credentials (SO_PEERCRED), logs the refusal and closes without running the call. Root is served."""
    import errno
    import socket
    from conftest import as_nobody
    from dpdkeni.cni_client import encode_request
    sock, proc, logpath = open_cni_server
    request = encode_request({"CNI_COMMAND": "VERSION", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1"},
                             b'{"cniVersion": "1.0.0"}')
    assert as_nobody("stream", sock, request) == {"errno": errno.EACCES, "reply": None}
    os.chmod(sock, 0o666)
    # closed unread, never an answer: an empty reply, a reset (the request was in flight), or a broken pipe (the
    # server had closed before the peer's send: it checks credentials at accept, before it reads anything)
    got = as_nobody("stream", sock, request)
    assert got in ({"errno": 0, "reply": ""}, {"errno": errno.ECONNRESET, "reply": None},
                   {"errno": errno.EPIPE, "reply": None}), got
    assert _wait_log(logpath, "uid 65534 refused (root only)"), open(logpath).read()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(sock)
        s.sendall(request)
        with s.makefile("rb") as f:
            reply = json.loads(f.readline())
    assert reply["rc"] == 0 and "supportedVersions" in json.loads(reply["stdout"])
    assert open(logpath).read().count("VERSION c1 net1 -> 0") == 1  # only root's call ran


def test_two_concurrent_cni_serve_calls(tmp_path, netns_factory, veth_factory, open_cni_server):
    """The server runs calls side by side: an ADD waiting for a NIC that is not plugged yet does not hold up an
    ADD for another NIC, which completes while the first still waits; then the first NIC comes and its ADD
    completes too. Each pod has its own NIC."""
    import subprocess
    sock, proc, logpath = open_cni_server
    via = {"DPDKENI_CNI_SOCKET": sock}
    ns1, ns2 = netns_factory(), netns_factory()
    mac = "02:dd:%02x:%02x:00:02" % (os.getpid() % 256, (os.getpid() >> 8) % 256)
    late, late_peer = unique("dkh"), unique("dkq")
    first_conf = _conf(tmp_path, subnet="198.18.66.0/24", hwaddr=mac, wait=20)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CNI_")}, **via, "CNI_COMMAND": "ADD",
           "CNI_CONTAINERID": "first", "CNI_IFNAME": "net1", "CNI_PATH": DEBIAN_CNI_DIR,
           "CNI_NETNS": f"/run/netns/{ns1}"}
    first = subprocess.Popen([DPDKENI_CNI], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        first.stdin.write(json.dumps(first_conf).encode())
        first.stdin.close()
        assert _wait_log(logpath, f"NIC {mac} is not here yet: waiting"), open(logpath).read()
        nic2, _ = veth_factory()
        second_conf = _conf(tmp_path, subnet="198.18.67.0/24", device=nic2)
        second = run_cni("ADD", second_conf, netns=f"/run/netns/{ns2}", container_id="second", extra_env=via)
        assert second.returncode == 0, second
        assert first.poll() is None, "the first ADD ended before the second: the calls did not run side by side"
        with IPRoute() as ipr:
            ipr.link("add", ifname=late, kind="veth", peer=late_peer, address=mac)
        out = first.stdout.read()
        assert first.wait(60) == 0, out
        assert json.loads(out)["interfaces"][0]["mac"] == mac and _link("net1", ns1)[0] == mac
        assert _link("net1", ns2)[0] == second.doc["interfaces"][0]["mac"]
        assert len(Ledger().leases()) == 2
        assert run_cni("DEL", with_prev(second_conf, second.doc), netns=f"/run/netns/{ns2}", container_id="second",
                       extra_env=via).returncode == 0
        assert run_cni("DEL", with_prev(first_conf, json.loads(out)), netns=f"/run/netns/{ns1}",
                       container_id="first", extra_env=via).returncode == 0
        assert Ledger().leases() == {}
    finally:
        if first.poll() is None:
            first.kill()
        first.wait(60)
        with IPRoute() as ipr:
            for idx in (ipr.link_lookup(ifname=late) + ipr.link_lookup(ifname=late_peer))[:1]:
                ipr.link("del", index=idx)


def _nothing_done(tmp_path, conf, nic, before):
    """The NIC is on the host as it was; no lease, no CNI record, no IPAM address."""
    from dpdkeni.cni import records_dir
    assert _link(nic) == before
    assert Ledger().leases() == {}
    assert not os.path.isdir(records_dir()) or os.listdir(records_dir()) == []
    assert _ipam_leases(tmp_path, conf) == []


def test_error_codes_100_101_103_3_5(tmp_path, state_dir, stand_in_models, netns_factory, stand_in):
    """Each failure is the spec's JSON with its own code, and nothing is left half-done: 100 a handoff step
    failed (a route via an unreachable gateway), 101 a guard refused (the NIC has an address on the host), 103
    the IPAM plugin failed, 3 the pod's netns is gone, 5 the CNI record cannot be read."""
    ns = netns_factory()
    before = _link(stand_in)

    def add(conf, netns=f"/run/netns/{ns}"):
        run = run_cni("ADD", conf, netns=netns)
        assert run.returncode == 1 and set(run.doc) >= {"code", "msg"}, run
        return run.doc

    conf = _conf(tmp_path, subnet="198.18.68.0/24", device=stand_in)
    doc = add({**conf, "routes": [{"dst": "198.18.69.0/24", "gw": "198.19.99.99"}]})
    assert doc["code"] == cnispec.HANDOFF_FAILED and doc["msg"].startswith("adding route"), doc
    _nothing_done(tmp_path, conf, stand_in, before)

    with IPRoute() as ipr:
        ipr.addr("add", index=ipr.link_lookup(ifname=stand_in)[0], address="198.18.70.5", prefixlen=24)
    doc = add(conf)
    assert doc["code"] == cnispec.GUARD_REFUSED and "is active" in doc["msg"], doc
    with IPRoute() as ipr:
        ipr.addr("del", index=ipr.link_lookup(ifname=stand_in)[0], address="198.18.70.5", prefixlen=24)
    _nothing_done(tmp_path, conf, stand_in, before)

    plugins = tmp_path / "plugins"  # an IPAM plugin that fails without the spec's JSON (a crash)
    plugins.mkdir()
    (plugins / "dkbroken").write_text("#!/bin/sh\necho 'panic: oops' >&2\nexit 2\n")
    os.chmod(plugins / "dkbroken", 0o755)
    run = run_cni("ADD", {**conf, "ipam": {"type": "dkbroken"}}, netns=f"/run/netns/{ns}",
                  cni_path=f"{plugins}:{DEBIAN_CNI_DIR}")
    assert run.returncode == 1 and run.doc["code"] == cnispec.IPAM_FAILED, run
    assert run.doc["msg"] == "dkbroken ADD failed with exit status 2" and "panic: oops" in run.doc["details"], run
    _nothing_done(tmp_path, conf, stand_in, before)

    doc = add(conf, netns=f"/run/netns/{unique('gone')}")
    assert doc["code"] == cnispec.UNKNOWN_CONTAINER, doc
    _nothing_done(tmp_path, conf, stand_in, before)

    ok = run_cni("ADD", conf, netns=f"/run/netns/{ns}")
    assert ok.returncode == 0, ok
    from dpdkeni.cni import records_dir
    (record,) = [n for n in os.listdir(records_dir()) if n.endswith(".json")]  # beside it: the netns pin
    with open(os.path.join(records_dir(), record), "w") as f:
        f.write("{not json")
    bad = run_cni("DEL", with_prev(conf, ok.doc), netns=f"/run/netns/{ns}")
    assert bad.returncode == 1 and bad.doc["code"] == cnispec.IO_FAILURE and "unreadable" in bad.doc["msg"], bad
    handoff_release_all()


def handoff_release_all():
    from dpdkeni import handoff
    for key in list(Ledger().leases()):
        handoff.release(key, force=True)


def test_check_notices_a_changed_mac(tmp_path, state_dir, stand_in_models, netns_factory, stand_in):
    ns = netns_factory()
    conf = _conf(tmp_path, subnet="198.18.71.0/24", device=stand_in)
    add = run_cni("ADD", conf, netns=f"/run/netns/{ns}")
    assert add.returncode == 0, add
    with IPRoute(netns=f"/run/netns/{ns}", flags=0) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="net1")[0], address="02:00:00:00:71:71")
    bad = run_cni("CHECK", with_prev(conf, add.doc), netns=f"/run/netns/{ns}")
    assert bad.returncode == 1 and bad.doc["code"] == cnispec.CHECK_FAILED, bad
    assert "02:00:00:00:71:71" in bad.doc["msg"] + bad.doc.get("details", ""), bad
    assert run_cni("DEL", with_prev(conf, add.doc), netns=f"/run/netns/{ns}").returncode == 0


@pytest.mark.parametrize("step", ["move", "addresses", "up"])
def test_a_crash_in_the_middle_of_add_then_del_leaves_nothing(tmp_path, state_dir, stand_in_models, netns_factory,
                                                             stand_in, step):
    """The plugin is SIGKILLed right after a step of ADD (as a runtime's timeout or an OOM kill would); the
    runtime then calls DEL, which must leave nothing: the NIC back as it was, no lease, record or address."""
    from dpdkeni import netdev
    ns = netns_factory()
    before = _link(stand_in)
    conf = _conf(tmp_path, subnet="198.18.72.0/24", device=stand_in)
    crashed = run_cni("ADD", conf, netns=f"/run/netns/{ns}", extra_env={netdev.TEST_KILL_ENV: step})
    assert crashed.returncode == -9, crashed
    assert Ledger().leases() != {}  # it was killed half-way: there is something to undo
    gone = run_cni("DEL", conf, netns=f"/run/netns/{ns}")
    assert gone.returncode == 0, gone
    assert _link("net1", ns) is None
    _nothing_done(tmp_path, conf, stand_in, before)
