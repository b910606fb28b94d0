"""The examples users start from: each one is checked here."""
import json
import os
import subprocess

import pytest
import yaml

from conftest import needs_root, unique  # at import time: tests/vm/conftest.py shadows the name later
from cnirun import run_cni

from dpdkeni import cni, cnispec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K8S = os.path.join(ROOT, "examples", "kubernetes")


def _k8s_docs():
    docs = []
    for name in sorted(os.listdir(K8S)):
        if name.endswith(".yaml"):
            with open(os.path.join(K8S, name), encoding="utf-8") as f:
                docs += [(name, d) for d in yaml.safe_load_all(f) if d]
    return docs


def _nads():
    return {d["metadata"]["name"]: d for _, d in _k8s_docs() if d["kind"] == "NetworkAttachmentDefinition"}


def _as_multus_sends(conf):
    """Multus fills runtimeConfig from the capabilities the config asks for (deviceID from the device plugin)."""
    if (conf.get("capabilities") or {}).get("deviceID"):
        conf = {**conf, "runtimeConfig": {"deviceID": "0000:00:1f.6"}}
    return conf


def test_nads_cover_netdev_and_dpdk_mode():
    modes = {name: json.loads(d["spec"]["config"]).get("mode", "netdev") for name, d in _nads().items()}
    assert sorted(modes.values()) == ["dpdk", "netdev"], modes
    for name, nad in _nads().items():
        conf = json.loads(nad["spec"]["config"])
        assert conf["type"] == "dpdkeni-cni" and conf["name"] == name


@pytest.mark.parametrize("name", sorted(_nads()))
def test_nad_config_is_accepted_by_the_parser(name):
    conf = _as_multus_sends(json.loads(_nads()[name]["spec"]["config"]))
    raw = cnispec.parse_config(json.dumps(conf).encode())
    netconf = cni.parse_netconf(raw)
    assert netconf.nic_spec and netconf.wait > 0


@needs_root
@pytest.mark.parametrize("name", sorted(_nads()))
def test_nad_config_goes_through_the_binary_up_to_the_missing_nic(name, tmp_path, netns_factory):
    """Driven as Multus drives it, the config passes every check and stops only because this host lacks the
    NIC: error 11 (try again later), not 4/6/7."""
    conf = {**_as_multus_sends(json.loads(_nads()[name]["spec"]["config"])), "wait": 0}
    run = run_cni("ADD", conf, netns=f"/run/netns/{netns_factory()}", extra_env={"DPDKENI_STATE_DIR": str(tmp_path)})
    assert run.returncode != 0 and run.doc["code"] == cnispec.TRY_AGAIN_LATER, run


def test_testpmd_pod_uses_a_dpdk_nad_and_the_image_built_here():
    (pod,) = [d for _, d in _k8s_docs() if d["kind"] == "Pod"]
    wanted = pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"]
    nad = _nads()[wanted]
    assert json.loads(nad["spec"]["config"])["mode"] == "dpdk"
    (container,) = pod["spec"]["containers"]
    assert "testpmd" in container["command"][0]
    assert nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] in container["resources"]["limits"]
    from dpdkeni import cdi, specs
    kind, device = pod["metadata"]["annotations"]["cdi.k8s.io/dpdkeni"].split("=")
    assert kind == cdi.KIND and specs.classify(device) == ("pci", device)
    with open(os.path.join(K8S, "Containerfile"), encoding="utf-8") as f:
        assert "dpdk" in f.read()
    with open(os.path.join(K8S, "pod-testpmd.yaml"), encoding="utf-8") as f:
        assert container["image"].split(":")[0] in f.read().split("podman build -t ")[1]


def test_device_plugin_daemonset_runs_the_plugin_on_the_configmaps_pools():
    from dpdkeni.cli import build_parser
    from dpdkeni.k8s import pools
    docs = {d["kind"]: d for name, d in _k8s_docs() if name == "device-plugin.yaml"}
    assert sorted(docs) == ["ConfigMap", "DaemonSet"]
    config = pools.parse(docs["ConfigMap"]["data"]["pools.toml"], "pools.toml")
    assert [p.resource for p in config.pools] == ["dpdkeni.io/virtio", "dpdkeni.io/e1000"]
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostPID"] and pod["hostNetwork"]  # the holders' /proc and the host's addresses
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["command"][1:])
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts[os.path.dirname(args.config)]]["configMap"]["name"] == docs["ConfigMap"]["metadata"]["name"]
    assert volumes[mounts["/var/lib/kubelet/device-plugins"]]["hostPath"]["path"] == "/var/lib/kubelet/device-plugins"
    assert args.plugin_dir is None  # the default: /var/lib/kubelet/device-plugins/


