"""Device-cgroup access for a container: allow and revoke char devices (``/dev/vfio/vfio``, ``/dev/vfio/<group>``)
with ``rw`` (never ``m``: the container must not make nodes), and make the nodes inside its mount namespace.

cgroup v1: ``devices.allow`` / ``devices.deny``, touching only what was not already allowed.

cgroup v2 has no files for this: access is decided by ``BPF_PROG_TYPE_CGROUP_DEVICE`` programs. dpdkeni keeps the
runtime's program and adds to it: it reads the attached program's instructions (``BPF_OBJ_GET_INFO_BY_FD``),
prepends allow checks for our devices (a block that starts with a marker, so it can be found and edited again),
loads the result and swaps it in atomically (``BPF_F_REPLACE``, or a plain re-attach for a single non-multi
program). Everything else the old program decided is decided the same way, since its code runs unchanged for every
other access. A program that uses maps or calls cannot be re-loaded safely from its translated form: that is
refused with the reason. With no program attached, access is not restricted by cgroup v2 at all: that is said,
and nothing is changed.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import struct
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import bpfsys, nsexec
from .bpfsys import (
    BPF_OBJ_GET_INFO_BY_FD,
    BPF_PROG_ATTACH,
    BPF_PROG_DETACH,
    BPF_PROG_GET_FD_BY_ID,
    BPF_PROG_QUERY,
    BPF_PROG_TYPE_CGROUP_DEVICE,
    insn,
)
from .bpfsys import addr as _addr
from .bpfsys import call as _bpf
from .errors import Error, boundary, os_error_message

log = logging.getLogger(__name__)

# --- rules -----------------------------------------------------------------------------------------------------

_ACCESS = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_*; cgroup v1 uses the letters


@dataclass(frozen=True)
class Rule:
    """Access to one device: ``kind`` ``c`` or ``b``, ``major``/``minor``, ``access`` a subset of ``rwm``."""

    kind: str
    major: int
    minor: int
    access: str = "rw"

    def v1(self) -> str:
        """The cgroup v1 line, e.g. ``c 10:196 rw``."""
        return f"{self.kind} {self.major}:{self.minor} {self.access}"

    @property
    def mask(self) -> int:
        """The BPF access bits."""
        return sum(_ACCESS[c] for c in self.access)

    @property
    def bpf_type(self) -> int:
        """BPF_DEVCG_DEV_BLOCK (1) or BPF_DEVCG_DEV_CHAR (2)."""
        return 2 if self.kind == "c" else 1


def rule_for(path: str, access: str = "rw") -> Rule:
    """The rule for a device node on this host (major/minor from ``stat``)."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise os_error_message(exc, f"reading device node {path}") from exc
    if not (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)):
        raise Error(f"{path} is not a device node")
    return Rule("c" if stat.S_ISCHR(st.st_mode) else "b", os.major(st.st_rdev), os.minor(st.st_rdev), access)


# --- finding a process's cgroups ---------------------------------------------------------------------------------

def _mountpoint(fstype: str, option: Optional[str] = None) -> Optional[str]:
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, rfields = left.split(), right.split()
            if rfields and rfields[0] == fstype and (option is None or option in rfields[-1].split(",")):
                return fields[4]
    return None


def cgroup_dirs(pid: int) -> Dict[str, str]:
    """The process's device cgroups: ``{"v1": dir}`` for the v1 devices controller, ``{"v2": dir}`` for the
    unified hierarchy (either or both, as this host has them)."""
    out = {}
    with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for hid, controllers, path in lines:
        if "devices" in controllers.split(","):
            mnt = _mountpoint("cgroup", "devices")
            if mnt:
                out["v1"] = os.path.join(mnt, path.lstrip("/"))
        elif hid == "0":
            mnt = _mountpoint("cgroup2")
            if mnt:
                out["v2"] = os.path.join(mnt, path.lstrip("/"))
    return out


# --- cgroup v1 ----------------------------------------------------------------------------------------------------

def _v1_covers(lines: List[str], rule: Rule) -> bool:
    for line in lines:
        kind, nums, acc = line.split()
        major, minor = nums.split(":")
        if kind in ("a", rule.kind) and major in ("*", str(rule.major)) and minor in ("*", str(rule.minor)) \
                and set(rule.access) <= set(acc):
            return True
    return False


