"""One family of errors, one boundary: every exception class lives in dpdkeni.errors (re-exported where it was),
and a system error (OSError, pyroute2's NetlinkError, psutil.Error) leaves the library as a dpdkeni Error with
its exit code. The failures here are real: a veth deleted by another process mid-attach, a netns removed
mid-release, a netlink request for a link that does not exist, a process that has exited."""
import subprocess

import psutil
import pytest
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from conftest import needs_root, unique
from dpdkeni import cli, errors, handoff, netdev, netns
from dpdkeni.ledger import Ledger


def test_every_error_class_is_in_errors_and_reexported_where_it_was():
    from dpdkeni import cnispec, events, ledger, policy, statedir
    from dpdkeni.lab import agent, qmp
    for module, name in [(ledger, "LedgerError"), (policy, "PolicyError"), (events, "WaitTimeout"),
                         (qmp, "QMPError"), (agent, "AgentError"), (cnispec, "CniError"),
                         (statedir, "StateDirError")]:
        cls = getattr(errors, name)
        assert getattr(module, name) is cls and issubclass(cls, errors.Error), name
        assert cls.__module__ == "dpdkeni.errors", name
    assert errors.SysfsError is errors.HostError and errors.HostError.exit_code == 1


def test_cni_error_is_an_error_that_keeps_its_code():
    exc = errors.CniError(101, "refused", "details")
    assert isinstance(exc, errors.Error) and exc.exit_code == 1 and str(exc) == "refused"
    assert exc.to_json("0.4.0") == {"cniVersion": "0.4.0", "code": 101, "msg": "refused", "details": "details"}
    assert exc.to_json("9.9.9")["cniVersion"] == "1.1.0"


@needs_root
def test_a_real_netlink_error_maps_to_a_host_error():
    with IPRoute() as ipr:
        with pytest.raises(NetlinkError) as info:
            ipr.link("get", index=0x7ffffff0)
    mapped = errors.as_error(info.value, "looking up link")
    assert type(mapped) is errors.HostError and mapped.exit_code == 1
    assert str(mapped) == ("looking up link: netlink: No such device (errno 19) "
                           "(the link is gone: it was deleted or unplugged meanwhile)")


def test_a_real_psutil_and_os_error_map_to_host_errors():
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(psutil.NoSuchProcess) as info:
        psutil.Process(proc.pid).create_time()
    mapped = errors.as_error(info.value, "owner")
    assert type(mapped) is errors.HostError and str(mapped).startswith("owner: process lookup: ")
    with pytest.raises(OSError) as oinfo:
        open("/proc/self/no-such-file")
    mapped = errors.as_error(oinfo.value)
    assert type(mapped) is errors.HostError and mapped.exit_code == 1
    assert str(mapped) == "No such file or directory (/proc/self/no-such-file)"
    assert errors.as_error(ValueError("a bug")) is None  # a bug is not a system error: it must show


@pytest.fixture
def env(state_dir, stand_in_models):
    return state_dir


def vanish_after_snapshot(monkeypatch, name):
    """Another process deletes ``name`` right after attach read its state (between plan and move)."""
    real = netdev._link

    def hooked(*args, **kwargs):
        link = real(*args, **kwargs)
        if not gone:
            gone.append(subprocess.run(["ip", "link", "del", name], capture_output=True).returncode)
        return link
    gone: list = []
    monkeypatch.setattr(netdev, "_link", hooked)
    return gone


@needs_root
def test_a_nic_vanishing_mid_attach_is_one_error_line(env, veth_factory, container_factory, monkeypatch, capsys):
    nic, _ = veth_factory()
    c = container_factory()
    gone = vanish_after_snapshot(monkeypatch, nic)
    with pytest.raises(errors.Error) as info:
        handoff.attach(nic, c.target, addresses=["198.18.12.2/24"])
    assert gone == [0] and info.value.exit_code == 1
    assert isinstance(info.value.__cause__, NetlinkError) and info.value.__cause__.code == 19
    assert str(info.value) == "move: No such device (netlink errno 19)"
    assert Ledger().leases() == {}  # rolled back: nothing leased
    nic2, _ = veth_factory()
    gone = vanish_after_snapshot(monkeypatch, nic2)
    capsys.readouterr()
    assert cli.main(["attach", nic2, "--to", c.target, "--address", "198.18.12.3/24"]) == 1
    err = capsys.readouterr().err
    assert gone == [0] and err == "dpdkeni: error: move: No such device (netlink errno 19)\n"


