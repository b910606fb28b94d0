"""Targets: the network namespace (and, where there is one, the process) a NIC is handed to.

Spec forms: ``pid:N``, ``netns:NAME`` (``/run/netns/NAME``; never created by accident), a path to an nsfs file,
and ``container:ID`` (runc/crun/containerd/docker state; see :func:`container_pid`). A target is opened by file descriptor and
identified by the namespace's inode, never by guessing.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional

import psutil
from pyroute2 import netns as pr_netns

if TYPE_CHECKING:
    from pyroute2 import IPRoute

from .errors import InputError, NotFoundError

NETNS_DIR = "/run/netns"
RUNTIME_STATE_DIRS = ("/run/runc", "/run/crun", "/run/containerd/runc/k8s.io", "/run/containerd/runc/default",
                      "/run/docker/runtime-runc/moby")


@dataclass(frozen=True)
class Target:
    """A resolved target: ``path`` is an nsfs file of its network namespace, ``pid`` a process in it (None for
    a named netns with no process), ``ns_id`` the namespace inode as ``net:[N]``."""

    spec: str
    path: str
    ns_id: str
    pid: Optional[int] = None

    def open(self) -> int:
        """An O_RDONLY fd on the network namespace (the caller closes it)."""
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise NotFoundError(f"target {self.spec} is gone ({self.path})") from exc

    def alive(self) -> bool:
        """Whether the namespace still exists as the same one."""
        try:
            return _ns_id(self.path) == self.ns_id
        except OSError:
            return False


def _ns_id(path: str) -> str:
    st = os.stat(path)
    return f"net:[{st.st_ino}]"


def _pid_target(spec: str, pid: int) -> Target:
    path = f"/proc/{pid}/ns/net"
    try:
        if not psutil.pid_exists(pid):
            raise FileNotFoundError
        return Target(spec, path, _ns_id(path), pid)
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise NotFoundError(f"target {spec}: no process {pid}") from exc
    except PermissionError as exc:
        raise InputError(f"target {spec}: its network namespace cannot be opened ({path}: {exc.strerror})") from exc


def container_pid(cid: str, state_dirs: Optional[List[str]] = None) -> int:
    """The init pid of container ``cid`` from the OCI runtime state (runc's ``state.json``, crun's
    ``status``), or from a process whose cgroup path names the container."""
    for base in state_dirs or RUNTIME_STATE_DIRS:
        state = os.path.join(base, cid, "state.json")
        if os.path.exists(state):
            with open(state, encoding="utf-8") as f:
                pid = json.load(f).get("init_process_pid")
            if pid:
                return int(pid)
        status = os.path.join(base, cid, "status")
        if os.path.exists(status):
            with open(status, encoding="utf-8") as f:
                data = json.load(f)
            if data.get("pid"):
                return int(data["pid"])
    pid = _pid_from_engine_state(cid)
    return pid if pid else _pid_from_cgroups(cid)


CONTAINERD_TASK_DIRS = ("/run/containerd/io.containerd.runtime.v2.task",)
DOCKER_CONTAINER_DIRS = ("/var/lib/docker/containers",)


def _pid_from_engine_state(cid: str) -> Optional[int]:
    """containerd's shim ``init.pid`` (any namespace) or docker's ``config.v2.json`` (``State.Pid``); docker
    accepts an unambiguous id prefix, so do we."""
    for base in CONTAINERD_TASK_DIRS:
        for path in glob.glob(os.path.join(glob.escape(base), "*", glob.escape(cid), "init.pid")):
            with open(path, encoding="utf-8") as f:
                text = f.read().strip()
            if text.isdigit():
                return int(text)
    for base in DOCKER_CONTAINER_DIRS:
        found = glob.glob(os.path.join(glob.escape(base), glob.escape(cid) + "*", "config.v2.json"))
        if len(found) > 1:
            raise InputError(f"container id {cid!r} is ambiguous ({len(found)} docker containers match)")
        if found:
            with open(found[0], encoding="utf-8") as f:
                pid = (json.load(f).get("State") or {}).get("Pid")
            if pid:
                return int(pid)
    return None


def _pid_from_cgroups(cid: str) -> int:
    if len(cid) < 4:
        raise InputError(f"container id {cid!r} is too short to look up by cgroup")
    for proc in psutil.process_iter(["pid"]):
        try:
            with open(f"/proc/{proc.pid}/cgroup", encoding="utf-8") as f:
                if cid in f.read():
                    return proc.pid
        except OSError:
            continue
    raise NotFoundError(f"container {cid!r} not found (no runtime state, no process in its cgroup)")


def resolve_target(spec: str) -> Target:
    """Resolve a target spec; a target that does not exist is a NotFoundError (exit 2)."""
    if spec.startswith("pid:"):
        text = spec[4:]
        if not text.isdigit() or int(text) <= 0:
            raise InputError(f"bad target {spec!r}: pid:N with N a process id")
        return _pid_target(spec, int(text))
    if spec.startswith("netns:"):
        name = spec[6:]
        if not name or "/" in name or name in (".", ".."):
            raise InputError(f"bad target {spec!r}: netns:NAME with NAME in {NETNS_DIR}")
        path = os.path.join(NETNS_DIR, name)
        if not os.path.exists(path):
            raise NotFoundError(f"target {spec}: no network namespace {name!r} in {NETNS_DIR}",
                                "dpdkeni never creates one; make it first")
        return Target(spec, path, _ns_id(path))
    if spec.startswith("container:"):
        cid = spec[10:]
        if not cid:
            raise InputError(f"bad target {spec!r}: container:ID")
        return _pid_target(spec, container_pid(cid))
    if spec.startswith("/"):
        if not os.path.exists(spec):
            raise NotFoundError(f"target {spec}: no such file")
        if not is_netns_file(spec):
            raise InputError(f"target {spec} is not a network namespace file (nsfs)")
        return Target(spec, spec, _ns_id(spec))
    raise InputError(f"bad target {spec!r}: expected pid:N, netns:NAME, container:ID or a path to a netns file")


NS_GET_NSTYPE = 0xB703
CLONE_NEWNET = 0x40000000


def is_netns_file(path: str) -> bool:
    """Whether ``path`` is an nsfs file of a network namespace (ioctl NS_GET_NSTYPE)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