def missing_v1(cgroup: str, rules: Sequence[Rule]) -> List[str]:
    """The v1 lines of ``rules`` that the cgroup does not allow yet (what :func:`allow_v1` would add)."""
    try:
        with open(os.path.join(cgroup, "devices.list"), encoding="ascii") as f:
            present = [line.strip() for line in f if line.strip()]
    except OSError as exc:
        raise os_error_message(exc, f"reading {cgroup}/devices.list") from exc
    return list(dict.fromkeys(rule.v1() for rule in rules if not _v1_covers(present, rule)))


def write_v1(cgroup: str, lines: Sequence[str]) -> List[str]:
    """Write ``lines`` to the cgroup's ``devices.allow``; returns them."""
    try:
        for line in lines:
            with open(os.path.join(cgroup, "devices.allow"), "w", encoding="ascii") as f:
                f.write(line)
        return list(lines)
    except OSError as exc:
        raise os_error_message(exc, f"allowing devices in {cgroup}") from exc


def allow_v1(cgroup: str, rules: Sequence[Rule]) -> List[str]:
    """Allow ``rules`` in a v1 devices cgroup; returns the lines it added (those not already allowed)."""
    return write_v1(cgroup, missing_v1(cgroup, rules))


def revoke_v1(cgroup: str, added: Sequence[str]) -> None:
    """Deny again what :func:`allow_v1` added (nothing else). A cgroup that is gone has nothing to revoke."""
    for line in added:
        try:
            with open(os.path.join(cgroup, "devices.deny"), "w", encoding="ascii") as f:
                f.write(line)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise os_error_message(exc, f"denying {line} in {cgroup}") from exc


# --- bpf(2) -------------------------------------------------------------------------------------------------------

BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_OVERRIDE, BPF_F_ALLOW_MULTI, BPF_F_REPLACE = 1, 2, 4
BPF_F_QUERY_EFFECTIVE = 1


def query(cgroup_fd: int, effective: bool = False) -> Tuple[int, List[int]]:
    """(attach flags, program ids) of the device programs on a cgroup (``effective``: ancestors' included)."""
    ids = (ctypes.c_uint32 * 64)()
    attr = struct.pack("<IIIIQI", cgroup_fd, BPF_CGROUP_DEVICE, BPF_F_QUERY_EFFECTIVE if effective else 0, 0,
                       _addr(ids), 64)
    _, out = _bpf(BPF_PROG_QUERY, attr, "query")
    flags, count = struct.unpack_from("<I", out, 12)[0], struct.unpack_from("<I", out, 24)[0]
    return flags, list(ids[:count])


def prog_fd(prog_id: int) -> int:
    """An fd on a loaded program by id (the caller closes it)."""
    return _bpf(BPF_PROG_GET_FD_BY_ID, struct.pack("<III", prog_id, 0, 0), "get program")[0]


@dataclass
class ProgInfo:
    """What the kernel tells about a loaded program: type, map count, translated instructions."""

    type: int
    nr_map_ids: int
    insns: bytes


def prog_info(fd: int) -> ProgInfo:
    """``BPF_OBJ_GET_INFO_BY_FD``: first the sizes, then the translated instructions."""
    info = ctypes.create_string_buffer(256)
    _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, 256, _addr(info)), "program info")
    ptype, xlen, nmaps = (struct.unpack_from("<I", info.raw, off)[0] for off in (0, 20, 52))
    insns = ctypes.create_string_buffer(max(xlen, 8))
    info = ctypes.create_string_buffer(256)
    struct.pack_into("<I", info, 20, xlen)
    struct.pack_into("<Q", info, 32, _addr(insns))
    _bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack("<IIQ", fd, 256, _addr(info)), "program instructions")
    return ProgInfo(ptype, nmaps, insns.raw[:xlen])


def load(insns: bytes, name: str = "dpdkeni_dev") -> int:
    """Load a cgroup device program; returns its fd. The verifier's log is in the error when it refuses."""
    return bpfsys.load(BPF_PROG_TYPE_CGROUP_DEVICE, insns, name, BPF_CGROUP_DEVICE)


