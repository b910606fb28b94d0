"""The one family of errors dpdkeni raises.

Every error carries a message a person can act on and the CLI exit status it maps to:
1 failed (and rolled back), 2 bad input, 3 refused by a guard (``force=True`` overrides).
"""
from __future__ import annotations

import errno
import functools
from typing import Callable, Optional, TypeVar

F = TypeVar("F", bound=Callable)


class Error(Exception):
    """Base of every dpdkeni error; ``exit_code`` is the CLI status, ``hint`` says what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(Error):
    """The caller's input is wrong: a malformed spec, an unknown NIC, a target that does not exist."""

    exit_code = 2


class NotFoundError(InputError):
    """A NIC, target or file named by the caller does not exist."""


class GuardError(Error):
    """A safety guard refused the operation; ``force=True`` (``--force``) overrides it."""

    exit_code = 3


class StepError(Error):
    """A step of a multi-step operation failed; what came before it was undone."""

    def __init__(self, step: str, message: str, hint: Optional[str] = None) -> None:
        super().__init__(f"{step}: {message}", hint)
        self.step = step


class GuestFaultError(Error):
    """The lab guest's kernel reported that it wedged or died (soft lockup, RCU stall, panic, BUG, Oops).

    ``str()`` is one line (what happened, during what, the console line); ``excerpt`` holds the console lines
    around it. Every lab call in progress or made later on that guest raises it; a fresh guest is needed.
    """

    def __init__(self, kind: str, line: str, doing: str = "", excerpt: str = "") -> None:
        during = f" during {doing}" if doing else ""
        super().__init__(f"lab: the guest kernel wedged ({kind}){during}: {line}",
                         "the guest must be restarted; the console is kept in the lab cache as last-console.log")
        self.kind, self.line, self.doing, self.excerpt = kind, line, doing, excerpt


class SysfsError(Error):
    """A read or write under /sys (or the configured root) failed."""


_ERRNO_HINTS = {
    errno.EACCES: "run as root",
    errno.EPERM: "run as root (CAP_SYS_ADMIN / CAP_NET_ADMIN needed)",
    errno.ENODEV: "the device or driver is not there: is the module loaded?",
    errno.EBUSY: "the device is in use",
    errno.EINVAL: "the kernel rejected the value",
}


def os_error_message(exc: OSError, what: str) -> Error:
    """Turn an OSError into a dpdkeni Error that names ``what`` was being done."""
    text = f"{what}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(text)
    return SysfsError(text, _ERRNO_HINTS.get(exc.errno or 0))


def wrap_os_errors(what: str) -> Callable[[F], F]:
    """Decorator: map OSError raised inside the function to a dpdkeni Error at one boundary."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except OSError as exc:
                raise os_error_message(exc, what) from exc

        return inner  # type: ignore[return-value]

    return deco
