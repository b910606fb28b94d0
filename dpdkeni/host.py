"""The host context: where this call keeps its state, reads sysfs and finds its models file, resolved once.

A :class:`Host` is resolved from an environment (``DPDKENI_STATE_DIR``, ``DPDKENI_SYSFS_ROOT``,
``DPDKENI_MODELS``) and made current for a call with :func:`using`; everything that needs one of them
(:func:`dpdkeni.statedir.path`, hence every :class:`~dpdkeni.ledger.Ledger`, :class:`~dpdkeni.sysfs.Sysfs`'s
default root, the models file) asks :func:`current`, so the values cannot disagree within a call. The current
host lives in a :class:`contextvars.ContextVar`: per thread (the CNI server serves each call in a thread of its
own, with the host of the client's environment), and carried into the threads a call starts by :func:`carried`.
Without one, :func:`current` resolves the process's environment at that moment (the CLI, the daemon, tests that
set the variables). Standard library only.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional, TypeVar

STATE_DIR_ENV = "DPDKENI_STATE_DIR"
SYSFS_ROOT_ENV = "DPDKENI_SYSFS_ROOT"
MODELS_ENV = "DPDKENI_MODELS"
DEFAULT_STATE_DIR = "/run/dpdkeni"
DEFAULT_SYSFS_ROOT = "/"
DEFAULT_MODELS = "/etc/dpdkeni/models.toml"

T = TypeVar("T")


@dataclass(frozen=True)
class Host:
    """The state dir, sysfs root and models file of one call."""

    state_dir: str = DEFAULT_STATE_DIR
    sysfs_root: str = DEFAULT_SYSFS_ROOT
    models: str = DEFAULT_MODELS

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> "Host":
        """The host an environment names (default: this process's), each variable or its default."""
        env = os.environ if environ is None else environ
        return cls(env.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR, env.get(SYSFS_ROOT_ENV) or DEFAULT_SYSFS_ROOT,
                   env.get(MODELS_ENV) or DEFAULT_MODELS)


_CURRENT: contextvars.ContextVar[Optional[Host]] = contextvars.ContextVar("dpdkeni_host", default=None)


def current() -> Host:
    """The host of this call: the one :func:`using` set, else this process's environment now."""
    return _CURRENT.get() or Host.from_env()


@contextlib.contextmanager
def using(host: Host) -> Iterator[Host]:
    """Make ``host`` current for the block (in this thread, and in the threads started through
    :func:`carried`)."""
    token = _CURRENT.set(host)
    try:
        yield host
    finally:
        _CURRENT.reset(token)


def carried(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` to run in another thread with the caller's current host (a new thread starts without one)."""
    host = _CURRENT.get()
    if host is None:
        return fn

    def run(*args: Any, **kwargs: Any) -> T:
        with using(host):
            return fn(*args, **kwargs)
    return run
