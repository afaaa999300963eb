"""Per-node history as CRDT state (gossipmgr.core.history): entries written by several
instances, delivered in any order, converge to the same entries, the same bound and the same
reads on every replica, and a pruned entry never comes back. Pure: Hypothesis over seeded
schedules; the API and a real cluster are covered in test_history_api.py and
test_history_cluster.py."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.history import Cause, event_of, history_id, is_history_key
from gossipmgr.core.state import ClusterState, combine, rebuilt_index

NODES = ("r1-a", "r1-b")
WRITERS = ("i1", "i2", "i3")


def _event(state: ClusterState, node: str, kind: int, epoch: int, ts: Timestamp) -> LWWMap:
    """One inventory change of ``node`` (the kinds the runtime makes)."""
    rec = state.node(node)
    if kind == 0 or rec is None:
        return inv.d_discovered(state, node, node[:2], node[3:], "10.0.0.1", epoch, ts)
    if kind == 1:
        return inv.d_disappeared(state, node, epoch, ts)
    if kind == 2:
        return inv.d_forget(state, node, epoch, ts)
    to = inv.PROVISIONING if inv.status_of(rec) != inv.PROVISIONING else inv.UNALLOCATED
    if not inv.allowed(inv.status_of(rec), to):
        return LWWMap()
    return inv.move_statuses(state, [node], to, epoch, ts)


class Writer:
    def __init__(self, name: str) -> None:
        self.name = name
        self.state = ClusterState()
        self.clock = HLC(name)
        self.phys = 0
        #: every history entry it pruned (tombstoned)
        self.pruned: set[tuple[str, ...]] = set()

    def receive(self, delta: LWWMap) -> None:
        for _, e in delta.items():
            self.clock.observe(e.ts, self.phys)
        self.state.apply(delta)

    def write(self, node: str, kind: int, limit: int) -> LWWMap:
        self.phys += 1
        ts = self.clock.now(self.phys)
        change = _event(self.state, node, kind, 1, ts)
        cause = Cause(self.name, 1, token="ops", reason=f"kind {kind}")
        delta = self.state.d_history(change, ts, cause, limit)
        self.pruned |= {k for k, e in delta.items() if is_history_key(k) and e.deleted}
        self.state.apply(delta)
        return delta


_step = st.tuples(
    st.integers(0, len(WRITERS) - 1),  # who writes
    st.integers(0, len(NODES) - 1),  # which node
    st.integers(0, 3),  # what happens
    st.integers(0, 4),  # how many pending deltas it hears first
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_step, min_size=1, max_size=40), st.integers(1, 4), st.randoms())
def test_history_converges_under_any_delivery_order(
    steps: list[tuple[int, int, int, int]], limit: int, rnd: random.Random
) -> None:
    writers = [Writer(n) for n in WRITERS]
    sent: list[LWWMap] = []
    heard = [0] * len(writers)  # a prefix of `sent` in shuffled order, per writer
    for who, node, kind, hear in steps:
        w = writers[who]
        pending = sent[heard[who] : heard[who] + hear]
        rnd.shuffle(pending)
        for d in pending:
            w.receive(d)
        heard[who] += len(pending)
        sent.append(w.write(NODES[node], kind, limit))
    # Every replica, then a fresh one, joins everything in its own random order.
    replicas = [w.state for w in writers] + [ClusterState()]
    for r in replicas:
        order = list(sent)
        rnd.shuffle(order)
        for d in order:
            r.apply(d)
    first = replicas[0]
    pruned = set().union(*(w.pruned for w in writers))
    for r in replicas:
        assert r.map == first.map
        assert r.index_snapshot() == rebuilt_index(r.map)
        for n in NODES:
            assert r.history(n, limit) == first.history(n, limit)
            assert len(r.history(n, limit)) <= limit
        for k in pruned:  # a pruned entry never comes back
            assert k not in r.map
    # Without concurrency (one writer), the bound holds exactly in the state itself.


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 3)), min_size=1, max_size=30))
def test_one_writer_keeps_exactly_the_newest_entries(steps: list[tuple[int, int]]) -> None:
    w = Writer("i1")
    written: dict[str, list[str]] = {n: [] for n in NODES}
    for node, kind in steps:
        d = w.write(NODES[node], kind, 3)
        for k, e in d.items():
            if is_history_key(k) and not e.deleted:
                written[k[1]].append(k[3])
    for n in NODES:
        live = [h["id"] for h in w.state.history(n, 1000)]
        assert live == sorted(written[n], reverse=True)[:3]


def test_events_name_what_changed() -> None:
    c = Cause("i1", 3)
    disc = {"status": "Unallocated", "state": "Discovered", "epoch": 3}
    gone = {**disc, "state": "Disappeared"}
    prov = {**disc, "status": "Provisioning"}
    assert event_of(None, disc, c) == "discovered"
    assert event_of(disc, gone, c) == "disappeared"
    assert event_of(gone, disc, c) == "reappeared"
    assert event_of(disc, prov, c) == "status"
    assert event_of(disc, prov, Cause("i1", 3, imported=True)) == "imported"
    assert event_of(disc, {"forgotten": True, "epoch": 3}, c) == "forgotten"
    assert event_of({"forgotten": True, "epoch": 2}, disc, c) == "discovered"
    assert event_of(disc, {**disc, "epoch": 4}, c) is None


def test_entry_records_who_where_when_and_why() -> None:
    s = ClusterState()
    ts = Timestamp(1000, 2, "i2")
    change = inv.d_discovered(s, "r-1", "r", "1", "10.0.0.9", 7, ts)
    cause = Cause("i2", 7, token="ops", job="j1", reason="serf: member alive")
    s.apply(s.d_history(change, ts, cause, 200))
    (h,) = s.history("r-1", 10)
    assert h == {
        "id": history_id(ts),
        "event": "discovered",
        "status": "Unallocated",
        "prev_status": "Incomplete",
        "state": "Discovered",
        "prev_state": "Unknown",
        "epoch": 7,
        "instance": "i2",
        "token": "ops",
        "job": "j1",
        "reason": "serf: member alive",
        "ms": 1000,
    }


def test_history_off_writes_nothing() -> None:
    s = ClusterState()
    ts = Timestamp(5, 0, "i1")
    change = inv.d_discovered(s, "r-1", "r", "1", "10.0.0.9", 1, ts)
    assert s.d_history(change, ts, Cause("i1", 1), 0) == change


def test_forged_history_values_are_left_out() -> None:
    s = ClusterState()
    ts = Timestamp(5, 0, "x")
    bad: list[Any] = [7, {"event": "nonsense"}, {"no": "event"}]
    s.apply(combine(*(s.d_set(("n", "r-1", "h", f"{i}"), v, ts) for i, v in enumerate(bad))))
    assert s.history("r-1", 10) == []
    assert s.node("r-1") is None  # history alone makes no node
