"""One rule for every value: what the API acknowledges replicates, the rest gets a 4xx.

Each case of issue 14's "one request takes instances down, or silently never replicates"
list, over real HTTP (hypercorn) on an instance whose replica gossips over real UDP on
loopback with a second one (the real ``GossipService``): an acknowledged write must show up
on the peer with an equal value; a refused one is a 413/422 whose text names the limit and
changes nothing. Plus a Hypothesis round trip over generated JSON (edge cases: deep, wide,
long strings, unicode, big integers, floats). The agent-process versions (an instance that
used to die or stall) are in ``test_value_limits_agent.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio
from _apiutil import serving, standalone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossipmgr.api import MAX_BODY_BYTES, create_app
from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.codec import (
    MAX_ENTRY_BYTES,
    MAX_KEY_PART,
    MAX_VALUE_DEPTH,
    MAX_VALUE_ITEMS,
    check_entry,
    entry_to_wire,
)
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.errors import BadPacket, ValueRefused, ValueTooLarge
from gossipmgr.gossip.crypto import load_keyring_file
from gossipmgr.gossip.protocol import MAX_MESSAGE_BYTES, AntiEntropy, GossipConfig
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.runtime.replica import Replica, check_writable
from gossipmgr.testing.standalone import fake_serf, shared_key


class Pair:
    """Instance ``a`` (API over real HTTP, with a job manager) and peer ``b``, gossiping
    over real UDP on loopback."""

    def __init__(
        self,
        ctx: AgentApiContext,
        url: str,
        a: GossipService[Replica],
        b: GossipService[Replica],
        client: httpx.AsyncClient,
    ) -> None:
        self.ctx, self.url, self.a, self.b, self.c = ctx, url, a, b, client

    async def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None):  # type: ignore[no-untyped-def]
        content = raw if raw is not None else (None if body is None else json.dumps(body))
        h = {"Content-Type": "application/json"} if content is not None else {}
        r = await self.c.request(method, path, content=content, headers=h)
        return r.status_code, r.json()

    async def on_peer(self, pred: Any, limit_s: float = 15.0) -> None:
        with trio.fail_after(limit_s):
            while not pred(self.b.replica.state):  # noqa: ASYNC110 (state, not an event)
                await trio.sleep(0.02)


@contextlib.asynccontextmanager
async def pair(tmp: Path) -> AsyncIterator[Pair]:
    """``a``: a standalone instance (the agent's wiring; its gossip service is ``p.a``).
    ``b``: a bare replica gossiping with it, listed in a's (fake) Serf as an instance."""
    key_file = shared_key(tmp)
    async with contextlib.AsyncExitStack() as stack:
        ctx = await stack.enter_async_context(standalone(tmp, encrypt_key_file=key_file))
        a = ctx.agent.gossip
        assert a is not None
        rb = Replica("b", data_dir=None)
        rb.open()
        tb = await stack.enter_async_context(open_udp_transport("127.0.0.1", 0))
        b = GossipService(rb, tb, load_keyring_file(key_file), boot_ms=rb.now_ms())
        b.set_peers({"i1": a.local_addr})
        async with trio.open_nursery() as nursery:
            await nursery.start(b.run)
            host, port = b.local_addr
            tags = {"role": "gossipmgr", "gossip": f"{host}:{port}", "api": "", "boot": "1"}
            fake_serf(ctx.agent).cluster.set_member("b", tags)
            async with (
                serving(create_app(ctx)) as url,
                httpx.AsyncClient(base_url=url, timeout=60) as c,
            ):
                p = Pair(ctx, url, a, b, c)
                # the lease claimed at start reaches b: gossip is up
                await p.on_peer(lambda s: s.lease() is not None)
                yield p
            nursery.cancel_scope.cancel()


def nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


async def _refused(p: Pair, method: str, path: str, body: Any, status: int, words: str) -> None:
    before = p.a.replica.state.map.copy()
    st_, r = await p.call(method, path, body)
    assert st_ == status, (st_, r)
    assert words in r["error"], r
    assert p.a.replica.state.map == before


# ------------------------------------------------------------------ the cases


async def test_200k_floats_refused_413_naming_the_encoded_limit(tmp_path: Path) -> None:
    # Failed before: 200, then the gossip service raised "message of 1800048 bytes exceeds
    # 1048576" (a 500 here, the instance's exit in the agent).
    floats = [0.1] * 200_000  # "0.1," in JSON (800 KB), 9 bytes each in msgpack (1.8 MB)
    body = json.dumps({"value": floats}, separators=(",", ":")).encode()
    assert len(body) < MAX_BODY_BYTES < len(msgpack.packb(floats))
    async with pair(tmp_path) as p:
        st_, r = await p.call("PUT", "/globals/floats", raw=body)
        assert st_ == 413 and str(MAX_ENTRY_BYTES) in r["error"], (st_, r)
        assert "floats" not in p.a.replica.state.globals()
        # gossip still flows
        assert (await p.call("PUT", "/globals/after", {"value": 1}))[0] == 200
        await p.on_peer(lambda s: s.globals().get("after") == 1)
        assert "floats" not in p.b.replica.state.globals()


async def test_value_up_to_the_limit_replicates(tmp_path: Path) -> None:
    # The largest string a global can hold, and a POST /globals whose delta is ~2 MB in
    # msgpack (two values of ~0.45 MB of JSON each: floats) travel to the peer.
    async with pair(tmp_path) as p:
        n = MAX_ENTRY_BYTES - len(
            msgpack.packb(entry_to_wire(global_key("s"), Entry(Timestamp(2**62, 2**40, "i1"), "")))
        )
        n -= 4  # str32 header instead of fixstr (the real timestamp is smaller still)
        # 225,000 floats in 25 variables: 0.9 MB of JSON, one delta of ~2 MB encoded
        ev = {f"f{j}": [j + 0.5] * 9_000 for j in range(25)}
        raw = json.dumps({"extra_vars": ev}, separators=(",", ":")).encode()
        assert len(raw) < MAX_BODY_BYTES < len(msgpack.packb(ev))
        st_, r = await p.call("POST", "/globals", raw=raw)
        assert st_ == 200, r
        st_, r = await p.call("PUT", "/globals/s", {"value": "x" * n})
        assert st_ == 200, r
        st_, r = await p.call("PUT", "/globals/s2", {"value": "x" * (n + 100)})
        assert st_ == 413, r
        await p.on_peer(
            lambda s: len(s.globals().get("s", "")) == n and s.globals().get("f24") == ev["f24"],
            30,
        )
        assert p.a.ae.counters.get("drop_unsendable", 0) == 0


@pytest.mark.parametrize(
    ("what", "value", "words"),
    [
        ("depth", nested(MAX_VALUE_DEPTH + 1), f"deeper than {MAX_VALUE_DEPTH}"),
        ("items", list(range(MAX_VALUE_ITEMS + 1)), f"more than {MAX_VALUE_ITEMS} items"),
        ("int_high", 2**64, "integer out of range"),
        ("int_low", -(2**63) - 1, "integer out of range"),
    ],
)
async def test_value_gossip_refuses_is_refused_422(
    tmp_path: Path, what: str, value: Any, words: str
) -> None:
    # Failed before: depth/items answered 200 and never reached a peer; the integers 500.
    async with pair(tmp_path) as p:
        await _refused(p, "PUT", "/globals/k", {"value": value}, 422, words)
        await _refused(p, "POST", "/globals", {"extra_vars": {"k": value}}, 422, words)
        # the same value as clusterm's string form, and on a job route
        ev = json.dumps({"k": value})
        await _refused(p, "POST", "/globals", {"extra_vars": ev}, 422, words)
        await _refused(
            p, "POST", "/commission/nodes", {"nodes": ["x"], "extra_vars": ev}, 422, words
        )


async def test_values_at_the_limits_replicate(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:
        vals = {
            "deep": nested(MAX_VALUE_DEPTH),
            "wide": list(range(MAX_VALUE_ITEMS)),
            "big": 2**64 - 1,
            "small": -(2**63),
            "tiny": 5e-324,
            "huge": 1.7976931348623157e308,
        }
        for k, v in vals.items():
            st_, r = await p.call("PUT", f"/globals/{k}", {"value": v})
            assert st_ == 200, (k, r)
        await p.on_peer(lambda s: s.globals() == vals)


async def test_non_finite_number_refused_not_stored_as_infinity(tmp_path: Path) -> None:
    # Failed before: 200, and GET answered {"value": Infinity}, which is not JSON.
    async with pair(tmp_path) as p:
        for raw in (b'{"value": 1e400}', b'{"value": [-1e999]}', b'{"value": {"a": 2E+308}}'):
            st_, r = await p.call("PUT", "/globals/inf", raw=raw)
            assert (st_, "finite" in r["error"]) == (422, True), r
        st_, r = await p.call("POST", "/globals", raw=b'{"extra_vars": "{\\"a\\": 1e400}"}')
        assert st_ == 422, r
        assert "inf" not in p.a.replica.state.globals()
        st_, _ = await p.call("GET", "/globals/inf")
        assert st_ == 404


@pytest.mark.parametrize("route", ["/globals", "/commission/nodes", "/config"])
async def test_10000_deep_extra_vars_string_is_a_4xx(tmp_path: Path, route: str) -> None:
    # Failed before: 500 (RecursionError) on each of these routes.
    deep = "[" * 10_000 + "]" * 10_000
    text = '{"a": ' + deep + "}"
    body: dict[str, Any] = {"extra_vars": text, "nodes": ["x"]}
    if route == "/config":
        body = {"config": {"ansible": {"extra_variables": text}}}
    async with pair(tmp_path) as p:
        before = p.a.replica.state.map.copy()
        st_, r = await p.call("POST", route, body)
        assert st_ == 422 and "deep" in r["error"], (st_, r)
        # and as a plain JSON object (the whole body 10,000 deep)
        raw = json.dumps(body).replace(json.dumps(text), deep).encode()
        st_, r = await p.call("POST", route, raw=raw)
        assert 400 <= st_ < 500, (st_, r)
        assert p.a.replica.state.map == before


async def test_long_names_refused_422_naming_the_limit(tmp_path: Path) -> None:
    # Failed before: a 300-character variable name inside extra_vars, or a 300-character
    # node label, answered 200 and never reached a peer (the decoder refuses key parts
    # longer than 256 characters).
    long = "v" * 300
    words = str(MAX_KEY_PART)
    async with pair(tmp_path) as p:
        await _refused(p, "PUT", f"/globals/{long}", {"value": 1}, 422, words)
        await _refused(p, "POST", "/globals", {"extra_vars": {long: 1}}, 422, words)
        ev = {"name": "discovered", "nodes": [{"label": "l" * 300, "serial": "1", "addr": ""}]}
        await _refused(p, "POST", "/monitor/event", {"monitor_event": ev}, 422, words)
        ok = "w" * MAX_KEY_PART
        assert (await p.call("POST", "/globals", {"extra_vars": {ok: 1}}))[0] == 200
        await p.on_peer(lambda s: s.globals() == {ok: 1})


async def test_node_names_with_a_slash_are_addressed_by_name(tmp_path: Path) -> None:
    # Failed before: a label "rack/7" made node "rack/7-1", which no node route could find
    # by name (the router split the name at "/"). Every node route now takes the rest of
    # the path as the name.
    async with pair(tmp_path) as p:
        ev = {"name": "discovered", "nodes": [{"label": "rack/7", "serial": "1", "addr": ""}]}
        st_, r = await p.call("POST", "/monitor/event", {"monitor_event": ev})
        assert (st_, r["nodes"]) == (200, ["rack/7-1"]), r
        # and one made by the Serf path (a node's own tags, not an API request)
        await p.ctx.jobs.apply_node_event("discovered", "a/b/c-2", "a/b/c", "2", "127.0.0.9")
        for name in ("rack/7-1", "a/b/c-2"):
            st_, r = await p.call("GET", f"/info/node/{name}")
            assert st_ == 200 and r["monitoring_state"]["label"] == name[:-2], (name, r)
            st_, r = await p.call("PUT", f"/node/{name}/extra_vars/k", {"value": name})
            assert st_ == 200, (name, r)
            st_, r = await p.call("POST", f"/node/{name}/extra_vars", {"extra_vars": {"j": 1}})
            assert st_ == 200, (name, r)
            st_, r = await p.call(
                "POST", f"/node/{name}/host_group", {"host_group": "service-worker"}
            )
            assert st_ == 200, (name, r)
            st_, r = await p.call("PUT", f"/node/{name}/extra_vars/k", {"value": name})
            assert st_ == 200, (name, r)
            st_, r = await p.call("DELETE", f"/node/{name}/extra_vars/k")
            assert st_ == 200, (name, r)
        st_, r = await p.call("PUT", "/node/a/b/c-2/extra_vars/k/x", {"value": 1})
        assert st_ == 404, r  # a var name holds no "/": no such route
        await p.on_peer(lambda s: s.node("rack/7-1") is not None and s.node("a/b/c-2") is not None)


# ------------------------------------------------------------------ the shared rule


def test_the_api_rule_is_the_decoders_rule() -> None:
    # check_writable refuses exactly what a peer's decoder would refuse (same function),
    # plus entries larger than one gossip message.
    ts = Timestamp(1, 0, "i1")
    for v, exc in [
        (nested(MAX_VALUE_DEPTH + 1), ValueRefused),
        (float("inf"), ValueRefused),
        (2**64, ValueRefused),
        ("\ud800", ValueRefused),  # a lone surrogate: msgpack cannot encode it
        ("x" * MAX_ENTRY_BYTES, ValueTooLarge),
    ]:
        with pytest.raises(exc):
            check_writable(LWWMap({global_key("k"): Entry(ts, v)}))
        with pytest.raises(BadPacket):
            check_entry(global_key("k"), Entry(ts, v))
    assert MAX_ENTRY_BYTES + 4096 <= MAX_MESSAGE_BYTES


def test_protocol_never_raises_on_an_unsendable_entry() -> None:
    # Failed before: ValueError "message of ... bytes exceeds 1048576" out of local_write
    # and tick (uncaught in the gossip service: the instance exited).
    state = ClusterState()
    ae = AntiEntropy("a", 1, state, HLC("a"), GossipConfig())
    ae.set_peers(["b"], 0)
    ts = Timestamp(1, 0, "a")
    res = ae.local_write(LWWMap({global_key("big"): Entry(ts, "x" * (2 * MAX_MESSAGE_BYTES))}), 0)
    assert res.out == [] and ae.counters["drop_unsendable"] == 1
    ae.tick(400)  # the retransmit of the unacknowledged interval
    assert ae.counters["drop_unsendable"] == 2


def test_fragments_fit_a_datagram_with_the_longest_instance_name() -> None:
    # Failed before: with a 128-character name, fragments were ~1,390 bytes and Sealer.seal
    # raised ValueError (over MAX_PLAINTEXT) in the send loop.
    from gossipmgr.gossip.crypto import MAX_PLAINTEXT

    name = "n" * 128
    ae = AntiEntropy(name, 2**62, ClusterState(), HLC(name), GossipConfig())
    ae.set_peers(["b"], 0)
    ts = Timestamp(1, 0, name)
    res = ae.local_write(LWWMap({global_key("v"): Entry(ts, "y" * 50_000)}), 0)
    assert len(res.out) > 1
    assert max(len(d) for _, d in res.out) <= min(ae.cfg.max_payload, MAX_PLAINTEXT)


# ------------------------------------------------------------------ round-trip fuzz

_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**63) - 2, -(2**63) + 2)
    | st.integers(2**64 - 2, 2**64 + 2)
    | st.floats(allow_nan=False)
    | _text
    | st.text(max_size=5)  # lone surrogates too: JSON "\\ud800" parses to one
    | st.sampled_from(["x" * 300_000, "é" * 200_000])
)
fuzz_values = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(_text, kids, max_size=5),
    max_leaves=20,
) | st.sampled_from(
    [
        nested(MAX_VALUE_DEPTH),
        nested(MAX_VALUE_DEPTH + 1),
        nested(500),
        list(range(MAX_VALUE_ITEMS)),
        list(range(MAX_VALUE_ITEMS + 1)),
        [0.1] * 120_000,
        {"k" * 300: 1},
    ]
)
fuzz_names = st.sampled_from(["k", "é", "v" * MAX_KEY_PART, "v" * (MAX_KEY_PART + 1)]) | _text

