"""Persistent bindings (driverctl's meaning): ``bind --persist`` writes ``<overrides>/pci-<bdf>`` holding the
driver, ``unbind --persist`` removes it, ``overrides`` lists them, and the udev rule's hook starts the bind for a
device that has one. The binds run on the simulated PCI core (this host has no vfio); the hook runs for real, as
udev runs it, with a stand-in ``dpdkeni`` command; the lab's tests/vm/test_daemon_vm.py re-plugs a device and
sees real udevd bind it."""
from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from conftest import is_root
from sysfs_tree import SimKernel

from dpdkeni import cli, driver, overrides, udev

BDF = "0000:00:04.0"
pytestmark = pytest.mark.skipif(not is_root(), reason="needs root (sysfs-like trees owned by root)")


@pytest.fixture
def sim(sysfs_tree, state_dir, monkeypatch):
    """A simulated PCI core with one virtio-net; the CLI's binds go to it."""
    k = SimKernel(sysfs_tree)
    k.add_nic(BDF, "virtio-net", ifname="enp0s4", mac="52:54:00:00:00:04", iommu_group=4)
    monkeypatch.setattr(driver, "Sysfs", lambda root="/", dry_run=False: k.sysfs(dry_run))
    return k


@pytest.fixture
def odir(tmp_path, monkeypatch):
    path = tmp_path / "overrides"
    path.mkdir(mode=0o755)
    monkeypatch.setenv(overrides.ENV, str(path))
    return path


def test_bind_persist_writes_the_override_and_unbind_persist_removes_it(sim, odir, capsys):
    assert cli.main(["bind", BDF, "--persist"]) == 0
    assert capsys.readouterr().out == f"{BDF}: virtio-pci -> vfio-pci (persistent: {odir}/pci-{BDF})\n"
    assert sim.driver(BDF) == "vfio-pci"
    assert (odir / f"pci-{BDF}").read_text() == "vfio-pci\n" and os.listdir(odir) == [f"pci-{BDF}"]
    assert oct(os.stat(odir / f"pci-{BDF}").st_mode & 0o777) == "0o644"
    assert cli.main(["overrides", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"pci": BDF, "driver": "vfio-pci", "path": f"{odir}/pci-{BDF}"}]
    assert cli.main(["overrides"]) == 0 and capsys.readouterr().out == f"{BDF} vfio-pci\n"

    assert cli.main(["unbind", BDF, "--persist"]) == 0
    assert capsys.readouterr().out == f"{BDF}: vfio-pci -> virtio-pci (if=enp0s4) (persistent binding removed)\n"
    assert sim.driver(BDF) == "virtio-pci" and os.listdir(odir) == []
    assert cli.main(["overrides"]) == 0 and capsys.readouterr().out == f"no persistent bindings in {odir}\n"


def _refuse(*_args, **_kw):
    from dpdkeni.errors import GuardError
    raise GuardError("refused for the test")


def test_a_refused_bind_persists_nothing_and_a_bad_directory_binds_nothing(sim, odir, tmp_path, monkeypatch, capsys):
    assert cli.main(["bind", BDF, "--persist", "--dry-run"]) == 2
    check_bind = driver.check_bind
    monkeypatch.setattr(driver, "check_bind", _refuse)  # a guard says no (e.g. the NIC is active)
    assert cli.main(["bind", BDF, "--persist"]) == 3
    assert os.listdir(odir) == [] and sim.driver(BDF) == "virtio-pci"
    monkeypatch.setattr(driver, "check_bind", check_bind)
    link, loose = tmp_path / "link", tmp_path / "loose"
    link.symlink_to(odir)
    loose.mkdir()
    loose.chmod(0o777)
    for path, why in ((link, f"overrides directory {link}: "), (loose, "is not safe to write in (uid 0, mode 0777)")):
        monkeypatch.setenv(overrides.ENV, str(path))
        capsys.readouterr()
        assert cli.main(["bind", BDF, "--persist"]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.splitlines()) == 1, err
        assert sim.driver(BDF) == "virtio-pci" and os.listdir(odir) == [] and os.listdir(loose) == []


