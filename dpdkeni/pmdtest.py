"""``dpdkeni pmdtest``: NDR, PDR and latency of a device under test reached through a kernel port, the way RFC 2544
and FD.io CSIT measure a DPDK PMD.

The method (README "PMD testing"):

- a **trial** offers rate R (frames/s) for T seconds after a warm-up of W seconds at R (whose frames do not count),
  then receives for a drain time. Loss is counted by our receiver from sequence numbers (sent by the kernel minus
  unique frames back) and from the kernel's interface counters; a disagreement is reported with the trial;
- the **search** (:mod:`dpdkeni.pmdsearch`) finds NDR (loss 0) and PDR (loss <= 0.5 %) together;
- **latency** is measured at 10, 50 and 90 % of PDR and at the minimal rate; histograms of repeats are merged;
- each frame size (or IMIX) is searched ``repeat`` times; NDR and PDR are reported as median with min..max.
"""
from __future__ import annotations

import functools
import logging
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, cast

from .errors import Error, InputError
from .pmdsearch import SearchResult, TrialLike, search
from .pmdstream import Histogram, Stream, TrialResult, imix_pattern

log = logging.getLogger(__name__)

LATENCY_LOADS = (("min", 0.0), ("10%", 0.10), ("50%", 0.50), ("90%", 0.90))
PDR_RATIO = 0.005
BROADCAST = "ff:ff:ff:ff:ff:ff"
# After a trial that lost frames or could not offer its rate, the path may hold a backlog (an emulated link such
# as QEMU's hub queues thousands of frames for a slow DUT and blocks the sender until they are through): the next
# trial first waits, at most this long, until a short probe goes out unblocked and comes back
SETTLE_S = 15.0
PROBE_SECONDS, PROBE_DRAIN = 0.05, 0.3


def parse_sizes(text: str) -> List[Tuple[str, List[int]]]:
    """``64,512,1518,imix`` -> [(label, frame size cycle)]; sizes are Ethernet frames with FCS, 64..1518."""
    out: List[Tuple[str, List[int]]] = []
    if not isinstance(text, str) or not text.strip():
        raise InputError("bad --sizes '': give sizes like 64,512,1518,imix")
    for item in text.split(","):
        item = item.strip().lower()
        if item == "imix":
            out.append(("imix", imix_pattern()))
        elif item.isdigit() and len(item) <= 5 and 64 <= int(item) <= 1518:
            out.append((item, [int(item)]))
        else:
            raise InputError(f"bad frame size {item!r} in --sizes: 64..1518 (Ethernet, with FCS) or imix")
    if len(out) != len({label for label, _ in out}):
        raise InputError(f"bad --sizes {text!r}: a size is given twice")
    return out


EMULATED = ("QEMU TCG", "QEMU Virtual CPU")


