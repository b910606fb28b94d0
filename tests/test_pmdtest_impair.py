"""pmdtest's cross-checks with known impairments on the reflector's link (a kernel tc mirred reflector, so the
reflecting side adds no user-space jitter): loss from a random drop, and netem's delay, loss and reorder where the
kernel has sch_netem (this project's VM kernel does not: those skip there, allowlisted with fact:netem, and run
in the lab's guest instead: tests/vm/test_pmdtest_netem_vm.py)."""
from __future__ import annotations

import os
import sys

import hostfacts
import pytest
from conftest import needs_root, unique
from reflectors import mirred, netem, random_drop, trial

from dpdkeni.testbed.topo import Topo

pytestmark = needs_root
needs_netem = pytest.mark.skipif(not hostfacts.netem(), reason="this kernel has no sch_netem (CONFIG_NET_SCH_NETEM)")


@pytest.fixture
def reflected():
    with Topo("direct", unique("dki")) as t:
        mirred(t)
        yield t


def test_random_drop_of_one_percent_reads_one_percent(reflected):
    random_drop(reflected, 0.01)
    t = trial(reflected, 10000, 15.0, max_frames=50000)      # 5 s of frames; slack for a starved generator
    assert t.tx_packets == 50000
    # 50000 frames: the binomial spread of a 1 % drop is 0.045 %; 0.2 % is over 4 sigma
    assert abs(t.loss_ratio - 0.01) <= 0.002, t.loss_ratio
    assert t.reordered == 0 and t.duplicates == 0
    # the kernel's counters see the same loss
    assert t.kernel["lost"] == t.lost and t.note == ""


def test_a_reflector_that_returns_every_frame_twice_is_duplicates_not_gain():
    with Topo("direct", unique("dki")) as t:
        mirred(t, twice=True)
        r = trial(t, 5000, 5.0, max_frames=5000)
    assert r.tx_packets == 5000 and r.rx_packets == 10000
    assert (r.duplicates, r.lost, r.loss_ratio) == (5000, 0, 0.0)
    assert r.latency.count == 5000          # one latency sample per frame, not per copy
    assert r.kernel == {"tx": 5000, "rx": 10000, "lost": 0} and r.note == ""


@needs_netem
def test_netem_delay_of_2ms_moves_latency_by_2ms(reflected):
    base = trial(reflected, 2000, 2.0).latency.percentile(50)
    netem(reflected, "delay 2ms")
    delayed = trial(reflected, 2000, 2.0).latency.percentile(50)
    assert abs((delayed - base) - 2_000_000) <= 200_000, (base, delayed)


@needs_netem
def test_netem_loss_of_one_percent_reads_one_percent(reflected):
    netem(reflected, "loss 1%")
    t = trial(reflected, 10000, 15.0, max_frames=50000)
    assert t.tx_packets == 50000 and abs(t.loss_ratio - 0.01) <= 0.002, t.loss_ratio
    assert t.reordered == 0 and t.duplicates == 0


@needs_netem
def test_netem_reorder_is_counted_as_reorder_not_loss(reflected):
    netem(reflected, "delay 1ms reorder 25% 50%")
    t = trial(reflected, 5000, 2.0)
    assert t.lost == 0 and t.duplicates == 0
    assert t.reordered > 0.05 * t.tx_packets, (t.reordered, t.tx_packets)
