"""``dpdkeni pmdtest --plot FILE``: throughput against frame size and the latency CDFs of a report, as PNG or
SVG, with matplotlib (the ``bench`` extra: ``pip install 'dpdkeni[bench]'``; without it ``--plot`` is bad input).

Every series carries an id (SVG ``id``, matplotlib ``gid``): ``ndr`` and ``pdr`` (Mpps against the mean frame
size, median with min..max of the repeats), and ``cdf-SIZE-LOAD`` per frame size and latency load.
"""
from __future__ import annotations

import os
from typing import List

from .errors import InputError
from .pmdtest import Report, mean_size

FORMATS = ("png", "svg")
EXTRA = "pip install 'dpdkeni[bench]'"


def check(path: str) -> str:
    """The format of ``path`` (by its extension), once matplotlib is importable and the directory exists; an
    InputError saying what to do otherwise (before anything runs)."""
    fmt = os.path.splitext(path)[1].lower().lstrip(".") if isinstance(path, str) else ""
    if fmt not in FORMATS:
        raise InputError(f"bad --plot {path!r}: the file name must end in .png or .svg")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"bad --plot {path!r}: no directory {parent}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--plot needs matplotlib, which is not installed", f"the bench extra: {EXTRA}") from None
    return fmt


def plot(report: Report, path: str) -> List[str]:
    """Write the figure to ``path``; returns the ids of the series drawn."""
    fmt = check(path)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (thr, cdf) = plt.subplots(1, 2, figsize=(12, 4.5))
    drawn: List[str] = []
    sizes = sorted(report.sizes, key=lambda s: mean_size(s.cycle))
    for key, marker in (("ndr", "o"), ("pdr", "s")):
        pts = [(mean_size(s.cycle), s.spread(key), s.label) for s in sizes if s.spread(key)]
        if not pts:
            continue
        xs = [x for x, _, _ in pts]
        mid = [sp["median"] / 1e6 for _, sp, _ in pts]
        low = [(sp["median"] - sp["min"]) / 1e6 for _, sp, _ in pts]
        high = [(sp["max"] - sp["median"]) / 1e6 for _, sp, _ in pts]
        line = thr.errorbar(xs, mid, yerr=[low, high], marker=marker, capsize=3, label=key.upper())
        line.lines[0].set_gid(key)
        drawn.append(key)
        for x, y, (_, _, label) in zip(xs, mid, pts):
            if key == "ndr":
                thr.annotate(label, (x, y), textcoords="offset points", xytext=(4, 6), fontsize=8)
    thr.set_xlabel("frame size, bytes (IMIX at its mean)")
    thr.set_ylabel("Mpps (median, min..max of repeats)")
    thr.set_title("throughput" + (" (interrupted: partial)" if report.interrupted else ""))
    thr.grid(True, alpha=0.3)
    if drawn:
        thr.legend()
    for s in sizes:
        for load, h in s.latency.items():
            points = h.cdf()
            if not points:
                continue
            gid = f"cdf-{s.label}-{load}"
            (line,) = cdf.step([v / 1000 for v, _ in points], [f for _, f in points], where="post",
                               label=f"{s.label} @ {load}")
            line.set_gid(gid)
            drawn.append(gid)
    cdf.set_xscale("log")
    cdf.set_xlabel("latency, us")
    cdf.set_ylabel("fraction of frames")
    cdf.set_title("latency CDF per frame size and load")
    cdf.grid(True, alpha=0.3)
    if any(d.startswith("cdf-") for d in drawn):
        cdf.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, format=fmt)
    plt.close(fig)
    return drawn
