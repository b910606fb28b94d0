"""The QEMU lab for tests marked ``vm``: one guest per test session (booting costs 10-60 s under TCG).

Tests share the guest, so each one unplugs what it plugged (the ``plugged`` fixture does it even when the test
fails) and uses its own MACs. A failing test gets the guest's serial console in its report.
"""
from __future__ import annotations

import itertools
import os
import time
from typing import Callable, Iterator, List, Optional

import pytest

from dpdkeni.lab import Lab, PluggedNic
from dpdkeni.lab.qemu import qemu_binary

_mac = itertools.count(0x10)


def pytest_collection_modifyitems(items) -> None:
    here = os.path.dirname(__file__)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(pytest.mark.vm)


def _lab_unavailable() -> str:
    if qemu_binary() is None:
        return "QEMU cannot run: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)"
    if os.geteuid() != 0:
        return "the lab image is built with mmdebstrap --mode=root: run as root"
    return ""


@pytest.fixture
def lab_possible() -> None:
    """Skips, with the reason, where QEMU cannot run (for tests that boot a lab of their own)."""
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)


class LabBox:
    """The session's guest, booted on first use and booted afresh when the previous one wedged or died, so a
    wedged guest costs at most the test that was running (its console is in that test's report)."""

    booted = 0   # guests booted by every LabBox of this run (for the summary line)

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress = progress
        self.current: Optional[Lab] = None
        self.boots = 0

    def get(self) -> Lab:
        if self.current is not None and not self.current.healthy():
            why = self.current.fault.message if self.current.fault else "QEMU or its agent is gone"
            self.progress(f"lab: the previous guest is unusable ({why}); booting a fresh one")
            self.current.stop()
            self.current = None
        if self.current is None:
            lab = Lab(progress=self.progress)
            lab.start()
            self.current = lab
            self.boots += 1
            LabBox.booted += 1
        return self.current

    def close(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def lab_box(pytestconfig) -> Iterator[LabBox]:
    """The holder of the session's guest (see :class:`LabBox`)."""
    reason = _lab_unavailable()
    if reason:
        pytest.skip(reason)
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")

    def progress(msg: str) -> None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(msg) if reporter else print(msg, flush=True)

    box = LabBox(progress)
    try:
        yield box
    finally:
        box.close()


@pytest.fixture
def lab(lab_box: LabBox) -> Lab:
    """The booted lab guest (built or reused image), shared by the session while it stays healthy."""
    return lab_box.get()


def start_lab_up(sock: str, timeout: float = 300.0) -> tuple:
    """Start ``dpdkeni lab up --socket SOCK`` and wait for its "lab up:" line: (Popen, the stderr lines so far).
    The caller ends it (``lab down``, or kill at teardown)."""
    import subprocess
    import sys
    up = subprocess.Popen([sys.executable, "-m", "dpdkeni", "lab", "up", "--socket", sock],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: List[str] = []
    deadline = time.monotonic() + timeout
    while not any(line.startswith("lab up:") for line in lines):
        if time.monotonic() > deadline or up.poll() is not None:
            up.kill()
            up.wait(timeout=60)
            raise AssertionError("lab up did not come up:\n" + "".join(lines))
        lines.append(up.stderr.readline())
    return up, lines


def new_mac() -> str:
    """A MAC unique within this session (locally administered range of QEMU's OUI)."""
    n = next(_mac)
    return f"52:54:00:7e:{n >> 8:02x}:{n & 0xff:02x}"


@pytest.fixture
def lab_mac() -> Callable[[], str]:
    """``lab_mac()``: a fresh MAC for this session (import-free: two conftest modules share the name)."""
    return new_mac


@pytest.fixture
def plugged(lab: Lab) -> Iterator[Callable[..., PluggedNic]]:
    """``plugged(model, mac=None)`` hot-plugs a NIC; every NIC still plugged is unplugged at teardown."""
    mine: List[str] = []

    def plug(model: str, mac: str = None, **kw) -> PluggedNic:
        nic = lab.plug(model, mac=mac or new_mac(), **kw)
        mine.append(nic.id)
        return nic

    yield plug
    if not lab.healthy():   # a wedged guest is thrown away whole: nothing to unplug
        return
    for nic_id in mine:
        if nic_id in lab.nics:
            lab.unplug(nic_id)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    the_lab = item.funcargs.get("lab") if hasattr(item, "funcargs") else None
    if report.failed and isinstance(the_lab, Lab) and the_lab.qemu is not None:
        report.sections.append(("guest serial console (last 80 lines)", the_lab.console_tail(80)))
    elif report.failed and isinstance(the_lab, Lab) and the_lab.fault is not None:
        report.sections.append(("guest serial console (around the fault)", the_lab.fault.excerpt))


@pytest.fixture
def guest_containers(lab: Lab) -> Iterator[Callable[[], int]]:
    """``make()`` starts a stand-in container in the guest and returns its pid; all are killed at teardown."""
    mine: List[int] = []

    def make() -> int:
        pid = lab.container()
        mine.append(pid)
        return pid

    yield make
    if not lab.healthy():
        return
    for pid in mine:
        lab.kill(lab.containers[pid], signal=9)


@pytest.fixture
def cgroup_container(lab):
    """(pid, cgroup) of a stand-in container with its own tmpfs /dev, in a cgroup of its own that carries a
    runtime-style device program; the container is killed and its cgroup removed after."""
    pid, cgroup = lab.cgroup_container("dkcrash")
    try:
        yield pid, cgroup
    finally:
        if lab.healthy():
            lab.kill(lab.containers.pop(pid), signal=9)
            lab.sh(f"rmdir {cgroup}")


_lab_seconds: List[float] = []
_LOADED = time.monotonic()   # this conftest is imported while the run collects: the run's start, near enough


def pytest_runtest_logreport(report) -> None:
    """Add up the time of the lab's tests (setup, call and teardown: boots included) for the summary."""
    if "vm" in report.keywords:
        _lab_seconds.append(report.duration)


def pytest_terminal_summary(terminalreporter) -> None:
    """One line: how much of the run the lab took, and how many guests it booted."""
    if not _lab_seconds:
        return
    total = time.monotonic() - _LOADED
    lab = sum(_lab_seconds)
    terminalreporter.write_line(f"lab: {lab:.0f} s of the run's {total:.0f} s ({100 * lab / max(total, 1):.0f} %) "
                                f"in lab tests; guests booted: {LabBox.booted}")
