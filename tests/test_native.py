"""The cffi-compiled native module: a real function checked against a Python reference."""
import os
import random

from dpdkeni.fastpath import inet_checksum, macswap


def py_csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def test_checksum_matches_reference():
    rng = random.Random(7)
    for n in (0, 1, 2, 3, 20, 61, 1500):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert inet_checksum(data) == py_csum(data)


def test_checksum_of_known_ipv4_header():
    # RFC 1071 style example: a header whose checksum field is filled verifies to 0
    hdr = bytes.fromhex("4500003c1c4640004006b1e6ac100a63ac100a0c")
    assert inet_checksum(hdr) == 0


def test_macswap_in_place():
    frames = [bytearray(os.urandom(64)) for _ in range(4)] + [bytearray(b"short")]
    before = [bytes(f) for f in frames]
    assert macswap(frames) == 4
    for b, f in zip(before[:4], frames[:4]):
        assert f[:6] == b[6:12] and f[6:12] == b[:6] and f[12:] == b[12:]
    assert bytes(frames[4]) == before[4]
