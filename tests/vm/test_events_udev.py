"""In the lab guest, where udevd runs and renames NICs: the Watcher's kernel source (one ``added``, the udev
rename as its own ``moved``, one ``removed``), and the installed udev rules running the hook into the daemon."""
from __future__ import annotations

import json
import logging

import pytest

pytestmark = pytest.mark.vm
log = logging.getLogger(__name__)

WATCH_KERNEL = """
import json, sys, time
from dpdkeni.events import Watcher
mac = sys.argv[1]
deadline = time.monotonic() + float(sys.argv[2])
with Watcher(source="kernel") as w:
    print("READY", flush=True)
    while time.monotonic() < deadline:
        for ev in w.poll(1.0):
            print(json.dumps(ev.to_dict()), flush=True)
            if ev.nic.mac == mac and ev.action == "removed":
                sys.exit(0)
"""


def _mine(output: str, mac: str):
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [r for r in rows if r["nic"]["mac"] == mac]


@pytest.mark.parametrize("model", ["virtio-net", "e1000e"])
def test_kernel_source_reports_the_udev_rename_as_moved(lab, plugged, lab_mac, model):
    mac = lab_mac()
    watcher = lab.spawn(["python3", "-c", WATCH_KERNEL, mac, "120"])
    lab.wait(watcher, timeout=90, until="READY")
    nic = plugged(model, mac=mac)
    final = lab.sh(f"grep -l {mac} /sys/class/net/*/address").stdout.split("/")[4]
    lab.unplug(nic.id)
    events = _mine(str(lab.wait(watcher, timeout=100)["output"]), mac)
    actions = [e["action"] for e in events]
    log.info("%s kernel-source events: %s", model, [(e["action"], e["nic"]["ifname"]) for e in events])
    assert actions.count("added") == 1 and actions[0] == "added" and actions[-1] == "removed", actions
    assert actions.count("removed") == 1 and "bound" not in actions, actions
    assert set(actions[1:-1]) <= {"moved"}  # the rename, when udev renamed after the kernel named it
    assert events[-2]["nic"]["ifname"] == final and events[0]["nic"]["pci"] == nic.pci


def test_installed_rules_run_the_hook_into_the_daemon(lab, plugged, lab_mac):
    lab.dpdkeni("udev", "rules", "--install", check=True)
    lab.sh("udevadm control --reload", check=True)
    lab.write("/tmp/dk-policy.toml", '[[rule]]\nmatch = { model = "e1000", mac = "02:00:00:00:00:01" }\n'
                                     'target = "pid:1"\n')
    daemon = lab.spawn(["python3", "-m", "dpdkeni", "-v", "daemon", "--policy", "/tmp/dk-policy.toml"])
    try:
        lab.wait(daemon, timeout=60, until="daemon ready")
        mac = lab_mac()
        nic = plugged("virtio-net", mac=mac)
        out = str(lab.wait(daemon, timeout=60, until="hook: action=add")["output"])
        ifname = lab.sh(f"grep -l {mac} /sys/class/net/*/address").stdout.split("/")[4]
        props = lab.run(["udevadm", "info", "-q", "property", f"/sys/class/net/{ifname}"]).stdout
        log.info("udev properties of a hot-plugged virtio-net:\n%s", props)
        hooks = [line for line in out.splitlines() if "hook: action=add" in line]
        assert any(f"interface={ifname}" in line and nic.pci in line for line in hooks), out
        lab.unplug(nic.id)
        lab.wait(daemon, timeout=60, until="hook: action=remove")
    finally:
        lab.kill(daemon)
        lab.sh("rm -f /etc/udev/rules.d/90-dpdkeni.rules; udevadm control --reload")
