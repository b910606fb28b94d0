"""nsexec.in_mount_ns: the work runs in a container's mount namespace, from a forked child, whatever threads the
caller's libraries start in that child."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from dpdkeni import nsexec
from dpdkeni.errors import NotFoundError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mnt_ns(pid: int | str) -> str:
    return os.readlink(f"/proc/{pid}/ns/mnt")


def test_the_work_runs_in_the_containers_mount_namespace_and_the_caller_stays(container_factory):
    c = container_factory()
    assert nsexec.in_mount_ns(c.pid, lambda: _mnt_ns("self")) == _mnt_ns(c.pid) != _mnt_ns("self")
    assert nsexec.in_mount_ns(None, lambda: _mnt_ns("self")) == _mnt_ns("self")


def test_an_error_in_the_work_comes_back_with_its_errno_and_stage(container_factory):
    c = container_factory()
    with pytest.raises(OSError) as exc:
        nsexec.in_mount_ns(c.pid, os.listdir, "/no/such/dir")
    assert exc.value.errno == 2
    assert str(exc.value).startswith(f"[Errno 2] in the mount namespace of pid {c.pid}: ")
    assert "entering it" not in str(exc.value)


def test_a_gone_process_is_not_found(container_factory):
    c = container_factory()
    pid = c.pid
    c.kill()
    with pytest.raises(NotFoundError, match=f"process {pid} is gone"):
        nsexec.in_mount_ns(pid, lambda: None)


# A fork handler that starts a thread in the child, as gRPC's do: the thread shares the child's filesystem
# attributes (CLONE_FS), and the kernel refuses a mount namespace to such a caller (EINVAL).
_THREAD_IN_CHILD = textwrap.dedent("""
    import json, os, sys, threading, time
    from dpdkeni import nsexec
    os.register_at_fork(after_in_child=lambda: threading.Thread(target=time.sleep, args=(5,), daemon=True).start())
    print(json.dumps(nsexec.in_mount_ns(int(sys.argv[1]), lambda: [len(os.listdir("/proc/self/task")),
                                                                   os.readlink("/proc/self/ns/mnt")])))
""")

_GRPC_RAN_BEFORE = textwrap.dedent("""
    import json, os, sys
    from concurrent import futures
    import grpc
    from dpdkeni import nsexec
    sock = sys.argv[2]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_insecure_port("unix:" + sock)
    server.start()
    channel = grpc.insecure_channel("unix:" + sock)
    grpc.channel_ready_future(channel).result(timeout=10)
    channel.close()
    server.stop(0)
    print(json.dumps(nsexec.in_mount_ns(int(sys.argv[1]), lambda: [len(os.listdir("/proc/self/task")),
                                                                   os.readlink("/proc/self/ns/mnt")])))
""")


@pytest.mark.parametrize("script", [_THREAD_IN_CHILD, _GRPC_RAN_BEFORE], ids=["fork-handler-thread", "grpc"])
def test_threads_started_in_the_child_by_fork_handlers_do_not_stop_it_entering(container_factory, tmp_path,
                                                                                script):
    """The CI flake's cause: the device plugin's tests ran gRPC in the same process, gRPC's fork handlers start
    threads in every forked child, and setns(CLONE_NEWNS) failed with EINVAL in the child. Each case runs in a
    fresh interpreter so the handler stays out of this one."""
    c = container_factory()
    run = subprocess.run([sys.executable, "-c", script, str(c.pid), str(tmp_path / "grpc.sock")],
                         capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stderr[-2000:]
    threads, ns = json.loads(run.stdout.strip().splitlines()[-1])
    assert threads >= 2  # the case is real: the child had a second thread when it entered
    assert ns == _mnt_ns(c.pid)
