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
        if available("handoff") and available("dpdkmode"):
            self.handoffs(virtio, e1000)
        else:
            self.act("(skipped) netdev and DPDK handoff: not in this build")
            self.show("handoff", "not in this build")
        if not available("daemon"):
            self.act("(skipped) the daemon placing hot-plugged NICs by policy")
            self.say("dpdkeni.daemon is not in this build yet")
            self.show("daemon", "not in this build")
        self.act("7. unplug both from the host")
        started = time.monotonic()
        self.lab.unplug(virtio.id)
        self.lab.unplug(e1000.id)
        self.guest("list")
        self.show("unplug", f"both gone from the guest in {time.monotonic() - started:.1f}s")
        return self.shown


    def handoffs(self, virtio, e1000) -> None:
        """The virtio NIC into a container as eth0, the e1000 into a testpmd container as a DPDK port,
        traffic from one to the other, the counters, release."""
        lab = self.lab
        self.act("3. the virtio NIC into a container as a kernel interface (eth0, 198.18.7.1/24)")
        pid = lab.container()
        self.guest("attach", virtio.mac, "--to", f"pid:{pid}", "--ifname", "eth0", "--address", "198.18.7.1/24")
        self.say(lab.run(["nsenter", "-t", str(pid), "-n", "ip", "-br", "addr"]).stdout.rstrip())
        self.act("4. the e1000 as a DPDK port (vfio-pci behind the vIOMMU) into a runc testpmd container")
        bundle = "/opt/dpdkeni/examples/testpmd-container/build-bundle.sh"
        lab.sh("mkdir -p /run/tproot && (mountpoint -q /run/tproot || mount --bind / /run/tproot)", check=True)
        lab.run(["sh", bundle, "--rootfs-from", "/run/tproot", "--env", f"DPDKENI_PCI={e1000.pci}",
                 "--env", "TESTPMD_ARGS=--forward-mode=macswap --auto-start --stats-period 5 --nb-cores=1 "
                 "--total-num-mbufs=8192", "/run/bundles/demo"], check=True)
        lab.sh("runc run -d -b /run/bundles/demo demo >/tmp/demo-testpmd.log 2>&1 </dev/null", check=True)
        try:
            self.guest("attach", e1000.mac, "--to", "container:demo", "--mode", "dpdk", "--hugepages", "128M")
            self.guest("list")
            self._wait_text("/tmp/demo-testpmd.log", "Port statistics", 300)
            self.act("5. traffic: the container pings across the QEMU hub; testpmd (macswap) sends it back")
            ping = lab.run(["nsenter", "-t", str(pid), "-n", "ping", "-c", "10", "-i", "0.3", "-W", "1",
                            "198.18.7.2"], timeout=60)
            self.say(ping.stdout.strip().splitlines()[-2] if ping.stdout.strip() else ping.stderr)
            lab.run(["runc", "kill", "demo", "INT"])
            log = self._wait_text("/tmp/demo-testpmd.log", "Bye", 120)
        finally:
            lab.run(["runc", "delete", "--force", "demo"])
        stats = [line.strip() for line in log.splitlines() if "RX-packets" in line or "TX-packets" in line]
        self.say("testpmd totals:\n  " + "\n  ".join(stats[-4:]))
        link = lab.run(["nsenter", "-t", str(pid), "-n", "ip", "-s", "link", "show", "eth0"]).stdout
        self.say("container eth0 counters:\n" + link.rstrip())
        self.show("netdev + DPDK handoff", f"virtio {virtio.pci} as eth0 in pid:{pid}, e1000 {e1000.pci} in "
                  f"testpmd; testpmd {stats[-2] if stats else 'no stats'}")
        self.act("6. release both: back on their kernel drivers under their original names")
        self.guest("release", e1000.mac)
        self.guest("release", virtio.mac)
        lab.kill(lab.containers[pid], signal=9)
        self.guest("list")
        self.show("release", "both NICs back on virtio-pci / e1000 with their names")

    def _wait_text(self, path: str, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            log = self.lab.run(["cat", path]).stdout
            if text in log or time.monotonic() > deadline:
                return log
            time.sleep(1)


def run_demo(say: Say, progress: Callable[[str], None]) -> List[Tuple[str, str]]:
    """Boot a lab, play the scenario, stop the lab; prints a summary of what was shown."""
    started = time.monotonic()
    with Lab(progress=progress) as lab:
        shown = Demo(lab, say).run()
    say(f"\n=== what the demo showed ({time.monotonic() - started:.0f}s in all)")
    for title, outcome in shown:
        say(f"- {title}: {outcome}")
    return shown