#: Examples per run: HYPOTHESIS_ROUNDTRIP_EXAMPLES (bench/bench_roundtrip.py sets 1,000).
EXAMPLES = int(os.environ.get("HYPOTHESIS_ROUNDTRIP_EXAMPLES", "40"))


async def test_fuzz_accepted_values_replicate_refused_ones_change_nothing(tmp_path: Path) -> None:
    async with pair(tmp_path) as p:

        def state_a() -> Any:
            return trio.from_thread.run_sync(lambda: p.a.replica.state.map.copy())

        def wait_peer(name: str, want: Any) -> None:
            async def waiting() -> None:
                await p.on_peer(lambda s: name in s.globals() and s.globals()[name] == want, 30)

            trio.from_thread.run(waiting)

        def run() -> tuple[int, int]:
            n = [0, 0]
            # A fresh connection per request: an example can take longer than the server's
            # 5 s keep-alive (a big value, then waiting for the peer on a loaded machine),
            # and a PUT sent as the server closes the idle connection is not retried
            # ("Server disconnected without sending a response", seen once in CI).
            no_reuse = httpx.Limits(max_keepalive_connections=0)
            with httpx.Client(base_url=p.url, timeout=60, limits=no_reuse) as c:

                @settings(
                    max_examples=EXAMPLES,
                    deadline=None,
                    database=None,
                    suppress_health_check=list(HealthCheck),
                )
                @given(
                    fuzz_names.filter(lambda s: "/" not in s and s not in (".", "..")),
                    fuzz_values,
                    st.booleans(),
                )
                def one(name: str, value: Any, as_put: bool) -> None:
                    try:
                        raw = json.dumps(
                            {"value": value} if as_put else {"extra_vars": {name: value}}
                        )
                    except ValueError:
                        return
                    before = state_a()
                    if as_put:
                        from urllib.parse import quote

                        r = c.put(
                            f"/globals/{quote(name, safe='')}",
                            content=raw,
                            headers={"Content-Type": "application/json"},
                        )
                    else:
                        r = c.post(
                            "/globals", content=raw, headers={"Content-Type": "application/json"}
                        )
                    assert r.status_code < 500, (r.status_code, r.text[:300])
                    if r.status_code == 200:
                        want = (
                            json.loads(raw)["value"]
                            if as_put
                            else json.loads(raw)["extra_vars"][name]
                        )
                        wait_peer(name, want)
                        n[0] += 1
                    else:
                        assert r.status_code in (400, 404, 413, 422), r.text[:300]
                        assert isinstance(r.json()["error"], str)
                        assert state_a() == before
                        n[1] += 1

                one()
            return n[0], n[1]

        accepted, refused = await trio.to_thread.run_sync(run)
        print(f"round trip: {accepted} values accepted and seen on the peer, {refused} refused")
        assert accepted > 0 and refused > 0


