"""Wire encoding: round trips, and decode_untrusted raising only BadPacket."""

from __future__ import annotations

import msgpack
import pytest
from _imports import modules_loaded_by
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import MAX_VALUE_DEPTH, decode_map_untrusted, encode_map
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.state import global_key, inventory_key, job_key, node_var_key
from gossipmgr.errors import BadPacket

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=6), kids, max_size=4)
    ),
    max_leaves=10,
)
keys = st.one_of(
    st.builds(global_key, st.text(min_size=1, max_size=10)),
    st.builds(node_var_key, st.text(min_size=1, max_size=10), st.text(max_size=10)),
    st.builds(inventory_key, st.text(min_size=1, max_size=10)),
    st.builds(job_key, st.text(min_size=1, max_size=10)),
)
stamps = st.builds(
    Timestamp, st.integers(0, 2**62), st.integers(0, 2**40), st.text(min_size=1, max_size=12)
)


@st.composite
def maps(draw: st.DrawFn) -> LWWMap:
    items = []
    for _ in range(draw(st.integers(0, 10))):
        k, ts = draw(keys), draw(stamps)
        items.append(
            (k, Entry(ts, None, True) if draw(st.booleans()) else Entry(ts, draw(json_values)))
        )
    m = LWWMap(items)
    m.gc(draw(st.integers(0, 2**40)))  # a real replica never holds tombstones below its horizon
    return m


@settings(max_examples=400)
@given(maps())
def test_round_trip(m: LWWMap) -> None:
    out = decode_map_untrusted(encode_map(m))
    assert out == m and out.gc_horizon == m.gc_horizon


@settings(max_examples=1000)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_badpacket(data: bytes) -> None:
    try:
        decode_map_untrusted(data)
    except BadPacket:
        pass


_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.floats()
)
_level1 = (
    _scalars
    | st.lists(_scalars, max_size=6)
    | st.dictionaries(st.text(max_size=3), _scalars, max_size=3)
)
# Two explicit levels of nesting (st.recursive's self-check proved flaky on this shape).
structured = (
    _level1
    | st.lists(_level1, max_size=6)
    | st.dictionaries(st.text(max_size=3), _level1, max_size=3)
)


@settings(max_examples=1000)
@given(structured)
def test_arbitrary_msgpack_structures_raise_only_badpacket(obj: object) -> None:
    for wrapped in (obj, [1, 0, obj], [1, 0, [obj]], [1, 0, [[["g", "x"], 1, 0, "a", False, obj]]]):
        try:
            decode_map_untrusted(msgpack.packb(wrapped, use_bin_type=True))
        except BadPacket:
            pass


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ([2, 0, []], "version"),
        ([1, -1, []], "shape"),
        ([1, 0, [[["zz", "x"], 1, 0, "a", False, 1]]], "key"),
        ([1, 0, [[["g", "x"], -1, 0, "a", False, 1]]], "timestamp"),
        ([1, 0, [[["g", "x"], 1, 0, "", False, 1]]], "timestamp"),
        ([1, 0, [[["g", "x"], 1, 0, "a", True, 1]]], "entry"),
        ([1, 0, [[["g", "x"], 1, 0, "a", False, b"bin"]]], "value"),
        ([1, 0, [[["g", "x"], 1, 0, "a", 0, 1]]], "entry"),
        # non-finite floats are not JSON: refused like the API refuses 1e400
        ([1, 0, [[["g", "x"], 1, 0, "a", False, float("inf")]]], "value"),
        ([1, 0, [[["g", "x"], 1, 0, "a", False, [float("nan")]]]], "value"),
        ([1, 0, [[["g", "x" * 257], 1, 0, "a", False, 1]]], "key"),
    ],
)
def test_malformed_inputs_name_their_reason(body: list[object], reason: str) -> None:
    with pytest.raises(BadPacket) as exc:
        decode_map_untrusted(msgpack.packb(body, use_bin_type=True))
    assert exc.value.reason == reason


def test_deep_nesting_refused() -> None:
    v: object = 1
    for _ in range(MAX_VALUE_DEPTH + 2):
        v = [v]
    body = [1, 0, [[["g", "x"], 1, 0, "a", False, v]]]
    with pytest.raises(BadPacket):
        decode_map_untrusted(msgpack.packb(body, use_bin_type=True))


def test_pure_modules_import_neither_trio_nor_socket() -> None:
    pure = [
        "gossipmgr.core.clock",
        "gossipmgr.core.crdt",
        "gossipmgr.core.state",
        "gossipmgr.core.codec",
        "gossipmgr.core.lease",
        "gossipmgr.gossip.protocol",
        "gossipmgr.gossip.crypto",
        "gossipmgr.core.inventory",
        "gossipmgr.core.inventory_import",
        "gossipmgr.core.job",
        "gossipmgr.core.node",
        "gossipmgr.core.orders",
        "gossipmgr.gossip.datagram",
        "gossipmgr.gossip.keys",
        "gossipmgr.testing.netsim",
        "gossipmgr.testing.sim",
    ]
    loaded = modules_loaded_by(pure)
    assert [m for m in ("trio", "socket") if m in loaded] == []


@settings(max_examples=200)
@given(maps())
def test_trusted_decode_equals_untrusted_decode(m: LWWMap) -> None:
    from gossipmgr.core.codec import decode_map_trusted

    data = encode_map(m)
    trusted = decode_map_trusted(data)
    assert trusted == decode_map_untrusted(data)
    assert trusted.leaf_digests() == m.leaf_digests()


def test_trusted_decode_with_a_repeated_key_keeps_the_join_winner() -> None:
    """Never written by us, but a state must still decode to the join of its entries."""
    from gossipmgr.core.codec import VERSION, decode_map_trusted

    k = list(global_key("x"))
    raw = [[k, 5, 0, "b", False, "new"], [k, 3, 0, "a", False, "old"]]
    for order in (raw, raw[::-1]):
        m = decode_map_trusted(msgpack.packb([VERSION, 0, order], use_bin_type=True))
        assert m.get(global_key("x")) == "new"
        assert len(m) == 1


def test_trusted_decode_drops_tombstones_below_the_gc_horizon() -> None:
    from gossipmgr.core.codec import VERSION, decode_map_trusted

    raw = [
        [list(global_key("gone")), 10, 0, "a", True, None],
        [list(global_key("kept")), 30, 0, "a", True, None],
        [list(global_key("live")), 10, 0, "a", False, 1],
    ]
    m = decode_map_trusted(msgpack.packb([VERSION, 20, raw], use_bin_type=True))
    assert m.gc_horizon == 20
    assert m.entry(global_key("gone")) is None
    kept = m.entry(global_key("kept"))
    assert kept is not None and kept.deleted
    assert m.get(global_key("live")) == 1
    assert m == decode_map_untrusted(msgpack.packb([VERSION, 20, raw], use_bin_type=True))
