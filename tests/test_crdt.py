"""Join laws of the LWW map and the cluster state (Hypothesis, 100-200 cases each; the seeded
anti-entropy schedules of test_gossip_protocol.py join thousands of deltas on top)."""

from __future__ import annotations

import random
import subprocess
import sys

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import Entry, LWWMap, entry_hash, hashed_entries, join, leaf_of
from gossipmgr.core.lease import Lease
from gossipmgr.core.state import (
    LEASE_KEY,
    ClusterState,
    combine,
    global_key,
    host_group_key,
    inventory_key,
    job_key,
    node_var_key,
)

names = st.sampled_from(["a", "b", "c", "d"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.text(max_size=8),
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3)
    ),
    max_leaves=6,
)
keys = st.one_of(
    st.builds(global_key, st.sampled_from(["x", "y", "z"])),
    st.builds(node_var_key, st.sampled_from(["n1", "n2"]), st.sampled_from(["v", "w"])),
    st.builds(host_group_key, st.sampled_from(["n1", "n2"])),
)
timestamps = st.builds(Timestamp, st.integers(0, 50), st.integers(0, 3), names)


@st.composite
def entries(draw: st.DrawFn) -> tuple[tuple[str, ...], Entry]:
    k = draw(keys)
    ts = draw(timestamps)
    if draw(st.booleans()) and draw(st.booleans()):
        return k, Entry(ts, None, True)
    return k, Entry(ts, draw(json_values))


def lease_entries() -> st.SearchStrategy[tuple[tuple[str, ...], Entry]]:
    return st.builds(
        lambda h, ep, x, ts: (LEASE_KEY, Entry(ts, Lease(h, ep, x).as_value())),
        names,
        st.integers(0, 4),
        st.integers(0, 100),
        timestamps,
    )


maps = st.lists(st.one_of(entries(), lease_entries()), max_size=12).map(LWWMap)


@settings(max_examples=100)
@given(maps)
def test_join_idempotent(a: LWWMap) -> None:
    assert join(a, a) == a


@settings(max_examples=150)
@given(maps, maps)
def test_join_commutative(a: LWWMap, b: LWWMap) -> None:
    assert join(a, b) == join(b, a)


@settings(max_examples=150)
@given(maps, maps, maps)
def test_join_associative(a: LWWMap, b: LWWMap, c: LWWMap) -> None:
    assert join(join(a, b), c) == join(a, join(b, c))


@given(maps)
def test_the_fused_hashing_of_a_restored_state_equals_the_per_entry_hashes(m: LWWMap) -> None:
    """``hashed_entries`` (a restored state's first digests) packs each key once; its leaves
    and hashes are byte for byte those of ``leaf_of``/``entry_hash``, which the incremental
    upkeep and every other version of gossipmgr compute."""
    got = list(hashed_entries(m.items()))
    assert got == [(k, leaf_of(k), entry_hash(k, e)) for k, e in m.items()]


@settings(max_examples=150)
@given(maps, maps)
@example(  # equal in Python (False == 0), not on the wire: the join kept whichever came first
    LWWMap([(("n", "n1", "v", "w"), Entry(Timestamp(0, 2, "a"), [False, False]))]),
    LWWMap([(("n", "n1", "v", "w"), Entry(Timestamp(0, 2, "a"), [False, 0]))]),
)
def test_digests_match_iff_states_match(a: LWWMap, b: LWWMap) -> None:
    ab, ba = join(a, b), join(b, a)
    assert ab.super_digests() == ba.super_digests()
    assert ab.leaf_digests() == ba.leaf_digests()
    if a != b:
        # With 64-bit hashes a collision is astronomically unlikely in a test run.
        assert a.leaf_digests() != b.leaf_digests()


@settings(max_examples=200)
@given(maps, keys, json_values, st.booleans(), timestamps)
def test_state_join_delta_equals_mutated_state(
    a: LWWMap, k: tuple[str, ...], v: object, remove: bool, ts: Timestamp
) -> None:
    """X ⊔ m^δ(X) = m(X): applying the delta equals performing the mutation."""
    delta = a.remove_delta(k, ts) if remove else a.set_delta(k, v, ts)
    before = a.copy()
    mutated = join(a, delta)
    assert a == before  # reads and delta construction never mutate
    # the mutation: the entry for k becomes the delta's unless the old one wins
    expected = before.copy()
    expected.join([(k, Entry(ts, None if remove else v, remove))])
    assert mutated == expected