@needs_root
def test_a_target_netns_removed_mid_release_is_mapped_by_the_library(env, veth_factory, netns_factory,
                                                                     monkeypatch, capsys):
    """The netns goes between release's check that it is alive and its open: the OSError leaves release as a
    HostError (exit 1), not as an OSError for the CLI's last resort to catch."""
    nic, _ = veth_factory()
    ns = netns_factory()
    handoff.attach(nic, f"netns:{ns}")
    real = netns.Target.alive

    def alive_then_gone(self):
        ok = real(self)
        subprocess.run(["ip", "netns", "del", ns], check=True)
        return ok
    monkeypatch.setattr(netns.Target, "alive", alive_then_gone)
    with pytest.raises(errors.HostError) as info:
        handoff.release(nic)
    assert isinstance(info.value.__cause__, FileNotFoundError) and info.value.exit_code == 1
    assert str(info.value) == f"release {nic}: No such file or directory (/run/netns/{ns})"
    monkeypatch.setattr(netns.Target, "alive", real)
    assert handoff.recover()[0]["key"] == f"if:{nic}"  # the veth died with its netns: the lease ends
    assert Ledger().leases() == {}



@needs_root
def test_a_netdev_undo_that_fails_rides_on_the_error_and_leaves_a_failed_lease(env, veth_factory,
                                                                               container_factory, monkeypatch):
    """Right after the move, the NIC dies in the container and a link takes its name on the host: the
    ``addresses`` step fails, and moving the NIC home (the undo of ``move``) is refused. The step's error is the
    one raised, the undo's rides on it, the lease stays ``failed``, and ``recover`` finishes it."""
    nic, _ = veth_factory()
    c = container_factory()
    real = netdev.arp_notify_on

    def then_break(ns_fd, ifname):
        real(ns_fd, ifname)
        subprocess.run(["ip", "link", "add", nic, "type", "veth", "peer", "name", unique("dkq")], check=True)
        c.run("ip", "link", "del", ifname, check=True)
    monkeypatch.setattr(netdev, "arp_notify_on", then_break)
    try:
        with pytest.raises(errors.StepError) as info:
            handoff.attach(nic, c.target, addresses=["198.18.12.4/24"])
        assert str(info.value) == "addresses: No such device (netlink errno 19)"
        assert [e.step for e in info.value.undo_errors] == ["undo move"]
        assert info.value.undo_errors[0].message.startswith(f"undo move: cannot return if:{nic}: the host already "
                                                            f"has a link named {nic!r}")
        lease = Ledger().get(f"if:{nic}")
        assert lease.state == "failed" and [s.name for s in lease.steps] == ["move", "addresses", "up"]
        assert handoff.recover() == [{"key": f"if:{nic}", "action": "rolled-back", "detail": "gone"}]
        assert Ledger().leases() == {}
    finally:
        subprocess.run(["ip", "link", "del", nic], capture_output=True)


@needs_root
def test_the_cli_last_resort_turns_a_netlink_error_no_layer_mapped_into_one_line(capsys, monkeypatch):
    """A command (not a library function) whose own netlink call fails: still one line and exit 1."""
    from test_cli import _with_func

    def lookup(args):
        with IPRoute() as ipr:
            ipr.link("get", index=0x7ffffff0)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser(), lookup))
    assert cli.main(["show", "eth0"]) == 1
    assert capsys.readouterr().err == "dpdkeni: error: netlink: No such device (errno 19)\n"


def test_a_dpdk_piece_given_a_process_that_has_exited_raises_a_host_error():
    """devcgroup.allow reads the process's cgroups: its FileNotFoundError leaves as a HostError naming the call."""
    from dpdkeni import devcgroup
    proc = subprocess.Popen(["true"])
    proc.wait()
    with pytest.raises(errors.HostError) as info:
        devcgroup.allow(proc.pid, [devcgroup.rule_for("/dev/zero")])
    assert str(info.value) == f"allow {proc.pid}: No such file or directory (/proc/{proc.pid}/cgroup)"
    assert isinstance(info.value.__cause__, FileNotFoundError)
