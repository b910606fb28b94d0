"""``dpdkeni lab up`` and the commands that drive it from other shells: plug, exec, nics, unplug, down. This test
boots a lab of its own (the session's lab is left alone)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import start_lab_up

pytestmark = pytest.mark.vm


def dk(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dpdkeni", *args], capture_output=True, text=True, timeout=timeout)


def test_lab_up_driven_from_another_process(lab_possible, tmp_path, lab_mac):
    sock = str(tmp_path / "control.sock")
    none = dk("lab", "nics", "--socket", sock)
    assert none.returncode == 2 and none.stderr.strip() == \
        "dpdkeni: error: no lab is up (start one in another shell: dpdkeni lab up)"
    up, _ = start_lab_up(sock)
    try:
        again = dk("lab", "up", "--socket", sock)
        assert again.returncode == 1 and "a lab is already up" in again.stderr

        mac = lab_mac()
        plugged = dk("lab", "plug", "e1000", "--mac", mac, "--json", "--socket", sock)
        assert plugged.returncode == 0, plugged.stderr
        nic = json.loads(plugged.stdout)
        assert nic["mac"] == mac and nic["model"] == "e1000" and nic["pci"] and nic["ifname"]
        seen = dk("lab", "exec", "--socket", sock, "--", "cat", f"/sys/class/net/{nic['ifname']}/address")
        assert seen.returncode == 0 and seen.stdout.strip() == mac
        assert dk("lab", "exec", "--socket", sock, "--", "false").returncode == 1  # the guest's exit status
        assert [n["mac"] for n in json.loads(dk("lab", "nics", "--json", "--socket", sock).stdout)] == [mac]
        bad = dk("lab", "unplug", "52:54:00:ff:ff:ff", "--socket", sock)
        assert bad.returncode == 1 and "no plugged NIC" in bad.stderr
        assert dk("lab", "unplug", mac, "--socket", sock).returncode == 0
        assert json.loads(dk("lab", "nics", "--json", "--socket", sock).stdout) == []
        assert dk("lab", "down", "--socket", sock).returncode == 0
        assert up.wait(timeout=120) == 0
        assert not os.path.exists(sock)
    finally:
        if up.poll() is None:
            up.terminate()
            up.wait(timeout=60)
