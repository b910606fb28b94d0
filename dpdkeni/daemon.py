"""The policy daemon: hands NICs to containers as they appear, and takes them back when the container dies.

One poll loop over: the :class:`~dpdkeni.events.Watcher`, the unix datagram socket the udev hook writes to
(``<state dir>/daemon.sock``, 0600, root senders only), and a pidfd per target process. The handoffs run off
the loop in :class:`~dpdkeni.lanes.Lanes` (:data:`WORKERS` at once, each NIC's work in order), so a DHCP
exchange or a slow ``target_command`` (killed after :data:`TARGET_COMMAND_TIMEOUT_S`, said once) delays no
other NIC; a worker hands the lease back to the loop (an eventfd), which watches its target. Decisions are
logged one line each.

A NIC handed to a process's netns is watched with a pidfd, and the daemon keeps the netns open: when the
process exits the namespace lives on until the daemon moved the NIC back under its own name (otherwise the
kernel destroys virtual links and returns physical ones as ``devN``), then it is let go.

Migration, as the clouds do it: a container moves, its NIC (ENI) is unplugged and plugged again with the same
MAC. A leased NIC unplugged from the VM ends its lease (``released ... outcome=gone``); a NIC whose rule
names a target that is not running (``container:ID`` between two instances, ``netns:NAME`` not made yet, a
``target_command`` that printed nothing) waits (``waiting``) and is retried every :data:`RETRY_S` seconds
until the target runs, the NIC goes, or another process leases it. So the NIC lands in the container's new
instance with the rule's addresses and routes whichever comes first, the container or the NIC.

A production service: one daemon per state dir (``<state dir>/daemon.lock``, flock; a second one refuses with
the holder's pid and touches nothing). Everything done for one NIC runs under a guard: any exception is logged
with its traceback and becomes a ``*-failed`` decision for that NIC, and the loop goes on. Decisions and hook
events are kept in ring buffers, dead targets are forgotten after :data:`DEAD_TTL_S`. Under systemd
(``Type=notify``) it says ``READY=1`` once serving and ``WATCHDOG=1`` every half ``WatchdogSec``; :attr:`reload`
(``SIGHUP``) re-reads the policy file, keeping the old rules when the new file is invalid.
"""
from __future__ import annotations

import collections
import fcntl
import json
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, List, Optional

from . import cancel, daemon_status, handoff, memtrim, netdev, sdnotify, statedir, udev, unixsock
from .errors import Error, GuardError, NotFoundError, PolicyError, StepError, TargetCommandTimeout
from .events import NicEvent, Watcher
from .inventory import Nic
from .lanes import Lanes
from .ledger import Lease, Ledger
from .netns import iproute_in, resolve_target
from .policy import Policy, Rule, attach_kwargs, describe, load

log = logging.getLogger(__name__)

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
RETRY_S = 1.0  # how often a NIC waiting for its target is tried again
LOCK_NAME = "daemon.lock"  # in the state dir: flock'd by the running daemon, holds its pid
DECISIONS_KEPT = 1000  # the last decisions kept in memory (all are logged)
HOOK_EVENTS_KEPT = 200  # the last hook events kept in memory
DEAD_TTL_S = 600.0  # how long an exited target is remembered (not attached to again)
TRIM_PERIOD_S = 30.0  # at most this often, when idle, the C heap's free pages go back to the kernel (memtrim)
DEAD_KEPT = 4096  # at most this many exited targets remembered
WORKERS = 32  # handoffs running at once (each NIC's work in order, in its own lane): 32 NICs' DHCP at once
TARGET_COMMAND_TIMEOUT_S = 10.0  # a rule's target_command running longer is killed, and its NIC not retried
METRICS_INTERVAL_S = 5.0  # how often the --metrics file is rewritten


@dataclass
class _Waiting:
    """A NIC whose rule's target is not running yet."""

    nic: Nic
    rule: Rule
    due: float
    why: str = ""


