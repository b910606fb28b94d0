"""Shared fixtures: synthetic sysfs trees, and real namespaces, veth pairs and "containers" that are always
removed, even when the test fails. Every name is unique to this test run (prefix ``dk`` + pid)."""
from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from typing import Callable, Iterator, List

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from sysfs_tree import SysfsTree  # noqa: E402
# no silent skips: a skip not on tests/skip-allowlist.toml (or one that must run here) fails the run
from skipguard import (pytest_collectreport, pytest_runtest_logreport, pytest_sessionfinish,  # noqa: E402,F401
                       pytest_terminal_summary)

_counter = itertools.count()


def unique(prefix: str = "dk") -> str:
    """A short unique name (fits the 15-byte interface name limit)."""
    return f"{prefix}{os.getpid() % 100000}x{next(_counter)}"[:15]


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root (namespaces, links, cgroups)")


@pytest.fixture
def sysfs_tree(tmp_path) -> SysfsTree:
    """An empty synthetic sysfs tree."""
    return SysfsTree(str(tmp_path / "root"))


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Iterator[str]:
    """A private dpdkeni state dir (ledger), set in the environment for the library and subprocesses."""
    path = str(tmp_path / "state")
    os.makedirs(path)
    monkeypatch.setenv("DPDKENI_STATE_DIR", path)
    yield path
    unmount_under(path)  # netns pins of CNI attachments a test left (each holds a namespace and its links)


