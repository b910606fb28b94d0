"""The daemon end to end on real hot-plug: a policy in the guest, a NIC plugged from the host lands in the
right container with its address, with no command typed in the guest; the time from device_add to the address
being in the container is printed. Then the seed's migration: unplug, the container's new instance, re-plug
with the same MAC: the NIC lands in the new instance with the same addresses and routes."""
from __future__ import annotations

import re
import time

import pytest

from dpdkeni.lab.demo import DEMO_POLICY

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


LEASES = "import json; from dpdkeni.ledger import Ledger; print(json.dumps(sorted(Ledger().leases())))"
MIGRATION_POLICY = DEMO_POLICY + "mtu = 1400\n"  # the demo's rule: container:NAME, eth1, address, gateway


def _eth1(lab, pid: int):
    """eth1 as the container with init ``pid`` sees it: mac, mtu, IPv4 addresses, routes; None without eth1."""
    ns = ["nsenter", "-t", str(pid), "-n", "ip"]
    link = lab.run(ns + ["-o", "link", "show", "eth1"])
    if link.rc != 0:
        return None
    addrs = re.findall(r"inet (\S+)", lab.run(ns + ["-o", "-4", "addr", "show", "dev", "eth1"]).stdout)
    routes = sorted(line.strip() for line in lab.run(ns + ["-4", "route", "show"]).stdout.splitlines())
    return {"mac": re.search(r"link/ether (\S+)", link.stdout).group(1), "mtu": int(re.search(r"mtu (\d+)",
            link.stdout).group(1)), "addresses": addrs, "routes": routes}


