"""``bind`` rolls back when the new driver's probe really fails (issue #14): a guest of its own with an e1000e
cold-plugged behind a PCIe expander bridge that bypasses the vIOMMU, so the NIC has no IOMMU group and the
kernel's vfio-pci probe refuses it (-EINVAL). The bind is forced past the guard that would refuse it first."""
from __future__ import annotations

from typing import Iterator

import pytest

from dpdkeni.lab.lab import Lab

PCI = "0000:81:00.0"
MAC = "52:54:00:ee:00:01"
BYPASS_BUS = [
    "-device", "pxb-pcie,id=pxb1,bus_nr=128,bus=pcie.0,bypass_iommu=true",
    "-device", "pcie-root-port,id=rpx,bus=pxb1,chassis=100,slot=0",
    "-netdev", "hubport,id=hpx,hubid=0",
    "-device", f"e1000e,bus=rpx,netdev=hpx,mac={MAC}",
]


@pytest.fixture(scope="module")
def bypass_lab(lab_box) -> Iterator[Lab]:
    """A guest of its own (the shared one keeps its layout): an e1000e outside every IOMMU group."""
    with Lab(progress=lab_box.progress, memory="1024", extra_args=BYPASS_BUS) as lab:
        yield lab


def _state(lab: Lab) -> tuple:
    dev = f"/sys/bus/pci/devices/{PCI}"
    out = lab.sh(f"basename $(readlink {dev}/driver) 2>/dev/null; echo; ls {dev}/net 2>/dev/null; echo; "
                 f"cat {dev}/driver_override; echo; test -e {dev}/iommu_group && echo group || echo nogroup",
                 check=True).stdout
    driver, ifname, override, group = (part.strip() for part in out.split("\n\n"))
    return driver or None, ifname or None, override, group


def test_a_probe_that_fails_for_real_leaves_the_nic_on_its_driver(bypass_lab):
    lab = bypass_lab
    lab.sh("modprobe vfio-pci", check=True)
    before = _state(lab)
    assert before == ("e1000e", before[1], "(null)", "nogroup") and before[1], before
    refused = lab.dpdkeni("bind", PCI, "--driver", "vfio-pci", timeout=120)
    assert refused.rc == 3 and "has no IOMMU group (its bus bypasses the IOMMU)" in refused.stderr, refused.stderr
    assert _state(lab) == before

    mark = lab.sh("dmesg | wc -l", check=True).stdout.strip()
    out = lab.dpdkeni("bind", PCI, "--driver", "vfio-pci", "--force", timeout=120)
    kernel = lab.sh(f"dmesg | tail -n +{int(mark) + 1}", check=True).stdout
    assert f"vfio-pci: probe of {PCI} failed with error -22" in kernel, kernel  # the probe did fail, for real
    assert out.rc == 1, (out.stdout, out.stderr)
    assert out.stderr.strip().splitlines() == [
        f"dpdkeni: forced past a guard: {PCI} has no IOMMU group (its bus bypasses the IOMMU); vfio-pci would need "
        "the unsafe no-IOMMU mode",
        f"dpdkeni: error: bind: {PCI}: vfio-pci did not take the device (driver now none); restored to e1000e "
        "(see dmesg for the probe error)"], out.stderr
    # back on e1000e under its own name (udev named it again), the override cleared, nothing remembered
    lab.sh(f"for i in $(seq 100); do [ \"$(ls /sys/bus/pci/devices/{PCI}/net 2>/dev/null)\" = {before[1]} ] "
           "&& break; sleep 0.1; done", timeout=30)
    assert _state(lab) == before
    remembered = lab.python(f"from dpdkeni import driver; print(driver.remembered({PCI!r}))").stdout.strip()
    assert remembered == "{}", remembered
