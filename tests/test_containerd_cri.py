"""dpdkeni-cni under a real runtime: Debian's containerd 1.6 (CRI plugin, runc) started by the test with its own
root, state, socket and configuration, driven over CRI's gRPC API exactly as the kubelet drives it
(RunPodSandbox, CreateContainer, StartContainer, StopPodSandbox, RemovePodSandbox).

The pod has two networks, as containerd numbers them (``max_conf_num = 2``, examples/containerd/config.toml):
eth0 from macvlan on a veth end of the test (CRI wants the pod's IP on eth0) and eth1, a veth end handed over by
dpdkeni-cni with ``"ifname": "net1"`` (examples/containerd/20-dpdkeni.conflist, found by its MAC). The sandbox image is made here (tests/ociimage.py: busybox-static) and imported with ctr:
there is no registry."""
import json
import os
import shutil
import signal

import pytest
from pyroute2 import IPRoute, netns as pynetns

from conftest import needs_root, unique
from cnirun import DEBIAN_CNI_DIR, DPDKENI_CNI
from cnirun import link_state as _link, mounts_under as _mounts_under

from dpdkeni.ledger import Ledger

grpc = pytest.importorskip("grpc")
pytest.importorskip("grpc_tools")

from containerdrun import CONTAINERD, CTR, RUNC, Containerd  # noqa: E402
from crirun import Cri  # noqa: E402
import ociimage  # noqa: E402

pytestmark = [needs_root, pytest.mark.root,
              pytest.mark.skipif(not all(os.path.exists(p) for p in (CONTAINERD, CTR, RUNC, ociimage.BUSYBOX)),
                                 reason="needs Debian's containerd, runc and busybox-static"),
              pytest.mark.skipif(not os.path.exists(os.path.join(DEBIAN_CNI_DIR, "macvlan")),
                                 reason="Debian containernetworking-plugins not installed")]

NIC_SUBNET = "198.18.74.0/24"
POD_SUBNET = "198.18.73.0/24"


EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "containerd")


def _example_conflist(nic, ipam_dir):
    """examples/containerd/20-dpdkeni.conflist as a user copies it, with this test's NIC (its MAC in hwaddr)
    and a private host-local data dir."""
    with open(os.path.join(EXAMPLE, "20-dpdkeni.conflist"), encoding="utf-8") as f:
        conf = json.load(f)
    (plugin,) = conf["plugins"]
    assert plugin["type"] == "dpdkeni-cni" and plugin["ifname"] == "net1"
    plugin["hwaddr"] = _link(nic)[0]
    plugin["ipam"] = {**plugin["ipam"], "subnet": NIC_SUBNET, "dataDir": ipam_dir}
    return {**conf, "name": unique("eni")}


def _example_max_conf_num():
    """The CNI setting of examples/containerd/config.toml (the test's containerd runs with it)."""
    import tomllib

    with open(os.path.join(EXAMPLE, "config.toml"), "rb") as f:
        return tomllib.load(f)["plugins"]["io.containerd.grpc.v1.cri"]["cni"]["max_conf_num"]


@pytest.fixture
def master(veth_factory):
    """A veth end of the test, up: macvlan's master for the pod's eth0 (nothing of the host's is used)."""
    name, _ = veth_factory()
    with IPRoute() as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    return name


@pytest.fixture
def cni_dirs(tmp_path, master, veth_factory):
    """bin_dir (Debian's reference plugins and dpdkeni-cni, linked) and conf_dir (the two networks); returns
    (conf_dir, bin_dir, nic)."""
    nic, _ = veth_factory()
    bin_dir, conf_dir = tmp_path / "cni-bin", tmp_path / "cni-conf"
    bin_dir.mkdir()
    conf_dir.mkdir()
    for plugin in ("host-local", "macvlan", "loopback"):
        (bin_dir / plugin).symlink_to(os.path.join(DEBIAN_CNI_DIR, plugin))
    (bin_dir / "dpdkeni-cni").symlink_to(DPDKENI_CNI)  # as a node installs it: a link to the package's binary
    primary = {"cniVersion": "1.0.0", "name": unique("pod"), "plugins": [
        {"type": "macvlan", "master": master, "mode": "bridge",
         "ipam": {"type": "host-local", "subnet": POD_SUBNET, "dataDir": str(tmp_path / "ipam")}}]}
    eni = _example_conflist(nic, str(tmp_path / "ipam"))
    (conf_dir / "10-pod.conflist").write_text(json.dumps(primary))
    (conf_dir / "20-eni.conflist").write_text(json.dumps(eni))
    return str(conf_dir), str(bin_dir), nic


@pytest.fixture
def node(request, tmp_path, state_dir, stand_in_models, cni_dirs, cni_server, monkeypatch):
    """containerd with the pause image imported and a CRI client; every sandbox made through ``node.run_pod`` is
    stopped and removed at teardown, then containerd is stopped by pid. Parametrized (indirect) with "served"
    (default: its plugins hand their calls to ``cni serve``) or "in-process" (no server answers)."""
    conf_dir, bin_dir, nic = cni_dirs
    sock, server = cni_server
    # containerd passes its environment (DPDKENI_STATE_DIR, DPDKENI_MODELS, the socket) to the CNI plugins
    served = getattr(request, "param", "served") == "served"
    monkeypatch.setenv("DPDKENI_CNI_SOCKET", sock if served else sock + ".none")
    base = os.path.join("/run", unique("dkctd"))  # short: containerd's sockets live under it
    image = ociimage.write_archive(str(tmp_path / "pause.tar"))
    ctd = Containerd(base, conf_dir, bin_dir, ociimage.DEFAULT_NAME, max_conf_num=_example_max_conf_num())
    sandboxes, netns_files = [], []
    try:
        ctd.start()
        ctd.import_image(image)
        cri = Cri(ctd.socket)
        yield Node(ctd, cri, nic, sandboxes, netns_files, str(tmp_path), server)
    finally:
        _teardown(ctd, sandboxes, netns_files)
        shutil.rmtree(base, ignore_errors=True)


