"""Targets: the network namespace (and, where there is one, the process) a NIC is handed to.

Spec forms: ``pid:N``, ``netns:NAME`` (``/run/netns/NAME``; never created by accident), a path to an nsfs file,
and ``container:ID`` (runc/crun/containerd/docker state; see :func:`container_pid`). A target is opened by file
descriptor and identified by the namespace's inode, never by guessing.
"""
from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional, Set, Tuple

import psutil
from pyroute2 import netns as pr_netns

if TYPE_CHECKING:
    from pyroute2 import IPRoute

from . import validate
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
    """The init pid of container ``cid`` (checked by :func:`dpdkeni.validate.container_id`) from the OCI runtime
    state (runc's ``state.json``, crun's ``status``), containerd's or docker's state, or a process whose cgroup
    path has a component naming that container's scope (``docker-ID.scope``, ``/docker/ID``, ...). A NotFoundError
    says where it looked."""
    cid = validate.container_id(cid)
    bases = list(state_dirs or RUNTIME_STATE_DIRS)
    for base in bases:
        pid = _pid_from_runtime_state(os.path.join(base, cid))
        if pid:
            return pid
    pid = _pid_from_engine_state(cid) or _pid_from_cgroups(cid)
    if pid:
        return pid
    looked = bases + [os.path.join(d, "*") for d in CONTAINERD_TASK_DIRS] + list(DOCKER_CONTAINER_DIRS)
    raise NotFoundError(f"container {cid!r} not found: looked for ID={cid} in {', '.join(looked)} and for a process "
                        f"in a cgroup {' or '.join(CGROUP_SCOPES)}")


def _read_json(path: str) -> Optional[dict]:
    """A runtime's JSON state file (not following a symlink), or None when it is not there or not JSON: a
    runtime writes these files, and one half written or of another format names no process."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, encoding="utf-8") as f:
            data = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pid_from_runtime_state(directory: str) -> Optional[int]:
    """runc's ``state.json`` (``init_process_pid``) or crun's ``status`` (``pid``) in a container's directory."""
    for name, key in (("state.json", "init_process_pid"), ("status", "pid")):
        pid = (_read_json(os.path.join(directory, name)) or {}).get(key)
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
            return pid
    return None


CONTAINERD_TASK_DIRS = ("/run/containerd/io.containerd.runtime.v2.task",)
DOCKER_CONTAINER_DIRS = ("/var/lib/docker/containers",)


def _pid_from_engine_state(cid: str) -> Optional[int]:
    """containerd's shim ``init.pid`` (any namespace) or docker's ``config.v2.json`` (``State.Pid``); docker
    accepts an unambiguous id prefix, so do we."""
    for base in CONTAINERD_TASK_DIRS:
        for path in glob.glob(os.path.join(glob.escape(base), "*", glob.escape(cid), "init.pid")):
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read(32).strip()
            except OSError:
                continue
            if text.isascii() and text.isdigit() and int(text) > 0:
                return int(text)
    for base in DOCKER_CONTAINER_DIRS:
        found = glob.glob(os.path.join(glob.escape(base), glob.escape(cid) + "*", "config.v2.json"))
        if len(found) > 1:
            raise InputError(f"container id {cid!r} is ambiguous ({len(found)} docker containers match)")
        if found:
            pid = ((_read_json(found[0]) or {}).get("State") or {}).get("Pid")
            if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0:
                return pid
    return None


# how the runtimes name a container's cgroup (ID: the container id), systemd driver then cgroupfs driver
CGROUP_SCOPES = ("docker-ID.scope", "libpod-ID.scope", "crio-ID.scope", "cri-containerd-ID.scope",
                 "docker/ID", "libpod_parent/libpod-ID", "kubepods*/ID")


