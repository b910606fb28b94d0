"""Cancelling a handoff in progress: the daemon's unplug, container death and reclaim win over a slow attach.

A :class:`Token` belongs to one piece of work (one NIC's attach in a worker). The daemon cancels it when the
NIC goes; it also says cancelled by itself once a watched target process has exited. The work runs inside
:func:`scope`, which makes the token the calling thread's; the long waits of an attach ask it between steps
(:func:`check`, in :class:`dpdkeni.steps.Steps`) and while they wait (:func:`wait_readable` for the DHCP
client's ready line, :func:`run` for a rule's ``target_command``), and raise :class:`~dpdkeni.errors.Cancelled`:
the attach then undoes what it did, as for any failed step. Outside a scope (the CLI, the CNI plugin) every
call here behaves as if nothing was ever cancelled.
"""
from __future__ import annotations

import contextlib
import os
import select
import subprocess
import threading
import time
from typing import Dict, Iterator, List, Optional

from .errors import Cancelled

SLICE_S = 0.1  # how often a wait looks at its token

_local = threading.local()


class Token:
    """A cancel flag with its reason; ``watch_pid`` makes the exit of a process cancel it too."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.why = ""
        self._pidfds: List[int] = []
        self.target_path: Optional[str] = None  # the netns the work hands its NIC to, once known

    def cancel(self, why: str) -> None:
        """Cancel (the first reason given stays)."""
        if not self._event.is_set():
            self.why = why
            self._event.set()

    def watch_pid(self, pid: int) -> None:
        """Be cancelled when process ``pid`` exits (a pidfd; closed by :meth:`close`)."""
        try:
            self._pidfds.append(os.pidfd_open(pid))
        except OSError:
            self.cancel(f"target process {pid} is gone")

    def cancelled(self) -> bool:
        """Whether cancelled, by :meth:`cancel` or a watched process's exit."""
        if not self._event.is_set() and self._pidfds:
            poller = select.poll()
            for fd in self._pidfds:
                poller.register(fd, select.POLLIN)
            if poller.poll(0):
                self.cancel("target process exited")
        return self._event.is_set()

    def check(self) -> None:
        """Raise Cancelled when cancelled."""
        if self.cancelled():
            raise Cancelled(self.why)

    def close(self) -> None:
        """Close the pidfds."""
        for fd in self._pidfds:
            os.close(fd)
        self._pidfds = []


def current() -> Optional[Token]:
    """The calling thread's token, or None outside a :func:`scope`."""
    return getattr(_local, "token", None)


@contextlib.contextmanager
def scope(token: Token) -> Iterator[Token]:
    """Make ``token`` the calling thread's for the block (closed at its end)."""
    before = current()
    _local.token = token
    try:
        yield token
    finally:
        _local.token = before
        token.close()


def check() -> None:
    """Raise Cancelled when the calling thread's work was cancelled (a no-op outside a scope)."""
    token = current()
    if token is not None:
        token.check()


def wait_readable(fd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``fd`` to be readable, looking at the token every :data:`SLICE_S`; True when
    readable, False at the timeout, Cancelled when cancelled meanwhile."""
    token = current()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if select.select([fd], [], [], min(left, SLICE_S) if token else left)[0]:
            return True
        check()


def run(argv: List[str], timeout: float, env: Optional[Dict[str, str]] = None) -> str:
    """Run ``argv`` and return its stdout (text): ``subprocess.run(..., capture_output=True, text=True,
    check=True, timeout=timeout)``, except that the process is also killed as soon as the calling thread's token
    is cancelled (then Cancelled is raised)."""
    token = current()
    deadline = time.monotonic() + timeout
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=env) as proc:
        while True:
            try:
                out, err = proc.communicate(timeout=max(min(SLICE_S, deadline - time.monotonic()), 0.001))
                break
            except subprocess.TimeoutExpired:
                if (token is not None and token.cancelled()) or time.monotonic() >= deadline:
                    proc.kill()
                    proc.communicate()
                    check()
                    raise subprocess.TimeoutExpired(argv, timeout) from None
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, argv, out, err)
    return out
