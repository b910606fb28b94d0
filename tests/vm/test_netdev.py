"""Netdev handoff of hot-plugged NICs in the guest: a virtio-net and an e1000 go into two containers, traffic
crosses the QEMU hub between them; killing a container brings its NIC back to the root namespace and
``dpdkeni recover`` restores its original name and MTU; ``release`` brings the other one back the same way."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.vm

ATTACH = """
import json, sys
import dpdkeni
out = []
for mac, pid, addr in json.loads(sys.argv[1]):
    nic = dpdkeni.wait_for_nic(mac=mac, timeout=30)
    lease = dpdkeni.attach(nic, f"pid:{pid}", mode="netdev", ifname="eth0", addresses=[addr], mtu=1400)
    out.append({"key": lease.key, "state": lease.state, "original": lease.original.get("ifname")})
print(json.dumps(out))
"""

STATE = """
import json, sys
import dpdkeni
res = {"recover": dpdkeni.recover()}
if len(sys.argv) > 1:
    dpdkeni.release(sys.argv[1])
res["nics"] = {n.mac: {"ifname": n.ifname, "mtu": n.mtu, "netns": n.netns} for n in dpdkeni.list_nics()}
print(json.dumps(res))
"""


def _ns_run(lab, pid, *argv):
    return lab.run(["nsenter", "-t", str(pid), "-n", *argv], timeout=60)


def test_netdev_handoff_traffic_and_container_death_restores_the_name(lab, plugged, guest_containers):
    a, b = plugged("virtio-net"), plugged("e1000")
    ca, cb = guest_containers(), guest_containers()
    leases = lab.run(
        ["python3", "-c", ATTACH, json.dumps([[a.mac, ca, "198.18.7.1/24"], [b.mac, cb, "198.18.7.2/24"]])],
        timeout=180).check().json()
    assert [(x["key"], x["state"], x["original"]) for x in leases] == \
        [(a.pci, "attached", a.ifname), (b.pci, "attached", b.ifname)]
    link = _ns_run(lab, ca, "ip", "-o", "link", "show", "eth0").check().stdout
    assert a.mac in link and "mtu 1400" in link
    ping = _ns_run(lab, ca, "ping", "-c", "3", "-i", "0.3", "-W", "5", "198.18.7.2")
    assert ping.rc == 0 and " 0% packet loss" in ping.stdout, ping.stdout + ping.stderr

    lab.kill(lab.containers[ca], signal=9)
    back = lab.wait_net(a.mac, timeout=60)   # the kernel returns it to the root netns when the netns dies
    assert back["pci"] == a.pci
    state = lab.run(["python3", "-c", STATE, b.mac], timeout=180).check().json()
    assert {"key": a.pci, "action": "reclaimed"}.items() <= next(
        r for r in state["recover"] if r["key"] == a.pci).items()
    assert state["nics"][a.mac]["ifname"] == a.ifname, state  # its original name again, in the root netns
    assert state["nics"][b.mac]["ifname"] == b.ifname      # released from the live container
    assert state["nics"][a.mac]["mtu"] == state["nics"][b.mac]["mtu"] == 1500
    assert "eth0" not in _ns_run(lab, cb, "ip", "-o", "link").stdout
