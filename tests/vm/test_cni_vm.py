"""dpdkeni-cni on a real hot-plugged virtio-net NIC in the lab guest: ADD is issued before the NIC exists and
waits for it (by MAC); the pod's netns file is then deleted (the NIC stays in the namespace ADD pinned) and the pin
unmounted, so the kernel hands the NIC back to the root namespace under a new name (devN, what host-device users
hit); DEL still succeeds, restores the NIC's own name and ends the lease."""
from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.vm

STATE = "/tmp/dpdkeni-cni-vm"
MAC = "52:54:00:7e:c0:01"
NETNS = "cnivm1"


def _env(command: str, netns: str = "") -> dict:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "vmpod1", "CNI_IFNAME": "net1", "CNI_PATH": "/usr/lib/cni",
           "DPDKENI_STATE_DIR": STATE}
    if netns:
        env["CNI_NETNS"] = netns
    return env


def _doc(output: str):
    return json.loads(output[output.index("{"):output.rindex("}") + 1]) if "{" in output else None


def _links(lab, netns: str = "") -> dict:
    code = ("import json, os; from pyroute2 import IPRoute; from dpdkeni.netns import iproute_in\n"
            f"ipr = iproute_in(os.open('/run/netns/{netns}', os.O_RDONLY)) if {bool(netns)} else IPRoute()\n"
            "print(json.dumps({l.get_attr('IFLA_ADDRESS'): l.get_attr('IFLA_IFNAME') for l in ipr.get_links()}))")
    return json.loads(lab.python(code).stdout)


def test_add_waits_for_the_hotplug_and_del_survives_the_netns_going(lab, plugged):
    conf = {"cniVersion": "1.1.0", "name": "vmnet", "type": "dpdkeni-cni", "hwaddr": MAC, "wait": 120,
            "addresses": ["198.18.70.2/24"], "gateway": "198.18.70.1"}
    lab.python(f"from pyroute2 import netns; netns.create({NETNS!r})")
    try:
        handle = lab.spawn(["sh", "-c", 'printf %s "$CONF" | python3 -c "from dpdkeni.cni import run; run()"'],
                           env={**_env("ADD", f"/run/netns/{NETNS}"), "CONF": json.dumps(conf)})
        nic = plugged("virtio-net", mac=MAC)  # the cloud hot-plugs it while ADD waits
        deadline = time.monotonic() + 180
        state = lab.poll(handle)
        while state["rc"] is None and time.monotonic() < deadline:
            time.sleep(0.5)
            state = lab.poll(handle)
        assert state["rc"] == 0, state
        result = _doc(state["output"])
        assert result["interfaces"][0]["mac"] == MAC and result["interfaces"][0]["pciID"] == nic.pci
        assert _links(lab, NETNS).get(MAC) == "net1"
    finally:
        lab.python(f"from pyroute2 import netns; netns.remove({NETNS!r})")
    # the pod's netns file is gone, but ADD pinned the namespace: the NIC is still in it, not in the host
    time.sleep(1)
    assert MAC not in _links(lab)
    # the pin goes too (as if the state dir's mounts were lost): now the namespace dies and the kernel gives the
    # NIC back to the root namespace, not under its own name
    pin = lab.python(f"import os; os.environ['DPDKENI_STATE_DIR'] = {STATE!r}; from dpdkeni import cni; "
                     "print(cni._pin_path(cni._record_path('vmnet', 'vmpod1', 'net1')))").stdout.strip()
    assert pin.startswith(f"{STATE}/cni/vmnet-net1-") and pin.endswith(".netns"), pin  # the record's hashed name
    assert lab.run(["umount", pin]).rc == 0
    deadline = time.monotonic() + 30
    while MAC not in _links(lab) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _links(lab).get(MAC) not in (None, nic.ifname)
    held = lab.run(["cat", f"{STATE}/leases.json"]).stdout
    deleted = lab.run(["python3", "-c", "from dpdkeni.cni import run; run()"], input=json.dumps(conf),
                      env={**_env("DEL", f"/run/netns/{NETNS}"), "DPDKENI_CNI_DEBUG": "1"})
    assert deleted.rc == 0, deleted
    assert _links(lab).get(MAC) == nic.ifname, (held, deleted.stderr)
    leases = lab.run(["python3", "-c", "from dpdkeni.ledger import Ledger; print(len(Ledger().leases()))"],
                     env={"DPDKENI_STATE_DIR": STATE}).stdout.strip()
    assert leases == "0"
    again = lab.run(["python3", "-c", "from dpdkeni.cni import run; run()"], input=json.dumps(conf),
                    env=_env("DEL"))
    assert again.rc == 0, again


DPDK_MAC = "52:54:00:7e:c0:02"
DPDK_NETNS = "cnidpdk1"


def test_dpdk_mode_binds_and_exposes_vfio_to_the_pod_then_del_gives_it_back(lab, plugged):
    """mode dpdk through the CNI: the NIC leaves its kernel driver for vfio-pci and the pod's sandbox (the process
    in its netns) gets the vfio nodes; DEL returns it to virtio-pci under its own name."""
    nic = plugged("virtio-net", mac=DPDK_MAC)
    lab.python(f"from pyroute2 import netns; netns.create({DPDK_NETNS!r})")
    sandbox = lab.spawn(["nsenter", f"--net=/run/netns/{DPDK_NETNS}", "unshare", "--mount", "--propagation",
                         "private", "sleep", "600"])
    conf = {"cniVersion": "1.1.0", "name": "vmdpdk", "type": "dpdkeni-cni", "mode": "dpdk", "pciBusID": nic.pci,
            "hugepages": "4M"}
    env = {**_env("ADD", f"/run/netns/{DPDK_NETNS}"), "CNI_CONTAINERID": "vmpod2"}
    try:
        deadline = time.monotonic() + 30  # until the sandbox runs in the netns
        while time.monotonic() < deadline and not lab.sh(f"ip netns pids {DPDK_NETNS}").stdout.strip():
            time.sleep(0.2)
        add = lab.run(["python3", "-c", "from dpdkeni.cni import run; run()"], input=json.dumps(conf), env=env)
        assert add.rc == 0, (add.stdout, add.stderr)
        result = json.loads(add.stdout)
        assert result["interfaces"][0]["pciID"] == nic.pci and "sandbox" not in result["interfaces"][0]
        driver = lab.sh(f"basename $(readlink /sys/bus/pci/devices/{nic.pci}/driver)").stdout.strip()
        assert driver == "vfio-pci"
        pid = lab.sh(f"ip netns pids {DPDK_NETNS}").stdout.split()[0]
        inside = lab.sh(f"nsenter -t {pid} -m ls /dev/vfio").stdout.split()
        group = lab.sh(f"basename $(readlink /sys/bus/pci/devices/{nic.pci}/iommu_group)").stdout.strip()
        assert "vfio" in inside and group in inside, inside
        deleted = lab.run(["python3", "-c", "from dpdkeni.cni import run; run()"], input=json.dumps(conf),
                          env={**env, "CNI_COMMAND": "DEL"})
        assert deleted.rc == 0, (deleted.stdout, deleted.stderr)
        driver = lab.sh(f"basename $(readlink /sys/bus/pci/devices/{nic.pci}/driver)").stdout.strip()
        assert driver == "virtio-pci" and _links(lab).get(DPDK_MAC) == nic.ifname
    finally:
        lab.kill(sandbox)
        lab.python(f"from pyroute2 import netns; netns.remove({DPDK_NETNS!r})")