@settings(max_examples=100)
@given(st.lists(st.one_of(entries(), lease_entries()), min_size=1, max_size=15), st.randoms())
def test_any_order_duplication_regrouping_converges(
    history: list[tuple[tuple[str, ...], Entry]], rnd: random.Random
) -> None:
    deltas = [LWWMap([e]) for e in history]
    reference = LWWMap()
    for d in deltas:
        reference.join(d)
    # shuffle, duplicate some, regroup into random intervals
    shuffled = deltas + [rnd.choice(deltas) for _ in range(rnd.randint(0, 5))]
    rnd.shuffle(shuffled)
    groups: list[LWWMap] = []
    while shuffled:
        n = rnd.randint(1, 4)
        groups.append(combine(*shuffled[:n]))
        shuffled = shuffled[n:]
    replica = LWWMap()
    for g in groups:
        replica.join(g)
    assert replica == reference


def test_join_returns_only_novel_part() -> None:
    a = LWWMap()
    d1 = a.set_delta(global_key("x"), 1, Timestamp(5, 0, "a"))
    assert len(a.join(d1)) == 1
    assert len(a.join(d1)) == 0  # duplicate: nothing novel (RR)
    old = a.set_delta(global_key("x"), 0, Timestamp(4, 0, "b"))
    assert len(a.join(old)) == 0 and a.get(global_key("x")) == 1


def test_tombstone_beats_older_write_and_gc_refuses_old_tombstones() -> None:
    m = LWWMap()
    m.join(m.set_delta(global_key("x"), 1, Timestamp(10, 0, "a")))
    m.join(m.remove_delta(global_key("x"), Timestamp(11, 0, "b")))
    assert global_key("x") not in m
    m.join(m.set_delta(global_key("x"), 2, Timestamp(10, 5, "c")))  # late, older write
    assert global_key("x") not in m
    assert m.gc(horizon_ms=20) == 1 and len(m) == 0
    # a tombstone older than the horizon arriving late is refused, not resurrected
    assert len(m.join(m.remove_delta(global_key("y"), Timestamp(12, 0, "a")))) == 0


def test_lease_order_epoch_then_name_then_time() -> None:
    def lease_map(holder: str, epoch: int, ts: Timestamp) -> LWWMap:
        return LWWMap({LEASE_KEY: Entry(ts, Lease(holder, epoch, 0).as_value())})

    m = lease_map("b", 2, Timestamp(1, 0, "b"))
    m.join(lease_map("a", 1, Timestamp(99, 0, "a")))  # newer clock, older epoch: loses
    assert m.get(LEASE_KEY)["holder"] == "b"
    m.join(lease_map("c", 2, Timestamp(50, 0, "c")))  # same epoch, later name: loses
    assert m.get(LEASE_KEY)["holder"] == "b"
    m.join(lease_map("a", 2, Timestamp(0, 0, "a")))  # same epoch, earlier name: wins
    assert m.get(LEASE_KEY)["holder"] == "a"
    m.join(lease_map("ab", 2, Timestamp(0, 1, "ab")))  # "a" sorts before "ab"
    assert m.get(LEASE_KEY)["holder"] == "a"
    m.join(lease_map("a", 2, Timestamp(7, 0, "a")))  # renewal: later timestamp wins
    assert m.entry(LEASE_KEY).ts == Timestamp(7, 0, "a")  # type: ignore[union-attr]


