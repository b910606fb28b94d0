"""A wedged guest costs one test, not the run: the guest's kernel prints a lockup line for real (through
/dev/kmsg, as the watchdog would), the call in progress fails within seconds with that line, and the next test
gets a freshly booted guest."""
from __future__ import annotations

import os
import time

import pytest

from dpdkeni.errors import GuestFaultError

pytestmark = pytest.mark.vm

LINE = "BUG: soft lockup - CPU#1 stuck for 44s! [dpdkeni-wedge:4242]"
seen = {}


def _wedge(lab) -> GuestFaultError:
    """Make the guest kernel print LINE while a long command runs; returns the error the command got."""
    seen["boot_id"] = lab.run(["cat", "/proc/sys/kernel/random/boot_id"], check=True).stdout.strip()
    started = time.monotonic()
    with pytest.raises(GuestFaultError) as info:
        lab.sh(f"echo '<2>{LINE}' > /dev/kmsg; sleep 300", timeout=310)
    seen["seconds"] = time.monotonic() - started
    return info.value


def test_a_lockup_on_the_console_fails_the_call_in_progress_within_seconds(lab, lab_box):
    seen["boots"] = lab_box.boots
    fault = _wedge(lab)
    assert seen["seconds"] < 10, seen                       # not the command's 300 s, nor the agent's 325 s
    assert fault.kind == "soft lockup"
    assert fault.line.endswith(LINE), fault.line
    assert fault.doing == f"run `sh -c echo '<2>{LINE}' > /dev/kmsg; sleep 300`"
    assert str(fault).startswith(f"lab: the guest kernel wedged (soft lockup) during {fault.doing}: ")
    assert LINE in fault.excerpt
    assert not lab.healthy()
    started = time.monotonic()
    with pytest.raises(GuestFaultError):                    # every later call fails at once too
        lab.run(["true"])
    with pytest.raises(GuestFaultError):
        lab.plug("e1000")
    assert time.monotonic() - started < 1


def test_the_next_test_runs_on_a_fresh_guest(lab, lab_box):
    if "boots" not in seen:                                 # run alone (-k): wedge a guest here first
        seen["boots"] = lab_box.boots
        _wedge(lab)
        lab = lab_box.get()
    assert lab.healthy() and lab_box.boots == seen["boots"] + 1
    boot_id = lab.run(["cat", "/proc/sys/kernel/random/boot_id"], check=True).stdout.strip()
    assert boot_id and boot_id != seen["boot_id"]
    nic = lab.plug("e1000")                                 # the fresh guest does real work
    try:
        assert nic.pci and nic.ifname
    finally:
        lab.unplug(nic.id)


def test_lab_run_says_a_wedge_in_one_line_and_exits_1(lab_possible):
    import subprocess
    import sys
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dpdkeni", "lab", "run", "--timeout", "300", "--",
                           "sh", "-c", f"echo '<2>{LINE}' > /dev/kmsg; sleep 300"],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("dpdkeni: error:")]
    assert len(errors) == 1 and errors[0].startswith(
        "dpdkeni: error: lab: the guest kernel wedged (soft lockup) during run `sh -c echo"), proc.stderr
    assert LINE in errors[0] and "last-console.log" in errors[0]
    assert [ln for ln in proc.stderr.splitlines() if "wedged" in ln] == errors   # said once
    assert time.monotonic() - started < 200


def test_lab_up_stops_serving_says_it_in_one_line_and_exits_1(lab_possible, tmp_path):
    import subprocess
    import sys
    from .conftest import start_lab_up
    sock = str(tmp_path / "control.sock")
    up, lines = start_lab_up(sock)
    try:
        started = time.monotonic()
        wedged = subprocess.run([sys.executable, "-m", "dpdkeni", "lab", "exec", "--socket", sock, "--",
                                 "sh", "-c", f"echo '<2>{LINE}' > /dev/kmsg; sleep 300"],
                                capture_output=True, text=True, timeout=200)
        assert wedged.returncode == 1 and "the guest kernel wedged (soft lockup)" in wedged.stderr, wedged.stderr
        assert up.wait(timeout=60) == 1                         # lab up stops serving a wedged guest
        assert time.monotonic() - started < 60
        rest = up.stderr.read()
    finally:
        if up.poll() is None:
            up.kill()
            up.wait(timeout=60)
    errors = [ln for ln in (lines + rest.splitlines()) if ln.startswith("dpdkeni: error:")]
    assert len(errors) == 1 and errors[0].startswith("dpdkeni: error: lab: the guest kernel wedged (soft lockup) "
                                                     "during run `sh -c echo"), rest
    assert "Traceback" not in rest and not os.path.exists(sock)
