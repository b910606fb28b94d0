"""The CNI protocol (spec 0.3.x to 1.1): the environment, the network configuration on stdin, versions, the error
JSON and the result document, and delegation to an IPAM plugin found in ``CNI_PATH``.

Only the protocol lives here; :mod:`dpdkeni.cni` decides what ADD, DEL and CHECK do to a NIC.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from .errors import CniError

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "VERSION", "GC")
IPAM_TIMEOUT = 60.0

# error codes of the spec ("Error" section); 100 and up are this plugin's own
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
HANDOFF_FAILED = 100
GUARD_REFUSED = 101
CHECK_FAILED = 102
IPAM_FAILED = 103

# which variables each command needs (spec: "Parameters"); CNI_NETNS is optional for DEL
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}


@dataclass(frozen=True)
class Env:
    """The ``CNI_*`` variables of one invocation."""

    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: Dict[str, str] = field(default_factory=dict)
    path: Tuple[str, ...] = ()


def _version_key(version: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def version_at_least(version: str, minimum: str) -> bool:
    """Whether ``version`` is ``minimum`` or later."""
    return _version_key(version) >= _version_key(minimum)


def parse_env(environ: Mapping[str, str]) -> Env:
    """The invocation's ``CNI_*`` variables; a missing or invalid one is error 4 naming it."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENV, f"unknown CNI_COMMAND {command!r}" if command else "CNI_COMMAND is not set",
                       f"expected one of {', '.join(COMMANDS)}")
    missing = [name for name in _REQUIRED_ENV[command] if not environ.get(name)]
    if missing:
        raise CniError(INVALID_ENV, f"{', '.join(missing)} not set for {command}",
                       "the runtime must set them (CNI spec, section 'Parameters')")
    return Env(command=command, container_id=environ.get("CNI_CONTAINERID", ""),
               netns=environ.get("CNI_NETNS", ""), ifname=environ.get("CNI_IFNAME", ""),
               args=parse_cni_args(environ.get("CNI_ARGS", "")),
               path=tuple(p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p))


def parse_cni_args(text: str) -> Dict[str, str]:
    """``CNI_ARGS`` (``K=V;K=V``) as a dict; a pair without '=' is error 4."""
    out: Dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENV, f"malformed CNI_ARGS pair {pair!r}", "expected KEY=VALUE;KEY=VALUE")
        out[key] = value
    return out


def parse_config(raw: bytes) -> Dict[str, Any]:
    """The network configuration from stdin: a JSON object with a supported ``cniVersion``."""
    try:
        conf = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniError(DECODING_FAILURE, "the network configuration on stdin is not valid JSON", str(exc)) from exc
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "the network configuration must be a JSON object",
                       f"got {type(conf).__name__}")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION, f"incompatible CNI version {version!r}",
                       f"this plugin supports {', '.join(SUPPORTED_VERSIONS)}")
    return conf