def test_merge_orders_do_not_depend_on_what_was_imported() -> None:
    """The join ranks a lease by epoch even in a process that imported only the map.

    The orders used to be registered into ``crdt.ORDERS`` when ``core.state`` was imported;
    before that, every namespace was plain LWW and a stale lease claim with a newer clock won.
    """
    code = (
        "import sys\n"
        "from gossipmgr.core.clock import Timestamp\n"
        "from gossipmgr.core.crdt import Entry, LWWMap\n"
        "assert 'gossipmgr.core.state' not in sys.modules\n"
        "k = ('lease',)\n"
        "m = LWWMap({k: Entry(Timestamp(1, 0, 'b'), {'holder': 'b', 'epoch': 2})})\n"
        "m.join(LWWMap({k: Entry(Timestamp(99, 0, 'a'), {'holder': 'a', 'epoch': 1})}))\n"
        "print(m.get(k)['holder'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "b"


def test_fenced_records_refuse_stale_epochs_and_count_them() -> None:
    s = ClusterState()
    new = {"status": "Allocated", "epoch": 3}
    stale = {"status": "Unallocated", "epoch": 2}
    s.apply(s.d_set(inventory_key("n1"), new, Timestamp(10, 0, "a")))
    s.apply(s.d_set(inventory_key("n1"), stale, Timestamp(11, 0, "b")))
    assert s.node("n1").inventory.status == "Allocated"  # type: ignore[union-attr]
    s.apply(s.d_set(job_key("1"), {"status": "Complete", "epoch": 3}, Timestamp(10, 0, "a")))
    s.apply(s.d_set(job_key("1"), {"status": "Running", "epoch": 2}, Timestamp(12, 0, "b")))
    assert s.map.get(job_key("1"))["status"] == "Complete"
    assert s.map.fenced == 2


def test_cluster_state_views_and_replace() -> None:
    s = ClusterState()
    t = iter(Timestamp(i, 0, "a") for i in range(1, 100))
    s.apply(s.d_replace_globals({"a": 1, "b": 2}, next(t)))
    s.apply(s.d_replace_globals({"b": 3, "c": 4}, next(t)))
    assert s.globals() == {"b": 3, "c": 4}
    s.apply(s.d_set(inventory_key("n1"), {"status": "Unallocated"}, next(t)))
    s.apply(s.d_set(host_group_key("n1"), "service-master", next(t)))
    s.apply(s.d_replace_node_vars("n1", {"v": 1}, next(t)))
    rec = s.node("n1")
    assert rec is not None and rec.host_group == "service-master" and rec.vars == {"v": 1}
    assert s.node_names() == ["n1"] and s.node("n2") is None
    # a var without an inventory record does not make a node
    s.apply(s.d_set(node_var_key("ghost", "v"), 1, next(t)))
    assert s.node_names() == ["n1"]


@settings(max_examples=100)
@given(maps, maps)
def test_lazy_digests_equal_incremental_ones(a: LWWMap, b: LWWMap) -> None:
    lazy = LWWMap.lazy()
    lazy.merge(a.items())
    lazy.merge(b.items())
    eager = join(a, b)
    assert lazy == eager
    assert lazy.leaf_digests() == eager.leaf_digests()  # first read computes them all
    extra = LWWMap({global_key("late"): Entry(Timestamp(99, 0, "z"), 1)})
    lazy.join(extra)  # from now on maintained incrementally
    eager.join(extra)
    assert lazy.super_digests() == eager.super_digests()


def test_records_of_another_shape_read_as_absent_never_raise() -> None:
    """A key holder (or another version) can gossip a node, job or config record that is
    not a map; the readers the lease loop's reconcile and the API use must not raise (a
    ``dict(value)`` on a list or a string did: every holder's lease loop would crash)."""
    from gossipmgr.core import inventory as inv
    from gossipmgr.core.node import Inventory
    from gossipmgr.core.state import ANSIBLE_CONFIG_KEY, monitoring_key

    for bad in ([1, 2], "x", 7, None, [["a", 1]]):
        s = ClusterState()
        t = iter(Timestamp(i, 0, "a") for i in range(1, 100))
        s.apply(s.d_set(inventory_key("n1"), bad, next(t)))
        s.apply(s.d_set(monitoring_key("n1"), bad, next(t)))
        s.apply(s.d_set(job_key("j1"), bad, next(t)))
        s.apply(s.d_set(ANSIBLE_CONFIG_KEY, bad, next(t)))
        recs = list(s.nodes())
        assert [r.name for r in recs] == ["n1"]
        assert recs[0].inventory == Inventory() and recs[0].monitoring is None
        assert inv.state_of(recs[0]) == inv.UNKNOWN and inv.addr_of(recs[0]) == ""
        assert s.jobs() == {} and s.job("j1") is None and s.ansible_config() is None
