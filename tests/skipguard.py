"""No silent skips: a pytest plugin (its hooks are imported by tests/conftest.py) that fails the run when a test
was skipped without an entry in tests/skip-allowlist.toml, or with one whose ``must_run_when`` holds on this host.

An entry::

    [[skip]]
    test = "tests/test_x.py::test_y*"     # fnmatch pattern on the node id (a module skipped at collection
                                          # is its path, "tests/test_x.py")
    reason = "..."                        # why the test may not run
    skip_reason = "needs root*"           # optional: fnmatch pattern the skip's own message must match
    must_run_when = "fact:root and command:dnsmasq"

``must_run_when`` is terms joined by ``and``: ``fact:NAME`` (tests/hostfacts.py FACTS), ``exists:PATH``,
``command:NAME`` (on PATH or in sbin). Where it holds, the skip is a failure.
"""
from __future__ import annotations

import fnmatch
import os
import tomllib
from typing import Dict, List, Optional, Tuple

import hostfacts

ALLOWLIST = os.path.join(os.path.dirname(__file__), "skip-allowlist.toml")
_skipped: List[Tuple[str, str]] = []  # (node id, skip message)


def load(path: str = ALLOWLIST) -> List[Dict[str, str]]:
    """The allowlist's entries; each has test, reason and must_run_when (checked here: a typo is an error)."""
    with open(path, "rb") as f:
        entries = tomllib.load(f).get("skip", [])
    for i, e in enumerate(entries, 1):
        missing = {"test", "reason", "must_run_when"} - set(e)
        if missing:
            raise ValueError(f"{path}: entry {i}: missing {sorted(missing)}")
        holds(e["must_run_when"])  # unknown terms fail now, not when the test skips
    return entries


def holds(condition: str) -> bool:
    """Whether ``must_run_when`` is true on this host."""
    ok = True
    for term in condition.split(" and "):
        kind, _, arg = term.strip().partition(":")
        if kind == "fact":
            if arg not in hostfacts.FACTS:
                raise ValueError(f"unknown fact {arg!r} in {condition!r}")
            ok = ok and bool(hostfacts.FACTS[arg]())
        elif kind == "exists":
            ok = ok and os.path.exists(arg)
        elif kind == "command":
            ok = ok and hostfacts.command(arg) is not None
        else:
            raise ValueError(f"unknown term {term!r} in {condition!r}")
    return ok


def _message(longrepr) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        msg = longrepr[2]
        return msg[len("Skipped: "):] if msg.startswith("Skipped: ") else msg
    return str(longrepr)


def verdict(nodeid: str, message: str, entries: List[Dict[str, str]]) -> Optional[str]:
    """None when the skip is allowed here, else why it is not."""
    matching = [e for e in entries if fnmatch.fnmatchcase(nodeid, e["test"])
                and fnmatch.fnmatchcase(message, e.get("skip_reason", "*"))]
    if not matching:
        return "not on the skip allowlist"
    for e in matching:
        if not holds(e["must_run_when"]):
            return None
    return f"must run here ({matching[0]['must_run_when']} holds)"


def pytest_runtest_logreport(report) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skipped.append((report.nodeid, _message(report.longrepr)))


def pytest_collectreport(report) -> None:
    if report.skipped:
        _skipped.append((report.nodeid, _message(report.longrepr)))


def _violations() -> List[str]:
    entries = load()
    out = []
    for nodeid, message in _skipped:
        why = verdict(nodeid, message, entries)
        if why:
            out.append(f"{nodeid}: skipped ({message}): {why}")
    return out


def describe(entries: List[Dict[str, str]]) -> List[str]:
    """One line per allowlist entry, saying whether it may skip on this host."""
    return [f"{e['test']}" + (f" [{e['skip_reason']}]" if "skip_reason" in e else "") +
            f": {e['reason']}; must run when {e['must_run_when']} "
            f"({'true here: may not skip' if holds(e['must_run_when']) else 'false here: may skip'})"
            for e in entries]


def pytest_terminal_summary(terminalreporter) -> None:
    """The allowlist (when anything skipped), each skip that is not allowed, and the counts."""
    tr = terminalreporter
    bad = _violations()
    if _skipped:
        tr.section("skip allowlist (tests/skip-allowlist.toml)")
        for line in describe(load()):
            tr.write_line(line)
    for line in bad:
        tr.write_line(f"SKIP NOT ALLOWED: {line}", red=True)
    tr.write_line(f"skip guard: {len(_skipped)} skipped, {len(bad)} not allowed (tests/skip-allowlist.toml)")


def pytest_sessionfinish(session, exitstatus) -> None:
    if _violations() and session.exitstatus == 0:
        session.exitstatus = 1


if __name__ == "__main__":  # .ci/run prints the allowlist before the run
    print("skip allowlist (tests/skip-allowlist.toml):")
    print("\n".join(describe(load())))
