"""The CNI protocol layer of dpdkeni-cni: environment, configuration, versions, the spec's error JSON, results,
and IPAM delegation to Debian's host-local and static plugins. The error cases run the installed binary as a
runtime does (environment + stdin, a subprocess)."""
import json
import os

import pytest

from conftest import needs_root, unique
from cnirun import DEBIAN_CNI_DIR, run_cni

from dpdkeni import cni, cnispec
from dpdkeni.cnispec import CniError, Env, IpConfig, Result

NAD_CONF = {"cniVersion": "1.0.0", "name": "hostdev", "type": "dpdkeni-cni", "device": "dkmissing0"}


def _error(run, code):
    """The run failed with the spec's error document carrying ``code``."""
    assert run.returncode != 0, run
    assert run.doc is not None, run.stdout
    assert run.doc["code"] == code, run.doc
    assert run.doc["msg"] and run.doc["cniVersion"] in cnispec.SUPPORTED_VERSIONS
    return run.doc


# --- the spec's error cases, through the binary ---------------------------------------------------------------


def test_unknown_command_is_error_4():
    doc = _error(run_cni("FROB", NAD_CONF, netns="/proc/self/ns/net"), cnispec.INVALID_ENV)
    assert "FROB" in doc["msg"]


def test_malformed_json_is_error_6():
    doc = _error(run_cni("ADD", b'{"cniVersion": "1.0.0", ', netns="/proc/self/ns/net"),
                 cnispec.DECODING_FAILURE)
    assert "JSON" in doc["msg"] and doc["details"]


def test_missing_netns_on_add_is_error_4():
    doc = _error(run_cni("ADD", NAD_CONF), cnispec.INVALID_ENV)
    assert "CNI_NETNS" in doc["msg"]


@pytest.mark.parametrize("version", ["0.2.0", "2.0.0", None])
def test_unsupported_version_is_error_1(version):
    conf = {**NAD_CONF, "cniVersion": version}
    doc = _error(run_cni("ADD", conf, netns="/proc/self/ns/net"), cnispec.INCOMPATIBLE_VERSION)
    assert "1.1.0" in doc["details"]


@needs_root
def test_device_that_never_appears_is_error_11_after_the_wait(netns_factory):
    conf = {**NAD_CONF, "device": unique("dkgone"), "wait": 0.3}
    doc = _error(run_cni("ADD", conf, netns=f"/run/netns/{netns_factory()}"), cnispec.TRY_AGAIN_LATER)
    assert conf["device"] in doc["msg"] and "0.3 s" in doc["msg"]


def test_bad_config_is_error_7():
    doc = _error(run_cni("ADD", {**NAD_CONF, "hwaddr": "52:54:00:00:00:01"}, netns="/proc/self/ns/net"),
                 cnispec.INVALID_CONFIG)
    assert "exactly one" in doc["msg"] and "device, hwaddr" in doc["details"]
    _error(run_cni("ADD", {**NAD_CONF, "mode": "sriov"}, netns="/proc/self/ns/net"), cnispec.INVALID_CONFIG)
    doc = _error(run_cni("ADD", {**NAD_CONF, "gateway": "198.18.0.0/24"}, netns="/proc/self/ns/net"),
                 cnispec.INVALID_CONFIG)
    assert doc["msg"] == "bad gateway '198.18.0.0/24': not an IP address", doc


def test_version_replies_with_supported_versions():
    run = run_cni("VERSION", {"cniVersion": "0.4.0"})
    assert run.returncode == 0
    assert run.doc == {"cniVersion": "0.4.0", "supportedVersions": list(cnispec.SUPPORTED_VERSIONS)}


def test_check_needs_040_and_status_needs_110():
    _error(run_cni("CHECK", {**NAD_CONF, "cniVersion": "0.3.1"}, netns="/proc/self/ns/net"),
           cnispec.INCOMPATIBLE_VERSION)
    _error(run_cni("STATUS", {**NAD_CONF, "cniVersion": "1.0.0"}), cnispec.INCOMPATIBLE_VERSION)


def test_status_ready_and_not_ready(tmp_path):
    conf = {**NAD_CONF, "cniVersion": "1.1.0", "ipam": {"type": "host-local"}}
    env = {"DPDKENI_STATE_DIR": str(tmp_path / "state")}
    ok = run_cni("STATUS", conf, extra_env=env)
    assert ok.returncode == 0 and ok.doc is None, ok
    doc = _error(run_cni("STATUS", conf, cni_path=str(tmp_path), extra_env=env), cnispec.PLUGIN_NOT_AVAILABLE)
    assert "host-local" in doc["msg"]


# --- parsing ----------------------------------------------------------------------------------------------------


