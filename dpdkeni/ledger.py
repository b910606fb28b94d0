"""The leases: which NIC is handed to which target, with everything needed to give it back.

One JSON file (``leases.json``) under the state dir (``DPDKENI_STATE_DIR``, default ``/run/dpdkeni``), changed only
inside :meth:`Ledger.transaction`, which holds an exclusive ``flock`` on ``leases.lock`` and writes the file
atomically through :func:`statedir.write_atomic` (a 0600 ``mkstemp`` temp file + rename: a reader or a process
killed mid-write sees the old file or the new one, never a part). No fsync: what the ledger describes (links in
namespaces, driver bindings, hugepage reservations, device rules) does not outlive a power loss either, and on a
state dir on disk each fsync cost ~2 ms of a CNI call. A step is recorded (``started``) before it runs
and marked ``done`` after, so ``recover`` knows exactly how far a crashed process got.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence

from . import statedir
from .errors import LedgerError, os_error_message

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = statedir.DEFAULT
LEASES_FILE = "leases.json"
LOCK_FILE = "leases.lock"
FORMAT_VERSION = 1


state_dir = statedir.path  # where the modules that keep state look it up


@dataclass
class Step:
    """One recorded step of an attach or release: ``state`` is ``planned`` (recorded with the plan, not started:
    nothing to undo), ``started``, ``done`` or (a step whose exact undo ran) ``undone``; ``undo`` holds what is
    needed to reverse it."""

    name: str
    state: str = "started"
    undo: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Lease:
    """A NIC handed to a target. ``key`` is the PCI address (or ``if:<name>`` for a virtual stand-in);
    ``original`` the NIC's state before attach; ``state`` is ``attaching``, ``attached`` or ``releasing``."""

    key: str
    mode: str
    target: str
    original: Dict[str, Any]
    state: str = "attaching"
    target_id: Optional[str] = None
    params: Dict[str, Any] = field(default_factory=dict)
    steps: List[Step] = field(default_factory=list)
    owner_pid: int = field(default_factory=os.getpid)
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)

    def step(self, name: str) -> Optional[Step]:
        """The recorded step of that name, or None."""
        return next((s for s in self.steps if s.name == name), None)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict (shallow: it shares the nested dicts; ``dataclasses.asdict`` deep-copies them,
        which made every ledger write O(leases) in deep copies)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["steps"] = [{"name": s.name, "state": s.state, "undo": s.undo} for s in self.steps]
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Lease":
        """The inverse of :meth:`to_dict`."""
        data = dict(data)
        data["steps"] = [Step(**s) for s in data.get("steps", [])]
        return cls(**data)


def _fresh(raw: Dict[str, Any]) -> Dict[str, Any]:
    """A deep copy of a lease's JSON dict (a lease handed out must not share dicts with the parse cache)."""
    return json.loads(json.dumps(raw))


class Leases(MutableMapping):
    """The leases of one transaction (or of a snapshot), by key: a lease is turned into a :class:`Lease` only when
    touched, and an untouched one is written back as it was read, so a step on one NIC does not cost a conversion
    of every lease (128 NICs made each write several milliseconds). The raw dicts may be shared with the parse
    cache of :class:`Ledger`: they are never changed in place (a touched lease is a deep copy)."""

    def __init__(self, raw: Dict[str, Dict[str, Any]]) -> None:
        self._raw = raw
        self._objs: Dict[str, Lease] = {}

    def __getitem__(self, key: str) -> Lease:
        if key not in self._objs:
            self._objs[key] = Lease.from_dict(_fresh(self._raw[key]))
        return self._objs[key]

    def __setitem__(self, key: str, value: Lease) -> None:
        self._objs[key] = value
        self._raw[key] = {}

    def __delitem__(self, key: str) -> None:
        del self._raw[key]
        self._objs.pop(key, None)

    def __contains__(self, key: object) -> bool:
        return key in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._raw))

    def __len__(self) -> int:
        return len(self._raw)

    def peek(self, key: str) -> Dict[str, Any]:
        """The lease as a JSON dict, without converting it (read only)."""
        return self._objs[key].to_dict() if key in self._objs else self._raw[key]

    def raw(self) -> Dict[str, Dict[str, Any]]:
        """JSON-ready dicts: the touched leases re-encoded, the others as read."""
        return {k: (self._objs[k].to_dict() if k in self._objs else v) for k, v in self._raw.items()}

    def encode(self, known: Optional["_Parsed"]) -> "_Parsed":
        """The ledger file's bytes for these leases, with each lease's JSON text and a deep copy of each touched
        lease (what the parse cache keeps). An untouched lease whose text ``known`` has is not encoded again."""
        texts: Dict[str, str] = {}
        settled: Dict[str, Dict[str, Any]] = {}
        for k in sorted(self._raw):
            if k in self._objs:
                texts[k] = json.dumps(self._objs[k].to_dict(), **_COMPACT)
                settled[k] = json.loads(texts[k])
                continue
            v = settled[k] = self._raw[k]
            hit = known is not None and known.raw.get(k) is v and k in known.texts
            texts[k] = known.texts[k] if hit else json.dumps(v, **_COMPACT)  # type: ignore[union-attr]
        body = '{"leases":{%s},"version":%d}' % (",".join(f"{json.dumps(k)}:{t}" for k, t in texts.items()),
                                                FORMAT_VERSION)
        return _Parsed(body.encode(), settled, texts)


