"""Container Device Interface specs for NICs on vfio-pci: one CDI device per NIC, so a CDI-aware runtime
(podman, containerd, CRI-O) gives a container the NIC with ``--device dpdkeni.io/nic=0000:00:04.0``.

Each device brings its vfio group node (``/dev/vfio/N``, or the host's ``/dev/vfio/noiommu-N`` as ``/dev/vfio/N``),
``rw`` and never ``m``, and env vars the application reads: ``DPDKENI_PCI_ADDRESS``, ``DPDKENI_IOMMU_GROUP``,
``DPDKENI_MAC``, ``DPDKENI_NUMA_NODE``, ``DPDKENI_PMD``, plus sriov-network-device-plugin's
``PCIDEVICE_<PREFIX>_<RESOURCE>`` and ``…_INFO`` forms that existing DPDK apps already parse. A runtime merges the
env of several devices by name, so with two NICs in one container those hold the last one's values; each device
also sets ``DPDKENI_NIC_<bus address with _>=<address>``, a name of its own, so the NICs can be found together
(examples/testpmd-container's entrypoint reads them). The spec-level edits
add ``/dev/vfio/vfio`` and a hugetlbfs mount with a ``size=`` cap (the runtime mounts a fresh one per container).
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import tempfile
from typing import Dict, Optional, Sequence

from . import hugepages as hp
from .cdi_schema import SCHEMA
from .errors import Error, InputError, boundary, os_error_message
from .inventory import Nic, list_nics
from .sysfs import Sysfs

log = logging.getLogger(__name__)

DEFAULT_PATH = "/etc/cdi/dpdkeni.json"
CDI_VERSION = "0.6.0"
# The spec uses nothing newer than 0.5.0, so it can be written as 0.5.0 for runtimes whose CDI library stops
# there: Debian bookworm's podman 4.3.1 reports a 0.6.0 spec's devices as "unresolvable CDI devices".
CDI_VERSIONS = ("0.5.0", "0.6.0", "0.7.0", "0.8.0")
KIND = "dpdkeni.io/nic"
DEFAULT_PREFIX = "dpdkeni.io"
DEFAULT_RESOURCE = "nic"
HUGEPAGES_PATH = "/dev/hugepages"


def env_name(prefix: str, resource: str) -> str:
    """sriov-network-device-plugin's variable for a resource: ``intel.com/sriov`` -> ``PCIDEVICE_INTEL_COM_SRIOV``."""
    return "PCIDEVICE_" + re.sub(r"[^A-Z0-9]", "_", f"{prefix}_{resource}".upper())


def nic_var(pci: str) -> str:
    """The env var naming one NIC, unique per device: ``0000:01:00.0`` -> ``DPDKENI_NIC_0000_01_00_0``."""
    return "DPDKENI_NIC_" + re.sub(r"[^0-9A-Za-z]", "_", pci)


def device_info(pci: str, group_path: str) -> Dict[str, Dict[str, str]]:
    """sriov-network-device-plugin's ``…_INFO`` entry of one vfio NIC (the device plugin's answer uses it too)."""
    return {"generic": {"deviceID": pci}, "vfio": {"dev-mount": group_path, "mount": "/dev/vfio/vfio"}}


def _node(fs: Sysfs, group: int) -> Dict[str, object]:
    host = next((p for p in (f"/dev/vfio/{group}", f"/dev/vfio/noiommu-{group}") if fs.exists(p)),
                f"/dev/vfio/{group}")
    node: Dict[str, object] = {"path": f"/dev/vfio/{group}", "type": "c", "permissions": "rw"}
    if host != node["path"]:
        node["hostPath"] = host
    try:
        st = os.stat(fs.path(host))
        if stat.S_ISCHR(st.st_mode):
            node.update(major=os.major(st.st_rdev), minor=os.minor(st.st_rdev))
    except OSError:
        pass  # the runtime stats hostPath itself when it runs the container
    return node