# --- entering namespaces (one thread at a time, no fork) -------------------------------------------------------

ROOT_NETNS = "/proc/1/ns/net"


@contextlib.contextmanager
def entered(fd: int) -> Iterator[None]:
    """Run the block with this thread in the network namespace ``fd``, then come back.

    setns(CLONE_NEWNET) changes only the calling thread, and a socket stays in the namespace it was made in, so
    sockets opened inside the block keep working afterwards. pyroute2's own netns mode forks a helper process
    per socket, which costs more than the whole attach.
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        pr_netns.setns(fd, flags=0)
        try:
            yield
        finally:
            pr_netns.setns(own, flags=0)
    finally:
        os.close(own)


def iproute_in(fd: Optional[int]) -> "IPRoute":
    """An IPRoute whose socket lives in the namespace ``fd`` (None: this thread's own namespace)."""
    from pyroute2 import IPRoute

    if fd is None:
        return IPRoute()
    with entered(fd):
        return IPRoute()


def open_root() -> int:
    """An fd on the host's network namespace: that of pid 1, or this process's own when pid 1 is out of
    reach (a sandbox whose init hides its namespaces; dpdkeni runs in the host's namespace anyway)."""
    try:
        return os.open(ROOT_NETNS, os.O_RDONLY | os.O_CLOEXEC)
    except PermissionError:
        return os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def current_ns_id() -> str:
    """This thread's network namespace as ``net:[N]``."""
    return _ns_id("/proc/thread-self/ns/net")
