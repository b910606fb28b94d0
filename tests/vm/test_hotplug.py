"""Real PCI hot-plug over QMP: the guest's dpdkeni sees each model with its PCI address and MAC, and unplug
removes it."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.vm


def _listed(lab, mac):
    nics = lab.dpdkeni("list", "--json", check=True).json()
    return [n for n in nics if n["mac"] == mac]


@pytest.mark.parametrize("model,vendor_device", [("virtio-net", "1af4:1041"), ("e1000", "8086:100e"),
                                                 ("e1000e", "8086:10d3")])
def test_hotplug_then_unplug_shows_in_list(lab, plugged, model, vendor_device):
    nic = plugged(model)
    [row] = _listed(lab, nic.mac)
    assert row["model"] == model
    assert row["pci"] == nic.pci
    assert f"{row['vendor']}:{row['device']}" == vendor_device
    assert row["ifname"] == nic.ifname
    lab.unplug(nic.id)
    assert _listed(lab, nic.mac) == []


def test_guest_runs_this_checkout_with_its_native_extension(lab):
    out = lab.python("import sys, dpdkeni, dpdkeni._native as n; print(sys.version_info[:2], dpdkeni.__file__, "
                     "n.__file__)").stdout
    assert out.startswith("(3, 11) /opt/dpdkeni/dpdkeni/__init__.py")
    assert "_native.abi3.so" in out


def test_unknown_model_is_refused_before_touching_qemu(lab):
    from dpdkeni.errors import InputError
    with pytest.raises(InputError, match="unknown NIC model"):
        lab.plug("rtl8139")