def names_container(cgroup_path: str, cid: str) -> bool:
    """Whether a cgroup path (a line of /proc/PID/cgroup after the second ':') has a whole component that
    names container ``cid``'s scope, as :data:`CGROUP_SCOPES` lists them. Never a substring: every process
    has ``memory`` or ``pids`` in its cgroup file, and pid 1 sits in ``init.scope``."""
    parts = [p for p in cgroup_path.strip().split("/") if p]
    for i, part in enumerate(parts):
        if part.endswith(".scope") and part[:-len(".scope")] in (f"{p}-{cid}" for p in
                                                                 ("docker", "libpod", "crio", "cri-containerd")):
            return True
        parent = parts[i - 1] if i else ""
        if part == cid and (parent == "docker" or any(p.startswith("kubepods") for p in parts[:i])):
            return True
        if part == f"libpod-{cid}" and parent == "libpod_parent":
            return True
    return False


def _pid_from_cgroups(cid: str) -> Optional[int]:
    """The lowest pid whose cgroup (any hierarchy) names container ``cid``'s scope (:func:`names_container`)."""
    for proc in psutil.process_iter(["pid"]):
        try:
            with open(f"/proc/{proc.pid}/cgroup", encoding="utf-8") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        if any(names_container(line.split(":", 2)[-1], cid) for line in lines):
            return proc.pid
    return None


def resolve_target(spec: str) -> Target:
    """Resolve a target spec (its form checked by :func:`dpdkeni.validate.target`); a target that does not exist
    is a NotFoundError, the host's own network namespace an InputError (both exit 2)."""
    kind, value = validate.target(spec)
    if kind == "pid":
        if int(value) == 1:
            raise _host(spec, "pid 1")
        tgt = _pid_target(spec, int(value))
    elif kind == "netns":
        path = os.path.join(NETNS_DIR, value)
        if not os.path.exists(path):
            raise NotFoundError(f"target {spec}: no network namespace {value!r} in {NETNS_DIR}",
                                "dpdkeni never creates one; make it first")
        tgt = Target(spec, path, _ns_id(path))
    elif kind == "container":
        tgt = _pid_target(spec, container_pid(value))
    else:
        tgt = _path_target(spec)
    refuse_host(tgt)
    return tgt


def _path_target(spec: str) -> Target:
    if _proc_pid(spec) == 1:
        raise _host(spec, "pid 1")
    try:
        os.stat(spec)
    except FileNotFoundError:
        raise NotFoundError(f"target {spec}: no such file") from None
    except OSError as exc:
        raise InputError(f"target {spec} cannot be opened: {exc.strerror}") from None
    if not is_netns_file(spec):
        raise InputError(f"target {spec} is not a network namespace file (nsfs)")
    return Target(spec, spec, _ns_id(spec))


def _proc_pid(path: str) -> Optional[int]:
    """N for ``/proc/N/ns/net`` or ``/proc/N/task/T/ns/net`` (normalized: ``/proc/./1//ns/net`` too)."""
    parts = os.path.normpath(path).split("/")
    if len(parts) >= 5 and parts[1] == "proc" and parts[2].isascii() and parts[2].isdigit():
        return int(parts[2])
    return None


def _host(spec: str, why: str) -> InputError:
    return InputError(f"target {spec} is the host's own network namespace ({why}): a NIC is never handed to it",
                      "give the container's pid:N, netns:NAME, container:ID or netns path")


def host_namespaces() -> Set[Tuple[int, int]]:
    """(st_dev, st_ino) of the host's network namespace: pid 1's, and this process's own (dpdkeni runs in the
    host's namespace; a sandbox may hide pid 1's). The thread group leader's, not this thread's: a thread may be
    inside a container's namespace for a moment (:func:`entered`)."""
    found = set()
    for path in (ROOT_NETNS, f"/proc/{os.getpid()}/ns/net"):
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def refuse_host(target: Target) -> None:
    """InputError when ``target`` is the host's own network namespace (:func:`host_namespaces`): a NIC handed
    there would be renamed and addressed on the host itself."""
    try:
        st = os.stat(target.path)
    except OSError:
        return  # gone or out of reach: opening it fails later with its own message
    if (st.st_dev, st.st_ino) in host_namespaces():
        raise _host(target.spec, f"the namespace of pid 1 and of dpdkeni, {target.ns_id}")


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