def test_env_parsing_and_cni_args():
    env = cnispec.parse_env({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "net1",
                             "CNI_PATH": "/a:/b", "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=p"})
    assert env.netns == "" and env.path == ("/a", "/b")
    assert env.args == {"IgnoreUnknown": "1", "K8S_POD_NAME": "p"}
    with pytest.raises(CniError) as err:
        cnispec.parse_cni_args("novalue")
    assert err.value.code == cnispec.INVALID_ENV


@pytest.mark.parametrize("keys,spec", [
    ({"device": "ens5"}, "ens5"),
    ({"hwaddr": "52-54-00-AB-CD-EF"}, "52:54:00:ab:cd:ef"),
    ({"pciBusID": "00:04.0"}, "0000:00:04.0"),
    ({"kernelpath": "/sys/devices/pci0000:00/0000:00:05.0"}, "0000:00:05.0"),
    ({"kernelpath": "/sys/devices/virtual/net/dkv1"}, "dkv1"),
    ({"device": "ens5", "runtimeConfig": {"deviceID": "0000:00:06.0"}}, "0000:00:06.0"),
])
def test_host_device_keys_name_the_nic(keys, spec):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "dpdkeni-cni", **keys}
    assert cni.parse_netconf(conf).nic_spec == spec


@pytest.mark.parametrize("keys", [{"pciBusID": "ens5"}, {"hwaddr": "0000:00:04.0"}, {"device": "a b"},
                                  {"device": "x", "addresses": ["198.18.0.1"]}, {"device": "x", "wait": "soon"},
                                  {"device": "x", "ipam": {"subnet": "198.18.0.0/24"}},
                                  {"device": "x", "routes": [{"gw": "198.18.0.1"}]},
                                  {"device": "x", "ifname": "net/1"}, {"device": "x", "ifname": "a" * 16}])
def test_bad_keys_are_error_7(keys):
    with pytest.raises(CniError) as err:
        cni.parse_netconf({"cniVersion": "1.0.0", "name": "n", **keys})
    assert err.value.code == cnispec.INVALID_CONFIG


def test_ifname_names_the_nic_in_the_pod_instead_of_cni_ifname():
    env = cnispec.parse_env({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "eth1",
                             "CNI_PATH": "/usr/lib/cni"})
    plain = cni.parse_netconf({"cniVersion": "1.0.0", "name": "n", "device": "x"})
    named = cni.parse_netconf({"cniVersion": "1.0.0", "name": "n", "device": "x", "ifname": "net1"})
    assert plain.name_in_pod(env) == "eth1" and named.name_in_pod(env) == "net1"


def test_static_addresses_and_dpdk_keys():
    conf = cni.parse_netconf({"cniVersion": "1.1.0", "name": "n", "device": "x", "mode": "dpdk",
                              "hugepages": "256M", "noiommu": True, "addresses": ["198.18.0.2/24"],
                              "runtimeConfig": {"ips": ["198.18.1.2/24"]}, "gateway": "198.18.0.1"})
    assert (conf.mode, conf.hugepages, conf.noiommu, conf.driver) == ("dpdk", "256M", True, "vfio-pci")
    assert conf.addresses == ["198.18.0.2/24", "198.18.1.2/24"]


# --- results ------------------------------------------------------------------------------------------------------


class _Nic:
    mac, pci = "52:54:00:00:00:07", None


def test_result_per_version_and_static_default_route():
    conf = cni.parse_netconf({"cniVersion": "1.1.0", "name": "n", "device": "x", "mtu": 1400,
                              "addresses": ["198.18.0.2/24"], "gateway": "198.18.0.1"})
    env = Env("ADD", "c", "/run/netns/p", "net1")
    result = cni.build_result(conf, env, _Nic(), Result(ips=[IpConfig("198.18.2.9/24", "198.18.2.1")],
                                                        routes=[{"dst": "198.18.9.0/24"}]))
    new = result.to_json("1.1.0")
    assert new["interfaces"] == [{"name": "net1", "mac": _Nic.mac, "sandbox": "/run/netns/p", "mtu": 1400}]
    assert new["ips"] == [{"address": "198.18.2.9/24", "gateway": "198.18.2.1", "interface": 0},
                          {"address": "198.18.0.2/24", "gateway": "198.18.0.1", "interface": 0}]
    assert {"dst": "0.0.0.0/0", "gw": "198.18.0.1"} in new["routes"]
    old = result.to_json("0.3.1")
    assert "mtu" not in old["interfaces"][0] and old["ips"][0]["version"] == "4"
    assert Result.from_json(old).to_json("1.1.0") == {**new, "interfaces": [
        {k: v for k, v in new["interfaces"][0].items() if k != "mtu"}], "cniVersion": "1.1.0"}