def unmount_under(path: str) -> None:
    """Lazily unmount every mount point below ``path``, deepest first."""
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        points = [line.split()[4] for line in f]
    for point in sorted((p for p in points if p.startswith(path.rstrip("/") + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@pytest.fixture
def netns_factory() -> Iterator[Callable[[], str]]:
    """Make named network namespaces (``/run/netns/<name>``); all are removed at teardown."""
    from pyroute2 import netns

    made: List[str] = []

    def make() -> str:
        name = unique("dkns")
        netns.create(name)
        made.append(name)
        return name

    yield make
    for name in made:
        try:
            netns.remove(name)
        except OSError:
            pass


@pytest.fixture
def veth_factory() -> Iterator[Callable[..., tuple]]:
    """Make veth pairs in the root netns (``make(peer_netns=None)`` -> (name, peer)); removed at teardown."""
    from pyroute2 import IPRoute, NetNS

    made: List[tuple] = []

    def make(peer_netns: str = None) -> tuple:
        a, b = unique("dkv"), unique("dkp")
        with IPRoute() as ipr:
            ipr.link("add", ifname=a, kind="veth", peer=b)
            if peer_netns:
                idx = ipr.link_lookup(ifname=b)[0]
                ipr.link("set", index=idx, net_ns_fd=peer_netns)
        made.append((a, b, peer_netns))
        return a, b

    yield make
    with IPRoute() as ipr:
        for a, b, _ in made:
            for name in (a, b):
                idx = ipr.link_lookup(ifname=name)
                if idx:
                    try:
                        ipr.link("del", index=idx[0])
                    except Exception:
                        pass


class Container:
    """A stand-in container: a process in its own network and mount namespaces."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            ["unshare", "--net", "--mount", "--propagation", "private", "sleep", "3600"],
            stdin=subprocess.DEVNULL)
        deadline = time.time() + 5
        # the child execs sleep once the namespaces exist: wait until its netns differs from ours
        while time.time() < deadline:
            try:
                if os.readlink(f"/proc/{self.proc.pid}/ns/net") != os.readlink("/proc/self/ns/net") and \
                        os.readlink(f"/proc/{self.proc.pid}/exe").endswith("sleep"):
                    break
            except OSError:
                pass
            time.sleep(0.005)
        else:
            self.kill()
            raise RuntimeError("stand-in container did not start")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def target(self) -> str:
        return f"pid:{self.proc.pid}"

    def run(self, *argv: str, **kw) -> subprocess.CompletedProcess:
        """Run a command inside the container's namespaces (test helper only: nsenter)."""
        return subprocess.run(["nsenter", "-t", str(self.pid), "-n", "-m", *argv],
                              capture_output=True, text=True, **kw)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def container_factory() -> Iterator[Callable[[], Container]]:
    """Start stand-in containers; all are killed at teardown."""
    made: List[Container] = []

    def make() -> Container:
        c = Container()
        made.append(c)
        return c

    yield make
    for c in made:
        c.kill()


def dpdkeni_cli(*args: str, env: dict = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the CLI as a user would (``python -m dpdkeni``), capturing stdout/stderr."""
    return subprocess.run([sys.executable, "-m", "dpdkeni", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


@pytest.fixture
def cli() -> Callable[..., subprocess.CompletedProcess]:
    return dpdkeni_cli


HUGEPAGE_TEST_LOCK = "/run/dpdkeni-test-hugepages.lock"


def _read_pools_locked(paths):
    """Read the pools under the lock every hugepage test holds while it has pages (other suites run at the
    same time on this machine; their reservations must not count as ours)."""
    import fcntl
    with open(HUGEPAGE_TEST_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return {p: open(p).read() for p in paths}


@pytest.fixture(scope="session", autouse=True)
def _hugepages_unchanged():
    """Every test run leaves nr_hugepages as it found it."""
    paths = [f"/sys/kernel/mm/hugepages/{d}/nr_hugepages" for d in os.listdir("/sys/kernel/mm/hugepages")] \
        if os.path.isdir("/sys/kernel/mm/hugepages") else []
    before = _read_pools_locked(paths)
    yield
    after = _read_pools_locked(paths)
    changed = [p for p, v in before.items() if after[p] != v]
    assert not changed, f"tests left hugepages reserved: {changed}"


@pytest.fixture
def stand_in_models(tmp_path, monkeypatch) -> str:
    """A models file admitting veth ends as stand-in NICs (``virtual_kinds``), so handoff tests pass the model
    guard without ``force`` (the active-NIC guard still applies)."""
    path = str(tmp_path / "models.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write('{"model": [], "virtual_kinds": ["veth"]}')
    monkeypatch.setenv("DPDKENI_MODELS", path)
    return path


@pytest.fixture
def cni_server(tmp_path, state_dir, stand_in_models) -> Iterator[tuple]:
    """``dpdkeni cni serve`` on a socket of its own, with this test's state dir and models (``-v``: a log line
    per call on its stderr); yields (socket path, Popen); stopped by pid after."""
    import signal
    sock = str(tmp_path / "cni.sock")
    proc = subprocess.Popen([sys.executable, "-m", "dpdkeni", "-v", "cni", "serve", "--socket", sock],
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stderr.readline()
        assert "cni server listening" in first, first
        yield sock, proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.fixture
def link_prefix() -> Iterator[str]:
    """A link-name prefix unique to this test; every link named with it is deleted at teardown, even when the
    test fails (for tests whose code under test makes or renames links itself)."""
    pre = unique("dkl")[:9] + "x"
    yield pre
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        for link in ipr.get_links():
            if (link.get_attr("IFLA_IFNAME") or "").startswith(pre):
                try:
                    ipr.link("del", index=link["index"])
                except Exception:
                    pass


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
_NOBODY_CLIENT = r"""
import json, socket, sys
kind, path = sys.argv[1], sys.argv[2]
data = sys.stdin.buffer.read()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM)
s.settimeout(20)
try:
    if kind == "stream":
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    else:
        s.sendto(data, path)
        reply = b""
except OSError as exc:
    print(json.dumps({"errno": exc.errno, "reply": None}))
else:
    print(json.dumps({"errno": 0, "reply": reply.decode(errors="replace")}))
"""


def as_nobody(kind: str, path: str, data: bytes) -> dict:
    """Send ``data`` to the unix socket ``path`` (``kind`` stream: connect, send, read the reply to EOF; dgram:
    one datagram) from a real unprivileged process (uid/gid 65534, no groups): ``{"errno", "reply"}``."""
    import json
    out = subprocess.run([*NOBODY, "/usr/bin/python3", "-I", "-c", _NOBODY_CLIENT, kind, path], input=data,
                         capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def open_dir() -> Iterator[str]:
    """A directory any user may traverse (0755, under /tmp): only a socket's own mode guards what is in it."""
    import tempfile
    path = tempfile.mkdtemp(prefix="dpdkeni-open-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def nobody_dir() -> Iterator[str]:
    """A directory the unprivileged user (65534) can write, e.g. to listen on a socket in it (pytest's tmp_path
    is root's 0700)."""
    import tempfile
    path = tempfile.mkdtemp(prefix="dk17-")
    os.chmod(path, 0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def wait_stopped(proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    """Wait (bounded) until ``proc`` is stopped (state T: it sent itself SIGSTOP); False if it ended instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with open(f"/proc/{proc.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return True
        time.sleep(0.02)
    return False