# ------------------------------------------------------------------ restore (quarantine)


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats(allow_nan=False, allow_infinity=False)
        | _text,
        lambda kids: st.lists(kids, max_size=5) | st.dictionaries(_text, kids, max_size=5),
        max_leaves=30,
    ),
    _text.filter(bool),
)
def test_restore_size_bound_is_an_upper_bound(value: Any, name: str) -> None:
    # Restore skips encoding an entry when the walk's bound is under the limit: the bound
    # must never be below the real encoded size.
    from gossipmgr.core.codec import check_json_value

    e = Entry(Timestamp(2**63 - 1, 2**63 - 1, name[:128]), value)
    key = global_key(name)
    real = len(msgpack.packb(entry_to_wire(key, e), use_bin_type=True))
    bound = 64 + 5 * len(key) + 4 * (sum(map(len, key)) + len(e.ts.node)) + check_json_value(value)
    assert real <= bound


async def test_restore_leaves_out_what_gossip_cannot_carry(tmp_path: Path) -> None:
    # A data dir written before the rule: the entries are logged, counted and left out;
    # the rest is restored. (Before: restored, then the gossip service died on them or
    # resent them forever.)
    from gossipmgr.core.codec import encode_map
    from gossipmgr.runtime.store import Store

    ts = Timestamp(1, 0, "i1")
    bad = {
        global_key("floats"): Entry(ts, [0.1] * 200_000),
        global_key("deep"): Entry(ts, nested(MAX_VALUE_DEPTH + 1)),
        global_key("v" * (MAX_KEY_PART + 1)): Entry(ts, 1),
        global_key("inf"): Entry(ts, float("inf")),
    }
    good = {global_key("ok"): Entry(ts, "fine"), global_key("gone"): Entry(ts, None, True)}
    store = Store(tmp_path / "d", fsync=False)
    store.open()
    await store.append(encode_map(LWWMap({**bad, **good})))
    await store.aclose()
    rep = Replica("i1", data_dir=tmp_path / "d", fsync=False)
    rep.open()
    try:
        assert rep.counters["quarantined"] == len(bad)
        assert rep.state.globals() == {"ok": "fine"}
        assert rep.state.map.entry(global_key("gone")) is not None
        # and a snapshot of that state restores without anything to leave out
        await rep.snapshot_now()
    finally:
        await rep.aclose()
    rep2 = Replica("i1", data_dir=tmp_path / "d", fsync=False)
    rep2.open()
    try:
        assert rep2.counters["quarantined"] == 0 and rep2.state.globals() == {"ok": "fine"}
    finally:
        await rep2.aclose()