def test_error_json_shape():
    doc = CniError(7, "bad", "why").to_json("0.4.0")
    assert doc == {"cniVersion": "0.4.0", "code": 7, "msg": "bad", "details": "why"}
    assert CniError(4, "x").to_json("9.9.9") == {"cniVersion": cnispec.LATEST, "code": 4, "msg": "x"}


# --- IPAM delegation with Debian's plugins ---------------------------------------------------------------------


def _ipam_env(tmp_path):
    return Env("ADD", unique("ctr"), "/proc/self/ns/net", "net1", path=("/nonexistent", DEBIAN_CNI_DIR))


@pytest.mark.skipif(not os.path.exists(f"{DEBIAN_CNI_DIR}/host-local"), reason="containernetworking-plugins")
def test_delegates_to_host_local_add_and_del(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "dpdkeni-cni", "device": "x",
            "ipam": {"type": "host-local", "subnet": "198.18.40.0/24", "dataDir": str(tmp_path / "ipam"),
                     "routes": [{"dst": "198.18.41.0/24"}]}}
    raw, env = json.dumps(conf).encode(), _ipam_env(tmp_path)
    doc = cnispec.delegate("host-local", "ADD", raw, env)
    result = Result.from_json(doc)
    assert result.ips[0].address.startswith("198.18.40.") and result.routes == [{"dst": "198.18.41.0/24"}]
    leased = os.listdir(tmp_path / "ipam" / "n")
    assert result.ips[0].address.split("/")[0] in leased
    assert cnispec.delegate("host-local", "DEL", raw, env) is None
    assert result.ips[0].address.split("/")[0] not in os.listdir(tmp_path / "ipam" / "n")


@pytest.mark.skipif(not os.path.exists(f"{DEBIAN_CNI_DIR}/static"), reason="containernetworking-plugins")
def test_delegated_error_keeps_the_ipam_code(tmp_path):
    conf = {"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "static", "addresses": [{"address": "bogus"}]}}
    with pytest.raises(CniError) as err:
        cnispec.delegate("static", "ADD", json.dumps(conf).encode(), _ipam_env(tmp_path))
    assert err.value.msg.startswith("static: ") and err.value.code != 0
    with pytest.raises(CniError) as err:
        cnispec.delegate("no-such-ipam", "ADD", b"{}", _ipam_env(tmp_path))
    assert err.value.code == cnispec.INVALID_CONFIG and "CNI_PATH" in err.value.msg


def test_light_pyroute2_loads_only_what_the_plugin_uses():
    """The plugin's entry point skips pyroute2's import-everything __init__; any other name still works."""
    import subprocess
    import sys

    code = ("import sys; from dpdkeni.cni import _light_pyroute2; _light_pyroute2()\n"
            "from pyroute2 import IPRoute, netns\nfrom pyroute2.netlink.exceptions import NetlinkError\n"
            "with IPRoute() as ipr: assert ipr.link_lookup(ifname='lo')\n"
            "print('ndb' if 'pyroute2.ndb.main' in sys.modules else 'light')\n"
            "import pyroute2; assert pyroute2.NDB and pyroute2.IPRoute is IPRoute\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["light"]


def test_dpdk_mode_waits_for_ipam_before_binding(tmp_path, state_dir, monkeypatch, netns_factory):
    """Netdev mode runs IPAM during the move and undoes the move when IPAM fails; a DPDK bind is not undone that
    way, so in dpdk mode a failing IPAM plugin (host-local with a range outside its subnet) stops ADD before the
    handoff starts, and leaves no record."""
    import io

    from dpdkeni import handoff
    from dpdkeni.inventory import Nic

    attached = []
    monkeypatch.setattr(cni, "find_nic_waiting", lambda spec, wait: Nic(pci="0000:00:1f.6", model="virtio-net"))
    monkeypatch.setattr(cni, "dpdk_target", lambda netns: netns)
    monkeypatch.setattr(handoff, "attach", lambda *a, **k: attached.append(a))
    conf = {"cniVersion": "1.0.0", "name": "d", "type": "dpdkeni-cni", "pciBusID": "0000:00:1f.6", "mode": "dpdk",
            "ipam": {"type": "host-local", "subnet": "198.18.69.0/24", "rangeStart": "198.18.70.5",
                     "dataDir": str(tmp_path / "ipam")}}
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": f"/run/netns/{netns_factory()}",
           "CNI_IFNAME": "net1", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"]}  # not the host's own netns
    out = io.StringIO()
    assert cni.main(env, io.BytesIO(json.dumps(conf).encode()), out) == 1
    assert json.loads(out.getvalue())["msg"].startswith("host-local"), out.getvalue()
    assert attached == [] and os.listdir(os.path.join(state_dir, "cni")) == []
