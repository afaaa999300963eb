"""The from-disk check's fast path (``codec._from_disk_plain``, issue 17: the restore's
CPU) accepts only what the full check (``codec._check_entry``) accepts: compared on
generated entries of every shape, valid and mutated, and on the shapes a restore mostly
reads (where it must fire, or it saves nothing)."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmgr.core import codec
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import Entry
from gossipmgr.errors import BadPacket


class Sub(str):
    """A str subclass: the full check tells it from a str in places."""


def _outcome(key: Any, e: Entry) -> str:
    try:
        out = codec._check_entry(key, e, True)
    except BadPacket as exc:
        return f"refused {exc.reason}"
    return "accepted" if out is None else "accepted, encoded"


LONG = codec.MAX_KEY_PART
parts = st.one_of(
    st.sampled_from(["g", "j", "n", "cfg", "lease", "jl", "inv", "hg", "mon", "v", "h"]),
    st.text(max_size=8),
    st.text(min_size=LONG - 1, max_size=LONG + 1, alphabet="ab"),
    st.builds(Sub, st.sampled_from(["g", "n", "inv", "v", "x"])),
    st.integers(-2, 2),
    st.none(),
    st.binary(max_size=3),
)
names = st.one_of(
    st.text(max_size=8),
    st.text(min_size=LONG - 1, max_size=LONG + 1, alphabet="ab"),
    st.builds(Sub, st.just("x")),
)
#: the shapes a restore reads (parts mutated now and then), and anything else
keys = st.one_of(
    st.tuples(st.sampled_from(["g", "j", "jl", Sub("g")]), names),
    st.tuples(
        st.sampled_from(["n", Sub("n")]), names, st.sampled_from(["hg", "inv", "x", Sub("inv")])
    ),
    st.tuples(st.just("n"), names, st.sampled_from(["v", "h", "inv", Sub("v")]), names),
    st.lists(parts, max_size=7).map(tuple),
    st.lists(parts, min_size=1, max_size=4),  # a list, not a tuple
)
scalars = st.one_of(
    st.text(max_size=20),
    st.builds(Sub, st.text(max_size=3)),
    st.booleans(),
    st.none(),
    st.integers(codec.MIN_INT - 2, codec.MIN_INT + 2),
    st.integers(codec.MAX_INT - 2, codec.MAX_INT + 2),
    st.integers(-1000, 1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=3),
    st.just("\ud800"),  # a lone surrogate: msgpack cannot encode it
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers(0, 3)), inner, max_size=4),
    ),
    max_leaves=12,
)
good_leaves = st.one_of(
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=False, allow_infinity=False),
)
bad_leaves = st.one_of(
    st.integers(codec.MIN_INT - 2, codec.MIN_INT + 1),
    st.integers(codec.MAX_INT - 1, codec.MAX_INT + 2),
    st.sampled_from([math.nan, math.inf, -math.inf, b"x", Sub("s"), [1], {"a": 1}, "\ud800"]),
)
#: flat objects, as node records are: what the fast path takes, sometimes with one leaf
#: or key it must leave to the full check
flat = st.builds(
    lambda d, extra: {**d, **extra},
    st.dictionaries(st.text(max_size=6), good_leaves, max_size=4),
    st.one_of(
        st.just({}),
        st.dictionaries(
            st.one_of(st.text(max_size=3), st.builds(Sub), st.integers(0, 3)),
            bad_leaves,
            max_size=1,
        ),
        st.dictionaries(st.builds(Sub, st.text(max_size=2)), good_leaves, max_size=1),
    ),
)
big = st.sampled_from(
    [
        "x" * (codec.MAX_ENTRY_BYTES // 4),
        {"a": "y" * (codec.MAX_ENTRY_BYTES // 4)},
        {str(i): i for i in range(codec.MAX_VALUE_ITEMS + 1)},
    ]
)
nodes = st.one_of(
    st.just("r1"),
    st.just("r1"),
    st.text(min_size=codec.MAX_NODE_ID - 1, max_size=codec.MAX_NODE_ID + 1, alphabet="n"),
    st.builds(Sub, st.just("r1")),
)
entries = st.builds(
    lambda ms, node, value, deleted: Entry(Timestamp(ms, 0, node), value, deleted),
    st.integers(0, 10),
    nodes,
    st.one_of(scalars, flat, flat, values, big),
    st.one_of(st.just(False), st.just(False), st.booleans(), st.sampled_from([0, 1, None])),
)


plain_keys = st.one_of(
    st.tuples(st.sampled_from(["g", "j"]), st.text(max_size=8)),
    st.tuples(st.just("n"), st.text(max_size=8), st.sampled_from(["hg", "inv", "mon"])),
    st.tuples(st.just("n"), st.text(max_size=8), st.sampled_from(["v", "h"]), st.text(max_size=8)),
)
near = st.builds(
    lambda node, value, deleted: Entry(Timestamp(1, 0, node), value, deleted),
    nodes,
    st.integers(0, 3).flatmap(lambda i: flat if i else scalars),  # (one_of would flatten)
    st.sampled_from([False, False, False, True, 0, 1]),
)


def _compare(key: Any, e: Entry) -> bool:
    """check_entry (fast path first) and the full check give the same outcome; whether
    the fast path took it."""
    full = _outcome(key, e)
    fast = codec._from_disk_plain(key, e)
    if fast:
        assert full == "accepted", (key, e)
    try:
        both = "accepted" if codec.check_entry(key, e, from_disk=True) is None else "encoded"
        both = "accepted" if both == "accepted" else "accepted, encoded"
    except BadPacket as exc:
        both = f"refused {exc.reason}"
    assert both == full
    return fast


@settings(max_examples=500, deadline=None)
@given(keys, entries)
def test_the_fast_path_accepts_only_what_the_full_check_accepts(key: Any, e: Entry) -> None:
    _compare(key, e)


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(keys.filter(lambda k: codec._plain_key(k) if type(k) is tuple else False), keys), near
)
def test_the_same_on_the_fast_paths_own_shapes_mutated(key: Any, e: Entry) -> None:
    """Keys, node ids and flat values the fast path takes, and near misses of each."""
    _compare(key, e)


@given(
    st.text(max_size=40),
    st.dictionaries(
        st.text(max_size=10),
        st.one_of(
            st.text(max_size=30),
            st.integers(codec.MIN_INT, codec.MAX_INT),
            st.booleans(),
            st.none(),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        max_size=8,
    ),
)
def test_the_common_shapes_take_the_fast_path(name: str, flat: dict[str, Any]) -> None:
    ts = Timestamp(1, 0, "r1")
    common = [
        (("g", name), Entry(ts, "a value")),
        (("n", name, "inv"), Entry(ts, flat)),
        (("n", name, "mon"), Entry(ts, flat)),
        (("n", name, "hg"), Entry(ts, "service-worker")),
        (("n", name, "v", "x"), Entry(ts, None, True)),
        (("j", name), Entry(ts, None, True)),
    ]
    for key, e in common:
        assert codec._from_disk_plain(key, e), key
        assert _outcome(key, e) == "accepted"


BAD_LEAVES = [
    codec.MIN_INT - 1,
    codec.MAX_INT + 1,
    math.nan,
    math.inf,
    b"x",
    Sub("s"),
    [1],
    {"a": 1},
    "\ud800",
    bytearray(b"x"),
    1j,
]
NEAR_KEYS = [
    ("g", "x"),
    ("j", "x"),
    ("n", "x", "inv"),
    ("n", "x", "v", "y"),
    ("g", "a" * (LONG + 1)),
    ("n", "a" * (LONG + 1), "hg"),
    ("n", "x", "v", "a" * (LONG + 1)),
    ("n", "x", "x"),
    ("n", "x", "v"),
    ("n", "x", Sub("inv")),
    ("n", "x", Sub("v"), "y"),
    (Sub("g"), "x"),
    ("g", Sub("x")),
    ("g", 1),
    ("g",),
    ("g", "x", "y"),
    ("cfg", "ansible"),
    ("lease",),
    ("jl", "x", "000001"),
    ["g", "x"],
    (),
]


def test_each_near_miss_gets_the_full_checks_answer() -> None:
    """Every key shape next to the fast path's, every leaf it must not take (alone and in
    an object, under a good and a bad object key), every tombstone flag and node id."""
    values: list[Any] = ["ok", {"a": "ok", "b": 1, "c": 1.5, "d": None, "e": True}]
    values += BAD_LEAVES + [{"a": "ok", "b": bad} for bad in BAD_LEAVES]
    values += [{Sub("k"): "ok"}, {1: "ok"}, {str(i): i for i in range(codec.MAX_VALUE_ITEMS + 1)}]
    values += ["x" * (codec.MAX_ENTRY_BYTES // 4), {"a": "y" * (codec.MAX_ENTRY_BYTES // 4)}]
    took = 0
    for key in NEAR_KEYS:
        for value in values:
            for deleted in (False, True, 0, 1, None):
                for node in ("r1", "n" * codec.MAX_NODE_ID, "n" * (codec.MAX_NODE_ID + 1)):
                    took += _compare(key, Entry(Timestamp(1, 0, node), value, deleted))  # type: ignore[arg-type]
    assert took > 100
