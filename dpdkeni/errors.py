"""The one family of errors dpdkeni raises.

Every error carries a message a person can act on and the CLI exit status it maps to:
1 failed (and rolled back), 2 bad input, 3 refused by a guard (``force=True`` overrides).
"""
from __future__ import annotations

import errno
import functools
import os
import sys
from typing import Any, Callable, Dict, Optional, TypeVar

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


class Cancelled(Error):
    """A handoff in progress was given up: its NIC went, or its target died (the daemon's unplug, container death
    and reclaim win over it); what it did is undone. ``why`` says which."""

    def __init__(self, why: str) -> None:
        super().__init__(f"cancelled: {why}")
        self.why = why


class TargetCommandTimeout(StepError):
    """A policy rule's ``target_command`` ran past its timeout (killed; the NIC is not retried)."""


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


class HostError(Error):
    """A system call, a netlink request or a process lookup on the host failed (exit 1): the general system
    error every OSError, pyroute2 ``NetlinkError`` and ``psutil.Error`` is mapped to at the library's boundary."""


SysfsError = HostError  # the older name: it used to label every system error, sysfs or not


class LedgerError(Error):
    """The ledger file is unreadable or cannot be written."""


class StateDirError(InputError):
    """The state dir (or a directory in it) is not safe to use: a symlink, not a directory, someone else's, or
    writable by group or others."""


class PolicyError(InputError):
    """The policy file is invalid; the message starts with ``file:line:``."""


class WaitTimeout(Error):
    """:func:`wait_for_nic` gave up: the NIC did not appear in time (exit status 1)."""


class QMPError(Error):
    """QEMU answered a command with an error, or the monitor went away."""


class AgentError(Error):
    """The guest agent did not answer, or answered with an error."""


class CniError(Error):
    """An error the CNI plugin reports as the spec's error JSON (``code``, ``msg``, ``details``) and exit 1;
    ``code`` is the CNI error code (see :mod:`dpdkeni.cnispec`)."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, version: Optional[str] = None) -> Dict[str, Any]:
        """The error document, in the version the runtime asked for (the latest one when unknown)."""
        from .cnispec import LATEST, SUPPORTED_VERSIONS
        version = version or LATEST
        doc: Dict[str, Any] = {"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST,
                               "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


_ERRNO_HINTS = {
    errno.EACCES: "run as root",
    errno.EPERM: "run as root (CAP_SYS_ADMIN / CAP_NET_ADMIN needed)",
    errno.ENODEV: "the device or driver is not there: is the module loaded?",
    errno.EBUSY: "the device is in use",
    errno.EINVAL: "the kernel rejected the value",
}
_NETLINK_HINTS = {
    errno.ENODEV: "the link is gone: it was deleted or unplugged meanwhile",
    errno.ENOENT: "the link or address is gone",
    errno.EPERM: "run as root (CAP_NET_ADMIN needed)",
    errno.EBUSY: "the device is in use",
    errno.EEXIST: "it exists already",
}


def os_error_message(exc: OSError, what: str) -> Error:
    """Turn an OSError into a dpdkeni Error that names ``what`` was being done."""
    text = f"{what}: {exc.strerror or exc}"
    if isinstance(exc, FileNotFoundError):
        return NotFoundError(text)
    return HostError(text, _ERRNO_HINTS.get(exc.errno or 0))


def _netlink_error_class() -> Optional[type]:
    # pyroute2 loaded means it may have raised; not loaded means it cannot have (and stays unimported)
    module = sys.modules.get("pyroute2.netlink.exceptions")
    return getattr(module, "NetlinkError", None)


def _psutil_error_class() -> Optional[type]:
    module = sys.modules.get("psutil")
    return getattr(module, "Error", None)


def as_error(exc: BaseException, what: str = "") -> Optional[Error]:
    """The dpdkeni Error for a system error (OSError, pyroute2's NetlinkError, psutil.Error), ``exc`` itself
    when it is one already, None for anything else (a bug: let it show)."""
    if isinstance(exc, Error):
        return exc
    prefix = f"{what}: " if what else ""
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in what else ""
        # exit 1, as the CLI's last resort gave: a file that vanished mid-operation is a failure, not bad input
        return HostError(f"{prefix}{exc.strerror or exc}{where}", _ERRNO_HINTS.get(exc.errno or 0))
    netlink = _netlink_error_class()
    if netlink is not None and isinstance(exc, netlink):
        code = getattr(exc, "code", 0) or 0
        text = os.strerror(code) if code > 0 else str(exc)
        return HostError(f"{prefix}netlink: {text} (errno {code})", _NETLINK_HINTS.get(code))
    psutil_error = _psutil_error_class()
    if psutil_error is not None and isinstance(exc, psutil_error):
        hint = "run as root" if type(exc).__name__ == "AccessDenied" else None
        return HostError(f"{prefix}process lookup: {exc}", hint)
    return None


def _what(fn: Callable, args: tuple) -> str:
    """``attach veth1``: the public call and its first argument, to name what failed."""
    first = args[0] if args else None
    name = getattr(first, "name", first) if first is not None else None
    return f"{fn.__name__} {name}" if isinstance(name, (str, int)) and not isinstance(name, bool) else fn.__name__


def _wrap(fn: F, what: Callable[[tuple], str]) -> F:
    @functools.wraps(fn)
    def inner(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Error:
            raise
        except Exception as exc:
            mapped = as_error(exc, what(args))
            if mapped is None:
                raise
            raise mapped from exc

    return inner  # type: ignore[return-value]


def boundary(fn: F) -> F:
    """Decorator for the library's public functions: a system error raised inside (OSError, NetlinkError,
    psutil.Error) leaves as a dpdkeni :class:`Error` with its exit code, naming the call; others pass as they are."""
    return _wrap(fn, lambda args: _what(fn, args))


def wrap_os_errors(what: str) -> Callable[[F], F]:
    """Decorator: map a system error raised inside the function to a dpdkeni Error naming ``what``."""
    return lambda fn: _wrap(fn, lambda args: what)