def attach(cgroup_fd: int, fd: int, flags: int, replace_fd: int = 0) -> None:
    """``BPF_PROG_ATTACH`` of a device program to a cgroup."""
    _bpf(BPF_PROG_ATTACH, struct.pack("<IIIII", cgroup_fd, fd, BPF_CGROUP_DEVICE, flags, replace_fd), "attach")


def detach(cgroup_fd: int, fd: int) -> None:
    """``BPF_PROG_DETACH`` of a device program from a cgroup."""
    _bpf(BPF_PROG_DETACH, struct.pack("<III", cgroup_fd, fd, BPF_CGROUP_DEVICE), "detach")


# --- instructions ----------------------------------------------------------------------------------------------

MARKER = 0x64706b65  # "dpke": the first instruction of our block, a no-op (r0 is set again before any exit)


def _unpack(insns: bytes) -> List[Tuple[int, int, int, int, int]]:
    out = []
    for i in range(0, len(insns), 8):
        code, regs, off, imm = struct.unpack_from("<BBhi", insns, i)
        out.append((code, regs & 0xF, regs >> 4, off, imm))
    return out


_MOV_K, _MOV_X, _AND_K, _RSH_K, _LDXW, _JNE_K, _EXIT = 0xB7, 0xBF, 0x57, 0x77, 0x61, 0x55, 0x95
_HEADER = 8      # marker, count, three ctx loads, the type/access split
_PER_RULE = 8


def rule_checks(rules: Sequence[Rule]) -> bytes:
    """Load the context (r2 access, r3 type, r4 major, r5 minor), then for each rule: all match -> return 1."""
    code = [insn(_LDXW, 2, 1, 0), insn(_MOV_X, 3, 2), insn(_AND_K, 3, imm=0xFFFF), insn(_RSH_K, 2, imm=16),
            insn(_LDXW, 4, 1, 4), insn(_LDXW, 5, 1, 8)]
    for r in rules:
        code += [insn(_JNE_K, 3, off=7, imm=r.bpf_type), insn(_JNE_K, 4, off=6, imm=r.major),
                 insn(_JNE_K, 5, off=5, imm=r.minor), insn(_MOV_X, 6, 2), insn(_AND_K, 6, imm=~r.mask & 0xFFFF),
                 insn(_JNE_K, 6, off=2, imm=0), insn(_MOV_K, 0, imm=1), insn(_EXIT)]
    return b"".join(code)


def our_block(rules: Sequence[Rule]) -> bytes:
    """Our marked allow block, to be put in front of the runtime's program."""
    return insn(_MOV_K, 0, imm=MARKER) + insn(_MOV_K, 0, imm=len(rules)) + rule_checks(rules)


def split_program(insns: bytes) -> Tuple[List[Rule], bytes]:
    """(our rules, the runtime's original program) from a program that may start with our block."""
    ins = _unpack(insns)
    if len(ins) < 2 or ins[0][0] != _MOV_K or ins[0][4] != MARKER:
        return [], insns
    count = ins[1][4]
    rules = []
    for k in range(count):
        b = ins[_HEADER + k * _PER_RULE:]
        access = "".join(c for c in "rwm" if _ACCESS[c] & (~b[4][4] & 0xFFFF))
        rules.append(Rule("c" if b[0][4] == 2 else "b", b[1][4], b[2][4], access))
    return rules, insns[(_HEADER + count * _PER_RULE) * 8:]


def check_reusable(info: ProgInfo) -> None:
    """Refuse a program whose translated form cannot be loaded again as it is (maps, calls, hardening)."""
    if info.type != BPF_PROG_TYPE_CGROUP_DEVICE:
        raise Error(f"the attached program is of type {info.type}, not a cgroup device program")
    if info.nr_map_ids:
        raise Error(f"the runtime's device program uses {info.nr_map_ids} BPF map(s); its translated code "
                    "cannot be re-loaded safely", "allow the devices in the runtime's own config instead")
    for code, dst, src, _, _ in _unpack(info.insns):
        if code == 0x85:
            raise Error("the runtime's device program calls helpers or subprograms; its translated code cannot "
                        "be re-loaded safely", "allow the devices in the runtime's own config instead")
        if code == 0x18 or dst > 10 or src > 10:
            raise Error("the runtime's device program uses 64-bit immediates or constant blinding "
                        "(bpf_jit_harden); its translated code cannot be re-loaded safely",
                        "allow the devices in the runtime's own config instead")


