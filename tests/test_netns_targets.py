import os

import pytest

from dpdkeni.errors import InputError, NotFoundError
from dpdkeni.netns import is_netns_file, resolve_target


def test_pid_target(container_factory):
    c = container_factory()
    t = resolve_target(c.target)
    assert t.pid == c.pid and t.ns_id == os.readlink(f"/proc/{c.pid}/ns/net") and t.alive()
    fd = t.open()
    os.close(fd)


def test_netns_name_never_created(netns_factory):
    name = netns_factory()
    assert resolve_target(f"netns:{name}").pid is None
    with pytest.raises(NotFoundError, match="never creates"):
        resolve_target("netns:dk-no-such-ns")
    assert not os.path.exists("/run/netns/dk-no-such-ns")


def test_path_target(netns_factory, tmp_path):
    name = netns_factory()
    assert resolve_target(f"/run/netns/{name}").ns_id.startswith("net:[")
    assert is_netns_file("/proc/self/ns/net") and not is_netns_file("/proc/self/ns/mnt")
    with pytest.raises(InputError, match="not a network namespace"):
        resolve_target("/proc/self/ns/mnt")
    with pytest.raises(NotFoundError):
        resolve_target(str(tmp_path / "nope"))


@pytest.mark.parametrize("spec", ["pid:abc", "pid:0", "netns:", "netns:a/b", "container:", "bogus"])
def test_bad_specs(spec):
    with pytest.raises(InputError):
        resolve_target(spec)


def test_dead_pid():
    with pytest.raises(NotFoundError, match="no process"):
        resolve_target("pid:999999999")


def test_container_by_cgroup_absent():
    with pytest.raises(NotFoundError, match="not found"):
        resolve_target("container:deadbeefcafe0000")


def test_pid_whose_namespace_cannot_be_opened(monkeypatch):
    """A process whose /proc/PID/ns/net is not ours to open (another user namespace, ptrace rules): one clear
    InputError, not a PermissionError traceback."""
    import dpdkeni.netns as netns_mod

    def denied(path, *a, **k):
        raise PermissionError(13, "Permission denied", path)
    monkeypatch.setattr(netns_mod.os, "stat", denied)
    with pytest.raises(InputError, match=r"pid:%d: its network namespace cannot be opened" % os.getpid()):
        resolve_target(f"pid:{os.getpid()}")
