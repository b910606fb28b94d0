"""Run in the lab's guest by tests/vm/test_device_plugin_vm.py: the kubelet's side of a DPDK pod.

    python3 dpguest.py WORKDIR NICS

The kubelet stand-in (tests/kubeletstandin.py) serves WORKDIR/dp/kubelet.sock and writes WORKDIR/ready once the
plugin registered and sent its first list; the host then hot-plugs NICS NICs. When the list has them all and the
host wrote WORKDIR/plugged (udev named them: a pod comes later than its NIC), it calls Allocate for them in one
container request and hands the answer to runc exactly as the kubelet hands it to a CRI runtime and containerd
turns it into an OCI spec (:func:`apply_allocate`): each DeviceSpec a ``linux.devices`` node (major/minor of the
host path) with a device-cgroup rule of its permissions, each env ``KEY=VALUE`` in ``process.env``, each Mount an
rbind mount. testpmd (examples/testpmd-container) runs on the NICs; the pod ends; the plugin gives the NICs back
to their kernel drivers. Everything seen goes to WORKDIR/result.json.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from kubeletstandin import Kubelet

BUNDLE = "/opt/dpdkeni/examples/testpmd-container/build-bundle.sh"
RESOURCE = "dpdkeni.io/lab"
PCI_DEVICES = "/sys/bus/pci/devices"


def apply_allocate(spec: dict, resp) -> None:
    """Put one ContainerAllocateResponse into an OCI runtime spec the way the kubelet + containerd do."""
    linux = spec.setdefault("linux", {})
    for dev in resp.devices:
        st = os.stat(dev.host_path)
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        linux.setdefault("devices", []).append({"path": dev.container_path, "type": "c", "major": major,
                                                "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0})
        linux.setdefault("resources", {}).setdefault("devices", []).append(
            {"allow": True, "type": "c", "major": major, "minor": minor, "access": dev.permissions})
    spec["process"]["env"] += [f"{k}={v}" for k, v in sorted(resp.envs.items())]
    for m in resp.mounts:
        spec["mounts"].append({"destination": m.container_path, "type": "bind", "source": m.host_path,
                               "options": ["rbind", "rprivate", "ro" if m.read_only else "rw"]})


def driver_of(pci: str) -> str:
    try:
        return os.path.basename(os.readlink(f"{PCI_DEVICES}/{pci}/driver"))
    except OSError:
        return ""


def ifname_of(pci: str) -> str:
    for sub in ("net", *(f"{d}/net" for d in os.listdir(f"{PCI_DEVICES}/{pci}") if d.startswith("virtio"))):
        try:
            return os.listdir(f"{PCI_DEVICES}/{pci}/{sub}")[0]
        except (OSError, IndexError):
            continue
    return ""


def watch_appear(seen: dict, stop: threading.Event) -> None:
    """When each PCI device appeared in sysfs (polled every 10 ms), for the plug -> list latency."""
    before = set(os.listdir(PCI_DEVICES))
    while not stop.is_set():
        for bdf in set(os.listdir(PCI_DEVICES)) - before:
            seen.setdefault(bdf, time.monotonic())
        time.sleep(0.01)


def running(name: str) -> bool:
    """Whether runc container ``name`` still runs."""
    out = subprocess.run(["runc", "state", name], capture_output=True, text=True, timeout=60)
    return out.returncode == 0 and json.loads(out.stdout).get("status") == "running"


def wait_until(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"dpguest: {what} not within {timeout:.0f} s")
        time.sleep(0.2)


def main() -> None:
    work, count = sys.argv[1], int(sys.argv[2])
    result: dict = {}
    kubelet = Kubelet(f"{work}/dp").start()
    kubelet.wait_registered(1, timeout=300)
    plugin = kubelet.plugin(RESOURCE)
    result["register"] = [(r.version, r.endpoint, r.resource_name) for _, r in kubelet.registrations]
    result["first_list"] = plugin.wait_list(lambda d: True, timeout=120)[1]
    appeared: dict = {}
    stop = threading.Event()
    threading.Thread(target=watch_appear, args=(appeared, stop), daemon=True).start()
    with open(f"{work}/ready", "w") as f:
        f.write("ready\n")
    at, devices = plugin.wait_list(lambda d: len(d) == count, timeout=600)
    stop.set()
    pcis = [d[0] for d in devices]
    result["listed"] = devices
    # the pod is scheduled later than the NIC shows up; here: once the host's plug returned (udev named the NICs)
    wait_until(lambda: os.path.exists(f"{work}/plugged"), 300, "the host's plugged mark")
    result["list_latency"] = {p: round(next(t for t, d in plugin.lists if p in [x[0] for x in d]) - appeared[p], 3)
                              for p in pcis if p in appeared}
    result["drivers_before"] = {p: (driver_of(p), ifname_of(p)) for p in pcis}
    resp = plugin.allocate(*pcis).container_responses[0]
    result["answer"] = {"devices": [(d.container_path, d.host_path, d.permissions) for d in resp.devices],
                        "envs": dict(resp.envs), "mounts": [(m.container_path, m.host_path, m.read_only)
                                                            for m in resp.mounts],
                        "cdi_devices": [c.name for c in resp.cdi_devices]}
    result["drivers_allocated"] = {p: driver_of(p) for p in pcis}
    leases = subprocess.run([sys.executable, "-m", "dpdkeni", "leases", "--json"], capture_output=True,
                            text=True, timeout=120)
    result["leases"] = [(x["key"], x["target"], x["state"]) for x in json.loads(leases.stdout or "[]")]
    name = f"dp{os.getpid()}"
    bundle = f"/run/bundles/{name}"
    subprocess.run("mkdir -p /run/tproot && (mountpoint -q /run/tproot || mount --bind / /run/tproot)",
                   shell=True, check=True)
    subprocess.run(["sh", BUNDLE, "--rootfs-from", "/run/tproot", "--env", "DPDKENI_WAIT=300", bundle],
                   check=True, capture_output=True, timeout=120)
    with open(f"{bundle}/config.json") as f:
        spec = json.load(f)
    apply_allocate(spec, resp)
    with open(f"{bundle}/config.json", "w") as f:
        json.dump(spec, f, indent=2)
    log = f"{work}/testpmd.log"
    subprocess.run(f"runc run -d -b {bundle} {name} >{log} 2>&1 </dev/null", shell=True, check=True, timeout=120)
    try:
        wait_until(lambda: "Port statistics" in open(log).read() or not running(name), 600,
                   "testpmd's port statistics")
        if "Port statistics" not in open(log).read():
            raise SystemExit(f"dpguest: the pod stopped before testpmd forwarded:\n{open(log).read()[-3000:]}")
        time.sleep(2)  # forwarding: the test asks for MIN_FORWARDED frames a port
        subprocess.run(["runc", "kill", name, "INT"], check=True, timeout=60)
        wait_until(lambda: "Bye" in open(log).read(), 120, "testpmd's exit")
    finally:
        subprocess.run(["runc", "delete", "--force", name], timeout=60)  # the pod ends
    result["testpmd_log"] = open(log).read()[-6000:]
    t0 = time.monotonic()
    # back on the kernel driver under the name it had (the plugin's unbind gives it back: a bare 'eth0' seen
    # between the probe and that rename is not the end)
    home = {p: tuple(v) for p, v in result["drivers_before"].items()}
    wait_until(lambda: all((driver_of(p), ifname_of(p)) == home[p] for p in pcis), 300,
               "the NICs back on their kernel drivers under their names")
    result["freed_after_s"] = round(time.monotonic() - t0, 1)
    result["drivers_after"] = {p: (driver_of(p), ifname_of(p)) for p in pcis}
    leases = subprocess.run([sys.executable, "-m", "dpdkeni", "leases", "--json"], capture_output=True,
                            text=True, timeout=120)
    result["leases_after"] = json.loads(leases.stdout or "[]")
    result["last_list"] = plugin.last()[1]
    kubelet.stop()
    with open(f"{work}/result.json.tmp", "w") as f:
        json.dump(result, f)
    os.rename(f"{work}/result.json.tmp", f"{work}/result.json")


if __name__ == "__main__":
    main()