# --- examples/orchestrator.py --------------------------------------------------------------------------------


def _readline(proc, timeout=60):
    """One stdout line of ``proc`` within ``timeout`` seconds (bounded: a hung example fails the test)."""
    import select
    ready = select.select([proc.stdout], [], [], timeout)[0]
    assert ready, "the example printed nothing in time"
    return json.loads(proc.stdout.readline())


@needs_root
def test_orchestrator_waits_attaches_and_releases_on_exit(state_dir, stand_in_models, container_factory):
    import signal
    import subprocess
    import sys

    from pyroute2 import IPRoute


    box = container_factory()
    mac = "02:de:%02x:%02x:00:02" % (os.getpid() % 256, (os.getpid() >> 8) % 256)
    nic, peer = unique("dko"), unique("dkr")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "examples", "orchestrator.py"), "--mac", mac,
                             "--to", box.target, "--ifname", "eth7", "--address", "198.18.66.2/24",
                             "--timeout", "60"], stdout=subprocess.PIPE, text=True)
    try:
        assert _readline(proc)["event"] == "waiting"
        with IPRoute() as ipr:  # the NIC "hot-plugs" after the orchestrator started waiting for it
            ipr.link("add", ifname=nic, kind="veth", peer=peer, address=mac)
        attached = _readline(proc)
        assert attached["event"] == "attached" and attached["nic"] == f"if:{nic}"
        inside = box.run("ip", "-o", "addr", "show", "eth7")
        assert "198.18.66.2/24" in inside.stdout
        proc.send_signal(signal.SIGTERM)
        assert _readline(proc)["event"] == "released"
        assert proc.wait(60) == 0
        with IPRoute() as ipr:
            assert ipr.link_lookup(ifname=nic), "the NIC is back in the host under its own name"
        assert "eth7" not in box.run("ip", "-o", "link").stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with IPRoute() as ipr:
            for idx in (ipr.link_lookup(ifname=nic) + ipr.link_lookup(ifname=peer))[:1]:
                ipr.link("del", index=idx)


# --- examples/cdi/ ------------------------------------------------------------------------------------------------


