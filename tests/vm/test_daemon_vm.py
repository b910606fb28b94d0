"""The daemon end to end on real hot-plug: a policy in the guest, a NIC plugged from the host lands in the
right container with its address, with no command typed in the guest; the time from device_add to the address
being in the container is printed."""
from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.vm

POLICY = """
[[rule]]
name = "lab"
match = {{ mac = "{mac}" }}
mode = "netdev"
target = "pid:{pid}"
ifname = "eth1"
addresses = ["198.18.8.2/24"]
"""


def test_daemon_places_a_hot_plugged_nic_by_policy(lab, plugged, lab_mac, guest_containers):
    mac, pid = lab_mac(), guest_containers()
    lab.write("/tmp/dk-lab-policy.toml", POLICY.format(mac=mac, pid=pid))
    daemon = lab.spawn(["python3", "-m", "dpdkeni", "-v", "daemon", "--policy", "/tmp/dk-lab-policy.toml"])
    try:
        lab.wait(daemon, timeout=120, until="daemon ready")
        started = time.monotonic()
        nic = plugged("virtio-net", mac=mac, wait=False)
        deadline = started + 120
        while True:
            out = lab.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "addr", "show", "dev", "eth1"]).stdout
            if "198.18.8.2/24" in out:
                break
            assert time.monotonic() < deadline, str(lab.poll(daemon)["output"])[-3000:]
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        print(f"\ndevice_add -> address usable in the container: {elapsed:.1f}s")
        link = lab.run(["nsenter", "-t", str(pid), "-n", "ip", "-o", "link", "show", "eth1"]).stdout
        assert mac in link
    finally:
        lab.kill(daemon)
    lab.run(["python3", "-m", "dpdkeni", "release", nic.mac], timeout=120)