def device(nic: Nic, fs: Sysfs, prefix: str = DEFAULT_PREFIX, resource: str = DEFAULT_RESOURCE) -> Dict:
    """The CDI device for one vfio NIC."""
    if nic.iommu_group is None:
        raise Error(f"{nic.name} has no IOMMU group; it is not usable through vfio")
    node = _node(fs, nic.iommu_group)
    var = env_name(prefix, resource)
    info = {nic.pci: device_info(nic.pci or "", str(node["path"]))}
    env = [f"DPDKENI_PCI_ADDRESS={nic.pci}", f"DPDKENI_IOMMU_GROUP={nic.iommu_group}",
           f"DPDKENI_MAC={nic.mac or ''}",
           f"DPDKENI_NUMA_NODE={'' if nic.numa_node is None else nic.numa_node}",
           f"DPDKENI_PMD={nic.pmd or ''}", f"{nic_var(nic.pci or '')}={nic.pci}", f"{var}={nic.pci}",
           f"{var}_INFO={json.dumps(info, separators=(',', ':'))}"]
    return {"name": nic.pci, "containerEdits": {"env": env, "deviceNodes": [node]}}


@boundary
def generate(nics: Optional[Sequence[Nic]] = None, *, hugepages: str = "256M", pagesize: str = "2M",
             prefix: str = DEFAULT_PREFIX, resource: str = DEFAULT_RESOURCE, sysfs: Optional[Sysfs] = None,
             cdi_version: str = CDI_VERSION) -> Dict:
    """A CDI spec with one device per NIC on vfio-pci (``nics``: default every such NIC of the host).
    ``cdi_version`` 0.5.0 is for runtimes with an older CDI library (the content is the same)."""
    fs = sysfs or Sysfs()
    if cdi_version not in CDI_VERSIONS:
        raise InputError(f"unsupported cdiVersion {cdi_version!r}", f"use one of {', '.join(CDI_VERSIONS)}")
    size, page = hp.parse_size(hugepages), hp.parse_size(pagesize)  # bad input first, before any lookup
    if nics is None:
        nics = [n for n in list_nics(all=True, sysfs=fs, active=lambda: set()) if n.driver == "vfio-pci"]
    if not nics:
        raise Error("no NIC is bound to vfio-pci, so there is nothing to describe",
                    "bind one first: dpdkeni bind NIC")
    spec = {
        "cdiVersion": cdi_version, "kind": KIND,
        "devices": [device(n, fs, prefix, resource) for n in nics],
        "containerEdits": {
            "deviceNodes": [{"path": "/dev/vfio/vfio", "type": "c", "major": 10, "minor": 196,
                             "permissions": "rw"}],
            "mounts": [{"hostPath": "nodev", "containerPath": HUGEPAGES_PATH, "type": "hugetlbfs",
                        "options": ["nosuid", "nodev", *hp.mount_options(size, page).split(",")]}],
        },
    }
    validate(spec)
    return spec


def validate(spec: Dict) -> None:
    """Check a spec against the CDI schema (:mod:`dpdkeni.cdi_schema`); raises Error naming the bad field."""
    try:
        import jsonschema
    except ImportError:  # an optional dependency: the spec is built by code, the schema is the tests' check
        log.info("jsonschema is not installed: CDI spec not validated")
        return
    errors = sorted(jsonschema.Draft7Validator(SCHEMA).iter_errors(spec), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(top)"
        raise Error(f"CDI spec invalid at {where}: {errors[0].message}")


@boundary
def write(spec: Dict, path: str = DEFAULT_PATH) -> str:
    """Validate and write a spec atomically (runtimes re-read /etc/cdi on change)."""
    validate(spec)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dpdkeni-cdi.", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(spec, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)
    except OSError as exc:
        raise os_error_message(exc, f"writing the CDI spec {path}") from exc
    return path

