"""The native fast path: thin Python over the cffi-compiled C in ``native/``."""
from __future__ import annotations

from typing import List

from ._native import ffi, lib


def inet_checksum(data: bytes) -> int:
    """RFC 1071 Internet checksum of ``data`` as the 16-bit value a header carries (big-endian)."""
    value = lib.dk_inet_csum(data, len(data))
    return int.from_bytes(int(value).to_bytes(2, "little"), "big")


def macswap(frames: List[bytearray]) -> int:
    """Swap the destination and source MACs of each frame in place; returns how many were swapped."""
    bufs = [ffi.from_buffer(f) for f in frames]
    ptrs = ffi.new("uint8_t *[]", [ffi.cast("uint8_t *", b) for b in bufs])
    lens = ffi.new("uint32_t[]", [len(f) for f in frames])
    return lib.dk_macswap_burst(ptrs, lens, len(frames))