async def test_a_job_record_near_the_limit_never_takes_the_job_service_down(
    tmp_path: Path,
) -> None:
    """A job record grows while its job runs (log tail, error text, end time). A discover
    of one long address (within the body cap) made a record just under MAX_ENTRY_BYTES: it
    was accepted, then a later write of the same record (the tail, the final status) was
    refused as too large, uncaught, and JobManager.run (the agent's job service) died.
    Every record accepted at the start must leave room for what the run adds; the rest is
    refused at the request with a 413 naming the limit. Swept across the boundary."""
    from test_jobs import make_replica, manager, wait_ended

    # The window that crashed is ~200 characters wide: the record fits, the record with a
    # few tail lines does not (the address is in the record twice: "addrs" and "desc").
    top = MAX_ENTRY_BYTES // 2
    for i, n in enumerate(range(top - 2_000, top, 40)):
        rep = await make_replica(tmp_path / f"d{i}")
        (tmp_path / f"w{i}").mkdir()
        jm = manager(rep, tmp_path / f"w{i}")
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(jm.run)
                try:
                    info = await jm.discover(["a" * n])
                except ValueTooLarge as exc:
                    assert str(MAX_ENTRY_BYTES) in str(exc), exc
                else:
                    rec = await wait_ended(jm, info["id"])
                    assert rec["status"] == "Errored", rec["status"]
                nursery.cancel_scope.cancel()
        finally:
            await rep.aclose()


