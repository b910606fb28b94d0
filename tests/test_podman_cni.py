"""dpdkeni-cni under podman: Debian's podman 4.3 with its CNI network backend runs a container on a network whose
plugin is dpdkeni-cni, with everything of its own (``CONTAINERS_CONF`` naming the CNI backend, the plugin and
config dirs; ``--root``/``--runroot``/``--tmpdir`` in a temp dir) and an image imported from a busybox-static
tarball (no registry). The stand-in NIC is net1 in the container (``--network NET:interface_name=net1``) with
its address, and comes home under its own name when the container goes, also when its netns was deleted
first."""
import json
import os
import shutil
import subprocess
import time

import pytest
from pyroute2 import netns as pynetns

from conftest import needs_root, unique
from cnirun import DEBIAN_CNI_DIR, DPDKENI_CNI
from cnirun import link_state as _link, mounts_under as _mounts_under

from dpdkeni.ledger import Ledger

import ociimage

PODMAN = shutil.which("podman") or "/usr/bin/podman"
IMAGE = "localhost/dpdkeni-busybox:1"
SUBNET = "198.18.75.0/24"

pytestmark = [needs_root, pytest.mark.root,
              pytest.mark.skipif(not os.path.exists(PODMAN) or not os.path.exists(ociimage.BUSYBOX),
                                 reason="needs Debian's podman and busybox-static"),
              pytest.mark.skipif(not os.path.exists(os.path.join(DEBIAN_CNI_DIR, "host-local")),
                                 reason="Debian containernetworking-plugins not installed")]

# runc: Debian's crun refuses this host's hybrid cgroups; ulimits: podman's defaults exceed the hard limits
# here and runc then fails setting them (as in test_cdi.py)
EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "podman")

CONTAINERS_CONF = """\
[containers]
netns = "bridge"
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{bin_dir}"]
network_config_dir = "{conf_dir}"
default_network = "{network}"
"""


