"""Reads cost what they read: the replica's indexes (gossipmgr.core.state) agree with a full
rebuild from the map after any sequence of joins, deletes and GC; and keys holding "/" read
and write correctly over the API (a standalone instance, in-process and over real HTTP).

How fast the indexed reads are is measured by ``bench/bench_reads.py``, not asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from _apiutil import add_nodes, serving, standalone
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmgr.api import OPENAPI, create_app
from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.core.history import history_key
from gossipmgr.core.inventory import find_node
from gossipmgr.core.job import JobRecord
from gossipmgr.core.node import Monitoring
from gossipmgr.core.orders import GLOBAL, JOB, NODE
from gossipmgr.core.state import (
    ClusterState,
    global_key,
    host_group_key,
    inventory_key,
    job_key,
    monitoring_key,
    node_var_key,
    rebuilt_index,
)
from gossipmgr.gossip.protocol import AntiEntropy

# --------------------------------------------------------------------------- indexes

_names = st.sampled_from(["a", "b", "a/b", "/", "x//y"])
_addrs = st.sampled_from(["", "10.0.0.1", "10.0.0.2"])
_inv_values = st.one_of(
    st.builds(
        lambda e: {"status": "Unallocated", "state": "Discovered", "epoch": e}, st.integers(0, 3)
    ),
    st.builds(lambda e: {"forgotten": True, "epoch": e}, st.integers(0, 3)),
    st.just(7),  # another shape: a forged record reads as a node all the same
)
_mon_values = st.one_of(
    st.builds(lambda a: {"label": "l", "serial": "s", "addr": a}, _addrs), st.just("junk")
)


@st.composite
def _key_value(draw: st.DrawFn) -> tuple[Key, Any]:
    name = draw(_names)
    kind = draw(st.sampled_from(["g", "j", "inv", "mon", "hg", "v", "h"]))
    if kind == "g":
        return global_key(name), draw(st.one_of(st.none(), st.integers(0, 2)))
    if kind == "j":
        status = draw(st.sampled_from(["Running", "Queued", "Complete", "Errored"]))
        return job_key(name), {"id": name, "epoch": draw(st.integers(0, 3)), "status": status}
    if kind == "inv":
        return inventory_key(name), draw(_inv_values)
    if kind == "mon":
        return monitoring_key(name), draw(_mon_values)
    if kind == "hg":
        return host_group_key(name), "service-master"
    if kind == "h":  # a node history entry: its own index, never the node's keys
        return history_key(name, draw(st.sampled_from(["1-0-p", "2-0-q"]))), {"event": "status"}
    return node_var_key(name, draw(_names)), draw(st.integers(0, 2))


@st.composite
def _op(draw: st.DrawFn) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["set", "set", "del", "gc"]))
    if kind == "gc":
        return ("gc", draw(st.integers(0, 60)))
    k, v = draw(_key_value())
    ts = Timestamp(draw(st.integers(0, 50)), draw(st.integers(0, 2)), draw(st.sampled_from("pq")))
    return (kind, k, v, ts)


def _naive_reads(m: LWWMap) -> dict[str, Any]:
    """The reads as the definitions state them, by a scan of every entry."""
    live = dict(m.live())
    nodes = sorted(
        k[1]
        for k, v in live.items()
        if k[0] == NODE and k[2] == "inv" and not (isinstance(v, dict) and v.get("forgotten"))
    )
    addrs: dict[str, list[str]] = {}
    for n in nodes:
        mon = Monitoring.from_value(live.get(monitoring_key(n)))
        if mon is not None and mon.addr:
            addrs.setdefault(mon.addr, []).append(n)
    jobs = {}
    for k, v in sorted(live.items()):
        rec = JobRecord.from_value(v) if k[0] == JOB else None
        if rec is not None and rec.id == k[1]:
            jobs[k[1]] = rec
    return {
        "globals": {k[1]: v for k, v in sorted(live.items()) if k[0] == GLOBAL},
        "nodes": nodes,
        "vars": {n: {k[3]: v for k, v in live.items() if k[:3] == (NODE, n, "v")} for n in nodes},
        "by_addr": addrs,
        "jobs": jobs,
    }


def _reads(s: ClusterState) -> dict[str, Any]:
    nodes = s.node_names()
    by_addr: dict[str, list[str]] = {}
    for n in nodes:
        rec = s.node(n)
        assert rec is not None and s.has_node(n)
        if rec.addr:
            found = find_node(s, rec.addr)
            assert found is not None and found.addr == rec.addr
            by_addr.setdefault(rec.addr, []).append(n)
    for a, names in by_addr.items():
        # of several nodes at one address, the first in name order answers for it
        if a not in names:
            found = find_node(s, a)
            assert found is not None and found.name == names[0]
    for var in s.globals():
        assert s.has_global(var)
        assert s.global_value(var) == s.globals()[var]
    assert s.node_count() == len(nodes)
    return {
        "globals": s.globals(),
        "nodes": nodes,
        "vars": {n: dict(rec.vars) for n in nodes if (rec := s.node(n)) is not None},
        "by_addr": by_addr,
        "jobs": s.jobs(),
    }


@settings(max_examples=300, deadline=None)
@given(st.lists(_op(), max_size=40))
def test_indexes_agree_with_a_rebuild_after_any_applies_deletes_and_gc(ops: list[Any]) -> None:
    s = ClusterState()
    for op in ops:
        if op[0] == "gc":
            s.gc(op[1])
        else:
            _, k, v, ts = op
            s.apply([(k, Entry(ts, None, True) if op[0] == "del" else Entry(ts, v))])
        assert s.index_snapshot() == rebuilt_index(s.map)
    assert _reads(s) == _naive_reads(s.map)
    # The other paths that fill a replica index alike: a whole state joined at once into
    # an empty one, restored by adopt, and the constructor.
    joined = ClusterState()
    joined.apply(s.map.copy())
    adopted = ClusterState()
    adopted.adopt(s.map.copy())
    built = ClusterState(s.map.copy())
    for other in (joined, adopted, built):
        assert other.index_snapshot() == s.index_snapshot()
        # a high-water mark of every record ever seen: a rebuild may only trail it
        assert other.max_record_epoch <= s.max_record_epoch


def test_a_tombstone_leaves_no_trace_in_the_indexes_and_gc_keeps_them_true() -> None:
    s = ClusterState()
    t = [Timestamp(ms, 0, "p") for ms in range(5)]
    s.apply([(global_key("a/b"), Entry(t[0], 1)), (node_var_key("n/1", "v"), Entry(t[0], 2))])
    s.apply([(inventory_key("n/1"), Entry(t[0], {"status": "Unallocated", "epoch": 1}))])
    s.apply([(monitoring_key("n/1"), Entry(t[0], {"addr": "10.0.0.9"}))])
    assert s.has_global("a/b") and s.node_names() == ["n/1"]
    assert s.nodes_at("10.0.0.9") == ["n/1"]
    s.apply([(global_key("a/b"), Entry(t[1], None, True))])
    s.apply([(monitoring_key("n/1"), Entry(t[1], {"addr": "10.0.0.8"}))])
    s.apply([(node_var_key("n/1", "v"), Entry(t[1], None, True))])
    assert not s.has_global("a/b") and s.globals() == {}
    assert s.nodes_at("10.0.0.9") == [] and s.nodes_at("10.0.0.8") == ["n/1"]
    rec = s.node("n/1")
    assert rec is not None and rec.vars == {}
    assert s.gc(t[4].ms) == 2
    assert s.index_snapshot() == rebuilt_index(s.map)
    # forgetting the node: its marker stays indexed under the node, the node is gone
    s.apply([(inventory_key("n/1"), Entry(t[2], {"forgotten": True, "epoch": 2}))])
    assert s.node_names() == [] and s.node_count() == 0 and s.node("n/1") is None
    assert find_node(s, "10.0.0.8") is None
    assert s.index_snapshot() == rebuilt_index(s.map)


def test_a_job_record_of_another_shape_is_indexed_never_raised_on() -> None:
    """A job record whose status is a list or a map (a forged or future record: any JSON
    passes the wire checks) is joined by gossip and read back at restore. Indexing it
    raised TypeError (an unhashable status looked up in a frozenset): out of the gossip
    receive loop, and out of the restore, so the instance could not start."""
    t = Timestamp(1, 0, "p")
    odd = [
        (job_key("j1"), Entry(t, {"id": "j1", "status": ["Running"]})),
        (job_key("j2"), Entry(t, {"id": "j2", "status": {"a": 1}})),
        (job_key("j3"), Entry(t, {"id": "j3", "status": "Running", "epoch": 2})),
    ]
    s = ClusterState()
    s.apply(odd)
    assert s.index_snapshot() == rebuilt_index(s.map)
    assert s.index_snapshot()["active_jobs"] == {"j3"}
    restored = ClusterState()
    restored.adopt(LWWMap(odd))
    assert restored.index_snapshot() == s.index_snapshot()
    # over gossip: the peer joins it and goes on
    a = AntiEntropy("a", 1, ClusterState(), HLC("a"))
    b = AntiEntropy("b", 1, ClusterState(), HLC("b"))
    a.set_peers(["b"], 0)
    b.set_peers(["a"], 0)
    for _, data in a.local_write(LWWMap(odd), 1_000).out:
        b.receive_untrusted(data, 1_000)
    assert b.state.jobs().keys() <= {"j1", "j2", "j3"} and len(b.state) == 3


# --------------------------------------------------------------------------- API


async def _call(app: Any, url: str | None, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else b""
    h = {"Content-Type": "application/json"} if body is not None else {}
    if url is None:
        r = await app.test_client().open(path, method=method, data=data, headers=h)
        return r.status_code, json.loads(await r.get_data())
    async with httpx.AsyncClient() as c:
        rr = await c.request(method, url + path, content=data or None, headers=h)
    return rr.status_code, rr.json()


#: (key, how the path carries it): "/" percent-encoded and plain, leading, doubled, trailing
SLASH_KEYS = [
    ("a/b", "a%2Fb"),
    ("a/b/c", "a/b/c"),
    ("/lead", "%2Flead"),
    ("/lead2", "/lead2"),
    ("x//y", "x//y"),
    ("trail/", "trail%2F"),
    ("..", "%2E%2E"),
    ("x/../y", "x%2F..%2Fy"),
]


@pytest.mark.parametrize("mode", ["inproc", "http"])
async def test_global_keys_holding_a_slash(tmp_path: Path, mode: str) -> None:
    async with standalone(tmp_path) as ctx:
        app = create_app(ctx)
        async with serving(app) as base:
            url = base if mode == "http" else None
            for i, (key, seg) in enumerate(SLASH_KEYS):
                assert await _call(app, url, "PUT", f"/globals/{seg}", {"value": i}) == (
                    200,
                    {"key": key, "value": i},
                )
            # one that is a prefix of another, and a value that is JSON null
            assert (await _call(app, url, "PUT", "/globals/a", {"value": None}))[0] == 200
            want = {key: i for i, (key, _) in enumerate(SLASH_KEYS)} | {"a": None}
            assert ctx.replica.state.globals() == dict(sorted(want.items()))
            st_, g = await _call(app, url, "GET", "/info/globals")
            assert st_ == 200 and g == {"extra_vars": dict(sorted(want.items()))}
            for i, (key, seg) in enumerate(SLASH_KEYS):
                assert await _call(app, url, "GET", f"/globals/{seg}") == (
                    200,
                    {"key": key, "value": i},
                )
            assert await _call(app, url, "GET", "/globals/a") == (200, {"key": "a", "value": None})
            assert await _call(app, url, "DELETE", "/globals/a%2Fb") == (
                200,
                {"key": "a/b", "deleted": True},
            )
            st_, r = await _call(app, url, "GET", "/globals/a/b")
            assert st_ == 404 and r == {"error": 'global extra-var "a/b" doesn\'t exist'}
            assert (await _call(app, url, "DELETE", "/globals/a/b"))[0] == 404
            # the neighbours are untouched
            assert (await _call(app, url, "GET", "/globals/a/b/c"))[1]["value"] == 1
            assert (await _call(app, url, "GET", "/globals/a"))[0] == 200
            # what a key may not be stays refused, with the reason
            st_, r = await _call(app, url, "PUT", "/globals/" + "k/" * 129, {"value": 1})
            assert st_ == 422 and "more than the limit of 256" in r["error"]
            st_, r = await _call(app, url, "PUT", "/globals/ansible_x%2Fy", {"value": 1})
            assert st_ == 403 and "ansible_x/y" in r["error"]
            assert "ansible_x/y" not in ctx.replica.state.globals()


@pytest.mark.parametrize("mode", ["inproc", "http"])
async def test_node_reads_with_a_slash_in_the_name(tmp_path: Path, mode: str) -> None:
    async with standalone(tmp_path) as ctx:
        names = await add_nodes(ctx, 2, prefix="rack/1")
        others = await add_nodes(ctx, 1, prefix="rack")
        assert names == ["rack/1-0", "rack/1-1"] and others == ["rack-0"]
        app = create_app(ctx)
        async with serving(app) as base:
            url = base if mode == "http" else None
            st_, r = await _call(app, url, "PUT", "/node/rack/1-1/extra_vars/v", {"value": 5})
            assert st_ == 200 and r["configuration_state"]["inventory_vars"]["v"] == 5
            for path in ("/info/node/rack/1-1", "/info/node/rack%2F1-1"):
                st_, n = await _call(app, url, "GET", path)
                iv = n["configuration_state"]["inventory_vars"]
                assert st_ == 200 and iv["v"] == 5 and iv["node_name"] == "rack/1-1"
                assert n["monitoring_state"]["label"] == "rack/1"
            # by address (add_nodes gives node i the address 127.0.1.<i+1>: both rack/1-0
            # and rack-0 are at 127.0.1.1; the first in name order answers)
            st_, n = await _call(app, url, "GET", "/info/node/127.0.1.1")
            assert st_ == 200 and n["monitoring_state"]["serial_number"] == "0"
            assert n["monitoring_state"]["label"] == "rack"
            st_, alln = await _call(app, url, "GET", "/info/nodes")
            assert st_ == 200 and list(alln) == ["rack-0", "rack/1-0", "rack/1-1"]
            st_, r = await _call(app, url, "GET", "/info/node/rack/1-2")
            assert st_ == 404
            assert r == {"error": 'node with name or address "rack/1-2" doesn\'t exists'}


def test_the_openapi_document_says_a_global_key_may_hold_a_slash() -> None:
    for method in ("get", "put", "delete"):
        (param,) = OPENAPI["paths"]["/globals/{key}"][method]["parameters"]
        assert param["name"] == "key" and param["in"] == "path" and param["required"]
        assert "'/' included" in param["description"]
