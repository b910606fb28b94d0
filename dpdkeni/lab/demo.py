"""The narrated lab scenario behind ``dpdkeni lab demo`` / ``make demo``.

Each act says what it is about to show, does it on real hot-plugged devices in the guest, and prints what the
guest answered. Acts whose feature is not in this build say so and are skipped.
"""
from __future__ import annotations

import importlib.util
import time
from typing import Callable, List, Tuple

from .lab import Lab

Say = Callable[[str], None]


def available(module: str) -> bool:
    """Whether ``dpdkeni.<module>`` exists in this build."""
    return importlib.util.find_spec(f"dpdkeni.{module}") is not None


class Demo:
    """The scenario; ``run()`` returns the list of (act, outcome) it showed."""

    def __init__(self, lab: Lab, say: Say) -> None:
        self.lab, self.say = lab, say
        self.shown: List[Tuple[str, str]] = []

    def act(self, title: str) -> None:
        self.say(f"\n=== {title}")

    def show(self, title: str, outcome: str) -> None:
        self.shown.append((title, outcome))

    def guest(self, *args: str) -> str:
        """Run ``dpdkeni ARGS`` in the guest, echo the command and its output."""
        self.say(f"guest# dpdkeni {' '.join(args)}")
        out = self.lab.dpdkeni(*args, check=True).stdout.rstrip()
        self.say(out)
        return out

    def run(self) -> List[Tuple[str, str]]:
        self.act(f"1. the guest is up ({self.lab.boot_seconds:.1f}s boot, kernel {self.lab.image.kernel_release})")
        self.guest("list")
        self.act("2. hot-plug a virtio-net and an e1000 from the host over QMP")
        virtio = self.lab.plug("virtio-net", mac="52:54:00:de:00:01", id="demo-virtio")
        e1000 = self.lab.plug("e1000", mac="52:54:00:de:00:02", id="demo-e1000")
        self.guest("list")
        self.show("hot-plug", f"virtio-net at {virtio.pci} ({virtio.seconds:.1f}s), "
                              f"e1000 at {e1000.pci} ({e1000.seconds:.1f}s) seen by dpdkeni list")
        for module, what in (("handoff", "the virtio NIC into a container as a kernel interface"),
                             ("dpdkmode", "the e1000 as a DPDK port into a testpmd container"),
                             ("daemon", "the daemon placing hot-plugged NICs by policy")):
            if not available(module):
                self.act(f"(skipped) {what}")
                self.say(f"dpdkeni.{module} is not in this build yet")
                self.show(what, "not in this build")
        self.act("3. unplug both from the host")
        started = time.monotonic()
        self.lab.unplug(virtio.id)
        self.lab.unplug(e1000.id)
        self.guest("list")
        self.show("unplug", f"both gone from the guest in {time.monotonic() - started:.1f}s")
        return self.shown


def run_demo(say: Say, progress: Callable[[str], None]) -> List[Tuple[str, str]]:
    """Boot a lab, play the scenario, stop the lab; prints a summary of what was shown."""
    started = time.monotonic()
    with Lab(progress=progress) as lab:
        shown = Demo(lab, say).run()
    say(f"\n=== what the demo showed ({time.monotonic() - started:.0f}s in all)")
    for title, outcome in shown:
        say(f"- {title}: {outcome}")
    return shown