@dataclass
class _Held:
    """A target the daemon watches: its process (pidfd) and an fd keeping its netns alive."""

    pid: int
    pidfd: int
    nsfd: int
    keys: List[str]


class Daemon:
    """Apply ``policy`` to NICs as they appear. ``watcher`` defaults to ``Watcher(existing=True)``."""

    def __init__(self, policy: Policy, *, watcher: Optional[Watcher] = None, source: str = "auto",
                 state: Optional[str] = None, metrics: Optional[str] = None) -> None:
        self.policy = policy
        self.metrics = metrics  # a node_exporter textfile, rewritten every METRICS_INTERVAL_S (None: none)
        self.counters = daemon_status.Counters()
        self._started = time.monotonic()
        self._status: Optional[daemon_status.StatusServer] = None
        self._metrics_due = 0.0
        self.state = state or statedir.path()
        self.watcher = watcher or Watcher(source, existing=True)
        self._hook_events: Deque[Dict[str, str]] = collections.deque(maxlen=HOOK_EVENTS_KEPT)
        self._decisions: Deque[Dict[str, Any]] = collections.deque(maxlen=DECISIONS_KEPT)
        self._held: Dict[int, _Held] = {}  # pidfd -> held target
        # pid:N of target processes that exited (not attached to again) -> when; oldest first
        self._dead: Dict[str, float] = collections.OrderedDict()
        self._waiting: Dict[str, _Waiting] = {}  # lease key -> a NIC waiting for its target
        # lease key -> the cancel tokens of its attaches queued or running (an unplug cancels them)
        self._tokens: Dict[str, List[cancel.Token]] = {}
        self._tokens_lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._poller = select.poll()
        self._lock_fd = -1
        self._lanes: Optional[Lanes] = None
        self._trimmer = memtrim.Trimmer(TRIM_PERIOD_S)  # freed heap back to the kernel when idle: RSS stays flat
        self._done: "queue.SimpleQueue[Lease]" = queue.SimpleQueue()  # attached by a worker, to watch
        self._wake = -1  # eventfd: a worker finished an attach
        self.stop = threading.Event()
        self.reload = threading.Event()  # set (SIGHUP): re-read the policy file at the next step
        self._watchdog_s = sdnotify.watchdog_interval()
        self._watchdog_due = 0.0

    @property
    def decisions(self) -> List[Dict[str, Any]]:
        """The last :data:`DECISIONS_KEPT` decisions, oldest first (a copy: safe to read from another thread)."""
        return list(self._decisions)

    @property
    def hook_events(self) -> List[Dict[str, str]]:
        """The last :data:`HOOK_EVENTS_KEPT` hook events, oldest first (a copy)."""
        return list(self._hook_events)

    # ----- lifecycle
    def start(self) -> None:
        """Open the socket, reconcile with the ledger, take the pending hook events, start watching."""
        statedir.ensure(self.state)
        os.chmod(self.state, 0o700)  # the socket's datagrams are taken from root only; nobody else may list it
        if self.metrics:
            daemon_status.check_metrics_path(self.metrics)  # bad input: refused before anything is started
        self._lock()
        self._started = time.monotonic()
        self._open_socket()
        self._status = daemon_status.StatusServer(daemon_status.socket_path(self.state), self.status)
        self._status.start()
        self._lanes = Lanes(WORKERS, "dpdkeni-nic")
        self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self._poller.register(self._wake, select.POLLIN)
        self._reconcile()
        self.watcher.start()
        self._poller.register(self.watcher.fileno(), select.POLLIN | select.POLLERR)
        for event in self.watcher.poll(0):
            self.on_event(event)
        for queued in udev.read_queue(self.state):
            self.on_hook(queued, queued=True)
        log.info("daemon ready: %d rules, socket %s", len(self.policy.rules), udev.socket_path(self.state))
        sdnotify.notify(f"READY=1\nSTATUS=serving {len(self.policy.rules)} rules\nMAINPID={os.getpid()}")
        self._watchdog()
        self._write_metrics()

    def _lock(self) -> None:
        """Hold ``<state>/daemon.lock`` (flock) for the daemon's life, or refuse: another daemon serves this
        state dir (a GuardError naming its pid; nothing of it touched)."""
        path = os.path.join(self.state, LOCK_NAME)
        fd = statedir.open_file(path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise GuardError(f"another dpdkeni daemon (pid {holder}) serves {self.state}: not starting",
                             f"stop it first, or give this one its own {statedir.ENV}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _open_socket(self) -> None:
        path = udev.socket_path(self.state)
        if unixsock.is_socket(path):
            os.unlink(path)  # a stale socket of a daemon that died
        sock = unixsock.bound_private(socket.SOCK_DGRAM, path)
        os.chmod(path, 0o600)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self._sock = sock
        self._poller.register(sock.fileno(), select.POLLIN)

    def close(self) -> None:
        """Stop listening; NICs stay where they are (the ledger remembers them for the next start). Handoffs
        running are finished (queued ones dropped: the next start sees those NICs again)."""
        if self._lanes is not None:
            self._lanes.close()
            self._lanes = None
        if self._status is not None:
            self._status.close()
            self._status = None
        self._write_metrics(force=True)
        if self._wake >= 0:
            os.close(self._wake)
            self._wake = -1
        self.watcher.close()
        if self._sock is not None:
            self._sock.close()
            try:
                os.unlink(udev.socket_path(self.state))
            except OSError:
                pass
            self._sock = None
        for held in list(self._held.values()):
            self._let_go(held)
        if self._lock_fd >= 0:  # the file stays: unlinking a flock'd file lets two daemons hold two files
            os.close(self._lock_fd)
            self._lock_fd = -1
        sdnotify.notify("STOPPING=1")

    def serve(self) -> None:
        """Run until :attr:`stop` is set."""
        self.start()
        try:
            while not self.stop.is_set():
                self.step(0.2)
        finally:
            self.close()

    def step(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for something to do, and do it."""
        ready = self._poller.poll(int(timeout * 1000))
        for fd, _ in ready:
            if fd in self._held:
                held = self._held[fd]
                self._guarded("release", ",".join(held.keys), self._on_exit, held)
            elif self._sock is not None and fd == self._sock.fileno():
                self._read_socket()
            elif fd == self._wake:
                self._take_attached()
        for event in self.watcher.poll(0):
            self.on_event(event)
        self._retry_waiting()
        if self.reload.is_set():
            self.reload.clear()
            self._reload()
        self._watchdog()
        self._write_metrics()
        self._trimmer.maybe(idle=not ready and (self._lanes is None or self._lanes.pending() == 0))

    def _take_attached(self) -> None:
        """Watch the targets of the leases the workers made (the poller is this thread's only)."""
        try:
            os.eventfd_read(self._wake)
        except BlockingIOError:
            pass
        while True:
            try:
                lease = self._done.get_nowait()
            except queue.Empty:
                return
            self._guarded("hold", lease.key, self._hold, lease)

    def _submit(self, key: str, what: str, func: Callable[..., None], *args: Any) -> None:
        """Run ``func(*args)`` for NIC ``key`` in its lane, after its earlier work, guarded."""
        if self._lanes is not None:
            self._lanes.submit(key, self._guarded, what, key, func, *args)

    def _watchdog(self) -> None:
        if self._watchdog_s is not None and time.monotonic() >= self._watchdog_due:
            sdnotify.notify("WATCHDOG=1")
            self._watchdog_due = time.monotonic() + self._watchdog_s

    def _reload(self) -> None:
        """Re-read the policy file; an invalid one keeps the rules in force (logged with its file:line)."""
        try:
            policy = load(self.policy.path)
        except PolicyError as exc:
            log.error("policy not reloaded, keeping the %d rules in force: %s", len(self.policy.rules), exc)
            self._decide("reload-failed", policy=self.policy.path, error=str(exc))
            return
        self.policy = policy
        self._decide("reloaded", policy=policy.path, rules=len(policy.rules))

    # ----- status
    def status(self, last: int = daemon_status.DEFAULT_LAST) -> Dict[str, Any]:
        """The status document: uptime, rules, leases held, NICs waiting (and why) or at work, the ``last``
        decisions, the counters. Safe to call from another thread."""
        leases = Ledger(self.state).leases()
        waiting = [{"nic": k, "rule": w.rule.name, "why": w.why} for k, w in list(self._waiting.items())]
        return {"pid": os.getpid(), "state": self.state, "uptime_s": round(time.monotonic() - self._started, 1),
                "policy": self.policy.path, "rules": describe(self.policy.rules),
                "counters": self.counters.snapshot(),
                "leases": [{"nic": k, "mode": v.mode, "target": v.target, "state": v.state}
                           for k, v in sorted(leases.items())],
                "waiting": waiting, "busy": self._lanes.keys() if self._lanes is not None else [],
                "memory": {"rss_kib": memtrim.rss_kib(), "trims": self._trimmer.trims},
                "decisions": self.decisions[-last:] if last > 0 else []}

    def _write_metrics(self, force: bool = False) -> None:
        """Rewrite the metrics file when due (every METRICS_INTERVAL_S); a failed write is logged, not fatal."""
        if not self.metrics or (not force and time.monotonic() < self._metrics_due):
            return
        self._metrics_due = time.monotonic() + METRICS_INTERVAL_S
        try:
            text = daemon_status.render_metrics(self.counters.snapshot(), len(Ledger(self.state).leases()),
                                                len(self._waiting), time.monotonic() - self._started)
            daemon_status.write_metrics(self.metrics, text)
        except (Error, OSError) as exc:
            log.error("metrics not written to %s: %s", self.metrics, exc)

    # ----- decisions
    def _decide(self, what: str, count: Optional[str] = None, **fields: Any) -> None:
        """Record and log a decision; ``count`` names the counter it bumps when not its own name (a release
        that is a reclaim)."""
        counter = count or ("failed" if what.endswith("-failed") else what)
        if counter in daemon_status.COUNTERS:
            self.counters.add(counter)
        self._decisions.append({"decision": what, **fields})
        log.info("%s: %s", what, " ".join(f"{k}={v}" for k, v in fields.items()))

    def _guarded(self, what: str, nic: str, func: Callable[..., None], *args: Any) -> None:
        """Run ``func(*args)``, the work for one NIC; any exception (a NetlinkError, an OSError from a NIC or
        netns that vanished, a bug) is logged with its traceback and is ``<what>-failed`` for that NIC, which
        stops waiting: the daemon goes on with the others."""
        try:
            func(*args)
        except Exception as exc:  # noqa: BLE001  # the fault boundary of one NIC
            log.error("%s of %s failed unexpectedly", what, nic, exc_info=True)
            self._waiting.pop(nic, None)
            self._decide(f"{what}-failed", nic=nic, error=f"{type(exc).__name__}: {exc}")

    def on_event(self, event: NicEvent) -> None:
        """A NIC appeared (or came back): apply the first rule that matches it. A leased NIC unplugged from
        the machine ends its lease. Guarded: a failure is this NIC's ``*-failed`` decision."""
        key = handoff.lease_key(event.nic)
        self.counters.add("events")
        self._guarded("release" if event.action == "removed" else "attach", key, self._on_event, event, key)

    def _on_event(self, event: NicEvent, key: str) -> None:
        nic = event.nic
        if event.action == "removed":
            self._waiting.pop(key, None)
            self._cancel(key, nic, "removed")  # the unplug wins over an attach in progress: it is undone first
            if self._unplugged(nic):
                self._submit(key, "release", self._end_unplugged, nic, key)
            return
        if event.action == "moved" and not nic.ifname:
            return  # its netdev left this netns (often: we handed it over)
        rule = self.policy.rule_for(nic)
        if rule is None:
            self._decide("ignore", nic=key, model=nic.model, why="no rule matches")
            return
        self._submit_attach(key, self._attach_unleased, nic, key, rule)

    def _submit_attach(self, key: str, func: Callable[..., None], *args: Any) -> None:
        """Queue an attach of NIC ``key`` in its lane, cancellable (:meth:`_cancel`) while queued or running."""
        token = cancel.Token()
        with self._tokens_lock:
            self._tokens.setdefault(key, []).append(token)
        self._submit(key, "attach", self._cancellable, key, token, func, *args)

    def _cancellable(self, key: str, token: cancel.Token, func: Callable[..., None], *args: Any) -> None:
        try:
            with cancel.scope(token):
                if token.cancelled():  # cancelled while queued: the NIC is gone, nothing was done
                    self._decide("attach-cancelled", nic=key, why=token.why)
                    return
                func(*args)
        finally:
            with self._tokens_lock:
                left = [t for t in self._tokens.get(key, []) if t is not token]
                if left:
                    self._tokens[key] = left
                else:
                    self._tokens.pop(key, None)

    def _cancel(self, key: str, nic: Nic, why: str) -> None:
        """Cancel the attaches of NIC ``key`` queued or running, when the NIC is really gone: each stops at its
        next step or wait and is undone (``attach-cancelled``)."""
        with self._tokens_lock:
            tokens = list(self._tokens.get(key, []))
        for token in tokens:
            if self._gone(nic, token):
                token.cancel(why)

    def _gone(self, nic: Nic, token: cancel.Token) -> bool:
        """Whether a NIC reported removed left the machine: a PCI device gone from sysfs; a virtual link that is
        not in the netns its attach moves it to (there, it was our own move that took it from this netns)."""
        if nic.pci:
            return self._unplugged(nic)
        if not token.target_path or not nic.mac:
            return True
        try:
            fd = os.open(token.target_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return True
        try:
            with iproute_in(fd) as tip:
                return netdev.find_by_mac(tip, nic.mac) is None
        finally:
            os.close(fd)

    def _given_up(self, key: str, rule: Rule) -> bool:
        """Whether this thread's attach was cancelled (said once, as ``attach-cancelled``)."""
        token = cancel.current()
        if token is None or not token.cancelled():
            return False
        self._waiting.pop(key, None)
        self._decide("attach-cancelled", nic=key, rule=rule.name, why=token.why)
        return True

    def _attach_unleased(self, nic: Nic, key: str, rule: Rule) -> None:
        """:meth:`_attach` unless the NIC is leased (checked in its lane: after its earlier handoffs)."""
        if handoff.find_lease(nic, Ledger(self.state)) is not None:
            self._waiting.pop(key, None)
            self._decide("skip", nic=key, why="already leased")
            return
        self._attach(nic, key, rule)

    @staticmethod
    def _unplugged(nic: Nic) -> bool:
        """A PCI NIC whose device left the machine (not a netdev that left this netns)."""
        return bool(nic.pci) and not os.path.exists(os.path.join("/sys/bus/pci/devices", nic.pci or ""))

    def _end_unplugged(self, nic: Nic, key: str) -> None:
        """End the lease of a NIC that left the machine: netdev (its link is gone with it) or dpdk (its cgroup
        rules revoked, hugepages share freed, the hugetlbfs mount shrunk or removed, its device nodes gone)."""
        lease = handoff.find_lease(nic, Ledger(self.state))
        if lease is None:
            return
        try:
            done = handoff.release(lease.key, force=True)
        except Error as exc:
            self._decide("release-failed", nic=key, why="unplugged", error=str(exc))
            return
        outcome = "gone" if lease.mode == "dpdk" else (done.params.get("outcome") if done else None) or "released"
        self._decide("released", nic=key, why="unplugged", outcome=outcome)

    def _attach(self, nic: Nic, key: str, rule: Rule) -> None:
        """Resolve the rule's target and hand ``nic`` over; a target that may still come makes the NIC wait
        (``waiting`` is said once, retries are quiet), anything else ends the wait."""
        try:
            spec = rule.resolve_target(nic, timeout=TARGET_COMMAND_TIMEOUT_S)
            if spec in self._dead:
                self._waiting.pop(key, None)
                self._decide("skip", nic=key, rule=rule.name, why=f"target {spec} has exited")
                return
            target = resolve_target(spec)
        except Error as exc:
            if self._given_up(key, rule):
                return
            if self._may_come(rule, exc):
                self._wait_for_target(nic, key, rule, exc)
                return
            self._waiting.pop(key, None)
            self._decide("attach-failed", nic=key, rule=rule.name, error=str(exc))
            return
        self._waiting.pop(key, None)
        token = cancel.current()
        if token is not None:
            token.target_path = target.path
            if target.pid:
                token.watch_pid(target.pid)  # the container's death wins over its attach in progress
        try:
            lease = handoff.attach(nic, target, **attach_kwargs(rule))
        except Error as exc:  # a failed handoff is undone and said once, never retried in a loop
            if not self._given_up(key, rule):
                self._decide("attach-failed", nic=key, rule=rule.name, error=str(exc))
            return
        self._decide("attached", nic=key, rule=rule.name, mode=rule.mode, target=spec)
        self._done.put(lease)
        if self._wake >= 0:
            os.eventfd_write(self._wake, 1)

    @staticmethod
    def _may_come(rule: Rule, exc: Error) -> bool:
        """Whether a target that could not be resolved may still appear: a container or named netns that is
        not there (yet), or a target command that found nothing. A ``pid:N`` or a path never comes back."""
        if isinstance(exc, TargetCommandTimeout):
            return False  # said once: a command that hangs is not run again every second
        if isinstance(exc, NotFoundError) and rule.target is not None:
            return rule.target.startswith(("container:", "netns:"))
        return isinstance(exc, (NotFoundError, StepError)) and rule.target_command is not None

    def _wait_for_target(self, nic: Nic, key: str, rule: Rule, exc: Error) -> None:
        if key not in self._waiting:
            self._decide("waiting", nic=key, rule=rule.name, why=str(exc))
        self._waiting[key] = _Waiting(nic, rule, time.monotonic() + RETRY_S, str(exc))

    def _retry_waiting(self) -> None:
        now = time.monotonic()
        for key, waiting in list(self._waiting.items()):
            if waiting.due <= now and self._lanes is not None and not self._lanes.busy(key):
                waiting.due = now + RETRY_S
                self._guarded("attach", key, self._retry, key, waiting)
        self._prune_dead(now)

    def _retry(self, key: str, waiting: _Waiting) -> None:
        """On this thread: is the NIC still there, and free? Then try again, in its lane."""
        nic = waiting.nic
        current = self.watcher_nic(key)
        if current is None or (nic.pci and current.mac != nic.mac):
            self._waiting.pop(key, None)  # gone, or another NIC in its slot (its own event handles it)
            return
        if handoff.find_lease(current, Ledger(self.state)) is not None:
            self._waiting.pop(key, None)
            return
        self._submit_attach(key, self._attach, current, key, waiting.rule)

    def _mark_dead(self, spec: str) -> None:
        self._dead.pop(spec, None)
        self._dead[spec] = time.monotonic()

    def _prune_dead(self, now: float) -> None:
        """Forget exited targets after DEAD_TTL_S, and beyond DEAD_KEPT (oldest first)."""
        while self._dead:
            spec, when = next(iter(self._dead.items()))
            if now - when < DEAD_TTL_S and len(self._dead) <= DEAD_KEPT:
                break
            del self._dead[spec]

    def watcher_nic(self, key: str) -> Optional[Nic]:
        """The NIC the watcher knows under lease key ``key`` (PCI address, or ``if:NAME``), or None."""
        for nic in self.watcher.known():
            if handoff.lease_key(nic) == key:
                return nic
        return None

    def _hold(self, lease: Lease) -> None:
        pid = lease.params.get("pid")
        if not pid:
            return  # a named netns: nothing dies with a process
        for held in self._held.values():
            if held.pid == pid:
                held.keys.append(lease.key)
                return
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            self._reclaim([lease.key], None, "target process is gone")
            return
        try:
            nsfd = os.open(lease.params["target_path"], os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            nsfd = -1
        held = _Held(pid, pidfd, nsfd, [lease.key])
        self._held[pidfd] = held
        self._poller.register(pidfd, select.POLLIN)

    def _on_exit(self, held: _Held) -> None:
        self._mark_dead(f"pid:{held.pid}")
        try:
            self._reclaim(held.keys, held, f"process {held.pid} exited")
        finally:
            self._let_go(held)  # even when the reclaim failed: a dead pidfd polled again would spin

    def _let_go(self, held: _Held) -> None:
        self._held.pop(held.pidfd, None)
        self._poller.unregister(held.pidfd)
        os.close(held.pidfd)
        if held.nsfd >= 0:
            os.close(held.nsfd)

    def _reclaim(self, keys: List[str], held: Optional[_Held], why: str) -> None:
        ledger = Ledger(self.state)
        for key in keys:
            lease = ledger.get(key)
            if lease is None:
                continue
            if held is not None and lease.target.startswith("pid:"):
                self._mark_dead(lease.target)
            try:
                if held is not None and held.nsfd >= 0:  # the netns outlives its process while we hold it
                    ledger.update(key, params={**lease.params,
                                               "target_path": f"/proc/{os.getpid()}/fd/{held.nsfd}"})
                done = handoff.release(key, force=True)
                outcome = (done.params.get("outcome") if done else None) or "released"
            except Error as exc:
                self._decide("release-failed", nic=key, why=why, error=str(exc))
                continue
            self._decide("released", count="reclaimed", nic=key, why=why, outcome=outcome)

    def _reconcile(self) -> None:
        """Finish what a crash left half-done, reclaim NICs whose target died, watch the live ones."""
        for done in handoff.recover():
            self._decide("recovered", **done)
        for lease in Ledger(self.state).leases().values():
            if lease.state == "attached":
                self._hold(lease)

    # ----- the udev hook
    def _read_socket(self) -> None:
        while True:
            try:
                data, anc, _, _ = self._sock.recvmsg(  # type: ignore[union-attr]  # only polled while open
                    65536, socket.CMSG_SPACE(_CRED.size), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            uid = next((_CRED.unpack(d[:_CRED.size])[1] for lvl, typ, d in anc
                        if lvl == socket.SOL_SOCKET and typ == socket.SCM_CREDENTIALS), None)
            if uid != 0:
                log.warning("hook message from uid %s ignored (root only)", uid)
                continue
            try:
                event = json.loads(data)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                log.warning("malformed hook message ignored")
                continue
            self._guarded("hook", str(event.get("DEVPATH")), self.on_hook, event)

    def on_hook(self, event: Dict[str, str], queued: bool = False) -> None:
        """A udev event from the hook: record it, and re-read the NICs (the hook is the only source where
        the daemon hears no uevents itself, e.g. in a container)."""
        self._hook_events.append(event)
        self._decide("hook", action=event.get("ACTION"), devpath=event.get("DEVPATH"),
                     interface=event.get("INTERFACE"), seqnum=event.get("SEQNUM"), queued=queued)
        self.watcher.resync()
        for nic_event in self.watcher.poll(0):
            self.on_event(nic_event)