async def test_a_log_line_with_a_lone_surrogate_is_logged_and_replicable(tmp_path: Path) -> None:
    """ansible-runner hands over output bytes that are not UTF-8 as lone surrogates (its
    event JSON escapes them). Such a line used to raise in the log file's write, and, in
    the replicated tail, would make the record unencodable (ValueRefused from the commit,
    uncaught in the tail flusher). It is logged with the character replaced."""
    from gossipmgr.runtime.joblog import Run

    run = Run("j1", "update", 1, tmp_path / "j1.log")
    run.file = open(run.path, "a", encoding="utf-8")
    try:
        run.line("bytes \udcff from a node")
    finally:
        run.file.close()
    assert run.path.read_text(encoding="utf-8") == "bytes ? from a node\n"
    ts = Timestamp(1, 0, "a")
    key: tuple[str, ...] = ("j", "j1")
    check_writable(LWWMap({key: Entry(ts, {"log_tail": list(run.tail)})}))


def test_discover_address_dedup_is_linear() -> None:
    """A discover body of 1 MiB holds ~150,000 short addresses. check_discover removed
    duplicates with a list scan (``a not in out``): ~10^10 comparisons on the trio thread,
    minutes with the event loop blocked (lease renewals and gossip stop), before the job
    record's item limit refused the request. Counted, not timed."""
    from gossipmgr.core.inventory import check_discover

    calls = [0]

    class Addr(str):
        __hash__ = str.__hash__

        def __eq__(self, other: object) -> bool:
            calls[0] += 1
            return str.__eq__(self, other)

    n = 5_000
    addrs = [Addr(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(n)]
    out = check_discover(ClusterState(), [*addrs, addrs[0], addrs[1]])
    assert out == addrs
    assert calls[0] < 10 * n, f"{calls[0]} comparisons for {n} addresses"
