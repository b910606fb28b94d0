"""DPDK handoff on real devices: a hot-plugged virtio-net and e1000 bound to vfio-pci (behind the vIOMMU) and
handed to a runc container built by examples/testpmd-container/build-bundle.sh; testpmd forwards in io mode
between them across the QEMU hub; guards refuse an active NIC and a NIC held by DPDK; release returns both to
their kernel drivers under their original names."""
from __future__ import annotations

import re
import time

import pytest

pytestmark = pytest.mark.vm

BURST = 32          # testpmd's default burst (--tx-first sends one per port)
RING = 1024         # the most packets in flight in a port's rings and the hub when testpmd stops
MIN_FORWARDED = 50000   # a working run here forwards ~1M (TCG, 2 cores shared)
BUNDLE = "/opt/dpdkeni/examples/testpmd-container/build-bundle.sh"

ATTACH = """
import json, sys
import dpdkeni
out = []
for mac in sys.argv[2:]:
    lease = dpdkeni.attach(dpdkeni.find_nic(mac), sys.argv[1], mode="dpdk", hugepages="128M")
    out.append({"key": lease.key, "state": lease.state})
print(json.dumps(out))
"""

RELEASE = """
import json, sys
import dpdkeni
for pci in sys.argv[1:]:
    dpdkeni.release(pci)
print(json.dumps({n.pci: {"ifname": n.ifname, "driver": n.driver} for n in dpdkeni.list_nics()}))
"""


def _totals(log: str):
    """{port: {"rx", "rx_dropped", "tx", "tx_dropped"}} from testpmd's final 'Forward statistics for port N'
    blocks."""
    ports = {}
    for m in re.finditer(r"Forward statistics for port (\d+)\s*-+\s*RX-packets: (\d+)\s+RX-dropped: (\d+).*?"
                         r"TX-packets: (\d+)\s+TX-dropped: (\d+)", log, re.S):
        ports[int(m.group(1))] = dict(zip(("rx", "rx_dropped", "tx", "tx_dropped"), map(int, m.groups()[1:])))
    return ports


def test_testpmd_in_runc_forwards_between_virtio_and_e1000(lab, plugged):
    a, b = plugged("virtio-net"), plugged("e1000")
    name = f"tp{a.mac[-2:]}"
    lab.sh("mkdir -p /run/tproot && (mountpoint -q /run/tproot || mount --bind / /run/tproot)", check=True)
    lab.run(["sh", BUNDLE, "--rootfs-from", "/run/tproot", "--env", f"DPDKENI_PCI={a.pci},{b.pci}",
             "--env", "DPDKENI_WAIT=300", f"/run/bundles/{name}"], check=True)
    lab.sh(f"runc run -d -b /run/bundles/{name} {name} >/tmp/{name}.log 2>&1 </dev/null", check=True)
    try:
        # guard on a real device: an active NIC (an address in the root netns) is refused, exit 3
        lab.run(["ip", "addr", "add", "198.18.9.1/24", "dev", a.ifname], check=True)
        refused = lab.dpdkeni("bind", a.pci)
        assert refused.rc == 3 and "active" in refused.stderr, refused.stderr
        lab.run(["ip", "addr", "flush", "dev", a.ifname], check=True)

        leases = lab.run(["python3", "-c", ATTACH, f"container:{name}", a.mac, b.mac], timeout=300).check().json()
        assert [(x["key"], x["state"]) for x in leases] == [(a.pci, "attached"), (b.pci, "attached")]
        drivers = lab.sh(f"basename -a $(readlink /sys/bus/pci/devices/{a.pci}/driver) "
                         f"$(readlink /sys/bus/pci/devices/{b.pci}/driver)").stdout.split()
        assert drivers == ["vfio-pci", "vfio-pci"]
        pid = lab.run(["runc", "state", name], check=True).json()["pid"]
        huge = [m for m in lab.run(["cat", f"/proc/{pid}/mounts"]).stdout.splitlines() if " hugetlbfs " in m]
        assert len(huge) == 1 and f"size={256 << 20}" in huge[0], huge  # one mount, both NICs' shares
        lab.wait_text(f"/tmp/{name}.log", "Port statistics", timeout=300)
        # guard: a NIC that a DPDK process holds is refused
        held = lab.dpdkeni("bind", b.pci, "--driver", "uio_pci_generic")
        assert held.rc == 3, held.stderr
        assert "is held by dpdk-testpmd[" in held.stderr, held.stderr  # the holder named, by pid
        time.sleep(5)
        lab.run(["runc", "kill", name, "INT"], check=True)
        log = lab.wait_text(f"/tmp/{name}.log", "Bye", timeout=120)
    except BaseException:  # a failure here must not leave the NICs leased and on vfio-pci for the next tests
        lab.run(["runc", "delete", "--force", name])
        lab.run(["python3", "-c", RELEASE, a.pci, b.pci], timeout=300)
        raise
    finally:
        lab.run(["runc", "delete", "--force", name])
    ports = _totals(log)
    assert set(ports) == {0, 1}, log[-3000:]
    p0, p1 = ports[0], ports[1]
    # io mode: every packet port 0 receives goes out of port 1 and the other way round; --tx-first adds one burst
    # of BURST per port. What a port sends (sent + dropped by its tx queue) is exactly what the other received
    # plus that burst, give or take the burst being forwarded when testpmd stopped.
    for got, sent in ((p0, p1), (p1, p0)):
        assert abs(sent["tx"] + sent["tx_dropped"] - (got["rx"] + BURST)) <= BURST, ports
    # across the QEMU hub, what one port sends arrives at the other, but for what was still in the rings
    for sent, got in ((p0, p1), (p1, p0)):
        assert sent["tx"] - RING <= got["rx"] + got["rx_dropped"] <= sent["tx"], ports
    # a working forwarder keeps the two tx-first bursts circulating for the whole run: thousands of packets (a
    # broken one moves the first bursts and stops)
    assert min(p0["rx"], p1["rx"]) >= MIN_FORWARDED, ports

    state = lab.run(["python3", "-c", RELEASE, a.pci, b.pci], timeout=300).check().json()
    assert state[a.pci] == {"ifname": a.ifname, "driver": "virtio-pci"}
    assert state[b.pci] == {"ifname": b.ifname, "driver": "e1000"}
