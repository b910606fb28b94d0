"""The one step engine of the handoff modes: named steps recorded in the ledger, undone through one table.

A mode (:mod:`dpdkeni.netdev`, :mod:`dpdkeni.dpdkmode`) plans its steps; the plan is recorded with the lease's
claim, in the same ledger write, each step with what its undo needs: ``started`` (recovery treats a started step
as maybe done), or ``planned`` when its undo is *exact* (it cannot tell from the system whether the step happened:
hugepages taken, a mount made), then it is marked ``started`` in a write just before it runs. :class:`Steps` runs
them; a step's ``done`` mark (and what it learned) rides on the next write, an exact step's is written before the
next step starts. Every step's undo is registered by name in the mode's :data:`UndoTable`, and the same function
undoes it whether the attach failed in this process (:meth:`Steps.__exit__`), the NIC is released, or a crash
left it to ``recover`` (:func:`unwind`; a ``planned`` step never started and has nothing to undo).

The rules, the same for every mode:

- a :class:`~dpdkeni.errors.GuardError` raised by a step passes through untouched (exit 3, CNI 101); a system
  error or another :class:`~dpdkeni.errors.Error` becomes a :class:`~dpdkeni.errors.StepError` naming the step;
- an undo failure never replaces the error that started the unwinding: it is logged and attached to it as
  ``exc.undo_errors``;
- when an undo failed, the lease stays in the ledger as ``failed`` with the steps still to undo (a step without
  an undo of its own goes with the step before it whose undo covers it) and the errors in
  ``params["undo_errors"]``, for ``recover`` to finish and ``leases`` to show.

Test hook: with ``DPDKENI_TEST_KILL_AFTER=<name>`` the process SIGKILLs itself right after the step ``<name>`` is
recorded, or after the undo labelled ``<name>``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from . import cancel
from .errors import Error, GuardError, StepError, as_error
from .ledger import Lease, Ledger, Step

log = logging.getLogger(__name__)

TEST_KILL_ENV = "DPDKENI_TEST_KILL_AFTER"
UNDONE = "undone"  # the ledger state of a step whose exact undo ran (it is never run twice)
PLANNED = "planned"  # an exact step recorded with the plan, not started yet (nothing to undo)


def test_hook(name: str) -> None:
    """SIGKILL this process when ``DPDKENI_TEST_KILL_AFTER`` names ``name`` (the crash tests' kill points)."""
    if os.environ.get(TEST_KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def why(exc: BaseException) -> str:
    """One line for what went wrong in a step: an Error as itself, a netlink errno as its text, another system
    error as :func:`~dpdkeni.errors.as_error` maps it."""
    if isinstance(exc, Error):
        return str(exc)
    mapped = as_error(exc)
    code = getattr(exc, "code", None)
    if mapped is not None and not isinstance(exc, OSError) and isinstance(code, int) and code > 0:
        return f"{os.strerror(code)} (netlink errno {code})"
    return str(mapped) if mapped is not None else (str(exc) or type(exc).__name__)


@dataclass
class Unwinding:
    """What an undo gets besides its step's data: the lease and ledger, whether the NIC may come home under
    another name (``force``), live resources of the process that ran the steps (``live``: open sockets; an undo
    run by ``recover`` finds them empty and opens its own) and ``outcome``, which an undo may set (netdev's
    ``returned``/``reclaimed``/``gone``)."""

    ledger: Ledger
    lease: Lease
    force: bool = False
    live: Dict[str, Any] = field(default_factory=dict)
    outcome: Optional[str] = None

    def mark(self, name: str) -> None:
        """Record progress step ``name`` as started (one ledger write), before it runs."""
        self.ledger.advance(self.lease.key, begin=[Step(name)])


@dataclass(frozen=True)
class Undo:
    """How one step is undone. ``fn(unwinding, data)`` gets the step's recorded data (what it learned included,
    ``partial=True`` when the step may have been cut short) and may return the label its test hook fires under
    (default ``label``, else ``undo-<step>``). ``exact``: the step's done mark is written before the next step
    starts, and its undo, once it ran, is recorded (state ``undone``) so it never runs twice. ``mark``: the undo
    is recorded as a progress step named ``label`` before it runs (what a crashed release got to)."""

    fn: Callable[[Unwinding, Dict[str, Any]], Optional[str]]
    label: Optional[str] = None
    exact: bool = False
    mark: bool = False


UndoTable = Mapping[str, Undo]


def _left(steps: Sequence[Step], table: UndoTable, failed: Set[str]) -> List[Step]:
    """The steps still to undo when the undos of ``failed`` failed: those, and each step without an undo of its
    own that comes after one of them before the next step with an undo (netdev's addresses and up go with the
    move: moving the NIC home undoes them)."""
    out: List[Step] = []
    owner: Optional[str] = None
    for step in steps:
        if step.name in table:
            owner = step.name
        if owner in failed and step.state not in (UNDONE, PLANNED):
            out.append(step)
    return out


def keep_failed(ledger: Ledger, key: str, table: UndoTable, failed: Set[str], errors: Sequence[Error]) -> None:
    """Leave lease ``key`` as ``failed`` with only the steps still to undo (:func:`_left`) and the undo errors
    in ``params["undo_errors"]``, in one write."""
    with ledger.transaction() as leases:
        lease = leases.get(key)
        if lease is None:
            return
        lease.steps = _left(lease.steps, table, failed)
        lease.state = "failed"
        lease.params["undo_errors"] = [str(e) for e in errors]
        leases[key] = lease


def _undo_one(u: Unwinding, table: UndoTable, name: str, data: Dict[str, Any]) -> None:
    undo = table[name]
    if undo.mark and undo.label:
        u.mark(undo.label)
    log.info("undo %s of %s", name, u.lease.key)
    label = undo.fn(u, data)
    if undo.exact:
        _mark_undone(u.ledger, u.lease.key, name)
    test_hook(label or undo.label or f"undo-{name}")


def _mark_undone(ledger: Ledger, key: str, name: str) -> None:
    with ledger.transaction() as leases:
        step = leases[key].step(name) if key in leases else None
        if step is not None:
            step.state = UNDONE


def _undo_error(name: str, exc: BaseException) -> StepError:
    err = StepError(f"undo {name}", why(exc))
    log.error("%s failed: %s", err.step, err.message)
    return err


def undo_steps(u: Unwinding, table: UndoTable, ran: Sequence[Tuple[str, Dict[str, Any]]], *,
               stop_on_guard: bool = False) -> Tuple[List[str], List[Error]]:
    """Undo ``ran`` ((name, data) in the order they ran) newest first through ``table``, trying every one; a step
    with no undo of its own is skipped (the undo of a step before it covers it). Returns the names undone and
    the undo errors (logged, never raised), and when there are errors leaves the lease ``failed`` with what is
    left. ``stop_on_guard``: a GuardError from an undo stops the unwinding and is raised as it is (a release
    refused: the NIC stays where it is)."""
    done: List[str] = []
    errors: List[Error] = []
    failed: Set[str] = set()
    for name, data in reversed(ran):
        if name not in table:
            continue
        try:
            _undo_one(u, table, name, data)
            done.append(name)
        except Exception as exc:
            if stop_on_guard and isinstance(exc, GuardError):
                raise  # an undo must not hide the error that started the unwinding: it rides along
            errors.append(_undo_error(name, exc))
            failed.add(name)
    if errors:
        keep_failed(u.ledger, u.lease.key, table, failed, errors)
    return done, errors


def raise_undo_errors(what: str, errors: Sequence[Error]) -> None:
    """Raise StepError ``what`` for undo errors (the first one's message, all of them as ``undo_errors``)."""
    if errors:
        exc = StepError(what, errors[0].message)
        exc.undo_errors = list(errors)  # type: ignore[attr-defined]
        raise exc


def unwind(u: Unwinding, table: UndoTable, *, stop_on_guard: bool = False) -> Tuple[List[str], List[Error]]:
    """Undo every recorded step of ``u.lease`` not undone yet, newest first (release and ``recover``: the same
    undo functions as a failed attach's). A step not marked done is undone as ``partial``."""
    ran = [(s.name, dict(s.undo, partial=s.state != "done")) for s in u.lease.steps
           if s.name in table and s.state not in (UNDONE, PLANNED)]
    return undo_steps(u, table, ran, stop_on_guard=stop_on_guard)


class Steps:
    """Run the named steps of one attach. Use as a context manager: an exception leaving the block undoes the
    steps run so far, newest first (the failed one too, as ``partial``), through ``table``, and is re-raised.

    ``lease.steps`` is the plan as the ledger holds it (recorded with the claim); ``plan`` adds the steps it does
    not hold yet, recorded on entry in one write (a caller that claimed the lease without a plan). A step's done
    mark rides on the next write; an exact step's is written before the next step starts (its test hook fires
    after that write)."""

    def __init__(self, ledger: Ledger, lease: Lease, table: UndoTable, plan: Sequence[Step] = (),
                 live: Optional[Dict[str, Any]] = None) -> None:
        self.ledger, self.lease, self.table = ledger, lease, table
        self.unwinding = Unwinding(ledger, lease, live=live if live is not None else {})
        self.missing = [s for s in plan if lease.step(s.name) is None]
        self.recorded: Dict[str, Dict[str, Any]] = {s.name: dict(s.undo) for s in [*lease.steps, *self.missing]}
        self.planned = {s.name for s in [*lease.steps, *self.missing] if s.state == PLANNED}
        self.pending: Dict[str, Dict[str, Any]] = {}   # done marks not written yet
        self.hooks: List[str] = []                     # exact steps whose test hook waits for their done mark
        self.notes: Dict[str, Dict[str, Any]] = {}     # undo data of steps not started, to write before they do
        self.ran: List[Tuple[str, Dict[str, Any]]] = []
        self.writes = 0
        self._stack = contextlib.ExitStack()  # what the steps opened: closed after any undo

    def __enter__(self) -> "Steps":
        if self.missing:
            self._write(plan=self.missing)
        return self

    def __exit__(self, _type: Any, exc: Optional[BaseException], _tb: Any) -> None:
        with self._stack:
            if exc is not None:
                self._roll_back(exc)

    def callback(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` when the steps are over (after the undos, if any ran)."""
        self._stack.callback(fn, *args)

    def _roll_back(self, exc: BaseException) -> None:
        done, self.pending, self.hooks = self.pending, {}, []
        if done:
            try:  # what the steps learned is what their undo needs, should this process die while undoing
                self._write(done=done)
            except (Error, KeyError) as err:
                log.error("recording the steps of %s failed: %s", self.lease.key, err)
        _, errors = undo_steps(self.unwinding, self.table, self.ran)
        if errors:
            exc.undo_errors = errors  # type: ignore[attr-defined]

    def _write(self, done: Optional[Dict[str, Dict[str, Any]]] = None, begin: Sequence[Step] = (),
               plan: Sequence[Step] = (), notes: Optional[Dict[str, Dict[str, Any]]] = None,
               **changes: Any) -> Lease:
        self.writes += 1
        lease = self.ledger.advance(self.lease.key, done=done, begin=begin, plan=plan, notes=notes, **changes)
        hooks, self.hooks = self.hooks, []
        for name in hooks:
            test_hook(name)
        return lease

    def note(self, name: str, data: Dict[str, Any]) -> None:
        """Undo data for step ``name``, known before it starts: written with the next write (at the latest just
        before ``name`` runs)."""
        self.notes[name] = dict(data)

    def run(self, name: str, fn: Callable[[], Optional[Dict[str, Any]]],
            record: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """Run step ``name``: its record (``record``, else a note, else the plan's) is in the ledger before ``fn``
        runs; ``fn``'s dict result is what the step learned, kept with its undo data. A GuardError passes as it
        is; another Error or a system error becomes a StepError naming the step. A handoff cancelled meanwhile
        (:mod:`dpdkeni.cancel`: its NIC unplugged, its target gone) stops here, and is undone."""
        cancel.check()
        data = dict(record) if record is not None else self.notes.pop(name, self.recorded.get(name, {}))
        unchanged = name in self.recorded and self.recorded[name] == data and name not in self.planned
        begin = [] if unchanged else [Step(name, "started", data)]
        self.planned.discard(name)
        if begin or self.notes or self.hooks:
            self.recorded.update(self.notes)
            done, self.pending, notes, self.notes = self.pending, {}, self.notes, {}
            self._write(done=done, begin=begin, notes=notes)
        self.recorded[name] = data
        try:
            result = fn()
        except BaseException as exc:
            self.ran.append((name, {**data, "partial": True}))
            if isinstance(exc, (GuardError, StepError)) or as_error(exc) is None:
                raise  # a refusal (exit 3, CNI 101), a step's own error, or a bug: as it is
            raise StepError(name, why(exc)) from exc
        learned = result if isinstance(result, dict) else {}
        self.ran.append((name, {**data, **learned}))
        self.pending[name] = learned
        undo = self.table.get(name)
        if undo is not None and undo.exact:
            self.hooks.append(name)
        else:
            test_hook(name)
        return learned

    def finish(self, **changes: Any) -> Lease:
        """Mark the steps run done and set lease fields (``params`` merged), in one write."""
        done, self.pending = self.pending, {}
        if os.environ.get(TEST_KILL_ENV) in self.hooks:  # the crash tests: killed with the step done, not more
            self._write(done=done)
            done = {}
        return self._write(done=done, **changes)
