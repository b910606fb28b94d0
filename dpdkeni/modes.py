"""The handoff modes, by name: each one object with ``plan``, ``attach``, ``release`` and ``recover``, so
:mod:`dpdkeni.handoff` dispatches through :func:`get` and never asks which mode it has.

A mode plans the steps an attach records with its claim (:meth:`Mode.steps`), runs them on a
:class:`~dpdkeni.steps.Steps` (:meth:`Mode.attach`; handoff writes ``attached``), and undoes them through its
table of undos by step name (:attr:`Mode.undo`) on release and recovery.
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, List, Mapping, Optional

from .errors import InputError
from .ledger import Lease, Ledger, Step
from .netns import Target
from .steps import Steps, UndoTable

_MODULES = {"netdev": ".netdev", "dpdk": ".dpdkmode"}  # each module's MODE is the mode object


class Mode:
    """What every mode provides (the base does nothing on its own)."""

    name = ""
    undo: UndoTable = {}

    def params(self, req: Any, original: Dict[str, Any], leases: Mapping[str, Lease], target: Target,
               key: str) -> Dict[str, Any]:
        """The lease params of this mode for request ``req`` (beyond the common ones)."""
        return {}

    def plan(self, lease: Lease, nic: Any, target: Target, req: Any) -> Optional[List[str]]:
        """``--dry-run``: check what can be checked without changing anything; the plan as sentences (None: the
        mode has logged its own)."""
        raise NotImplementedError

    def steps(self, lease: Lease, nic: Any, target: Target, req: Any) -> List[Step]:
        """The steps recorded with the claim, before any runs, each with what its undo needs."""
        raise NotImplementedError

    def attach(self, steps: Steps, lease: Lease, nic: Any, target: Target, req: Any) -> Dict[str, Any]:
        """Run the steps; returns params for the attached lease."""
        raise NotImplementedError

    def release(self, lease: Lease, ledger: Ledger, force: bool) -> str:
        """Undo every recorded step, newest first; returns the outcome (``returned``, ...)."""
        raise NotImplementedError

    def recover(self, lease: Lease, ledger: Ledger) -> Dict[str, Any]:
        """Finish or undo what a crash left of ``lease``: {key, action, detail}."""
        raise NotImplementedError

    def reclaim(self, lease: Lease, ledger: Ledger) -> Optional[Dict[str, Any]]:
        """The leased NIC is back in the host's namespace (its container died): end the lease (None: this mode's
        NICs never come back so)."""
        return None


def get(name: str) -> Mode:
    """The mode object named ``name`` (InputError for an unknown one, or one this build lacks)."""
    module = _MODULES.get(name)
    if module is None:
        raise InputError(f"bad mode {name!r}", f"one of {', '.join(_MODULES)}")
    try:
        return importlib.import_module(module, __package__).MODE
    except ImportError:
        raise InputError(f"{name} mode is not available in this build") from None


def target_of(lease: Lease) -> Target:
    """The target a lease names, as recorded (its netns path and id; alive or not)."""
    return Target(lease.target, lease.params.get("target_path", ""), lease.target_id or "", lease.params.get("pid"))
