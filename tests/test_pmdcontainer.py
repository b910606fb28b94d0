"""``dpdkeni pmdtest --dut container:NAME``: dpdk-testpmd in a real runc container (the host's /usr read-only as
its root) on the port ``dpdkeni attach`` handed to it, started by dpdkeni or already running there; the check
that frames come back says "wrong MAC" or "no reflector" before any search."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import dpdkeni_cli, needs_root, unique
from dpdkeni.pmddut import host_bundle

RUNC = shutil.which("runc") or "/usr/sbin/runc"
QUICK = ["--max-rate", "4000", "--min-rate", "500", "--duration", "0.4", "--initial", "0.3", "--warmup", "0.1",
         "--drain", "0.3", "--max-trials", "6", "--precision", "0.2"]
TESTPMD_CAPS = ["--cap", "CAP_NET_RAW", "--cap", "CAP_NET_ADMIN", "--cap", "CAP_IPC_LOCK"]


def runc_ps(name: str) -> list:
    pids = json.loads(subprocess.run([RUNC, "ps", "--format", "json", name], capture_output=True, text=True,
                                     check=True).stdout or "[]")
    comms = []
    for pid in pids:
        with open(f"/proc/{pid}/comm") as f:
            comms.append(f.read().strip())
    return sorted(comms)


@pytest.fixture
def runc_box():
    """``make()``: a runc container running sleep in a network namespace of its own (only lo), the host's /usr
    read-only as its root (dpdk-testpmd in it); deleted with its bundle at teardown."""
    made = []

    def make() -> str:
        name = unique("dkpc")
        bundle = host_bundle(RUNC, ["sleep", "600"])
        made.append((name, bundle))
        subprocess.run([RUNC, "run", "-d", "--bundle", bundle, name], check=True, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        return name

    yield make
    for name, bundle in made:
        subprocess.run([RUNC, "delete", "--force", name], capture_output=True, timeout=60)
        shutil.rmtree(bundle, ignore_errors=True)


@pytest.fixture
def handed(state_dir, stand_in_models, netns_factory, veth_factory, runc_box):
    """A runc container with a veth end handed to it by ``dpdkeni attach`` (as eth1); the other end in a netns
    of the test's own: (container name, generator netns, generator port, the container port's MAC)."""
    gen = netns_factory()
    x, y = veth_factory(peer_netns=gen)
    subprocess.run(["ip", "-n", gen, "link", "set", y, "up"], check=True)
    name = runc_box()
    r = dpdkeni_cli("attach", x, "--to", f"container:{name}", "--ifname", "eth1", "--json")
    assert r.returncode == 0, r.stderr
    pid = json.loads(subprocess.run([RUNC, "state", name], capture_output=True, text=True, check=True).stdout)["pid"]
    link = subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "-j", "link", "show", "eth1"], capture_output=True,
                          text=True, check=True)
    mac = json.loads(link.stdout)[0]["address"]
    return name, gen, y, mac


@needs_root
def test_dpdkeni_starts_testpmd_on_the_handed_over_port(handed):
    name, gen, port, mac = handed
    # another interface in the container, not handed over by dpdkeni: the lease says which port is the DUT's
    pid = json.loads(subprocess.run([RUNC, "state", name], capture_output=True, text=True, check=True).stdout)["pid"]
    subprocess.run(["nsenter", "-t", str(pid), "-n", "ip", "link", "add", "aaa0", "type", "veth", "peer",
                    "name", "aaa1"], check=True)
    out = dpdkeni_cli("pmdtest", "--port", port, "--target", f"netns:{gen}", "--dut", f"container:{name}",
                      "--dut-mode", "macswap", *QUICK, "--json", timeout=240)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    s = doc["settings"]
    assert s["dut_description"] == (f"dpdk-testpmd --forward-mode=macswap started by dpdkeni in runc container "
                                    f"{name} on netdev port eth1")
    assert s["peer"] == mac                       # test frames went to the handed-over port's MAC
    search = doc["results"][0]["searches"][0]
    assert search["complete"] and 0 < search["ndr"] <= search["pdr"] <= 4000
    # testpmd's own totals (read when dpdkeni stopped it): all it received went back
    assert s["dut_counters"]["rx"] == s["dut_counters"]["tx"] > 0, s["dut_counters"]
    assert runc_ps(name) == ["sleep"]             # the testpmd dpdkeni started is gone


@needs_root
def test_a_testpmd_already_running_in_the_container_is_used_and_left_running(handed):
    name, gen, port, mac = handed
    argv = ["dpdk-testpmd", "--lcores", "0-1", "--no-huge", "-m", "256", "--no-pci", "--no-shconf", "--vdev",
            "net_af_packet0,iface=eth1,qdisc_bypass=1", "--", "--forward-mode=io", "--auto-start",
            "--stats-period", "1", "--total-num-mbufs=8192", "--nb-cores=1"]
    subprocess.run([RUNC, "exec", "-d", *TESTPMD_CAPS, name, *argv], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    assert runc_ps(name) == ["dpdk-testpmd", "sleep"]
    out = dpdkeni_cli("pmdtest", "--port", port, "--target", f"netns:{gen}", "--dut", f"container:{name}",
                      "--dut-mode", "macswap", *QUICK, "--json", timeout=240)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    desc = doc["settings"]["dut_description"]
    assert desc.startswith(f"dpdk-testpmd already running in runc container {name} (pid ")
    assert desc.endswith("forward mode io) on netdev port eth1: used as it is"), desc
    assert doc["settings"]["dut_counters"] == {}
    assert doc["results"][0]["searches"][0]["ndr"] > 0
    assert runc_ps(name) == ["dpdk-testpmd", "sleep"]     # still running: it is not ours to stop


@needs_root
def test_a_container_with_no_port_handed_over_is_exit_2(state_dir, runc_box):
    name = runc_box()
    out = dpdkeni_cli("pmdtest", "--port", "lo", "--dut", f"container:{name}")
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (f"dpdkeni: error: --dut container:{name}: no port is handed to it (hand one over first: "
                                  f"dpdkeni attach NIC --to container:{name})"), out.stderr
    assert out.stdout == ""


@needs_root
@pytest.mark.parametrize("spec,says", [("container:dkpc-no-such", "runc has no container 'dkpc-no-such'"),
                                       ("container:", "bad container id"), ("container:../x", "bad container id"),
                                       ("container:a b", "bad container id")])
def test_containers_that_do_not_exist_are_exit_2(spec, says):
    out = dpdkeni_cli("pmdtest", "--port", "lo", "--dut", spec)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and out.stdout == ""


def test_testpmd_gets_unlimited_locked_memory_only_where_runc_can_raise_it(tmp_path):
    import resource
    from dpdkeni.pmdcontainer import memlock_limit
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t000001ffffffffff\n")             # CAP_SYS_RESOURCE (24) held
    assert memlock_limit(str(status)) == 2 ** 63 - 1
    status.write_text("Name:\tx\nCapEff:\t000001fffeffffff\n")             # all but CAP_SYS_RESOURCE
    hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)[1]
    assert memlock_limit(str(status)) == (2 ** 63 - 1 if hard == resource.RLIM_INFINITY else hard)


@needs_root
def test_a_dpdk_lease_makes_testpmd_probe_the_pci_device(state_dir, runc_box):
    # the ledger says a PCI NIC was handed to the container in dpdk mode (the lab runs this on a real vfio e1000;
    # this host has no vfio): testpmd gets that device and the hugepages, and frames go to the NIC's MAC
    from dpdkeni.ledger import Lease, Ledger
    from dpdkeni.netns import resolve_target
    from dpdkeni.pmdcontainer import ContainerDut
    name = runc_box()
    tgt = resolve_target(f"container:{name}")
    with Ledger().transaction() as leases:
        leases["0000:00:09.0"] = Lease(key="0000:00:09.0", mode="dpdk", target=tgt.spec, target_id=tgt.ns_id,
                                       original={"mac": "52:54:00:7e:00:99", "ifname": "ens9"}, state="attached",
                                       params={"hugepages": "128M"})
    dut = ContainerDut(name, "io")
    assert dut.peer_mac == "52:54:00:7e:00:99" and dut.running is None
    argv = dut.argv()
    assert argv[argv.index("--lcores"):] == ["--lcores", "0-1", "-a", "0000:00:09.0", "--in-memory", "--",
                                              "--forward-mode=io", "--auto-start", "--stats-period", "1",
                                              "--total-num-mbufs=8192", "--nb-cores=1"]
    assert dut.description == (f"dpdk-testpmd --forward-mode=io started by dpdkeni in runc container {name} on "
                               "dpdk port 0000:00:09.0")