def version_info(version: str = LATEST) -> Dict[str, Any]:
    """The VERSION reply."""
    return {"cniVersion": version if version in SUPPORTED_VERSIONS else LATEST,
            "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class IpConfig:
    """One address of a result: CIDR ``address``, optional ``gateway``, index into ``interfaces``."""

    address: str
    gateway: Optional[str] = None
    interface: Optional[int] = None


@dataclass
class Result:
    """A CNI result, independent of the version it is written in."""

    interfaces: List[Dict[str, Any]] = field(default_factory=list)
    ips: List[IpConfig] = field(default_factory=list)
    routes: List[Dict[str, Any]] = field(default_factory=list)
    dns: Dict[str, Any] = field(default_factory=dict)

    def to_json(self, version: str) -> Dict[str, Any]:
        """The result document for ``version``: 0.3.x/0.4.0 carry ``version`` on each IP, 1.1 adds ``mtu``,
        ``pciID`` and ``socketPath`` on interfaces (dropped for older versions)."""
        new_fields = ("mtu", "pciID", "socketPath")
        ifaces = [{k: v for k, v in i.items() if v is not None and (version_at_least(version, "1.1.0")
                                                                   or k not in new_fields)}
                  for i in self.interfaces]
        ips = []
        for ip in self.ips:
            entry: Dict[str, Any] = {"address": ip.address}
            if not version_at_least(version, "1.0.0"):
                entry["version"] = str(ipaddress.ip_interface(ip.address).version)
            if ip.gateway:
                entry["gateway"] = ip.gateway
            if ip.interface is not None:
                entry["interface"] = ip.interface
            ips.append(entry)
        doc: Dict[str, Any] = {"cniVersion": version, "interfaces": ifaces, "ips": ips}
        if self.routes:
            doc["routes"] = self.routes
        doc["dns"] = self.dns
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Result":
        """Read a result of any supported version (an IPAM reply, a ``prevResult``)."""
        if not isinstance(doc, Mapping):
            raise CniError(DECODING_FAILURE, "a CNI result must be a JSON object", repr(doc)[:200])
        try:
            ips = [IpConfig(i["address"], i.get("gateway"), i.get("interface")) for i in doc.get("ips") or []]
            for ip in ips:
                ipaddress.ip_interface(ip.address)
        except (KeyError, TypeError, ValueError) as exc:
            raise CniError(DECODING_FAILURE, "malformed ips in a CNI result", str(exc)) from exc
        return cls(interfaces=[dict(i) for i in doc.get("interfaces") or []], ips=ips,
                   routes=[dict(r) for r in doc.get("routes") or []], dns=dict(doc.get("dns") or {}))


# --- IPAM delegation ---------------------------------------------------------------------------------------


def find_plugin(name: str, path: Tuple[str, ...]) -> str:
    """The executable ``name`` in the ``CNI_PATH`` directories; error 7 when absent."""
    if not name or "/" in name:
        raise CniError(INVALID_CONFIG, f"bad plugin type {name!r}", "a plain executable name in CNI_PATH")
    for directory in path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(INVALID_CONFIG, f"failed to find plugin {name!r} in CNI_PATH",
                   f"searched {os.pathsep.join(path) or '(empty CNI_PATH)'}")


def delegate(name: str, command: str, raw_config: bytes, env: Env,
             environ: Optional[Mapping[str, str]] = None) -> Optional[Dict[str, Any]]:
    """Run the plugin ``name`` from ``CNI_PATH`` with ``command``, the same configuration and environment
    (spec: "Delegated plugin protocol"); returns its parsed stdout (None when empty) or raises its error.

    An IPAM plugin that predates 1.1.0 (Debian 12's host-local stops at 1.0.0) gets the configuration as 1.0.0:
    1.1.0 added nothing to what IPAM returns, so its 1.0.0 result reads the same."""
    binary = find_plugin(name, env.path)
    as_1_0 = _as_1_0(raw_config)
    if as_1_0 is not None and binary in _BEFORE_1_1:
        return _run_delegate(binary, name, command, as_1_0, env, environ)
    try:
        return _run_delegate(binary, name, command, raw_config, env, environ)
    except CniError as exc:
        if exc.code != INCOMPATIBLE_VERSION or as_1_0 is None:
            raise
    log.info("%s does not know CNI 1.1.0: delegating %s as 1.0.0", name, command)
    _BEFORE_1_1.add(binary)  # a resident server asks it as 1.0.0 from now on: one run per call, not two
    return _run_delegate(binary, name, command, as_1_0, env, environ)


_BEFORE_1_1: Set[str] = set()  # plugins that answered a 1.1.0 configuration with "incompatible version"


def _as_1_0(raw_config: bytes) -> Optional[bytes]:
    """The configuration as cniVersion 1.0.0 when it is 1.1.0, else None."""
    if b'"1.1.0"' not in raw_config:
        return None
    conf = json.loads(raw_config)
    if not isinstance(conf, dict) or conf.get("cniVersion") != "1.1.0":
        return None
    return json.dumps({**conf, "cniVersion": "1.0.0"}).encode()


def _run_delegate(binary: str, name: str, command: str, raw_config: bytes, env: Env,
                  environ: Optional[Mapping[str, str]]) -> Optional[Dict[str, Any]]:
    child_env = dict(os.environ if environ is None else environ)
    child_env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": env.container_id, "CNI_NETNS": env.netns,
                      "CNI_IFNAME": env.ifname, "CNI_PATH": os.pathsep.join(env.path),
                      "CNI_ARGS": ";".join(f"{k}={v}" for k, v in env.args.items())})
    try:
        proc = subprocess.run([binary], input=raw_config, env=child_env, capture_output=True,
                              timeout=IPAM_TIMEOUT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise CniError(IPAM_FAILED, f"{name} {command} did not finish in {IPAM_TIMEOUT:.0f} s") from exc
    except OSError as exc:
        raise CniError(IPAM_FAILED, f"running {binary}: {exc.strerror}") from exc
    out = proc.stdout.strip()
    doc = None
    if out:
        try:
            doc = json.loads(out)
        except ValueError as exc:
            raise CniError(IPAM_FAILED, f"{name} {command} printed something that is not JSON",
                           out[:300].decode("utf-8", "replace")) from exc
    if proc.returncode != 0:
        if isinstance(doc, dict) and "code" in doc:
            raise CniError(int(doc["code"]), f"{name}: {doc.get('msg', '')}", str(doc.get("details", "")))
        raise CniError(IPAM_FAILED, f"{name} {command} failed with exit status {proc.returncode}",
                       proc.stderr.decode("utf-8", "replace").strip()[-300:])
    return doc