def peeker(leases: Mapping[str, Lease]) -> Callable[[str], Dict[str, Any]]:
    """``peek(key)``: a lease as its JSON dict, without converting it when ``leases`` is a :class:`Leases`."""
    return leases.peek if isinstance(leases, Leases) else (lambda k: leases[k].to_dict())


# compact on purpose: with ``indent`` json falls back to its pure-Python encoder, ten times slower
_COMPACT: Dict[str, Any] = {"separators": (",", ":"), "sort_keys": True}


@dataclass
class _Parsed:
    """What the parse cache keeps of a ledger file: its bytes, its leases as parsed (never changed in place, see
    Leases) and, when this process wrote it, each lease's JSON text."""

    body: bytes
    raw: Dict[str, Dict[str, Any]]
    texts: Dict[str, str] = field(default_factory=dict)


# path -> the last ledger file this process read or wrote there: a read that finds the same bytes skips the JSON
# parse (a millisecond with 128 leases, three times per attach), a write encodes only the leases it touched.
# Compared by content, so a write by another process is always seen.
_PARSED: Dict[str, _Parsed] = {}


class Ledger:
    """The lease file under a state dir. Reads take a shared lock, changes an exclusive one."""

    def __init__(self, directory: Optional[str] = None) -> None:
        self.directory = directory or state_dir()

    @property
    def path(self) -> str:
        """The leases file."""
        return os.path.join(self.directory, LEASES_FILE)

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        try:
            statedir.ensure(self.directory)
            fd = statedir.open_file(os.path.join(self.directory, LOCK_FILE), os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise os_error_message(exc, f"opening the ledger in {self.directory}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def _load(self) -> "Leases":
        try:
            with statedir.opened(self.path, text=False) as f:
                body = f.read()
        except FileNotFoundError:
            return Leases({})
        except OSError as exc:
            raise LedgerError(f"ledger {self.path} is unreadable: {exc}",
                              "move it aside and run 'dpdkeni recover'") from exc
        hit = _PARSED.get(self.path)
        if hit is not None and hit.body == body:
            return Leases(dict(hit.raw))
        try:
            raw = json.loads(body).get("leases", {})
        except (ValueError, AttributeError) as exc:
            raise LedgerError(f"ledger {self.path} is unreadable: {exc}",
                              "move it aside and run 'dpdkeni recover'") from exc
        _PARSED[self.path] = _Parsed(body, raw)
        return Leases(dict(raw))

    def _store(self, leases: MutableMapping[str, Lease]) -> None:
        if not isinstance(leases, Leases):
            leases = Leases({k: _fresh(v.to_dict()) for k, v in leases.items()})
        parsed = leases.encode(_PARSED.get(self.path))
        try:
            statedir.write_atomic(self.path, parsed.body, fsync=False)
        except OSError as exc:
            _PARSED.pop(self.path, None)
            raise os_error_message(exc, f"writing the ledger {self.path}") from exc
        _PARSED[self.path] = parsed

    @contextlib.contextmanager
    def transaction(self) -> Iterator["Leases"]:
        """Yield the leases under an exclusive lock; changes are written when the block ends without error."""
        with self._locked(exclusive=True):
            leases = self._load()
            yield leases
            self._store(leases)

    def leases(self) -> "Leases":
        """A snapshot of all leases, by key (a mapping that converts a lease when it is looked at)."""
        statedir.ensure(self.directory)
        if not os.path.exists(self.path):
            return Leases({})
        with self._locked(exclusive=False):
            return self._load()

    def get(self, key: str) -> Optional[Lease]:
        """The lease for a key, or None."""
        statedir.ensure(self.directory)
        if not os.path.exists(self.path):
            return None
        with self._locked(exclusive=False):
            return self._load().get(key)

    def known_macs(self) -> Dict[str, str]:
        """PCI address -> MAC for leased NICs (a NIC bound to vfio has no netdev to read its MAC from)."""
        leases = self.leases()
        raw = {k: leases.peek(k) for k in leases}
        return {k: v["original"]["mac"] for k, v in raw.items() if (v.get("original") or {}).get("mac")}

    def update(self, key: str, **changes: Any) -> Lease:
        """Change fields of one lease in its own transaction; returns the updated lease."""
        with self.transaction() as leases:
            lease = leases[key]
            for name, value in changes.items():
                setattr(lease, name, value)
            lease.updated = time.time()
            return lease

    def begin_step(self, key: str, name: str, undo: Optional[Dict[str, Any]] = None) -> None:
        """Record that step ``name`` is about to run (``started``) with what its undo needs."""
        with self.transaction() as leases:
            lease = leases[key]
            lease.steps = [s for s in lease.steps if s.name != name] + [Step(name, "started", undo or {})]
            lease.updated = time.time()

    def end_step(self, key: str, name: str, **undo: Any) -> None:
        """Mark step ``name`` done, adding what was learned while it ran to its undo data."""
        with self.transaction() as leases:
            step = leases[key].step(name)
            if step is None:
                raise LedgerError(f"step {name!r} of {key} was never begun")
            step.state = "done"
            step.undo.update(undo)
            leases[key].updated = time.time()

    def advance(self, key: str, done: Optional[Dict[str, Dict[str, Any]]] = None,
                begin: Sequence[Step] = (), params: Optional[Dict[str, Any]] = None, plan: Sequence[Step] = (),
                notes: Optional[Dict[str, Dict[str, Any]]] = None, **changes: Any) -> Lease:
        """One transaction for a step boundary: mark the steps in ``done`` done (each adding what was learned to
        its undo data), record the steps ``begin`` as started (with their undo data; a step recorded already
        keeps its place, the order the steps are undone in), add the steps of ``plan`` not recorded yet as they
        are, replace the undo data of the steps in ``notes`` (their state kept: a planned step stays planned),
        merge ``params`` into the lease's params and set lease fields ``changes``. Saves the writes of separate
        :meth:`end_step`/:meth:`begin_step` calls on hot paths."""
        with self.transaction() as leases:
            lease = leases[key]
            for name, learned in (done or {}).items():
                step = lease.step(name)
                if step is None:
                    raise LedgerError(f"step {name!r} of {key} was never begun")
                step.state = "done"
                step.undo.update(learned or {})
            for new in [Step(s.name, "started", dict(s.undo)) for s in begin] + [
                    Step(s.name, s.state, dict(s.undo)) for s in plan if lease.step(s.name) is None]:
                at = next((i for i, s in enumerate(lease.steps) if s.name == new.name), None)
                if at is None:
                    lease.steps.append(new)
                else:
                    lease.steps[at] = new
            for name, data in (notes or {}).items():
                step = lease.step(name)
                if step is None:
                    lease.steps.append(Step(name, "planned", dict(data)))
                else:
                    step.undo = dict(data)
            lease.params.update(params or {})
            for name, value in changes.items():
                setattr(lease, name, value)
            lease.updated = time.time()
            return lease

    def remove(self, key: str) -> Optional[Lease]:
        """End a lease; returns it (None when there was none)."""
        with self.transaction() as leases:
            return leases.pop(key, None)
