"""Attachments whose pod went without a CNI DEL: the resident server (``dpdkeni cni serve``) brings their NICs home.

podman 4.3 skips DEL when the pod's netns file is gone ("retrieving network namespace ... no such file"), so its
pod leaves the NIC in the namespace that ADD pinned. An attachment is orphaned when its netns file no longer
names the pinned namespace and no process lives in that namespace: the pod is dead and no runtime will call DEL.
It is released (NIC home, lease ended, IPAM DEL with the configuration ADD recorded, pin and record removed) once
it has been seen orphaned in two passes a second apart: containerd, whose StopPodSandbox kills the sandbox then
calls DEL within milliseconds, always comes first.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Mapping, Set

from . import cni, statedir
from . import cnispec as spec
from .errors import Error

log = logging.getLogger(__name__)

EVERY = 1.0  # seconds between passes


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _inhabited(pin: str) -> bool:
    """Whether a process lives in the namespace pinned at ``pin``."""
    ino = os.stat(pin).st_ino
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == ino:
                    return True
            except OSError:
                continue
    return False


def orphaned(record: Mapping[str, Any]) -> bool:
    """Whether the pod of this netdev attachment is gone while its NIC sits in the pinned namespace (its own pin
    only: :func:`dpdkeni.cni.recorded_pin`; a symlink there is no pin)."""
    pin = cni.recorded_pin(record)
    if not pin or not os.path.lexists(pin) or os.path.islink(pin):
        return False
    if record.get("netns") and _same_file(record["netns"], pin):
        return False  # the runtime still holds the pod's netns file: it will call DEL
    return not _inhabited(pin)


def release_orphan(path: str, record: Mapping[str, Any]) -> None:
    """Release one orphaned attachment: the NIC home, its address back to IPAM, the pin and the record gone."""
    cni.release_nic(record)
    raw = (record.get("conf") or "").encode()
    ipam = (json.loads(raw).get("ipam") or {}).get("type") if raw else None
    if ipam:
        env = spec.Env("DEL", record.get("container", ""), "", record.get("cni_ifname", ""),
                       dict(record.get("args") or {}), tuple(record.get("cni_path") or ()))
        spec.delegate(ipam, "DEL", raw, env)
    cni.drop_record(path)


def sweep(suspects: Set[str]) -> List[str]:
    """One pass over the CNI records: release those orphaned now that were orphaned in the previous pass too
    (``suspects``, updated in place). Returns the records released."""
    directory = cni.records_dir()
    if not os.path.lexists(directory):
        return []
    statedir.check(statedir.path())  # StateDirError (logged by the server) for a symlinked or foreign dir
    statedir.check(directory)
    entries = sorted(os.listdir(directory))
    now: Dict[str, Dict[str, Any]] = {}
    for entry in entries:
        path = os.path.join(directory, entry)
        if entry.endswith(".json"):
            try:
                record = cni.load_record(path)
            except spec.CniError:
                continue
            if record is not None and orphaned(record):
                now[path] = record
    released = []
    for path, record in now.items():
        if path not in suspects:
            continue
        log.info("pod of %s gone without DEL: releasing %s", record.get("container"), record.get("nic"))
        try:
            release_orphan(path, record)
            released.append(path)
        except (OSError, ValueError, AttributeError, spec.CniError, Error) as exc:
            log.warning("releasing the orphaned %s failed: %s", record.get("nic"), exc)
    suspects.clear()
    suspects.update(p for p in now if p not in released)
    return released