def test_cdi_example_asks_for_a_device_of_the_spec_it_writes(sysfs_tree, state_dir, tmp_path):
    """run-podman.sh on a synthetic host with a virtio-net NIC on vfio-pci: it skips the bind, writes the CDI
    spec, and the podman command (echoed) requests exactly a device that spec defines."""
    import subprocess
    import sys

    import jsonschema

    from dpdkeni.cdi_schema import SCHEMA

    bdf = "0000:00:04.0"
    sysfs_tree.add_nic(bdf, "virtio-net", driver="vfio-pci", iommu_group=4, numa_node=0)
    sysfs_tree.write("dev/vfio/4", "")
    cdi_dir = tmp_path / "cdi"
    env = {**os.environ, "DPDKENI_SYSFS_ROOT": sysfs_tree.root, "DPDKENI": f"{sys.executable} -m dpdkeni",
           "PODMAN": "echo", "CDI_DIR": str(cdi_dir)}
    run = subprocess.run([os.path.join(ROOT, "examples", "cdi", "run-podman.sh"), "00:04.0"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    spec = json.load(open(cdi_dir / "dpdkeni.json"))
    jsonschema.validate(spec, SCHEMA)
    argv = run.stdout.split()
    assert argv[0] == "run" and spec["cdiVersion"] == "0.5.0"  # what Debian 12's podman 4.3 resolves
    kind, name = argv[argv.index("--device") + 1].split("=")
    assert kind == spec["kind"] and name in [d["name"] for d in spec["devices"]] and name == bdf
    assert "localhost/dpdkeni-testpmd:latest" in argv and argv[argv.index("-a") + 1] == bdf


# --- examples/udev/ -------------------------------------------------------------------------------------------

UDEV = os.path.join(ROOT, "examples", "udev")


def test_udev_rules_file_is_what_dpdkeni_generates(monkeypatch):
    from dpdkeni import udev
    monkeypatch.delenv("DPDKENI_MODELS", raising=False)
    text = udev.rules_text(hook="/usr/local/bin/dpdkeni-hook", dpdkeni="/usr/local/bin/dpdkeni")
    with open(os.path.join(UDEV, "90-dpdkeni.rules"), encoding="utf-8") as f:
        assert f.read() == text, "regenerate examples/udev/90-dpdkeni.rules with udev.rules_text()"
    assert 'ENV{PCI_ID}=="1AF4:1000|1AF4:1041"' in text  # virtio-net, legacy and modern


def _hook_demo(state):
    import subprocess
    import sys
    return subprocess.run(["sh", os.path.join(UDEV, "hook-demo.sh")], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DPDKENI_STATE_DIR": str(state),
                               "HOOK": f"{sys.executable} -m dpdkeni.udev"})


def test_udev_hook_queues_the_event_when_no_daemon_listens(tmp_path):
    run = _hook_demo(tmp_path)
    assert run.returncode == 0, run.stderr
    assert "queued" in run.stderr and "queued: " in run.stdout
    event = json.loads(run.stdout.split("\n", 1)[1])
    assert event["ACTION"] == "add" and event["INTERFACE"] == "ens5" and event["ID_MODEL_ID"] == "0x1041"
    assert "PATH" not in event, "only udev's event variables are forwarded"


def test_udev_hook_hands_the_event_to_a_listening_daemon(tmp_path):
    import socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as daemon:
        daemon.bind(str(tmp_path / "daemon.sock"))
        daemon.settimeout(30)
        run = _hook_demo(tmp_path)
        assert run.returncode == 0, run.stderr
        event = json.loads(daemon.recv(65536))
    assert event["ACTION"] == "add" and event["DEVPATH"].endswith("/net/ens5")
    assert "sent" in run.stderr and "queued" not in run.stdout


ENTRYPOINT = os.path.join(ROOT, "examples", "testpmd-container", "entrypoint.sh")
A, B = "0000:00:04.0", "0000:00:05.0"


@pytest.fixture
def two_vfio_nics(sysfs_tree, tmp_path):
    """Two NICs on vfio-pci (groups 4 and 5, the second in no-IOMMU mode) with their nodes, and a stand-in
    ``dpdk-testpmd`` that prints its arguments."""
    import stat
    sysfs_tree.add_nic(A, "virtio-net", driver="vfio-pci", iommu_group=4)
    sysfs_tree.add_nic(B, "e1000", driver="vfio-pci", iommu_group=5)
    os.makedirs(sysfs_tree.p("dev/vfio"), exist_ok=True)
    for node in ("vfio", "4", "noiommu-5"):
        os.mknod(sysfs_tree.p(f"dev/vfio/{node}"), stat.S_IFCHR | 0o600, os.makedev(1, 3))
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "dpdk-testpmd").write_text('#!/bin/sh\necho "testpmd $*"\n')
    (bindir / "dpdk-testpmd").chmod(0o755)
    return sysfs_tree, str(bindir)


def _entrypoint(bindir, root, **env):
    return subprocess.run(["sh", ENTRYPOINT], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{bindir}:/usr/bin:/bin", "DPDKENI_SYSFS_ROOT": root, "DPDKENI_WAIT": "1",
                               **env})


def test_testpmd_entrypoint_finds_every_cdi_nic(two_vfio_nics):
    """Two CDI devices in one container: the runtime keeps one PCIDEVICE_* (the last) and its JSON _INFO; the
    per-device DPDKENI_NIC_* names give testpmd both NICs, and JSON is never taken for an address."""
    from dpdkeni import cdi
    tree, bindir = two_vfio_nics
    run = _entrypoint(bindir, tree.root, **{cdi.nic_var(A): A, cdi.nic_var(B): B, "PCIDEVICE_DPDKENI_IO_NIC": B,
                                            "PCIDEVICE_DPDKENI_IO_NIC_INFO": json.dumps({B: {"generic": {}}})})
    assert run.returncode == 0, run.stderr
    assert f"-a {A} -a {B} --" in run.stdout and "{" not in run.stdout
    run = _entrypoint(bindir, tree.root, PCIDEVICE_INTEL_COM_SRIOV=f"{B},{A}",
                      PCIDEVICE_INTEL_COM_SRIOV_INFO="{}")  # a device plugin's list, as it is
    assert run.returncode == 0 and f"-a {B} -a {A} --" in run.stdout, run.stderr