def emulation_note(cpuinfo: str = "/proc/cpuinfo") -> str:
    """A warning when this CPU is emulated (QEMU's TCG: the lab), else "": its rates are the emulator's."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            models = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
    except OSError:
        return ""
    slow = sorted(m for m in models if any(e in m for e in EMULATED))
    if not slow:
        return ""
    return (f"the CPU is emulated ({slow[0]}): these rates and latencies are the emulator's, orders of magnitude "
            "below the PMD's on hardware; the method is the same")


def mean_size(cycle: Sequence[int]) -> float:
    return sum(cycle) / len(cycle)


@dataclass
class SizeReport:
    """One frame size: the searches (one per repeat) and the merged latency histograms per load."""

    label: str
    cycle: List[int]
    searches: List[SearchResult] = field(default_factory=list)
    latency: Dict[str, Histogram] = field(default_factory=dict)
    latency_rates: Dict[str, List[int]] = field(default_factory=dict)

    def spread(self, key: str) -> Dict[str, float]:
        values = [getattr(s, key) for s in self.searches if s.complete]
        if not values:
            return {}
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}

    def to_dict(self) -> Dict[str, object]:
        return {"size": self.label, "mean_frame_bytes": round(mean_size(self.cycle), 2),
                "ndr": self.spread("ndr"), "pdr": self.spread("pdr"),
                "searches": [{**s.to_dict(), "trial_list": [t.to_dict() for t in s.trials]} for s in self.searches],
                "latency": {k: {**h.summary(), "rates": self.latency_rates.get(k, [])}
                            for k, h in self.latency.items()}}


@dataclass
class Report:
    """Everything a pmdtest run measured; ``interrupted`` when Ctrl-C ended it early."""

    sizes: List[SizeReport] = field(default_factory=list)
    interrupted: bool = False
    settings: Dict[str, object] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, object]:
        return {"settings": self.settings, "interrupted": self.interrupted,
                "results": [s.to_dict() for s in self.sizes]}


class KernelCounters:
    """The kernel's packet counters of the stream's ports (IFLA_STATS64), read in the stream's namespace."""

    def __init__(self, ports: Sequence[str], target: Optional[str]) -> None:
        self.ports, self.target = list(ports), target

    def read(self) -> Dict[str, int]:
        from .netns import iproute_in, resolve_target
        fd = resolve_target(self.target).open() if self.target else None
        try:
            with iproute_in(fd) as ipr:
                stats = []
                for name in self.ports:
                    idx = ipr.link_lookup(ifname=name)
                    if not idx:
                        raise InputError(f"no interface {name} in {self.target or 'this namespace'}")
                    stats.append(ipr.get_links(idx[0])[0].get_attr("IFLA_STATS64"))
        finally:
            if fd is not None:
                os.close(fd)
        return {"tx": stats[0]["tx_packets"], "rx": sum(s["rx_packets"] for s in stats)}


def kernel_check(before: Dict[str, int], after: Dict[str, int], t: TrialResult) -> None:
    """Loss from the kernel's counters next to ours: sent by port 0 minus test frames received (received minus the
    frames we saw that were not this trial's test frames). Sets ``t.kernel`` and a note on disagreement."""
    tx = after["tx"] - before["tx"]
    rx = after["rx"] - before["rx"] - t.rx_other - t.rx_stale
    t.kernel = {"tx": tx, "rx": rx, "lost": tx - (rx - t.duplicates)}
    if tx != t.tx_packets or t.kernel["lost"] != t.lost:
        t.note = (f"kernel counters disagree: sent {tx} (ours {t.tx_packets}), lost {t.kernel['lost']} "
                  f"(ours {t.lost}); ring drops {t.rx_kernel_dropped}")


def trial_line(t: TrialResult, index: int) -> str:
    """One live line per trial."""
    lat = t.latency.summary() if t.latency and t.latency.count else None
    lat_text = f"p50 {lat['p50_us']:.1f} us p99 {lat['p99_us']:.1f} us" if lat else "no latency samples"
    # an interrupted trial stopped early: its offered rate over the whole duration means nothing
    flags = [] if t.rate_ok or t.interrupted else [f"rate NOT offered: {t.offered_pps:.0f} pps"]
    if t.reordered or t.duplicates:
        flags.append(f"reorder {t.reordered} dup {t.duplicates}")
    if t.note:
        flags.append(t.note)
    if t.interrupted:
        flags.append("interrupted")
    return (f"  trial {index:>2}: {t.rate:>9} pps {t.seconds:g} s  loss {t.lost}/{t.tx_packets} "
            f"({t.loss_ratio * 100:.3f} %)  {lat_text}" + (f"  [{'; '.join(flags)}]" if flags else ""))