# --- cgroup v2 ----------------------------------------------------------------------------------------------------

def _v2_current(cgroup: str, cfd: int) -> Tuple[int, int, ProgInfo]:
    """(attach flags, fd, info) of the one program attached to this cgroup; refuses other shapes."""
    flags, ids = query(cfd)
    _, effective = query(cfd, effective=True)
    if len(ids) > 1:
        raise Error(f"{cgroup} has {len(ids)} device programs attached; dpdkeni edits only a single one")
    if set(effective) - set(ids):
        raise Error(f"a device program on an ancestor of {cgroup} also decides access; dpdkeni edits only the "
                    "container's own program", "allow the devices where that program is managed")
    fd = prog_fd(ids[0])
    info = prog_info(fd)
    check_reusable(info)
    return flags, fd, info


def _swap(cfd: int, flags: int, old_fd: int, insns: bytes) -> None:
    new_fd = load(insns)
    try:
        if flags & BPF_F_ALLOW_MULTI:
            attach(cfd, new_fd, BPF_F_ALLOW_MULTI | BPF_F_REPLACE, old_fd)
        else:  # a single non-multi program is replaced by attaching another with the same flags
            attach(cfd, new_fd, flags)
    finally:
        os.close(new_fd)


def _open_cgroup(cgroup: str) -> int:
    try:
        return os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error_message(exc, f"opening cgroup {cgroup}") from exc


def allow_v2(cgroup: str, rules: Sequence[Rule]) -> str:
    """Add ``rules`` to the device program of a v2 cgroup; returns ``replaced`` or ``unrestricted`` (no program
    is attached, so nothing restricts device access there and nothing is changed)."""
    cfd = _open_cgroup(cgroup)
    try:
        if not query(cfd, effective=True)[1]:
            log.warning("no device program applies to %s: device access is not restricted by cgroup v2 there",
                        cgroup)
            return "unrestricted"
        flags, fd, info = _v2_current(cgroup, cfd)
        try:
            ours, base = split_program(info.insns)
            merged = list(dict.fromkeys([*ours, *rules]))
            _swap(cfd, flags, fd, our_block(merged) + base)
        finally:
            os.close(fd)
        return "replaced"
    except OSError as exc:
        raise os_error_message(exc, f"adding device rules to the program of {cgroup}") from exc
    finally:
        os.close(cfd)


def revoke_v2(cgroup: str, rules: Sequence[Rule]) -> None:
    """Remove ``rules`` from our block in the cgroup's program (the runtime's part is left exactly as it was)."""
    if not os.path.isdir(cgroup):
        return
    cfd = _open_cgroup(cgroup)
    try:
        _, ids = query(cfd)
        if not ids:
            return
        flags, fd, info = _v2_current(cgroup, cfd)
        try:
            ours, base = split_program(info.insns)
            keep = [r for r in ours if r not in set(rules)]
            if ours:
                _swap(cfd, flags, fd, (our_block(keep) if keep else b"") + base)
        finally:
            os.close(fd)
    except OSError as exc:
        raise os_error_message(exc, f"removing device rules from the program of {cgroup}") from exc
    finally:
        os.close(cfd)


# --- per process -------------------------------------------------------------------------------------------------

def plan(pid: int, rules: Sequence[Rule]) -> Dict[str, Any]:
    """What :func:`apply` will change for the cgroups of ``pid``, known before anything is written: the v1
    lines not allowed yet, and the v2 cgroup. Recorded first, it lets an interrupted apply be undone exactly."""
    dirs = cgroup_dirs(pid)
    out: Dict[str, Any] = {"rules": [asdict(r) for r in rules]}
    if "v1" in dirs:
        out["v1"] = {"cgroup": dirs["v1"], "added": missing_v1(dirs["v1"], rules)}
    if "v2" in dirs:
        out["v2"] = {"cgroup": dirs["v2"]}
    return out