def test_testpmd_entrypoint_waits_for_every_nic(two_vfio_nics):
    tree, bindir = two_vfio_nics
    os.unlink(tree.p("dev/vfio/noiommu-5"))  # the second NIC's node is not made yet
    run = _entrypoint(bindir, tree.root, DPDKENI_PCI=f"{A},{B}")
    assert run.returncode == 1 and "testpmd" not in run.stdout
    assert f"{A} {B} not all on vfio-pci/uio with their device nodes after 1s" in run.stderr
    run = _entrypoint(bindir, tree.root, PCIDEVICE_X_INFO='{"0000:00:04.0": {}}')
    assert run.returncode == 2 and "no NIC" in run.stderr


def test_testpmd_entrypoint_auto_takes_the_nics_it_was_given(two_vfio_nics):
    """DPDKENI_PCI=auto: the NICs behind the vfio nodes in the container (what dpdkeni's daemon handed over),
    waiting for DPDKENI_NICS of them."""
    tree, bindir = two_vfio_nics
    run = _entrypoint(bindir, tree.root, DPDKENI_PCI="auto", DPDKENI_NICS="2")
    assert run.returncode == 0 and f"-a {A} -a {B} --" in run.stdout, run.stderr
    os.unlink(tree.p("dev/vfio/noiommu-5"))
    run = _entrypoint(bindir, tree.root, DPDKENI_PCI="auto")
    assert run.returncode == 0 and f"-a {A} --" in run.stdout, run.stderr
    run = _entrypoint(bindir, tree.root, DPDKENI_PCI="auto", DPDKENI_NICS="2")
    assert run.returncode == 1 and "no 2 NIC(s) handed over after 1s" in run.stderr


# --- examples/systemd/ ----------------------------------------------------------------------------------------

UNIT = os.path.join(ROOT, "examples", "systemd", "dpdkeni.service")


def _unit():
    import configparser
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # systemd's keys are case-sensitive
    unit.read(UNIT, encoding="utf-8")
    return unit


@needs_root
def test_systemd_unit_runs_the_daemon_as_systemd_would(tmp_path):
    """The unit's ExecStart (the dpdkeni on PATH standing for /usr/local/bin/dpdkeni, the policy in a temp dir)
    with what systemd passes a Type=notify service with WatchdogSec: READY=1, then WATCHDOG=1 within WatchdogSec;
    ExecReload's SIGHUP re-reads the policy; the stop signal ends it with 0 and STOPPING=1."""
    import shlex
    import signal
    import socket
    import sys
    service = _unit()["Service"]
    assert service["Type"] == "notify" and service["NotifyAccess"] == "main"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID" and service["KillSignal"] == "SIGTERM"
    assert set(service["RestartPreventExitStatus"].split()) == {"2", "3"}  # bad policy, another daemon
    watchdog_s = int(service["WatchdogSec"])
    argv = shlex.split(service["ExecStart"])
    assert argv[:4] == ["/usr/local/bin/dpdkeni", "daemon", "--policy", "/etc/dpdkeni/policy.toml"]
    policy = tmp_path / "policy.toml"
    policy.write_text('[[rule]]\nmatch = { model = "e1000e", mac = "02:00:00:00:00:01" }\ntarget = "pid:1"\n')
    name = unique("dkunit")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + name)
        notify.settimeout(30)
        env = {**os.environ, "DPDKENI_STATE_DIR": str(tmp_path / "state"), "NOTIFY_SOCKET": "@" + name,
               "WATCHDOG_USEC": str(watchdog_s * 1_000_000)}
        proc = subprocess.Popen([sys.executable, "-m", "dpdkeni", *argv[1:3], str(policy), *argv[4:]], env=env,
                                stderr=subprocess.PIPE, text=True)
        try:
            assert notify.recv(4096).decode().startswith("READY=1\n")
            assert notify.recv(4096).decode() == "WATCHDOG=1"  # the first beat comes at once
            proc.send_signal(signal.SIGHUP)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0, proc.stderr.read()
            assert notify.recv(4096).decode() == "STOPPING=1"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
