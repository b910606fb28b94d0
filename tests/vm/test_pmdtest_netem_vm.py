"""pmdtest's netem cross-checks for real: in the lab's guest, whose kernel has sch_netem (the host's has none;
tests/test_pmdtest_impair.py runs the same checks on a host that has it). tests/vm/netemguest.py builds the same
topology and reflector as the host test and reports; the bounds are the issue's."""
from __future__ import annotations

import json
import logging

import pytest

pytestmark = pytest.mark.vm
log = logging.getLogger(__name__)
ENV = "PYTHONPATH=/opt/dpdkeni:/opt/dpdkeni/tests:/opt/dpdkeni/benchmarks"


def _check(lab, name: str) -> dict:
    out = lab.sh(f"{ENV} python3 /opt/dpdkeni/tests/vm/netemguest.py {name}", timeout=300)
    assert out.rc == 0, out.stderr[-3000:]
    log.info("netem %s: %s", name, out.stdout.strip())
    return json.loads(out.stdout)


def test_netem_delay_of_2ms_moves_the_median_latency_by_2ms(lab):
    got = _check(lab, "delay")
    shift = got["delayed_p50_ns"] - got["base_p50_ns"]
    assert abs(shift - 2_000_000) <= 200_000, got
    for t in (got["base"], got["delayed"]):
        assert t["lost"] == 0 and t["rx"] == t["tx"] > 0 and t["note"] == "", got


def test_netem_loss_of_one_percent_reads_one_percent(lab):
    t = _check(lab, "loss")
    assert t["tx"] == 40000 and abs(t["loss_ratio"] - 0.01) <= 0.002, t
    assert t["reordered"] == 0 and t["duplicates"] == 0
    assert t["kernel"]["lost"] == t["lost"], t       # the kernel's counters see the same loss


def test_netem_reorder_is_counted_as_reorder_not_loss(lab):
    t = _check(lab, "reorder")
    assert t["lost"] == 0 and t["duplicates"] == 0, t
    assert t["reordered"] > 0.05 * t["tx"], t