class PmdTest:
    """Runs the searches and latency trials over ``stream`` (its DUT already reflecting)."""

    def __init__(self, stream: Stream, sizes: List[Tuple[str, List[int]]], *, duration: float = 2.0,
                 initial: float = 1.0, warmup: float = 0.5, drain: float = 0.5, max_rate: int = 1_000_000,
                 min_rate: int = 1000, precision: float = 0.02, repeat: int = 1, max_trials: int = 30,
                 counters: Optional[KernelCounters] = None, dut_mac: Optional[str] = None,
                 on_line: Callable[[str], None] = lambda line: None) -> None:
        self.stream, self.sizes = stream, sizes
        self.duration, self.initial, self.warmup, self.drain = duration, initial, warmup, drain
        self.max_rate, self.min_rate, self.precision = max_rate, min_rate, precision
        self.repeat, self.max_trials, self.counters, self.on_line = repeat, max_trials, counters, on_line
        self.dut_mac = dut_mac
        self._n = 0
        self._dirty = False  # the last trial lost frames or was starved: the path may still be busy

    def _trial_of(self, cycle: List[int], rate: int, seconds: float) -> TrialResult:
        """:meth:`trial` with ``cycle`` first (what the search calls, bound to one frame-size cycle)."""
        return self.trial(rate, seconds, cycle)

    def trial(self, rate: int, seconds: float, cycle: List[int], max_frames: int = 0) -> TrialResult:
        """Warm-up at ``rate`` (not counted), then the counted trial with the kernel's counters around it
        (``max_frames``: stop sending after that many, e.g. an exact count within a generous ``seconds``).
        After a trial that lost frames or was starved, it first waits for the path to drain (:meth:`settle`)."""
        waited = self.settle(cycle) if self._dirty else None
        if waited is not None and waited.interrupted:
            return waited
        if self.warmup > 0:
            # drained, so its frames are in the kernel's counters before ours are read (none turns up stale)
            w = self.stream.trial(rate, self.warmup, cycle, drain=min(self.drain, 0.2))
            if w.interrupted:
                return w
        before = self.counters.read() if self.counters else None
        t = self.stream.trial(rate, seconds, cycle, drain=self.drain, max_frames=max_frames)
        if before is not None and self.counters is not None and not t.interrupted:
            kernel_check(before, self.counters.read(), t)
        self._dirty = bool(t.lost or t.tx_dropped or not t.rate_ok)
        if waited is not None:
            t.note = "; ".join(filter(None, [t.note, waited.note]))
        self._n += 1
        self.on_line(trial_line(t, self._n))
        return t

    def settle(self, cycle: List[int], limit: Optional[float] = None) -> TrialResult:
        """Send short probes at the minimal rate until one goes out unblocked and frames of it come back, at most
        ``limit`` seconds (:data:`SETTLE_S`); returns the last probe, its ``note`` saying how long it took."""
        limit = SETTLE_S if limit is None else limit
        start = time.monotonic()
        probes = 0
        while True:
            p = self.stream.trial(max(1, self.min_rate), PROBE_SECONDS, cycle, drain=PROBE_DRAIN)
            probes += 1
            took = time.monotonic() - start
            if p.interrupted:
                return p
            if p.rx_packets > 0 and not p.tx_dropped:
                if probes > 1:
                    p.note = f"waited {took:.1f} s for the path to drain ({probes} probes)"
                    self.on_line(f"  (path busy after the last trial: {p.note})")
                return p
            if took >= limit:
                p.note = f"the path did not drain in {limit:g} s ({probes} probes): trial run anyway"
                self.on_line(f"  ({p.note})")
                return p

    def check_reflection(self, cycle: List[int]) -> TrialResult:
        """A short low-rate trial: frames must come back before any search. When none does, the same frames to
        the broadcast address tell a wrong destination MAC (they come back: InputError naming the DUT port's MAC
        where it is known) from no reflector at all (Error)."""
        rate = max(self.min_rate, 1000)
        t = self.stream.trial(rate, 0.5, cycle, drain=1.0)
        if t.interrupted or t.rx_packets:
            return t
        seen = f"; {t.rx_other} other frames came in" if t.rx_other else ""
        b = self.stream.trial(rate, 0.5, cycle, drain=1.0, peer=BROADCAST)
        if b.interrupted:
            return b
        peer = ":".join(f"{x:02x}" for x in self.stream.peer or b"")
        if b.rx_packets:
            hint = f"give --peer {self.dut_mac}" if self.dut_mac else "give --peer with the MAC of the DUT's port"
            raise InputError(f"wrong MAC: no test frame sent to {peer} came back, but {b.rx_packets} of "
                             f"{b.tx_packets} sent to the broadcast address did: the DUT takes frames to its own "
                             f"MAC{' (' + self.dut_mac + ')' if self.dut_mac else ''} only", hint)
        raise Error(f"no reflector: no test frame came back in 1.5 s ({t.tx_packets} sent to {peer}, "
                    f"{b.tx_packets} to the broadcast address){seen}",
                    "is the reflector running on the other end, forwarding back out of the same link?")

    def run(self) -> Report:
        report = Report(settings={"duration_s": self.duration, "initial_s": self.initial, "warmup_s": self.warmup,
                                  "drain_s": self.drain, "max_rate": self.max_rate, "min_rate": self.min_rate,
                                  "precision": self.precision, "pdr_loss_ratio": PDR_RATIO,
                                  "repeat": self.repeat})
        for label, cycle in self.sizes:
            size = SizeReport(label, cycle)
            report.sizes.append(size)
            if self.check_reflection(cycle).interrupted:
                report.interrupted = True
                return report
            for rep in range(self.repeat):
                self.on_line(f"size {label}, search {rep + 1}/{self.repeat}:")
                res = search(cast(Callable[[int, float], TrialLike], functools.partial(self._trial_of, cycle)),
                             self.max_rate, self.min_rate,
                             self.duration, self.initial, self.precision, PDR_RATIO, self.max_trials)
                size.searches.append(res)
                limited = ", generator limited" if res.generator_limited else ""
                self.on_line(f"  -> NDR {res.ndr} pps, PDR {res.pdr} pps ({len(res.trials)} trials"
                             f"{', ' + res.note if res.note else ''}{limited})")
                if not res.complete and self.stream.stopped:
                    report.interrupted = True
                    return report
                if self._latency(size, res, cycle):
                    report.interrupted = True
                    return report
        return report

    def _latency(self, size: SizeReport, res: SearchResult, cycle: List[int]) -> bool:
        """Latency trials at the minimal rate and at fractions of this search's PDR; True when interrupted."""
        for name, fraction in LATENCY_LOADS:
            rate = self.min_rate if fraction == 0 else int(res.pdr * fraction)
            if rate < 1:
                continue
            t = self.trial(rate, self.duration, cycle)
            if t.interrupted:
                return True
            if t.latency is not None:
                size.latency.setdefault(name, Histogram()).merge(t.latency)
                size.latency_rates.setdefault(name, []).append(rate)
        return False


