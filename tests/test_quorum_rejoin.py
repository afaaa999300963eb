"""An instance cut off while the others moved the lease on must not count them towards a
majority before it has caught up with them (the partition suite's full run, issue 18).

Found by ``bench/partition.py`` (``isolate-one``, 5 instances): the isolated instance
heard two peers again ~30 ms after the heal, counted "3 of 5" while its own copy of the
lease had expired (no renewal reached it for 18 s), claimed a new epoch before the
holder's renewal arrived, then reconciled the inventory from its stale Serf view and
flapped a dead node back to Discovered on every instance. The majority rule counts the
instances heard from lately (``AntiEntropy.heard_from``); a peer heard *again* after a
gap may hold writes (the lease) that have not reached us, so the rule now counts
``AntiEntropy.caught_up``: heard, and synced (an equal digest exchange) since the gap.

Pure: the anti-entropy protocol in the seeded ``testing.sim`` network, the production
``core.quorum``. The old counting is kept in the test to show the window it had.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.quorum import quorum
from gossipmgr.core.state import LEASE_KEY, ClusterState
from gossipmgr.testing.sim import Sim, addr

WINDOW_MS = 5_000  # heard_window_ms with the default TTL and renewal period
TTL_MS = 10_000


def _lease(holder: str, now: float) -> Callable[[ClusterState, Timestamp], LWWMap]:
    def make(st: ClusterState, ts: Timestamp) -> LWWMap:
        value = {"holder": holder, "epoch": 1, "expires_ms": int(now) + TTL_MS}
        return st.d_set(LEASE_KEY, value, ts)

    return make


def _note(k: int) -> Callable[[ClusterState, Timestamp], LWWMap]:
    return lambda st, ts: st.d_set(("g", f"x{k}"), k, ts)


def premature_majorities(seed: int, count: Callable[[Any, float], set[str]]) -> int:
    """Steps (0.5 ms each, for 3 s after the heal) at which the isolated instance counts a
    majority while its lease entry is not yet the holder's current one."""
    sim = Sim(5, seed=seed, delay=(1.0, 30.0))
    names = sim.names
    holder, iso = names[0], names[-1]
    sim.serf_view()
    assert sim.run_until_converged(10_000) is not None
    sim.write(holder, _lease(holder, sim.now))
    sim.step(sim.now + 3_000)
    sim.net.partition([{addr(iso)}, {addr(n) for n in names if n != iso}])
    heal_at, k = sim.now + 12_000, 0
    while sim.now < heal_at:  # the holder renews; the cut-off one takes a client's writes
        sim.write(holder, _lease(holder, sim.now))
        sim.write(iso, _note(k))
        k += 1
        sim.step(sim.now + 2_500)
    sim.net.heal()
    current = sim.inst[holder].state.map.get(LEASE_KEY)
    bad, end = 0, sim.now + 3_000
    while sim.now < end:
        sim.step(sim.now + 0.5)
        me = sim.inst[iso]
        q = quorum(iso, names, {}, sim.now / 1000, None, count(me.ae, sim.now), None)
        if q.majority and me.state.map.get(LEASE_KEY) != current:
            bad += 1
    assert sim.run_until_converged(20_000) is not None
    return bad


def test_a_rejoining_instance_counts_a_majority_only_once_caught_up() -> None:
    seeds = range(4)
    fixed = [premature_majorities(s, lambda ae, now: ae.caught_up(now, WINDOW_MS)) for s in seeds]
    assert fixed == [0] * len(seeds)
    # The counting before the fix (heard lately, caught up or not) had the window.
    old = [premature_majorities(s, lambda ae, now: ae.heard_from(now, WINDOW_MS)) for s in seeds]
    assert any(old), old
