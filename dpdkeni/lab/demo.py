"""The narrated lab scenario behind ``dpdkeni lab demo`` / ``make demo``.

Each act says what it is about to show, does it on real hot-plugged devices in the guest, and prints what the
guest answered. Acts whose feature is not in this build say so and are skipped.
"""
from __future__ import annotations

import importlib.util
import time
from typing import Callable, List, Tuple

from ..errors import Error
from .lab import Lab

Say = Callable[[str], None]
DEMO_POLICY = """
[[rule]]
name = "web"
match = {{ mac = "{mac}" }}
mode = "netdev"
target = "container:{name}"
ifname = "eth1"
addresses = ["198.18.10.2/24"]
gateway = "198.18.10.1"
"""
# a few seconds of trials: one size, a low ceiling, coarse precision (the guest's CPU is emulated)
DEMO_PMDTEST = ("--sizes", "64", "--max-rate", "2000", "--min-rate", "200", "--duration", "0.5", "--initial", "0.3",
                "--warmup", "0.1", "--drain", "0.3", "--precision", "0.25", "--max-trials", "4")


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
        self.act(f"1. the guest is up ({self.lab.boot_seconds:.1f}s boot, kernel {self.lab.image.kernel_release})")  # type: ignore[union-attr]
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
        if available("daemon"):
            self.daemon_and_migration()
        else:
            self.act("(skipped) the daemon placing hot-plugged NICs by policy")
            self.say("dpdkeni.daemon is not in this build yet")
            self.show("daemon", "not in this build")
        self.act("9. unplug both from the host")
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
            lab.wait_text("/tmp/demo-testpmd.log", "Port statistics", 300)
            self.act("5. traffic: the container's eth0 sends 2000 UDP frames to the e1000 (dpdkeni fwd txonly) "
                     "across the QEMU hub; testpmd (macswap) sends each one back")
            before = self._rx_packets(pid)
            self.guest("fwd", "--target", f"pid:{pid}", "--port", "eth0", "--mode", "txonly", "--backend",
                       "af_packet", "--peer", e1000.mac, "--count", "2000", "--rate", "1000", "--seconds", "20",
                       "--quiet")
            time.sleep(1)
            returned = self._rx_packets(pid) - before
            self.say(f"eth0 in the container received {returned} frames back from testpmd")
            measured = self.pmdtest(pid) if available("pmdtest") else "not in this build"
            lab.run(["runc", "kill", "demo", "INT"])
            log = lab.wait_text("/tmp/demo-testpmd.log", "Bye", 120)
        finally:
            lab.run(["runc", "delete", "--force", "demo"])
        stats = [line.strip() for line in log.splitlines() if "RX-packets" in line or "TX-packets" in line]
        self.say("testpmd totals (acts 5 and 5b):\n  " + "\n  ".join(stats[-4:]))
        link = lab.run(["nsenter", "-t", str(pid), "-n", "ip", "-s", "link", "show", "eth0"]).stdout
        self.say("container eth0 counters:\n" + link.rstrip())
        self.show("netdev + DPDK handoff", f"virtio {virtio.pci} as eth0 in pid:{pid}, e1000 {e1000.pci} in "
                  f"testpmd; eth0 sent 2000 frames and got {returned} back; testpmd "
                  f"{' '.join(stats[-2].split()[:2]) if stats else 'no stats'}")
        self.show("pmdtest", measured)
        self.act("6. release both: back on their kernel drivers under their original names")
        self.guest("release", e1000.mac)
        self.guest("release", virtio.mac)
        lab.kill(lab.containers[pid], signal=9)
        self.guest("list")
        self.show("release", "both NICs back on virtio-pci / e1000 with their names")

    def pmdtest(self, pid: int) -> str:
        """Act 5b: a short ``dpdkeni pmdtest`` against the testpmd already running in container 'demo', from eth0
        in the container ``pid`` (TCG speed: tiny rates, short trials); the table's row."""
        self.act("5b. dpdkeni pmdtest: NDR, PDR and latency of that testpmd (the e1000 PMD on vfio-pci, used as it "
                 "runs), from eth0; at TCG speed, so tiny rates and short trials")
        args = ("pmdtest", "--target", f"pid:{pid}", "--port", "eth0", "--dut", "container:demo", *DEMO_PMDTEST)
        self.say(f"guest# dpdkeni {' '.join(args)}")
        started = time.monotonic()
        res = self.lab.dpdkeni(*args, timeout=300)
        self.say((res.stdout + res.stderr).rstrip())
        if res.rc != 0:     # the demo goes on: the act says what went wrong
            return f"failed (exit {res.rc}): {res.stderr.strip().splitlines()[-1:] or 'no message'}"
        row = next((line for line in res.stdout.splitlines() if line.startswith("| 64 |")), "no result row")
        return f"64 B against testpmd (e1000 PMD, vfio-pci) in {time.monotonic() - started:.0f}s: {row}"

    def daemon_and_migration(self) -> None:
        """The daemon places a hot-plugged NIC in a runc container by policy; then the seed's migration: the
        NIC is unplugged, the container restarts, the NIC comes back with the same MAC and lands in the new
        instance with the same address and routes. Nothing is typed in the guest for either."""
        lab, name, mac = self.lab, "web", "52:54:00:de:00:03"
        self.act("7. the daemon: a policy puts a hot-plugged NIC into runc container 'web', nothing typed in the guest")
        lab.write("/etc/dpdkeni-demo-policy.toml", DEMO_POLICY.format(mac=mac, name=name))
        self.say(DEMO_POLICY.format(mac=mac, name=name).strip())
        daemon = lab.spawn(["python3", "-m", "dpdkeni", "-v", "daemon", "--policy", "/etc/dpdkeni-demo-policy.toml"])
        try:
            lab.wait(daemon, timeout=120, until="daemon ready")
            first = lab.runc_container(name)
            started = time.monotonic()
            lab.plug("virtio-net", mac=mac, id="demo-web", wait=False)
            took = self._wait_address(first, "198.18.10.2/24", started)
            self.say(f"device_add -> 198.18.10.2/24 usable in container web (pid {first}): {took:.1f}s")
            self.act("8. migration: the NIC is unplugged, container 'web' restarts, the NIC is plugged again "
                     "with the same MAC")
            lab.unplug("demo-web")
            lab.runc_delete(name)
            second = lab.runc_container(name)
            started = time.monotonic()
            lab.plug("virtio-net", mac=mac, id="demo-web", wait=False)
            again = self._wait_address(second, "198.18.10.2/24", started)
            self.say(f"device_add -> the same address and routes in the new instance (pid {second}): {again:.1f}s")
        finally:
            out = str(lab.kill(daemon).get("output", ""))
            lab.runc_delete(name)
        self.say("the daemon's decisions:\n  " + "\n  ".join(
            line.replace("dpdkeni: ", "", 1) for line in out.splitlines() if ": nic=" in line))
        lab.dpdkeni("release", mac)
        lab.unplug("demo-web")
        self.show("daemon + migration", f"device_add -> address in container web in {took:.1f}s; after the "
                  f"migration the new instance had the same address and routes {again:.1f}s after device_add")

    def _wait_address(self, pid: int, cidr: str, started: float, timeout: float = 120.0) -> float:
        """Seconds from ``started`` until ``cidr`` and a default route are on eth1 in pid's netns (echoed)."""
        ns = ["nsenter", "-t", str(pid), "-n", "ip"]
        deadline = started + timeout
        while True:
            addr = self.lab.run(ns + ["-br", "addr", "show", "dev", "eth1"]).stdout
            route = self.lab.run(ns + ["route", "show", "default"]).stdout
            if cidr in addr and " UP " in addr and "default" in route:
                took = time.monotonic() - started
                self.say(addr.rstrip() + "\n" + route.rstrip())
                return took
            if time.monotonic() > deadline:
                raise Error(f"demo: {cidr} not on eth1 in pid {pid} after {timeout:.0f}s")
            time.sleep(0.2)

    def _rx_packets(self, pid: int) -> int:
        """eth0's received-packets counter in pid's netns."""
        out = self.lab.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "-s", "link", "show", "eth0"],
                           check=True).json()
        return int(out[0]["stats64"]["rx"]["packets"])



def run_demo(say: Say, progress: Callable[[str], None]) -> List[Tuple[str, str]]:
    """Boot a lab, play the scenario, stop the lab; prints a summary of what was shown."""
    started = time.monotonic()
    with Lab(progress=progress) as lab:
        shown = Demo(lab, say).run()
    say(f"\n=== what the demo showed ({time.monotonic() - started:.0f}s in all)")
    for title, outcome in shown:
        say(f"- {title}: {outcome}")
    return shown
