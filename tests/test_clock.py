"""Hybrid logical clock: ordering rules, bounded skew, and LWW causality under skew."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import global_key
from gossipmgr.errors import ClockError


def test_now_is_strictly_monotonic_even_when_physical_time_goes_back() -> None:
    c = HLC("a")
    seen = [c.now(1000), c.now(1000), c.now(999), c.now(500), c.now(1001)]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)


def test_observe_moves_past_remote_and_refuses_far_future() -> None:
    c = HLC("a", max_offset_ms=500)
    c.observe(Timestamp(1400, 7, "b"), phys_ms=1000)
    assert c.now(1000) > Timestamp(1400, 7, "b")
    with pytest.raises(ClockError):
        c.observe(Timestamp(1501, 0, "b"), phys_ms=1000)
    assert c.refused == 1
    assert c.last.ms == 1400  # the refused timestamp was not adopted


def test_advance_to_survives_restart() -> None:
    c = HLC("a", last=Timestamp(5000, 3, "a"))
    assert c.now(10) > Timestamp(5000, 3, "a")


def test_write_after_observing_always_wins_under_skew() -> None:
    """10,000 randomized trials: skews within ±max_offset, a causally later write wins."""
    rnd = random.Random(1234)
    max_offset = 500
    for trial in range(10_000):
        names = ["a", "b", "c"]
        skews = {n: rnd.randint(-max_offset // 2, max_offset // 2) for n in names}
        clocks = {n: HLC(n, max_offset_ms=max_offset) for n in names}
        true_now = 1_000_000 + rnd.randint(0, 10_000)
        state = LWWMap()
        writer = rnd.choice(names)
        ts = clocks[writer].now(true_now + skews[writer])
        state.join(state.set_delta(global_key("k"), (trial, 0), ts))
        # a chain of causally ordered writes, each by an instance that observed the last
        for step in range(1, rnd.randint(2, 6)):
            true_now += rnd.randint(0, 5)  # writes may follow within the same millisecond
            nxt = rnd.choice(names)
            clocks[nxt].observe(ts, true_now + skews[nxt])
            ts = clocks[nxt].now(true_now + skews[nxt])
            state.join(state.set_delta(global_key("k"), (trial, step), ts))
            assert state.get(global_key("k")) == [trial, step] or state.get(global_key("k")) == (
                trial,
                step,
            )


@settings(max_examples=300)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2_000)), max_size=40))
def test_timestamps_never_repeat_and_stay_close_to_physical(ops: list[tuple[int, int]]) -> None:
    c = HLC("a", max_offset_ms=10**9)
    other = HLC("b", max_offset_ms=10**9)
    issued = []
    phys = 1000
    for kind, dt in ops:
        phys += dt % 50
        if kind == 0:
            other.observe(c.now(phys), phys)
            issued.append(other.now(phys))
        else:
            issued.append(c.now(phys))
    assert len(set(issued)) == len(issued)
    for t in issued:
        assert t.ms <= phys  # no drift beyond the largest physical time seen