class Podman:
    """podman with a storage, run dir and configuration of its own."""

    def __init__(self, base, bin_dir, conf_dir, network):
        self.base = base
        self.conf = os.path.join(base, "containers.conf")
        with open(self.conf, "w", encoding="utf-8") as f:
            f.write(CONTAINERS_CONF.format(base=base, bin_dir=bin_dir, conf_dir=conf_dir, network=network))

    def __call__(self, *args, check=True, timeout=60):
        env = {**os.environ, "CONTAINERS_CONF": self.conf}
        cmd = [PODMAN, "--root", os.path.join(self.base, "root"), "--runroot", os.path.join(self.base, "runroot"),
               "--tmpdir", os.path.join(self.base, "tmp"), "--storage-driver", "overlay", *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc


@pytest.fixture
def podman(tmp_path, state_dir, stand_in_models, veth_factory, request, monkeypatch):
    """(Podman, nic, network name, base dir); containers left are removed and podman's storage unmounted.
    Parametrized (indirect) "served" (default: a ``cni serve`` answers) or "in-process"."""
    nic, _ = veth_factory()
    base = os.path.join("/run", unique("dkpod"))
    bin_dir, conf_dir = os.path.join(base, "cni-bin"), os.path.join(base, "cni-conf")
    for d in (bin_dir, conf_dir, os.path.join(base, "tmp")):
        os.makedirs(d)
    os.symlink(os.path.join(DEBIAN_CNI_DIR, "host-local"), os.path.join(bin_dir, "host-local"))
    os.symlink(DPDKENI_CNI, os.path.join(bin_dir, "dpdkeni-cni"))
    network = unique("eni")
    with open(os.path.join(EXAMPLE, "eni.conflist"), encoding="utf-8") as f:  # as a user copies it
        conf = json.load(f)
    (plugin,) = conf["plugins"]
    plugin["hwaddr"] = _link(nic)[0]
    plugin["ipam"] = {**plugin["ipam"], "subnet": SUBNET, "dataDir": os.path.join(base, "ipam")}
    with open(os.path.join(conf_dir, f"{network}.conflist"), "w", encoding="utf-8") as f:
        json.dump({**conf, "name": network}, f)
    if getattr(request, "param", "served") == "served":
        sock, _ = request.getfixturevalue("cni_server")
        monkeypatch.setenv("DPDKENI_CNI_SOCKET", sock)
    else:
        monkeypatch.setenv("DPDKENI_CNI_SOCKET", os.path.join(base, "none.sock"))
    pm = Podman(base, bin_dir, conf_dir, network)
    layer = tmp_path / "rootfs.tar"
    layer.write_bytes(ociimage.layer_tar())
    try:
        pm("import", "--change", 'CMD ["/bin/sleep", "1000000"]', str(layer), IMAGE)
        yield pm, nic, network, base
    finally:
        pm("rm", "--all", "--force", "--time", "0", check=False)
        pm("system", "reset", "--force", check=False, timeout=120)
        from conftest import unmount_under
        unmount_under(base)
        shutil.rmtree(base, ignore_errors=True)


def _run(pm, network, name):
    """Start a container on the network with the NIC as net1; returns the path of its netns."""
    pm("run", "-d", "--name", name, "--network", f"{network}:interface_name=net1", IMAGE)
    return pm("inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name).stdout.strip()


def _wait(done, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        time.sleep(0.1)


def _addresses_taken(base, network):
    return [f for f in os.listdir(os.path.join(base, "ipam", network)) if f[0].isdigit()]


def _wait_home(nic):
    """The NIC's link once it is back in the host (podman's network teardown may run in the container's
    'container cleanup' process, which conmon starts as the container exits, after 'podman rm' returned)."""
    _wait(lambda: _link(nic) is not None)
    return _link(nic)


def _in_container(pm, name, nic_mac):
    out = pm("exec", name, "/bin/ip", "-o", "addr", "show", "net1").stdout
    link = pm("exec", name, "/bin/ip", "-o", "link", "show", "net1").stdout
    assert nic_mac in link, link
    (address,) = [w for w in out.split() if w.startswith("198.18.75.")]
    return address


def test_a_podman_container_on_a_dpdkeni_network_gets_the_nic_as_net1(podman):
    pm, nic, network, base = podman
    mac, mtu, up, _ = _link(nic)
    name = unique("ctr")
    netns_path = _run(pm, network, name)
    address = _in_container(pm, name, mac)
    assert address in _link("net1", netns_path)[3] and _link(nic) is None
    pm("rm", "--force", "--time", "0", name)
    assert _wait_home(nic)[:3] == (mac, mtu, up), "home under its own name, MTU and link state"
    assert Ledger().leases() == {}
    _wait(lambda: not _addresses_taken(base, network))  # IPAM DEL runs beside the move home
    assert _addresses_taken(base, network) == [], "address freed"


def test_podman_brings_the_nic_home_when_the_netns_was_deleted_first(podman):
    """podman 4.3 skips CNI DEL when the container's netns file is gone ("retrieving network namespace ... no
    such file"): the NIC would stay in the namespace ADD pinned. ``cni serve``'s sweeper sees the pod gone (netns
    file gone, nobody in the namespace) and brings it home within a few seconds."""
    pm, nic, network, base = podman
    mac, mtu, up, _ = _link(nic)
    name = unique("ctr")
    netns_path = _run(pm, network, name)
    _in_container(pm, name, mac)
    pynetns.remove(os.path.basename(netns_path))
    time.sleep(2.5)  # the sweeper's passes while the container still runs: it must leave the NIC alone
    assert _link(nic) is None and _in_container(pm, name, mac)
    pm("rm", "--force", "--time", "0", name)
    state = os.environ["DPDKENI_STATE_DIR"]
    _wait(lambda: not os.listdir(os.path.join(state, "cni")))  # the sweeper's last step drops the record
    assert _link(nic)[:3] == (mac, mtu, up), "home under its own name"
    assert Ledger().leases() == {} and _mounts_under(state) == []
    assert _addresses_taken(base, network) == [], "address freed"