def _fmt_rate(spread: Dict[str, float]) -> str:
    if not spread:
        return "-"
    if spread["n"] == 1:
        return f"{spread['median'] / 1e6:.4f}"
    return f"{spread['median'] / 1e6:.4f} ({spread['min'] / 1e6:.4f}..{spread['max'] / 1e6:.4f})"


def table(report: Report) -> str:
    """CSIT-style table: NDR/PDR in Mpps (median, min..max over repeats) and Gbps (L2, with FCS), latency
    p50/p99 in us per load."""
    head = ("| size | NDR Mpps | NDR Gbps | PDR Mpps | PDR Gbps | trials | "
            + " | ".join(f"lat {n} p50/p99 us" for n, _ in LATENCY_LOADS) + " |")
    lines = [head, "|" + "---|" * (6 + len(LATENCY_LOADS))]
    for s in report.sizes:
        ndr, pdr = s.spread("ndr"), s.spread("pdr")
        gbps = lambda sp, s=s: f"{sp['median'] * mean_size(s.cycle) * 8 / 1e9:.3f}" if sp else "-"  # noqa: E731
        lat = []
        for name, _ in LATENCY_LOADS:
            h = s.latency.get(name)
            lat.append(f"{h.percentile(50) / 1000:.1f} / {h.percentile(99) / 1000:.1f}" if h and h.count else "-")
        trials = "/".join(str(len(x.trials)) for x in s.searches) or "-"
        lines.append(f"| {s.label} | {_fmt_rate(ndr)} | {gbps(ndr)} | {_fmt_rate(pdr)} | {gbps(pdr)} | {trials} | "
                     + " | ".join(lat) + " |")
    if report.interrupted:
        lines.append("(interrupted: partial report)")
    if report.settings.get("slow"):
        lines.append(f"(slow: {report.settings['slow']})")
    return "\n".join(lines)
