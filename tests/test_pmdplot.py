"""``dpdkeni pmdtest --plot FILE``: a real PNG or SVG with the expected series (matplotlib is in the ``bench``
extra, which ``make setup`` installs), and bad input (a wrong extension, no directory, no matplotlib: exit 2)."""
from __future__ import annotations

import json
import os
import struct
import sys
import xml.etree.ElementTree as ET

import pytest
from conftest import dpdkeni_cli, needs_root, unique
from reflectors import mirred

from dpdkeni.pmdplot import plot
from dpdkeni.pmdsearch import SearchResult
from dpdkeni.pmdstream import Histogram
from dpdkeni.pmdtest import Report, SizeReport, parse_sizes
from dpdkeni.testbed.topo import Topo

SVG = "{http://www.w3.org/2000/svg}"


def synthetic_report() -> Report:
    """Two sizes, two repeats each, latency at two loads (real histograms)."""
    report = Report()
    for (label, cycle), rates in zip(parse_sizes("64,1518"), ((100_000, 120_000), (50_000, 60_000))):
        size = SizeReport(label, cycle)
        for r in rates:
            size.searches.append(SearchResult(ndr=r, pdr=r + 1000, complete=True))
        for load, base in (("min", 20_000), ("50%", 80_000)):
            h = Histogram()
            for i in range(200):
                h.record(base + 100 * i)
            size.latency[load] = h
        report.sizes.append(size)
    return report


def test_png_is_a_png_of_the_figure_size(tmp_path):
    path = str(tmp_path / "r.png")
    series = plot(synthetic_report(), path)
    assert series == ["ndr", "pdr", "cdf-64-min", "cdf-64-50%", "cdf-1518-min", "cdf-1518-50%"]
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR"
    assert struct.unpack(">II", head[16:24]) == (1200, 450)       # 12 x 4.5 in at 100 dpi


def _series(path: str) -> dict:
    """SVG id -> the vertices of the path drawn for it."""
    out = {}
    for g in ET.parse(path).getroot().iter(f"{SVG}g"):
        gid = g.get("id", "")
        if gid in ("ndr", "pdr") or gid.startswith("cdf-"):
            d = next(g.iter(f"{SVG}path")).get("d")
            out[gid] = [tok for tok in d.split() if tok in ("M", "L")]
    return out


def test_svg_has_one_vertex_per_size_and_a_step_curve_per_load(tmp_path):
    path = str(tmp_path / "r.svg")
    plot(synthetic_report(), path)
    series = _series(path)
    assert sorted(series) == sorted(["ndr", "pdr", "cdf-64-min", "cdf-64-50%", "cdf-1518-min", "cdf-1518-50%"])
    assert series["ndr"] == ["M", "L"] and series["pdr"] == ["M", "L"]        # 64 B and 1518 B
    assert all(len(v) > 10 for k, v in series.items() if k.startswith("cdf-"))  # a step per bucket


@needs_root
def test_cli_plots_a_real_run(tmp_path):
    with Topo("direct", unique("dkq")) as direct:
        mirred(direct)
        path = str(tmp_path / "run.svg")
        out = dpdkeni_cli("pmdtest", "--port", "a0", "--target", direct.target("a"), "--sizes", "64,imix",
                          "--max-rate", "3000", "--min-rate", "500", "--duration", "0.3", "--initial", "0.3",
                          "--warmup", "0", "--drain", "0.2", "--max-trials", "4", "--precision", "0.3",
                          "--json", "--plot", path, timeout=180)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    loads = ["min", "10%", "50%", "90%"]
    want = ["ndr", "pdr"] + [f"cdf-{s}-{load}" for s in ("64", "imix") for load in loads]
    assert doc["settings"]["plot"] == {"file": path, "series": want}
    assert f"plot: {path}" in out.stderr.splitlines()
    series = _series(path)
    assert sorted(series) == sorted(want) and series["ndr"] == ["M", "L"]


@pytest.mark.parametrize("name,says", [("r.pdf", "must end in .png or .svg"), ("nodir/r.png", "no directory")])
def test_bad_plot_files_are_exit_2(tmp_path, name, says):
    out = dpdkeni_cli("pmdtest", "--port", "lo", "--plot", str(tmp_path / name))
    assert out.returncode == 2 and says in out.stderr and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1


def test_without_matplotlib_plot_is_exit_2_naming_the_extra(tmp_path):
    # a matplotlib that cannot be imported, ahead of the real one on the path
    os.makedirs(tmp_path / "hide" / "matplotlib")
    (tmp_path / "hide" / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    out = dpdkeni_cli("pmdtest", "--port", "lo", "--plot", str(tmp_path / "r.png"),
                      env={"PYTHONPATH": str(tmp_path / "hide")})
    assert out.returncode == 2, out.stderr
    assert out.stderr == ("dpdkeni: error: --plot needs matplotlib, which is not installed (the bench extra: "
                          "pip install 'dpdkeni[bench]')\n")
    assert not os.path.exists(tmp_path / "r.png")