def _teardown(ctd, sandboxes, netns_files):
    if os.path.exists(ctd.socket):
        cri = Cri(ctd.socket, timeout=20)
        for sid in sandboxes:
            for call in (cri.stop_pod_sandbox, cri.remove_pod_sandbox):
                try:
                    call(sid)
                except grpc.RpcError:
                    pass
        cri.close()
    ctd.stop()
    for path in netns_files:
        if os.path.exists(path):
            try:
                pynetns.remove(os.path.basename(path))
            except OSError:
                pass


class Node:
    """What a test drives: the containerd, its CRI client, the stand-in NIC."""

    def __init__(self, ctd, cri, nic, sandboxes, netns_files, tmp, server):
        self.ctd, self.cri, self.nic, self.tmp, self.server = ctd, cri, nic, tmp, server
        self._sandboxes, self._netns = sandboxes, netns_files

    def run_pod(self, name):
        """RunPodSandbox as the kubelet calls it; returns (sandbox id, its config, the pod's netns path)."""
        config = self.cri.sandbox_config(name, unique("uid"), log_dir=os.path.join(self.tmp, "logs", name))
        sid = self.cri.run_pod_sandbox(config)
        self._sandboxes.append(sid)
        path = self.cri.netns_path(sid)
        self._netns.append(path)
        return sid, config, path


def _nic_in_pod(node, netns_path, mac):
    net1 = _link("net1", netns_path)
    assert net1 is not None, "the NIC is in the pod as net1"
    assert net1[0] == mac and net1[2], "the same NIC (MAC), up"
    (address,) = [a for a in net1[3] if a.startswith("198.18.74.")]
    assert _link(node.nic) is None, "it left the host"
    return address


def test_a_pod_through_containerd_cri_gets_the_nic_as_net1_and_gives_it_back(node):
    """With ``dpdkeni cni serve`` up (containerd runs the C client, which hands it each call): the NIC is net1
    in the pod with its address, the application container sees it, and StopPodSandbox brings it home."""
    mac, mtu, up, _ = _link(node.nic)
    sid, config, netns_path = node.run_pod("web")
    status, _ = node.cri.pod_sandbox_status(sid)
    assert status.network.ip.startswith("198.18.73."), "CRI's pod IP is eth0's"
    address = _nic_in_pod(node, netns_path, mac)

    cid = node.cri.create_container(sid, config, "app", ociimage.DEFAULT_NAME, ["/bin/sleep", "1000000"],
                                    log_path="app.log")
    node.cri.start_container(cid)
    seen = node.cri.exec_sync(cid, ["/bin/ip", "-o", "addr", "show", "net1"])
    assert seen["exit_code"] == 0 and f"inet {address}" in seen["stdout"], seen

    node.cri.stop_pod_sandbox(sid)
    assert _link(node.nic)[:3] == (mac, mtu, up), "home under its own name with its MTU and link state"
    node.cri.remove_pod_sandbox(sid)
    assert Ledger().leases() == {}
    assert not os.path.exists(netns_path)
    node.server.send_signal(signal.SIGTERM)
    node.server.wait(timeout=30)
    log = node.server.stderr.read()
    for call in (f"ADD {sid} eth1 -> 0", f"DEL {sid} eth1 -> 0"):
        assert call in log, log


@pytest.mark.parametrize("node", ["served", "in-process"], indirect=True)
def test_the_nic_comes_home_when_the_pods_netns_was_deleted_first(node):
    """The pod's netns file is deleted while the pod runs (``ip netns delete``); StopPodSandbox then kills the
    sandbox, whose netns would die with the veth in it, and calls DEL with no netns. dpdkeni-cni pinned the
    namespace at ADD, so the NIC still comes home under its own name; the pin goes with it."""
    mac, mtu, up, _ = _link(node.nic)
    sid, _, netns_path = node.run_pod("gone")
    _nic_in_pod(node, netns_path, mac)
    state = os.environ["DPDKENI_STATE_DIR"]
    assert len(_mounts_under(state)) == 1, "ADD pinned the pod's netns"
    pynetns.remove(os.path.basename(netns_path))
    assert not os.path.exists(netns_path)

    node.cri.stop_pod_sandbox(sid)
    assert _link(node.nic)[:3] == (mac, mtu, up), "home under its own name"
    node.cri.remove_pod_sandbox(sid)
    assert Ledger().leases() == {} and _mounts_under(state) == []
    ipam = os.path.join(node.tmp, "ipam")
    leased = [f for d in os.listdir(ipam) for f in os.listdir(os.path.join(ipam, d)) if f[0].isdigit()]
    assert leased == [], "both networks' addresses are free"