def _wait_configured(lab, pid: int, daemon: int, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while True:
        seen = _eth1(lab, pid)
        if seen and seen["addresses"] and any(r.startswith("default via") for r in seen["routes"]):
            return seen
        assert time.monotonic() < deadline, f"{seen}\n" + str(lab.poll(daemon)["output"])[-3000:]
        time.sleep(0.2)


def test_migration_the_re_plugged_nic_lands_in_the_new_instance(lab, plugged, lab_mac):
    """The seed's migration: the container moves, its NIC is unplugged (device_del) and plugged again with the
    same MAC; the daemon hands it to the container's new instance with the same addresses and routes. The
    re-plug comes before the new instance runs (the NIC waits for its container), as a cloud may do it."""
    mac = lab_mac()
    name = "web" + mac[-5:].replace(":", "")
    lab.write("/tmp/dk-lab-migration.toml", MIGRATION_POLICY.format(mac=mac, name=name))
    daemon = lab.spawn(["python3", "-m", "dpdkeni", "-v", "daemon", "--policy", "/tmp/dk-lab-migration.toml"])
    try:
        lab.wait(daemon, timeout=120, until="daemon ready")
        first = lab.runc_container(name)
        started = time.monotonic()
        nic = plugged("virtio-net", mac=mac, wait=False)
        before = _wait_configured(lab, first, daemon)
        print(f"\nfirst instance (pid {first}): {before} after {time.monotonic() - started:.1f}s")
        assert (before["mac"], before["mtu"], before["addresses"]) == (mac, 1400, ["198.18.10.2/24"]), before
        assert any(r.startswith("default via 198.18.10.1 dev eth1") for r in before["routes"]), before

        # the cloud takes the ENI away while the old instance still runs: the lease ends, nothing is left
        lab.unplug(nic.id)
        lab.wait(daemon, timeout=60, until="why=unplugged outcome=gone")
        assert _eth1(lab, first) is None
        assert lab.python(LEASES).json() == []
        lab.runc_delete(name)  # the old instance stops

        # the ENI comes back (same MAC) before the container's new instance runs: it waits for it
        again = plugged("virtio-net", mac=mac)
        lab.wait(daemon, timeout=60, until=f"waiting: nic={again.pci} rule=web")
        second = lab.runc_container(name)
        started = time.monotonic()
        after = _wait_configured(lab, second, daemon)
        print(f"new instance (pid {second}): {after} {time.monotonic() - started:.1f}s after it started")
        assert second != first and after == before
        listed = lab.dpdkeni("list").stdout
        assert f"{again.pci} " in listed and f"leased=container:{name}" in listed, listed
        output = str(lab.poll(daemon)["output"])
        assert f"attached: nic={again.pci} rule=web mode=netdev target=container:{name}" in output, output[-3000:]
    finally:
        lab.kill(daemon)
        lab.runc_delete(name)
    lab.dpdkeni("release", mac, timeout=120)


BUNDLE = "/opt/dpdkeni/examples/testpmd-container/build-bundle.sh"
DPDK_POLICY = """
[[rule]]
name = "pmd"
match = {{ mac = "{mac}" }}
mode = "dpdk"
target = "container:{name}"
hugepages = "128M"
"""


def test_daemon_hands_a_hot_plugged_nic_to_testpmd_and_takes_it_back(lab, plugged, lab_mac):
    """The daemon in dpdk mode: a NIC plugged from the host is bound to vfio-pci and handed to a waiting runc
    testpmd container (DPDKENI_PCI=auto: it learns its NIC from the node it is given), testpmd forwards on it;
    when the container dies the daemon gives the NIC back to its kernel driver under its udev name."""
    mac = lab_mac()
    name = "pmd" + mac[-5:].replace(":", "")
    lab.sh("modprobe vfio-pci && mkdir -p /run/tproot && (mountpoint -q /run/tproot || mount --bind / /run/tproot)",
           check=True)
    lab.run(["sh", BUNDLE, "--rootfs-from", "/run/tproot", "--env", "DPDKENI_PCI=auto", "--env", "DPDKENI_WAIT=300",
             "--env", "TESTPMD_ARGS=--forward-mode=io --auto-start --tx-first --stats-period 2 --nb-cores=1 "
             "--total-num-mbufs=8192", f"/run/bundles/{name}"], check=True)
    lab.sh(f"runc run -d -b /run/bundles/{name} {name} >/tmp/{name}.log 2>&1 </dev/null", check=True)
    lab.write("/tmp/dk-lab-dpdk.toml", DPDK_POLICY.format(mac=mac, name=name))
    daemon = lab.spawn(["python3", "-m", "dpdkeni", "-v", "daemon", "--policy", "/tmp/dk-lab-dpdk.toml"])
    try:
        lab.wait(daemon, timeout=120, until="daemon ready")
        plugged("virtio-net", mac=mac, wait=False)
        out = str(lab.wait(daemon, timeout=300, until=" rule=pmd mode=dpdk ")["output"])
        pci = re.search(r"attached: nic=(\S+) rule=pmd mode=dpdk", out).group(1)
        log = lab.wait_text(f"/tmp/{name}.log", "Port statistics", timeout=300)
        assert f"testpmd-entrypoint: NICs {pci}" in log, log[-2000:]
        assert lab.sh(f"basename $(readlink /sys/bus/pci/devices/{pci}/driver)").stdout.strip() == "vfio-pci"

        lab.run(["runc", "kill", name, "KILL"])  # the container dies
        lab.wait(daemon, timeout=300, until=f"released: nic={pci}")
        back = lab.wait_net(mac, timeout=120)  # on its kernel driver again, named by udev
        assert back["pci"] == pci and back["ifname"].startswith("enp"), back
        assert lab.sh(f"basename $(readlink /sys/bus/pci/devices/{pci}/driver)").stdout.strip() == "virtio-pci"
        assert lab.python(LEASES).json() == []
    finally:
        lab.kill(daemon)
        lab.runc_delete(name)


DPDK_UNPLUG_POLICY = """
[[rule]]
name = "gone"
match = {{ mac = "{mac}" }}
mode = "dpdk"
target = "pid:{pid}"
hugepages = "64M"
"""
POOL = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages"


def test_a_dpdk_lease_ends_when_its_nic_is_unplugged(lab, plugged, lab_mac, cgroup_container):
    """Issue 16: a NIC handed to a container in dpdk mode is unplugged; the daemon ends the lease and nothing is
    left: no lease, the hugepage pool as before, no hugetlbfs mount and no device node in the container, no
    rule of ours in its cgroup's device program, no bind record."""
    mac = lab_mac()
    pid, cgroup = cgroup_container
    before = lab.sh(f"cat {POOL}", check=True).stdout.strip()
    lab.write("/tmp/dk-lab-dpdk-unplug.toml", DPDK_UNPLUG_POLICY.format(mac=mac, pid=pid))
    daemon = lab.spawn(["python3", "-m", "dpdkeni", "-v", "daemon", "--policy", "/tmp/dk-lab-dpdk-unplug.toml"])
    try:
        lab.wait(daemon, timeout=120, until="daemon ready")
        nic = plugged("virtio-net", mac=mac, wait=False)
        out = str(lab.wait(daemon, timeout=300, until=" rule=gone mode=dpdk ")["output"])
        pci = re.search(r"attached: nic=(\S+) rule=gone mode=dpdk", out).group(1)
        assert lab.sh(f"basename $(readlink /sys/bus/pci/devices/{pci}/driver)").stdout.strip() == "vfio-pci"
        assert int(lab.sh(f"cat {POOL}").stdout) == int(before) + 32
        assert f"size={64 << 20}" in lab.sh(f"grep hugetlbfs /proc/{pid}/mounts").stdout
        assert "vfio" in lab.sh(f"nsenter -t {pid} -m ls /dev/vfio").stdout.split()
        assert lab.device_rules(cgroup) != []

        lab.unplug(nic.id)
        lab.wait(daemon, timeout=120, until=f"released: nic={pci} why=unplugged outcome=gone")
        assert lab.python(LEASES).json() == []
        assert lab.sh(f"cat {POOL}").stdout.strip() == before
        assert f"size={64 << 20}" not in lab.sh(f"grep hugetlbfs /proc/{pid}/mounts").stdout
        assert lab.sh(f"nsenter -t {pid} -m ls /dev/vfio").stdout.strip() == ""
        assert lab.device_rules(cgroup) == []
        assert lab.sh(f"ls /run/dpdkeni/bound/{pci}.json").rc != 0
        assert "release-failed" not in str(lab.poll(daemon)["output"])
    finally:
        lab.kill(daemon)


def _driver(lab, pci):
    return lab.sh(f"basename $(readlink /sys/bus/pci/devices/{pci}/driver) 2>/dev/null").stdout.strip() or None


def test_bind_persist_survives_an_unplug_and_re_plug_by_the_udev_rule(lab, plugged, lab_mac):
    """Issue 16: 'dpdkeni bind --persist', then the device is unplugged and plugged again (same slot, so the same
    PCI address, same MAC): real udevd runs the installed rule and the device comes back on vfio-pci with nobody
    typing anything. 'unbind --persist' gives it back and removes the override."""
    mac = lab_mac()
    lab.dpdkeni("udev", "rules", "--install", check=True)
    lab.sh("udevadm control --reload && modprobe vfio-pci", check=True)
    nic = plugged("virtio-net", mac=mac)
    pci = nic.pci
    try:
        out = lab.dpdkeni("bind", pci, "--persist", timeout=300)
        assert out.rc == 0, out.stderr
        assert _driver(lab, pci) == "vfio-pci"
        assert lab.sh(f"cat /etc/dpdkeni/overrides/pci-{pci}").stdout == "vfio-pci\n"
        assert lab.dpdkeni("overrides", "--json").json() == [
            {"pci": pci, "driver": "vfio-pci", "path": f"/etc/dpdkeni/overrides/pci-{pci}"}]
        lab.unplug(nic.id)
        assert lab.sh(f"test -e /sys/bus/pci/devices/{pci}").rc != 0
        started = time.monotonic()
        again = plugged("virtio-net", mac=mac, wait=False)
        deadline = started + 180
        while _driver(lab, pci) != "vfio-pci":
            assert time.monotonic() < deadline, lab.sh(f"cat /run/dpdkeni/override-{pci}.log; "
                                                       f"ls -l /sys/bus/pci/devices/{pci}/").stdout
            time.sleep(0.5)
        print(f"\nre-plugged {pci} back on vfio-pci by the udev rule after {time.monotonic() - started:.1f}s")
        assert again.port == nic.port
    finally:
        back = lab.dpdkeni("unbind", pci, "--persist", timeout=300)
        lab.sh(f"rm -f /etc/dpdkeni/overrides/pci-{pci}")
    assert back.rc == 0, back.stderr
    assert _driver(lab, pci) == "virtio-pci" and lab.dpdkeni("overrides", "--json").json() == []


DHCP_POLICY = """
[[rule]]
name = "slow"
match = {{ mac = "{mac}" }}
mode = "netdev"
target = "pid:{pid}"
ifname = "eth1"
dhcp = true
"""


def test_an_unplug_wins_over_a_dhcp_exchange_in_progress(lab, plugged, lab_mac, guest_containers):
    """Issue 16: the NIC is in the container and its DHCP client waits for a lease no server gives (20 s); the
    NIC is unplugged: the daemon gives the attach up at once (attach-cancelled), stops the client, and leaves no
    lease, instead of holding the NIC's lane until the DHCP timeout."""
    mac, pid = lab_mac(), guest_containers()
    lab.write("/tmp/dk-lab-dhcp.toml", DHCP_POLICY.format(mac=mac, pid=pid))
    daemon = lab.spawn(["python3", "-m", "dpdkeni", "-v", "daemon", "--policy", "/tmp/dk-lab-dhcp.toml"])
    try:
        lab.wait(daemon, timeout=120, until="daemon ready")
        # a client of an earlier test's NIC in this slot (same key) exits within its 2 s link check: gone first,
        # so the one found below is this NIC's
        deadline = time.monotonic() + 30
        while "--key" in lab.sh("pgrep -af 'dpdkeni[.]dhcp' || true").stdout:
            assert time.monotonic() < deadline, "an earlier test's DHCP client is still running"
            time.sleep(0.3)
        nic = plugged("virtio-net", mac=mac, wait=False)
        deadline = time.monotonic() + 120
        while True:
            client = lab.sh("pgrep -af 'dpdkeni[.]dhcp' || true").stdout
            if "--key" in client:
                break
            assert time.monotonic() < deadline, str(lab.poll(daemon)["output"])[-3000:]
            time.sleep(0.3)
        pci = re.search(r"--key (\S+)", client).group(1)
        started = time.monotonic()
        lab.unplug(nic.id)
        unplugged = time.monotonic()
        out = str(lab.wait(daemon, timeout=60, until=f"nic={pci} ")["output"])
        print(f"\nunplug took {unplugged - started:.1f}s; attach given up {time.monotonic() - unplugged:.1f}s after")
        assert f"attach-cancelled: nic={pci} rule=slow why=removed" in out, out[-3000:]
        assert "no DHCP lease" not in out
        assert lab.sh("pgrep -af 'dpdkeni[.]dhcp' || true").stdout.strip() == ""
        assert lab.python(LEASES).json() == []
    finally:
        lab.kill(daemon)