def test_listing_skips_foreign_files_and_flags_a_file_without_a_driver(odir):
    (odir / f"pci-{BDF}").write_text("vfio-pci\n")
    (odir / "pci-0000:00:05.0").write_text("rm -rf /\n")
    (odir / "README").write_text("not ours\n")
    (odir / "pci-nonsense").write_text("vfio-pci\n")
    os.symlink("/etc/passwd", odir / "pci-0000:00:06.0")
    got = overrides.listing()
    assert [(e["pci"], e["driver"]) for e in got] == [(BDF, "vfio-pci"), ("0000:00:05.0", None),
                                                        ("0000:00:06.0", None)]
    assert got[1]["error"].startswith("bad driver name 'rm -rf /'"), got
    assert got[2]["error"] == "Too many levels of symbolic links", got  # O_NOFOLLOW: never read through a link


def _fake_dpdkeni(tmp_path):
    """A stand-in ``dpdkeni`` command that records its arguments."""
    out = tmp_path / "argv.json"
    script = tmp_path / "dpdkeni"
    script.write_text(f"#!/usr/bin/python3\nimport json, sys\njson.dump(sys.argv[1:], open({str(out)!r}, 'w'))\n")
    script.chmod(0o755)
    return str(script), out


def test_the_rules_hook_starts_the_bind_of_a_device_with_an_override(odir, state_dir, tmp_path):
    """What udev runs for a pci add that has an override: the hook (python3 -I -S udev.py) reads the file and starts
    ``dpdkeni bind BDF --driver vfio-pci`` in a session of its own (no systemd here) and returns."""
    fake, recorded = _fake_dpdkeni(tmp_path)
    text = udev.rules_text(dpdkeni=fake)
    rule = [line for line in text.splitlines() if "--bind-override" in line]
    assert rule == [f'ACTION=="add", SUBSYSTEM=="pci", TEST=="{odir}/pci-$kernel", '
                    f'RUN+="{" ".join(udev.hook_command())} --bind-override {odir} $kernel {fake}"']
    (odir / f"pci-{BDF}").write_text("vfio-pci\n")
    env = {"PATH": "/usr/bin:/bin", "DPDKENI_STATE_DIR": state_dir}
    out = subprocess.run([*udev.hook_command(), "--bind-override", str(odir), BDF, fake], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stderr == f"dpdkeni-hook: started {fake} bind {BDF} --driver vfio-pci\n"
    deadline = time.monotonic() + 20
    while not recorded.exists():
        assert time.monotonic() < deadline, "the bind was not started"
        time.sleep(0.05)
    time.sleep(0.1)
    assert json.loads(recorded.read_text()) == ["bind", BDF, "--driver", "vfio-pci"]


@pytest.mark.parametrize("case", ["no file", "symlink", "garbage", "loose dir", "bad address"])
def test_the_hook_refuses_what_is_not_a_clean_override(odir, state_dir, tmp_path, case):
    fake, recorded = _fake_dpdkeni(tmp_path)
    where, bdf = odir, BDF
    if case == "symlink":
        target = tmp_path / "elsewhere"
        target.write_text("vfio-pci\n")
        os.symlink(target, odir / f"pci-{BDF}")
    elif case == "garbage":
        (odir / f"pci-{BDF}").write_text("vfio-pci; reboot\n")
    elif case == "loose dir":
        odir.chmod(0o777)
        (odir / f"pci-{BDF}").write_text("vfio-pci\n")
    elif case == "bad address":
        bdf = "../../etc/x"
    out = subprocess.run([*udev.hook_command(), "--bind-override", str(where), bdf, fake],
                         env={"PATH": "/usr/bin:/bin", "DPDKENI_STATE_DIR": state_dir},
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith(
        f"dpdkeni-hook: error: persistent binding of {bdf} not applied: "), out.stderr
    time.sleep(0.3)
    assert not recorded.exists()