def apply(planned: Dict[str, Any]) -> Dict[str, Any]:
    """Carry out a :func:`plan`; returns the record :func:`revoke` needs (v2 ``state``: ``replaced`` or
    ``unrestricted``). A v2 failure takes the v1 lines back."""
    record = {**planned}
    rules = [Rule(**r) for r in planned["rules"]]
    if "v1" in planned:
        write_v1(planned["v1"]["cgroup"], planned["v1"]["added"])
    if "v2" in planned:
        try:
            state = allow_v2(planned["v2"]["cgroup"], rules)
        except Error:
            if "v1" in planned:
                revoke_v1(planned["v1"]["cgroup"], planned["v1"]["added"])
            raise
        record["v2"] = {**planned["v2"], "state": state}
    return record


@boundary
def allow(pid: int, rules: Sequence[Rule]) -> Dict[str, Any]:
    """Allow ``rules`` for the cgroups of ``pid`` (v1 devices controller and/or v2 device program); returns the
    record :func:`revoke` needs."""
    return apply(plan(pid, rules))


@boundary
def revoke(record: Dict[str, Any], keep: Sequence[Rule] = ()) -> List[str]:
    """Undo :func:`allow` from its record (the process may be gone; its cgroups may be too), except ``keep``:
    rules another NIC of the same container still needs. Returns the v1 lines kept (still allowed because of
    ``keep``; whoever keeps them denies them later)."""
    kept = set(keep)
    rules = [r for r in (Rule(**x) for x in record.get("rules", [])) if r not in kept]
    v2 = record.get("v2")
    if isinstance(v2, dict) and v2.get("state") == "replaced":
        revoke_v2(v2["cgroup"], rules)
    v1 = record.get("v1")
    if not isinstance(v1, dict):
        return []
    kept_lines = {r.v1() for r in kept}
    revoke_v1(v1["cgroup"], [line for line in v1.get("added", []) if line not in kept_lines])
    return [line for line in v1.get("added", []) if line in kept_lines]


# --- device nodes in the container --------------------------------------------------------------------------------

def container_path(host_path: str) -> str:
    """Where a host vfio node appears in the container: ``/dev/vfio/noiommu-N`` becomes ``/dev/vfio/N``."""
    head, name = os.path.split(host_path)
    return os.path.join(head, name[len("noiommu-"):]) if name.startswith("noiommu-") else host_path


def _mknod_here(nodes: List[Tuple[str, str, int, int]]) -> List[str]:
    made = []
    for path, kind, major, minor in nodes:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        mode = (stat.S_IFCHR if kind == "c" else stat.S_IFBLK) | 0o666
        try:
            os.mknod(path, mode, os.makedev(major, minor))
        except FileExistsError:
            st = os.stat(path)
            if os.major(st.st_rdev) != major or os.minor(st.st_rdev) != minor:
                raise
            continue
        os.chmod(path, 0o666)
        made.append(path)
    return made


def _unlink_here(paths: List[str]) -> List[str]:
    gone = []
    for path in paths:
        try:
            os.unlink(path)
            gone.append(path)
        except FileNotFoundError:
            pass
    return gone


@boundary
def make_nodes(pid: int, nodes: Sequence[Tuple[str, Rule]]) -> List[str]:
    """Make device nodes ``(container path, rule)`` inside the mount namespace of ``pid``; returns the paths it
    made (nodes already there with the same numbers are left alone and not returned)."""
    spec = [(path, r.kind, r.major, r.minor) for path, r in nodes]
    try:
        return nsexec.in_mount_ns(pid, _mknod_here, spec)
    except OSError as exc:
        raise os_error_message(exc, f"making device nodes in the container of pid {pid}") from exc


@boundary
def remove_nodes(pid: int, paths: Sequence[str]) -> None:
    """Remove nodes :func:`make_nodes` made (a container that is gone took them with it)."""
    try:
        nsexec.in_mount_ns(pid, _unlink_here, list(paths))
    except (OSError, Error) as exc:
        if getattr(exc, "errno", None) not in (errno.ENOENT, errno.ESRCH, None):
            raise
        log.info("device nodes of pid %s not removed: %s", pid, exc)
