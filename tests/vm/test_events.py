"""dpdkeni.events on real hot-plug: the Watcher (udev source) in the guest reports ``added`` and ``removed``
with the model, PCI address and MAC; ``wait_for_nic(mac=…)`` returns the NIC the host plugged."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.vm

KERNEL_DRIVER = {"virtio-net": "virtio-pci", "e1000": "e1000", "e1000e": "e1000e"}

WATCH = """
import json, sys, time
from dpdkeni.events import Watcher
mac = sys.argv[1]
deadline = time.monotonic() + float(sys.argv[2])
ours, done = set(), False   # the PCI addresses our MAC was seen at; done once one of them is removed
with Watcher(source="udev") as w:
    print("READY", flush=True)
    while time.monotonic() < deadline and not done:
        for ev in w.poll(1.0):
            print(json.dumps(ev.to_dict()), flush=True)
            if ev.nic.mac == mac:
                ours.add(ev.nic.pci)
            done = done or (ev.action == "removed" and ev.nic.pci in ours)
"""

WAIT = """
import json, sys
from dpdkeni.events import wait_for_nic
nic = wait_for_nic(mac=sys.argv[1], timeout=float(sys.argv[2]))
print(json.dumps(nic.to_dict()), flush=True)
"""


@pytest.mark.parametrize("model", ["virtio-net", "e1000", "e1000e"])
def test_watcher_reports_added_and_removed_and_wait_for_nic_returns(lab, plugged, lab_mac, model):
    mac = lab_mac()
    watcher = lab.spawn(["python3", "-c", WATCH, mac, "120"])
    lab.wait(watcher, timeout=90, until="READY")
    waiter = lab.spawn(["python3", "-c", WAIT, mac, "90"])
    nic = plugged(model, mac=mac)
    waited = lab.wait(waiter, timeout=100)
    assert waited["rc"] == 0, waited["output"]
    found = json.loads([line for line in str(waited["output"]).splitlines() if line.startswith("{")][-1])
    assert (found["model"], found["pci"], found["mac"]) == (model, nic.pci, mac)
    # the watcher reports the NIC before it goes: unplugging first would make a slow watcher (a loaded guest: seen
    # in CI) read sysfs after the unplug had begun, and report a NIC it could no longer see whole
    lab.wait(watcher, timeout=100, until=f'"mac": "{mac}"')
    lab.unplug(nic.id)
    done = lab.wait(watcher, timeout=100)
    rows = [json.loads(line) for line in str(done["output"]).splitlines() if line.startswith("{")]
    events = [r for r in rows if r["nic"]["pci"] == nic.pci]
    actions = [e["action"] for e in events]
    # one plug is one event and one unplug is one event: the pci, virtio, net and udev-rename uevents of the NIC
    # collapse into them, even on a loaded guest whose e1000 probe outlasts the settle time (the watcher holds a NIC
    # its driver still probes until its netdev shows: clean-clone run 5 of 5 saw "added" without it, then "moved")
    assert actions == ["added", "removed"], events
    whole = events[0]["nic"]
    assert (whole["model"], whole["pci"], whole["driver"], whole["ifname"], whole["mac"]) == (
        model, nic.pci, KERNEL_DRIVER[model], nic.ifname, mac), whole
    removed = events[-1]["nic"]
    assert (removed["model"], removed["pci"], removed["mac"]) == (model, nic.pci, mac), removed
