"""The daemon's policy: which NIC goes where, as rules in a TOML (standard library ``tomllib``) or JSON file.

::

    [[rule]]
    name = "web"
    match = { model = "virtio-net", mac = "52:54:00:12:34:60" }   # also pci = "...", ifname = "eth*"
    mode = "netdev"                  # or "dpdk"
    target = "container:web1"        # pid:N, netns:NAME, container:ID, /path/to/netns
    # target_command = "/usr/local/bin/which-pod"   (prints the target; gets DPDKENI_PCI/MAC/IFNAME/MODEL)
    ifname = "eth1"
    addresses = ["198.18.0.2/24"]
    gateway = "198.18.0.1"
    mtu = 1500
    # hugepages = "256M"             (dpdk mode)

The first rule whose every ``match`` key holds takes the NIC. An error names the file and the line. The daemon
kills a ``target_command`` still running after 10 s.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import tomllib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from . import cancel, models, specs, validate
from .errors import InputError, PolicyError, StepError, TargetCommandTimeout
from .inventory import Nic
from .request import AttachRequest

MATCH_KEYS = ("model", "mac", "pci", "ifname")
RULE_KEYS = ("name", "match", "mode", "target", "target_command", "ifname", "addresses", "gateway", "mtu",
             "hugepages", "dhcp", "driver", "noiommu", "table")
MODES = models.MODES


@dataclass
class Rule:
    """One rule: ``match`` (model/mac/pci/ifname pattern) -> mode, target (or a command printing it), settings."""

    name: str
    match: Dict[str, List[str]]
    mode: str = "netdev"
    target: Optional[str] = None
    target_command: Optional[str] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    line: int = 0

    def matches(self, nic: Nic) -> bool:
        """Whether every match key holds for ``nic`` (a key with a list matches any of its values)."""
        values = {"model": nic.model, "mac": (nic.mac or "").lower(), "pci": nic.pci or "", "ifname": nic.ifname or ""}
        return all(any(fnmatch.fnmatchcase(values[k], p) if k == "ifname" else values[k] == p for p in pats)
                   for k, pats in self.match.items())

    def resolve_target(self, nic: Nic, timeout: float = 10.0) -> str:
        """The target spec: ``target``, or the first line the target command prints (a command running longer
        than ``timeout`` seconds is killed: :class:`TargetCommandTimeout`)."""
        if self.target:
            return self.target
        env = {**os.environ, "DPDKENI_PCI": nic.pci or "", "DPDKENI_MAC": nic.mac or "",
               "DPDKENI_IFNAME": nic.ifname or "", "DPDKENI_MODEL": nic.model}
        try:  # killed at once when the daemon gives the NIC's handoff up (dpdkeni.cancel)
            out = cancel.run(shlex.split(self.target_command or ""), timeout, env).strip().splitlines()
        except subprocess.TimeoutExpired:
            raise TargetCommandTimeout("target command", f"{self.target_command!r} did not end within "
                                                         f"{timeout:g} s (killed)") from None
        except (OSError, subprocess.SubprocessError) as exc:
            raise StepError("target command", f"{self.target_command!r} failed: {exc}") from exc
        if not out:
            raise StepError("target command", f"{self.target_command!r} printed no target")
        try:
            validate.target(out[0].strip())
        except InputError as exc:
            raise StepError("target command", f"{self.target_command!r} printed no target: {exc}") from None
        return out[0].strip()


@dataclass
class Policy:
    """The rules of one file, in order."""

    rules: List[Rule]
    path: str = ""

    def rule_for(self, nic: Nic) -> Optional[Rule]:
        """The first rule that matches ``nic``, or None."""
        return next((r for r in self.rules if r.matches(nic)), None)


# ----- locating lines (tomllib and json report positions only for syntax errors)
def _toml_rule_lines(text: str, table: str = "rule") -> List[int]:
    pat = re.compile(r"^\s*\[\[\s*%s\s*\]\]" % re.escape(table))
    return [i + 1 for i, line in enumerate(text.splitlines()) if pat.match(line)]


def _json_rule_lines(text: str) -> List[int]:
    """Line of each object in the top-level ``rule`` array (a small scanner over strings and brackets)."""
    lines, depth, line, in_str, esc = [], 0, 1, False, False
    for ch in text:
        if ch == "\n":
            line += 1
        if in_str:
            esc, in_str = (False, in_str) if esc else (ch == "\\", ch != '"')
            continue
        if ch == '"':
            in_str = True
        elif ch in "[{":
            depth += 1
            if ch == "{" and depth == 3:
                lines.append(line)
        elif ch in "]}":
            depth -= 1
    return lines


def table_lines(text: str, table: str, is_json: bool) -> List[int]:
    """The line of each ``[[table]]`` of a TOML file, or of each object in the top-level array of a JSON one
    (other config files with a policy's layout, the device plugin's pools, locate their errors with it)."""
    return _json_rule_lines(text) if is_json else _toml_rule_lines(text, table)


def key_line(text: str, start: int, end: Optional[int], key: str) -> int:
    """The line of ``key`` between lines ``start`` and ``end`` (1-based; ``start`` when not found)."""
    return _key_line(text, start, end, key)


def _key_line(text: str, start: int, end: Optional[int], key: str) -> int:
    pat = re.compile(r'(^\s*|[{,.]\s*)"?%s"?\s*[=:]' % re.escape(key))
    lines = text.splitlines()
    for i in range(start - 1, min(end or len(lines), len(lines))):
        if pat.search(lines[i]):
            return i + 1
    return start


# ----- validation
def _strings(value: Any, what: str) -> List[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise ValueError(f"{what} must be a string or a list of strings")
    return items


def _match(raw: Any) -> Dict[str, List[str]]:
    if not isinstance(raw, dict) or not raw:
        raise ValueError("match must be a table with at least one of " + ", ".join(MATCH_KEYS), "match")
    out = {}
    for key, value in raw.items():
        if key not in MATCH_KEYS:
            raise ValueError(f"unknown match key {key!r} (one of {', '.join(MATCH_KEYS)})", key)
        items = _strings(value, f"match.{key}")
        try:
            if key == "mac":
                items = [specs.normalize_mac(v) for v in items]
            elif key == "pci":
                items = [specs.normalize_pci(v) for v in items]
        except InputError as exc:
            raise ValueError(str(exc), key) from exc
        out[key] = items
    return out


SETTING_KEYS = ("ifname", "addresses", "gateway", "mtu", "table", "hugepages", "driver", "dhcp", "noiommu")


def _settings(raw: Dict[str, Any], mode: str) -> Dict[str, Any]:
    """A rule's attach settings, checked as an :class:`~dpdkeni.request.AttachRequest` (the same checks attach,
    ``--batch`` and the CNI plugin run); a bad value names its key, for the line."""
    out = {k: raw[k] for k in SETTING_KEYS if k in raw}
    if "addresses" in out:
        out["addresses"] = _strings(out["addresses"], "addresses")
    try:
        AttachRequest(mode=mode, **out)
    except InputError as exc:
        raise ValueError(str(exc), getattr(exc, "field", None)) from exc
    if "gateway" in out:
        out["gateway"] = str(validate.gateway(out["gateway"]))
    return out


def check_table(raw: Any, what: str, keys: Sequence[str]) -> None:
    """A ValueError (message, key) unless ``raw`` is a table of only ``keys`` (the pools file checks with it)."""
    if not isinstance(raw, dict):
        raise ValueError(f"a {what} must be a table")
    unknown = [k for k in raw if k not in keys]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(keys)})", unknown[0])


def _rule(raw: Any, index: int) -> Rule:
    check_table(raw, "rule", RULE_KEYS)
    mode = raw.get("mode", "netdev")
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} must be netdev or dpdk", "mode")
    target, command = raw.get("target"), raw.get("target_command")
    if (target is None) == (command is None):
        raise ValueError("give exactly one of target or target_command", "target")
    if target is not None:
        try:
            validate.target(target)
        except InputError as exc:
            raise ValueError(str(exc), "target") from exc
    if command is not None and (not isinstance(command, str) or not command.strip()):
        raise ValueError("target_command must be a command line", "target_command")
    return Rule(name=str(raw.get("name") or f"rule {index + 1}"), match=_match(raw.get("match")), mode=mode,
                target=target, target_command=command, settings=_settings(raw, mode))


def parse(text: str, path: str = "<policy>") -> Policy:
    """Parse and check a policy; a PolicyError names ``path`` and the line of the offending rule or key."""
    is_json = path.endswith(".json")
    data = load_syntax(text, path, is_json)
    raw_rules = data.get("rule") if isinstance(data, dict) else None
    if not isinstance(raw_rules, list) or not raw_rules:
        raise PolicyError(f"{path}:1: no rules: expected one or more [[rule]] tables (JSON: \"rule\": [...])")
    starts = (_json_rule_lines if is_json else _toml_rule_lines)(text)
    rules = []
    for i, raw in enumerate(raw_rules):
        start = starts[i] if i < len(starts) else 1
        try:
            rule = _rule(raw, i)
        except ValueError as exc:
            key = exc.args[1] if len(exc.args) > 1 else None
            end = starts[i + 1] if i + 1 < len(starts) else None
            line = _key_line(text, start, end, key) if key else start
            raise PolicyError(f"{path}:{line}: rule {i + 1}: {exc.args[0]}") from None
        rule.line = start
        rules.append(rule)
    return Policy(rules, path)


def load_syntax(text: str, path: str, is_json: bool) -> Any:
    """The document in ``text`` (JSON or TOML); a syntax error is a PolicyError ``path:line: ...``."""
    try:
        return json.loads(text) if is_json else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{path}:{exc.lineno}: {exc.msg}") from None
    except ValueError as exc:  # tomllib.TOMLDecodeError: "... (at line N, column M)"
        m = re.search(r"at line (\d+)", str(exc))
        raise PolicyError(f"{path}:{m.group(1) if m else 1}: {exc}") from None


def read_text(path: str, what: str = "policy") -> str:
    """A config file's text; unreadable or not UTF-8: a one-line PolicyError naming ``path``."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the {what}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text ({exc.reason})") from None


def load(path: str) -> Policy:
    """Read and parse a policy file (TOML, or JSON by the ``.json`` extension)."""
    return parse(read_text(path), path)


def attach_kwargs(rule: Rule) -> Dict[str, Any]:
    """The keyword arguments :func:`dpdkeni.handoff.attach` takes for this rule."""
    return {"mode": rule.mode, **rule.settings}


def describe(rules: Sequence[Rule]) -> List[str]:
    """One line per rule (for the daemon's start-up log)."""
    return [f"{r.name} (line {r.line}): {r.match} -> {r.mode} {r.target or '$(' + (r.target_command or '') + ')'}"
            for r in rules]
