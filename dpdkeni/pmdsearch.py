"""NDR and PDR together by a refined binary search (after FD.io CSIT's MLRsearch, RFC 2544 throughput).

Every trial classifies its rate for both goals at once: loss ratio 0 passes NDR and PDR, a loss ratio up to
``pdr_ratio`` passes PDR only, more fails both. A rate the generator did not offer within 1 % fails both (we
cannot claim a rate we did not offer). Each goal keeps a lower bound (a rate that passed) and an upper bound (a
rate that failed); a trial that did not offer its rate (below ``max_rate``) is run once more before it counts.
The search ends for a goal when ``(upper - lower) / upper <= precision``.

Phases (MLRsearch's idea of cheap short trials first): the first trial offers ``max_rate``; if it loses, the
second offers what the DUT forwarded in it (its receive rate). Then short trials (``initial_seconds``) bisect to
twice the final precision, and final-duration trials re-validate the lower bounds (a short pass does not prove a
long one) and bisect to ``precision``. A lower bound that fails at the final duration becomes an upper bound and the
lower bound is searched below it by doubling the interval (external search). Upper bounds from short trials stay:
losing in a short trial is losing. Trials are bounded by ``max_trials``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol


class TrialLike(Protocol):
    rate: int
    seconds: float
    loss_ratio: float
    rate_ok: bool
    interrupted: bool
    rx_packets: int
    duplicates: int

    def to_dict(self) -> Dict[str, Any]: ...


@dataclass
class Bounds:
    """One goal's interval: ``lower`` passed (at ``lower_seconds``), ``upper`` failed (None: not yet)."""

    ratio: float
    lower: int
    upper: Optional[int] = None
    lower_seconds: float = 0.0

    def width(self) -> float:
        if self.upper is None:
            return 1.0
        return (self.upper - self.lower) / self.upper if self.upper else 0.0

    def passes(self, loss_ratio: float) -> bool:
        return loss_ratio <= self.ratio


@dataclass
class SearchResult:
    """NDR and PDR (frames/s; 0 when even ``min_rate`` lost), their upper bounds, the trials, and why it ended."""

    ndr: int = 0
    pdr: int = 0
    ndr_upper: Optional[int] = None
    pdr_upper: Optional[int] = None
    trials: List[TrialLike] = field(default_factory=list)
    generator_limited: bool = False
    complete: bool = False
    note: str = ""

    def to_dict(self) -> Dict[str, object]:
        return {"ndr": self.ndr, "pdr": self.pdr, "ndr_upper": self.ndr_upper, "pdr_upper": self.pdr_upper,
                "trials": len(self.trials), "generator_limited": self.generator_limited,
                "complete": self.complete, "note": self.note}


class Interrupted(Exception):
    """A trial was interrupted (Ctrl-C): the search stops with what it has."""


def search(measure: Callable[[int, float], TrialLike], max_rate: int, min_rate: int, final_seconds: float,
           initial_seconds: float = 1.0, precision: float = 0.02, pdr_ratio: float = 0.005,
           max_trials: int = 40) -> SearchResult:
    """Find NDR (loss 0) and PDR (loss <= ``pdr_ratio``) between ``min_rate`` and ``max_rate`` frames/s;
    ``measure(rate, seconds)`` runs one trial. Returns what it found even when interrupted (``complete`` False)."""
    res = SearchResult()
    initial_seconds = min(initial_seconds, final_seconds)
    # min_rate is assumed to pass the short trials; the final phase measures it if it is still the lower bound
    goals = [Bounds(0.0, min_rate, lower_seconds=initial_seconds), Bounds(pdr_ratio, min_rate,
                                                                          lower_seconds=initial_seconds)]

    def trial(rate: int, seconds: float) -> TrialLike:
        if len(res.trials) >= max_trials:
            raise StopIteration
        t = measure(rate, seconds)
        res.trials.append(t)
        if not t.rate_ok and not t.interrupted and rate < max_rate and len(res.trials) < max_trials:
            t = measure(rate, seconds)          # a starved generator is a hiccup once; twice, the rate fails
            res.trials.append(t)
        if t.interrupted:
            raise Interrupted
        ok = t.rate_ok
        if not ok:
            res.generator_limited = True
        for g in goals:
            if ok and g.passes(t.loss_ratio):
                if (g.upper is None or rate < g.upper) and rate >= g.lower and seconds >= g.lower_seconds:
                    g.lower, g.lower_seconds = rate, seconds
            else:
                old_width = (g.upper - g.lower) if g.upper is not None else int(rate * precision)
                if g.upper is None or rate < g.upper:
                    g.upper = rate
                if rate <= g.lower:        # the lower bound failed: search below it, twice as wide each time
                    step = 2 * max(old_width, int(rate * precision), 1)
                    g.lower, g.lower_seconds = max(min_rate, rate - step), 0.0
        return t

    try:
        first = trial(max_rate, initial_seconds)
        if goals[1].upper is not None:           # lost at max: try what it forwarded (MLRsearch's MRR -> FRR)
            unique = first.rx_packets - first.duplicates
            frr = int(unique / first.seconds) if first.seconds else 0
            if min_rate < frr < max_rate:
                trial(frr, initial_seconds)
        for seconds, width in ((initial_seconds, 2 * precision), (final_seconds, precision)):
            for g in goals:
                for _ in range(max_trials):
                    if g.upper is not None and (g.upper <= min_rate or g.lower >= g.upper):
                        break                          # nothing passes, or noise crossed the bounds
                    if g.lower_seconds < seconds:      # (re)validate the lower bound at this duration
                        trial(g.lower, seconds)
                        continue
                    if g.upper is None or g.width() <= width:
                        break
                    mid = (g.lower + g.upper) // 2
                    if mid <= g.lower:
                        break
                    trial(mid, seconds)
        res.complete = True
    except Interrupted:
        res.note = "interrupted: partial result"
    except StopIteration:
        res.note = f"stopped after {max_trials} trials"
    ndr, pdr = goals

    def measured(g: Bounds) -> bool:
        """A trial passed at the lower bound, at the final duration (any, for an interrupted search's partial
        result): min_rate is only assumed to pass until a trial says so."""
        least = final_seconds if res.complete else 0.0
        return any(t.rate == g.lower and t.seconds >= least and t.rate_ok and not t.interrupted
                   and g.passes(t.loss_ratio) for t in res.trials)

    res.ndr = ndr.lower if measured(ndr) else 0
    res.pdr = pdr.lower if measured(pdr) else 0
    res.ndr_upper, res.pdr_upper = ndr.upper, pdr.upper
    # the lowest rate failing means no rate found: say 0 rather than min_rate
    for g, name in ((ndr, "ndr"), (pdr, "pdr")):
        if g.upper is not None and g.upper <= min_rate:
            setattr(res, name, 0)
    return res
