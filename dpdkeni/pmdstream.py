"""The native side of ``dpdkeni pmdtest``: the latency histogram, sequence accounting and one paced trial.

A trial (:meth:`Stream.trial`) runs in C (``native/pmdtest.c``) with no Python per frame: it offers test frames
(stream id, sequence number and CLOCK_MONOTONIC send time in the payload) on the first port at a paced rate, and
counts every test frame that comes back on any port: loss, reorder and duplicates per stream from the sequence
numbers, and a log-linear latency histogram (about 0.8 % bucket width from 256 ns to 17 s).
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from ._native import ffi, lib
from .errors import Error, InputError
from .fastpath import Forwarder

IMIX = (64,) * 28 + (570,) * 16 + (1518,) * 4          # CSIT's IMIX: 28 x 64 B, 16 x 570 B, 4 x 1518 B
MAX_STREAMS = lib.DK_PT_MAX_STREAMS
MAX_PATTERN = lib.DK_PT_MAX_PATTERN
FCS = 4                                                # sizes are Ethernet frames with FCS; the kernel gets 4 less


def imix_pattern() -> List[int]:
    """IMIX as one interleaved cycle of 48 frames (the 570s and 1518s spread among the 64s)."""
    counts = {64: 28, 570: 16, 1518: 4}
    out: List[int] = []
    sent = {s: 0 for s in counts}
    for i in range(48):
        # the size furthest behind its share goes next
        size = max(counts, key=lambda s: (counts[s] * (i + 1) / 48 - sent[s], s))
        sent[size] += 1
        out.append(size)
    return out


class Histogram:
    """A copy of a native ``dk_hist``: percentiles, merge, mean (values in ns)."""

    def __init__(self, native=None) -> None:
        self._h = ffi.new("struct dk_hist *")
        if native is not None:
            ffi.memmove(self._h, native, ffi.sizeof("struct dk_hist"))

    def record(self, ns: int) -> None:
        lib.dk_hist_record(self._h, ns)

    def merge(self, other: "Histogram") -> "Histogram":
        lib.dk_hist_merge(self._h, other._h)
        return self

    @property
    def count(self) -> int:
        return int(self._h.count)

    @property
    def min(self) -> int:
        return int(self._h.min)

    @property
    def max(self) -> int:
        return int(self._h.max)

    @property
    def mean(self) -> float:
        return self._h.sum / self._h.count if self._h.count else 0.0

    def percentile(self, p: float) -> int:
        """The value (ns) at percentile ``p`` (nearest rank), the middle of its bucket."""
        return int(lib.dk_hist_percentile(self._h, float(p)))

    @staticmethod
    def bucket_range(ns: int) -> tuple:
        """(lowest, highest) value of the bucket ``ns`` falls in."""
        b = lib.dk_hist_bucket(ns)
        return int(lib.dk_hist_lowest(b)), int(lib.dk_hist_highest(b))

    def summary(self) -> Dict[str, float]:
        """min/mean/p50/p90/p99/p99.9/max in microseconds."""
        us = lambda ns: round(ns / 1000, 1)  # noqa: E731
        return {"count": self.count, "min_us": us(self.min), "mean_us": us(self.mean),
                "p50_us": us(self.percentile(50)), "p90_us": us(self.percentile(90)),
                "p99_us": us(self.percentile(99)), "p999_us": us(self.percentile(99.9)), "max_us": us(self.max)}

    def cdf(self) -> List[tuple]:
        """(upper value ns, cumulative fraction) for each non-empty bucket."""
        out, seen = [], 0
        for i in range(lib.DK_HIST_BUCKETS):
            n = self._h.buckets[i]
            if n:
                seen += n
                out.append((int(lib.dk_hist_highest(i)), seen / self._h.count))
        return out


class SeqCounter:
    """Per-stream sequence accounting (the receiver's, usable on its own): loss, reorder, duplicates."""

    KINDS = {0: "in order", 1: "reorder", 2: "duplicate", 3: "reorder (beyond the window)"}

    def __init__(self) -> None:
        self._s = ffi.new("struct dk_seq *")

    def account(self, seq: int) -> str:
        return self.KINDS[lib.dk_seq_account(self._s, seq)]

    @property
    def received(self) -> int:
        return int(self._s.rx)

    @property
    def duplicates(self) -> int:
        return int(self._s.dup)

    @property
    def reordered(self) -> int:
        return int(self._s.reorder)

    def lost(self, sent: int) -> int:
        return max(0, sent - (self.received - self.duplicates))


@dataclass
class TrialResult:
    """What one trial measured (counts of test frames of this trial; rates in frames/s)."""

    rate: int
    seconds: float
    tried: int
    tx_packets: int
    tx_dropped: int
    rx_packets: int
    rx_other: int
    rx_stale: int
    rx_kernel_dropped: int
    lost: int
    duplicates: int
    reordered: int
    offered_pps: float
    rate_ok: bool
    interrupted: bool
    elapsed: float
    kernel_timestamps: int
    poll_timestamps: int
    streams: List[Dict[str, int]] = field(default_factory=list)
    latency: Optional[Histogram] = None
    kernel: Dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def loss_ratio(self) -> float:
        return self.lost / self.tx_packets if self.tx_packets else 0.0

    def to_dict(self) -> Dict[str, object]:
        d = {k: v for k, v in self.__dict__.items() if k != "latency"}
        d["loss_ratio"] = self.loss_ratio
        d["latency"] = self.latency.summary() if self.latency else None
        return d


def pattern_for(sizes: Sequence[int]) -> List[int]:
    """Frame lengths handed to the kernel (without FCS) for a cycle of Ethernet frame sizes (with FCS)."""
    if not 1 <= len(sizes) <= MAX_PATTERN:
        raise InputError(f"a size cycle has 1..{MAX_PATTERN} entries (got {len(sizes)})")
    for s in sizes:
        if isinstance(s, bool) or not isinstance(s, int) or not 64 <= s <= 1518:
            raise InputError(f"bad frame size {s!r}: 64..1518 (Ethernet, with FCS)")
    return [s - FCS for s in sizes]


class Stream:
    """A test-stream generator and receiver on ``ports`` (port 0 sends; every port receives), AF_PACKET, one
    queue, in ``target``'s network namespace. Trials run one after the other; :meth:`stop` (any thread) ends the
    running trial and every later one."""

    def __init__(self, ports: Sequence[str], target: Optional[str] = None, peer: Optional[str] = None,
                 burst: int = 32, cpu: Optional[int] = None, tx_method: Optional[str] = None) -> None:
        self.fwd = Forwarder(ports, mode="rxonly", backend="af_packet", burst=burst, queues=1, cpu=cpu,
                             target=target, peer=peer, tx_method=tx_method)
        from .fastpath import DEFAULT_PEER, _check_mac
        self.peer = _check_mac(peer or DEFAULT_PEER, "peer")
        self._epoch = 0
        self._stopped = False

    def open(self) -> "Stream":
        self.fwd.open()
        return self

    def close(self) -> None:
        self.fwd.close()

    def __enter__(self) -> "Stream":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def stop(self) -> None:
        self._stopped = True
        self.fwd.stop()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def mac(self, port: int = 0) -> str:
        return self.fwd.mac(port)

    def trial(self, rate: int, seconds: float, sizes: Sequence[int] = (64,), drain: float = 0.5,
              streams: int = 1, max_frames: int = 0, peer: Optional[str] = None) -> TrialResult:
        """Offer ``rate`` frames/s (0: as fast as possible) of the size cycle ``sizes`` for ``seconds``, then
        receive for ``drain`` seconds more; ``peer``: another destination MAC for this trial only. Ctrl-C in the
        main thread stops it (``interrupted``)."""
        if isinstance(rate, bool) or not isinstance(rate, int) or not 0 <= rate <= 10 ** 9:
            raise InputError(f"bad rate {rate!r}: 0..1000000000 frames/s")
        if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 3600:
            raise InputError(f"bad trial duration {seconds!r}: 0..3600 s")
        if not 1 <= streams <= MAX_STREAMS:
            raise InputError(f"bad stream count {streams!r}: 1..{MAX_STREAMS}")
        pattern = pattern_for(list(sizes))
        self.open()
        self._epoch = (self._epoch + 1) % 256
        spec = ffi.new("struct dk_pt_spec *")
        spec.rate, spec.max_frames, spec.seconds, spec.drain = rate, max_frames, float(seconds), float(drain)
        from .fastpath import _check_mac
        spec.peer = _check_mac(peer, "peer") if peer else self.peer
        spec.nstreams, spec.npattern, spec.epoch = streams, len(pattern), self._epoch
        for i, n in enumerate(pattern):
            spec.pattern[i] = n
        out = ffi.new("struct dk_pt_result *")
        box: List[int] = []
        worker = threading.Thread(target=lambda: box.append(lib.dk_pt_trial(self.fwd.native, spec, out)),
                                  daemon=True, name="dpdkeni-pmdtest")
        worker.start()
        while worker.is_alive():
            try:
                worker.join(0.2)
            except KeyboardInterrupt:
                self.stop()
        rc = box[0] if box else -5
        if rc < 0:
            raise Error(f"trial failed: {os.strerror(-rc)}")
        return _result(rate, seconds, out)


def _result(rate: int, seconds: float, r) -> TrialResult:
    streams = [{"tx": int(s.tx), "rx": int(s.rx), "dup": int(s.dup), "reorder": int(s.reorder)}
               for s in r.streams if s.tx or s.rx]
    return TrialResult(rate=rate, seconds=float(seconds), tried=int(r.tried), tx_packets=int(r.tx_packets),
                       tx_dropped=int(r.tx_dropped), rx_packets=int(r.rx_packets), rx_other=int(r.rx_other),
                       rx_stale=int(r.rx_stale), rx_kernel_dropped=int(r.rx_kernel_dropped), lost=int(r.lost),
                       duplicates=int(r.dup), reordered=int(r.reorder), offered_pps=float(r.offered_pps),
                       rate_ok=bool(r.rate_ok), interrupted=bool(r.interrupted), elapsed=float(r.elapsed),
                       kernel_timestamps=int(r.kernel_ts), poll_timestamps=int(r.poll_ts), streams=streams,
                       latency=Histogram(ffi.addressof(r, "latency")))
