"""The ``bpf(2)`` system call, without libbpf: the calls dpdkeni makes from Python (load a program, ask the kernel
about one, test-run one). The callers pack the ``union bpf_attr`` they need; this module makes the call and turns
a failure into an :class:`OSError` that says which call failed and, for a load, what the verifier said."""
from __future__ import annotations

import ctypes
import os
import struct
from typing import Tuple

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine, 321)
BPF_PROG_LOAD, BPF_PROG_TEST_RUN = 5, 10
BPF_PROG_ATTACH, BPF_PROG_DETACH = 8, 9
BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_QUERY = 13, 15, 16
BPF_PROG_TYPE_XDP, BPF_PROG_TYPE_CGROUP_DEVICE = 6, 15
BPF_F_TEST_XDP_LIVE_FRAMES = 2
_ATTR_SIZE = 128
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def call(cmd: int, attr: bytes, what: str) -> Tuple[int, bytes]:
    """``bpf(cmd, attr)``; returns the result and the attribute block as the kernel left it."""
    buf = ctypes.create_string_buffer(attr.ljust(_ATTR_SIZE, b"\0"), _ATTR_SIZE)
    ret = _libc.syscall(ctypes.c_long(_NR_BPF), ctypes.c_int(cmd), buf, ctypes.c_uint(_ATTR_SIZE))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf {what}: {os.strerror(err)}")
    return ret, buf.raw


def addr(buf: ctypes.Array) -> int:
    """The address of a ctypes buffer, for a pointer field of ``bpf_attr``."""
    return ctypes.addressof(buf)


def load(prog_type: int, insns: bytes, name: str, expected_attach_type: int = 0) -> int:
    """Load a program (raw ``struct bpf_insn`` bytes, GPL); returns its fd. When the verifier refuses it, the last
    lines of its log are in the error."""
    log_buf = ctypes.create_string_buffer(65536)
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII16sII", prog_type, len(insns) // 8, addr(code), addr(lic), 1, len(log_buf),
                       addr(log_buf), 0, 0, name.encode()[:15], 0, expected_attach_type)
    try:
        return call(BPF_PROG_LOAD, attr, "load")[0]
    except OSError as exc:
        text = log_buf.value.decode(errors="replace").strip().splitlines()[-3:]
        raise OSError(exc.errno, f"{exc.strerror}; verifier: {' | '.join(text)}") from exc


def insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """One ``struct bpf_insn``."""
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


MOV64_K, EXIT = 0xB7, 0x95


def return_const(value: int) -> bytes:
    """The smallest program: ``return value`` (``r0 = value; exit``)."""
    return insn(MOV64_K, 0, imm=value) + insn(EXIT)


def xdp_live_frames(prog_fd: int, frame: bytes, ifindex: int, repeat: int, batch: int = 64) -> None:
    """``BPF_PROG_TEST_RUN`` of an XDP program in live-frames mode (kernel 5.18+): the kernel runs it ``repeat``
    times on copies of ``frame`` received on ``ifindex`` (of the caller's network namespace) and carries out its
    verdict for real: ``XDP_TX`` sends each copy out of ``ifindex``. ``batch`` frames go to the driver at a time."""
    data = ctypes.create_string_buffer(frame, len(frame))
    # struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    ctx = ctypes.create_string_buffer(struct.pack("<IIIIII", 0, len(frame), 0, ifindex, 0, 0), 24)
    # prog_fd, retval, data_size_in, data_size_out, data_in, data_out, repeat, duration, ctx_size_in,
    # ctx_size_out, ctx_in, ctx_out, flags, cpu, batch_size
    attr = struct.pack("<IIIIQQIIIIQQIII", prog_fd, 0, len(frame), 0, addr(data), 0, repeat, 0, 24, 0, addr(ctx),
                       0, BPF_F_TEST_XDP_LIVE_FRAMES, 0, batch)
    call(BPF_PROG_TEST_RUN, attr, "test run (XDP live frames)")
