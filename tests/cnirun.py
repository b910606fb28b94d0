"""Drive a CNI plugin binary exactly as a runtime does: ``CNI_*`` in the environment, the configuration on stdin,
the result or error JSON on stdout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Dict, Optional

DPDKENI_CNI = os.path.join(os.path.dirname(sys.executable), "dpdkeni-cni")
DEBIAN_CNI_DIR = "/usr/lib/cni"
HOST_DEVICE = os.path.join(DEBIAN_CNI_DIR, "host-device")


@dataclass
class CniRun:
    """One plugin invocation's outcome."""

    returncode: int
    doc: Optional[Dict[str, Any]]
    stdout: str
    stderr: str


def run_cni(command: str, conf: Any, *, binary: str = DPDKENI_CNI, netns: Optional[str] = None,
            ifname: str = "net1", container_id: str = "c0ffee", cni_path: str = DEBIAN_CNI_DIR,
            extra_env: Optional[Dict[str, str]] = None, timeout: float = 60) -> CniRun:
    """Run ``binary`` with ``CNI_COMMAND=command``; ``conf`` is a dict (dumped) or raw bytes/str."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname,
                "CNI_PATH": cni_path})
    if netns is not None:
        env["CNI_NETNS"] = netns
    env.update(extra_env or {})
    data = conf if isinstance(conf, (bytes, str)) else json.dumps(conf)
    proc = subprocess.run([binary], input=data.encode() if isinstance(data, str) else data, env=env,
                          capture_output=True, timeout=timeout)
    out = proc.stdout.decode()
    try:
        doc = json.loads(out) if out.strip() else None
    except ValueError:
        doc = None
    return CniRun(proc.returncode, doc, out, proc.stderr.decode())


def with_prev(conf: Dict[str, Any], result: Dict[str, Any]) -> Dict[str, Any]:
    """The configuration a runtime sends to CHECK and DEL: the ADD result as ``prevResult``."""
    return {**conf, "prevResult": result}


def link_state(name: str, netns_path: Optional[str] = None) -> Optional[tuple]:
    """(mac, mtu, up, addresses) of link ``name`` in the host or in the netns file ``netns_path``, or None."""
    from pyroute2 import IPRoute

    with IPRoute(netns=netns_path, flags=0) if netns_path else IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
        addrs = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=found[0])}
        return link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_MTU"), bool(link["flags"] & 1), addrs


def mounts_under(path: str) -> list:
    """The mount points below ``path`` (a CNI attachment's netns pin is one)."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path.rstrip("/") + "/")]
