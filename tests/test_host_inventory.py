"""The real host: its own virtio-net 0000:00:03.0 is eth0, and it carries the host's traffic."""
import json
import os

import pytest

from dpdkeni.inventory import find_nic, list_nics

HOST_NIC = "0000:00:03.0"
pytestmark = pytest.mark.skipif(not os.path.exists(f"/sys/bus/pci/devices/{HOST_NIC}/virtio2")
                                and not os.path.exists(f"/sys/bus/pci/devices/{HOST_NIC}"),
                                reason="not the reference VM (no virtio-net at 0000:00:03.0)")


def _snapshot():
    base = f"/sys/bus/pci/devices/{HOST_NIC}"
    return (os.readlink(f"{base}/driver"), open(f"{base}/driver_override").read(),
            open("/sys/class/net/eth0/operstate").read())


def test_host_eth0_is_active_virtio():
    before = _snapshot()
    nic = {n.pci: n for n in list_nics()}[HOST_NIC]
    assert (nic.model, nic.ifname, nic.driver) == ("virtio-net", "eth0", "virtio-pci")
    assert nic.active, "eth0 carries the host's address and routes"
    assert nic.mac == open("/sys/class/net/eth0/address").read().strip()
    assert find_nic("eth0").pci == HOST_NIC
    assert _snapshot() == before


def test_cli_list_json_and_table(cli):
    out = cli("list", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    eth0 = [r for r in rows if r["pci"] == HOST_NIC][0]
    assert eth0["active"] and eth0["ifname"] == "eth0"
    table = cli("list")
    assert "Network devices using kernel driver" in table.stdout
    line = [ln for ln in table.stdout.splitlines() if ln.startswith(HOST_NIC)][0]
    assert "if=eth0" in line and "drv=virtio-pci" in line and "*Active*" in line


def test_cli_list_all_shows_lo(cli):
    rows = json.loads(cli("list", "--all", "--json").stdout)
    assert any(r["ifname"] == "lo" and r["model"] == "loopback" for r in rows)
