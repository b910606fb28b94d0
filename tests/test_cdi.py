"""CDI specs for vfio NICs, on a synthetic tree (this host has no vfio), checked against the CDI schema."""
import json
import os

import jsonschema
import pytest

from conftest import unique  # at import time: tests/vm/conftest.py takes the module name "conftest" later
from dpdkeni import cdi
from dpdkeni.cdi_schema import SCHEMA
from dpdkeni.errors import Error
from dpdkeni.sysfs import Sysfs

BDF = "0000:00:04.0"


@pytest.fixture
def vfio_tree(sysfs_tree):
    sysfs_tree.add_nic(BDF, "virtio-net", driver="vfio-pci", iommu_group=4, numa_node=0)
    sysfs_tree.add_nic("0000:00:05.0", "e1000", ifname="ens5", iommu_group=5)  # on its kernel driver: not listed
    sysfs_tree.write("dev/vfio/noiommu-4", "")
    return sysfs_tree


def test_spec_has_one_device_per_vfio_nic_and_passes_the_schema(vfio_tree, state_dir):
    spec = cdi.generate(sysfs=Sysfs(vfio_tree.root), hugepages="512M")
    jsonschema.validate(spec, SCHEMA)
    assert spec["cdiVersion"] == "0.6.0" and spec["kind"] == "dpdkeni.io/nic"
    (dev,) = spec["devices"]
    assert dev["name"] == BDF
    node = dev["containerEdits"]["deviceNodes"][0]
    assert node == {"path": "/dev/vfio/4", "hostPath": "/dev/vfio/noiommu-4", "type": "c", "permissions": "rw"}
    env = dict(e.split("=", 1) for e in dev["containerEdits"]["env"])
    assert env["DPDKENI_PCI_ADDRESS"] == BDF and env["DPDKENI_IOMMU_GROUP"] == "4"
    assert env["DPDKENI_NUMA_NODE"] == "0" and env["DPDKENI_PMD"] == "net_virtio"
    assert env["PCIDEVICE_DPDKENI_IO_NIC"] == BDF and env["DPDKENI_NIC_" + BDF.replace(":", "_").replace(".", "_")] == BDF
    info = json.loads(env["PCIDEVICE_DPDKENI_IO_NIC_INFO"])
    assert info == {BDF: {"generic": {"deviceID": BDF}, "vfio": {"dev-mount": "/dev/vfio/4",
                                                                  "mount": "/dev/vfio/vfio"}}}
    edits = spec["containerEdits"]
    assert edits["deviceNodes"][0]["path"] == "/dev/vfio/vfio" and edits["deviceNodes"][0]["permissions"] == "rw"
    (mount,) = edits["mounts"]
    assert mount["type"] == "hugetlbfs" and f"size={512 << 20}" in mount["options"]


def test_sriov_env_name():
    assert cdi.env_name("intel.com", "intel_sriov_dpdk") == "PCIDEVICE_INTEL_COM_INTEL_SRIOV_DPDK"


@pytest.mark.parametrize("breakage", [
    lambda s: s.update(cdiVersion="0.4.0"),
    lambda s: s.update(kind="nic"),
    lambda s: s["devices"][0].update(name="-bad"),
    lambda s: s["devices"][0]["containerEdits"]["deviceNodes"][0].update(permissions="rwx"),
    lambda s: s.update(devices=[]),
])
def test_schema_rejects_broken_specs(vfio_tree, state_dir, breakage):
    spec = cdi.generate(sysfs=Sysfs(vfio_tree.root))
    breakage(spec)
    with pytest.raises(Error, match="CDI spec invalid"):
        cdi.validate(spec)


def test_no_vfio_nic_is_a_clear_error(sysfs_tree, state_dir):
    sysfs_tree.add_nic(BDF, "e1000", ifname="ens4")
    with pytest.raises(Error, match="no NIC is bound to vfio-pci"):
        cdi.generate(sysfs=Sysfs(sysfs_tree.root))


def test_cli_writes_the_spec(vfio_tree, state_dir, cli, tmp_path):
    out = cli("cdi", "generate", "-o", str(tmp_path / "cdi" / "dpdkeni.json"),
              env={"DPDKENI_SYSFS_ROOT": vfio_tree.root})
    assert out.returncode == 0, out.stderr
    spec = json.load(open(tmp_path / "cdi" / "dpdkeni.json"))
    jsonschema.validate(spec, SCHEMA)
    assert [d["name"] for d in spec["devices"]] == [BDF]



def _podman(spec, tmp_path, device):
    """Run a busybox container from a bare rootfs with ``device`` from ``spec`` (put in /var/run/cdi)."""
    import shutil
    import subprocess
    root = tmp_path / "rootfs"
    for d in ("bin", "dev", "proc", "sys", "etc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("busybox"), root / "bin" / "busybox")
    os.makedirs("/var/run/cdi", exist_ok=True)
    path = f"/var/run/cdi/{unique('dkcdi')}.json"
    with open(path, "w") as f:
        json.dump(spec, f)
    try:
        # runc: Debian's crun refuses this host's hybrid cgroups; explicit ulimits: podman's defaults exceed
        # the hard limits here and runc then fails setting RLIMIT_NOFILE
        return subprocess.run(
            ["podman", "--runtime", shutil.which("runc"), "--cgroup-manager", "cgroupfs", "--events-backend",
             "file", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
             "nproc=1024:1024", "--device", device, "--rootfs", str(root), "/bin/busybox", "sh", "-c",
             "ls -ln /dev/vfio; echo env=$DPDKENI_PCI_ADDRESS; grep hugetlbfs /proc/mounts"],
            capture_output=True, text=True, timeout=120)
    finally:
        os.unlink(path)


@pytest.mark.skipif(not all(__import__("shutil").which(b) for b in ("podman", "runc", "busybox")),
                    reason="podman, runc and busybox (Debian packages) are needed")
def test_podman_from_debian_accepts_the_spec(vfio_tree, state_dir, tmp_path):
    import subprocess
    spec = cdi.generate(sysfs=Sysfs(vfio_tree.root), hugepages="4M", cdi_version="0.5.0")
    # stand-ins: this host has no vfio nodes; /dev/null plays the group, /dev/zero the container node
    spec["devices"][0]["containerEdits"]["deviceNodes"][0].update(hostPath="/dev/null")
    spec["containerEdits"]["deviceNodes"][0].update(hostPath="/dev/zero")
    del spec["containerEdits"]["deviceNodes"][0]["major"], spec["containerEdits"]["deviceNodes"][0]["minor"]
    out = _podman(spec, tmp_path, f"dpdkeni.io/nic={BDF}")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(line.startswith("crw-rw-rw-") and "1,   3" in line and line.endswith(" 4") for line in lines)
    assert any("1,   5" in line and line.endswith(" vfio") for line in lines)
    assert f"env={BDF}" in lines
    assert any("/dev/hugepages hugetlbfs" in line and f"size={2 * 2 << 20}" in line for line in lines)
    version = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.split()[-1]
    if version.startswith("4.3."):  # Debian 12's podman: its CDI library stops at 0.5.0
        spec["cdiVersion"] = "0.6.0"
        out = _podman(spec, tmp_path, f"dpdkeni.io/nic={BDF}")
        assert out.returncode != 0 and "unresolvable CDI devices" in out.stderr
