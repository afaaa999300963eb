"""PATCH /globals: many keys in one request, one delta, one fsync, one answer.

- the pure protocol: a batch pushed to a peer is joined there in one step (before, it was
  split into datagram-sized messages and a peer showed part of it);
- over real HTTP on a standalone instance gossiping over real UDP with a second one: sets
  and removals land together, locally and on the peer (observed at every scheduling point);
  every refusal is a 4xx naming the reason with nothing written, whatever else the batch
  held; a record is encoded once (the log record equals ``encode_map`` of the delta);
- a real 2-agent cluster (processes, Serf): the batch replicates, and an acknowledged batch
  survives a SIGKILL and restart of the instance that took it;
- the CLI: ``gossipmgr global set-many FILE|-``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
import trio
from _apiutil import standalone

from gossipmgr.core.clock import HLC
from gossipmgr.core.codec import (
    MAX_BATCH_BYTES,
    MAX_BATCH_KEYS,
    encode_map,
    encode_packed,
    entry_to_wire,
)
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.gossip.protocol import AntiEntropy
from gossipmgr.localcluster import LocalCluster, wait_for
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.testing.fakeserf import FakeSerfCluster
from gossipmgr.testing.standalone import shared_key

JSON = {"Content-Type": "application/json"}
Ctx = AgentApiContext


def _batch(prefix: str, n: int, value: Any = None) -> dict[str, Any]:
    return {f"{prefix}{i}": value if value is not None else f"{prefix}-{i}" for i in range(n)}


# ------------------------------------------------------------------ pure


def test_a_batch_reaches_a_peer_in_one_join() -> None:
    a = AntiEntropy("a", 1, ClusterState(), HLC("a"))
    b = AntiEntropy("b", 1, ClusterState(), HLC("b"))
    a.set_peers(["b"], 0)
    b.set_peers(["a"], 0)
    delta = a.state.d_patch_globals(_batch("k", 100, "v" * 160), a.hlc.now(1_000))
    out = a.local_write(delta, 1_000).out
    assert len(out) > 1  # 20 KB: more than one datagram
    seen = []
    for peer, data in out:
        assert peer == "b"
        b.receive_untrusted(data, 1_000)
        seen.append(len(b.state.globals()))
    assert seen[-1] == 100
    assert set(seen) <= {0, 100}, seen  # never a part of the batch


def test_a_record_is_encoded_once_and_equals_the_whole_encoding() -> None:
    st = ClusterState()
    ts = HLC("a").now(1_000)
    st.apply(st.d_set(global_key("gone"), 1, ts))
    d = st.d_patch_globals({"x": {"a": [1, 2.5, None]}, "y": "é", "gone": None, "nx": None}, ts)
    assert {k[1]: e.deleted for k, e in d.items()} == {"x": False, "y": False, "gone": True}
    packed = [msgpack.packb(entry_to_wire(k, e), use_bin_type=True) for k, e in d.items()]
    assert encode_packed(packed, 7) == encode_map(_with_horizon(d, 7))
    assert encode_packed([], 0) == encode_map(LWWMap())


def _with_horizon(d: LWWMap, h: int) -> LWWMap:
    m = LWWMap(d.items())
    m.gc_horizon = h
    return m


# ------------------------------------------------------------------ over HTTP, two instances


@contextlib.asynccontextmanager
async def two(tmp: Path) -> AsyncIterator[tuple[Ctx, Ctx, httpx.AsyncClient]]:
    """Standalone i1 and i2 gossiping over real UDP (one fake Serf cluster); a client of
    i1's own API server."""
    key = shared_key(tmp)
    cluster = FakeSerfCluster()
    async with (
        standalone(tmp, "i1", cluster=cluster, encrypt_key_file=key, fsync=True) as c1,
        standalone(tmp, "i2", cluster=cluster, encrypt_key_file=key, claim=False) as c2,
        httpx.AsyncClient(base_url=c1.agent.api_url, timeout=60) as client,
    ):
        with trio.fail_after(30):  # gossip is up once i1's lease reached i2
            while c2.replica.state.lease() is None:  # noqa: ASYNC110 (state, not an event)
                await trio.sleep(0.02)
        yield c1, c2, client


async def _patch(c: httpx.AsyncClient, body: Any, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", JSON)
    content = kw.pop("content", None)
    return await c.patch("/globals", content=content or json.dumps(body), headers=headers)


async def test_patch_sets_and_removes_together_here_and_on_the_peer(tmp_path: Path) -> None:
    async with two(tmp_path) as (c1, c2, client):
        first = _batch("k", 100, "v" * 160)
        seen: set[int] = set()
        last = [0]
        done = trio.Event()

        async def watch_peer() -> None:  # at every scheduling point of this process
            while not done.is_set():
                last[0] = sum(1 for k in first if c2.replica.state.has_global(k))
                seen.add(last[0])
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_peer)
            writes = c1.replica.store.stats.batches
            r = await _patch(client, first)
            assert r.status_code == 200, r.text
            assert r.json() == {"set": 100, "deleted": 0}
            assert c1.replica.state.globals() == first  # visible here once acknowledged
            assert c1.replica.store.stats.batches == writes + 1  # one record, one fsync
            with trio.fail_after(30):
                while last[0] != 100:  # noqa: ASYNC110 (state, not an event)
                    await trio.sleep(0.01)
            done.set()
        assert seen <= {0, 100}, sorted(seen)

        # removals (null) and sets in one batch; null for an absent name changes nothing
        second = {"k0": None, "k1": None, "k2": {"new": [1, 2]}, "absent": None}
        r = await _patch(client, second, headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 200, r.text
        assert r.json() == {"set": 1, "deleted": 2}
        want = {k: v for k, v in first.items() if k not in ("k0", "k1")} | {"k2": {"new": [1, 2]}}
        assert c1.replica.state.globals() == want
        with trio.fail_after(30):
            while c2.replica.state.globals() != want:  # noqa: ASYNC110
                await trio.sleep(0.02)
        assert (await client.get("/globals/k2")).json() == {"key": "k2", "value": {"new": [1, 2]}}
        r = await _patch(client, {})
        assert r.status_code == 200 and r.json() == {"set": 0, "deleted": 0}


@pytest.mark.parametrize(
    ("bad", "status", "words"),
    [
        ({"": 1}, 400, "must not be empty"),
        ({"x" * 300: 1}, 422, "more than the limit of 256"),
        ({"ansible_user": "root"}, 403, "ansible_user"),
        ({"gossipmgr_epoch": 1}, 400, "a client cannot set it"),
        ({"deep": json.loads("[" * 40 + "]" * 40)}, 422, "nested deeper than 32 levels"),
        ({"big": "x" * 1_045_000}, 413, "more than one gossip message carries"),
    ],
)
async def test_one_bad_entry_refuses_the_whole_batch(
    tmp_path: Path, bad: dict[str, Any], status: int, words: str
) -> None:
    async with standalone(tmp_path) as ctx, httpx.AsyncClient(base_url=ctx.agent.api_url) as c:
        assert (await _patch(c, {"keep": 1})).status_code == 200
        before = ctx.replica.state.map.copy()
        body = {"a": 1, "keep": None, **bad, "z": 2}  # good entries before and after it
        r = await _patch(c, body)
        assert r.status_code == status, r.text
        assert words in r.json()["error"], r.json()
        assert ctx.replica.state.map == before


async def test_batch_limits_and_body_refusals(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx, httpx.AsyncClient(base_url=ctx.agent.api_url) as c:
        before = ctx.replica.state.map.copy()
        # over the key limit
        r = await _patch(c, _batch("n", MAX_BATCH_KEYS + 1, 1))
        assert r.status_code == 413 and f"limit of {MAX_BATCH_KEYS}" in r.json()["error"]
        # each value fits one message, the batch does not: 100 x 2,400 floats, "0.5," in
        # JSON (under 1 MiB), 9 B each encoded (2.2 MB)
        floats = {f"f{i}": [0.5] * 2_400 for i in range(100)}
        raw = json.dumps(floats, separators=(",", ":"))
        assert len(raw) < 1024 * 1024
        r = await _patch(c, None, content=raw.encode())
        assert r.status_code == 413, r.text
        assert f"limit {MAX_BATCH_BYTES} bytes" in r.json()["error"], r.json()
        r = await _patch(c, None, content=b"[1, 2]")
        assert r.status_code == 400 and "must be a JSON object" in r.json()["error"]
        r = await _patch(c, {"a": 1}, headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
        assert ctx.replica.state.map == before


# ------------------------------------------------------------------ real agents, real Serf


@pytest.mark.serf
def test_a_batch_replicates_between_real_agents_and_survives_sigkill(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, local_ansible=False) as c:
        c.add_instance("a1")
        c.add_instance("a2")
        c.wait_ready("a1")
        c.wait_ready("a2")
        batch = _batch("k", 200, "v" * 100)
        with httpx.Client(base_url=c.instances["a1"].url, headers=c.headers, timeout=30) as h:
            r = h.patch("/globals", json=batch)
            assert r.status_code == 200, r.text
            r = h.patch("/globals", json={"k0": None, "k1": 1})
            assert r.status_code == 200, r.text
        want = {k: v for k, v in batch.items() if k != "k0"} | {"k1": 1}

        def on(name: str) -> bool:
            return bool(c.get(name, "/info/globals")["extra_vars"] == want)

        wait_for(lambda: on("a2"), timeout=30, what="the batches on a2")
        c.kill9("a1")  # acknowledged = on disk: nothing may depend on a clean stop
        c.kill9("a2")  # and no peer can hand it back
        c.start("a1")
        c.wait_ready("a1")
        assert on("a1")


# ------------------------------------------------------------------ the CLI


async def test_cli_set_many_from_a_file_and_stdin(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
        env["GOSSIPMGR_URL"] = ctx.agent.api_url
        f = tmp_path / "vars.json"
        f.write_text(json.dumps({"a": 1, "b": {"c": [1]}}))

        async def gm(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-m", "gossipmgr.cli.main", *args]
            return await trio.to_thread.run_sync(
                lambda: subprocess.run(
                    cmd, input=stdin, env=env, capture_output=True, text=True, timeout=60
                )
            )

        p = await gm("global", "set-many", str(f))
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "set 2, deleted 0"
        assert ctx.replica.state.globals() == {"a": 1, "b": {"c": [1]}}
        p = await gm("g", "set-many", "-", stdin='{"a": null, "d": "x"}')
        assert p.returncode == 0, p.stderr
        assert p.stdout.strip() == "set 1, deleted 1"
        assert ctx.replica.state.globals() == {"b": {"c": [1]}, "d": "x"}
        p = await gm("global", "set-many", "-", stdin="[1]")
        assert p.returncode == 2 and "must be a JSON object" in p.stderr, p.stderr
        p = await gm("global", "set-many", "-", stdin='{"ansible_user": "x"}')
        assert p.returncode == 1 and "ansible_user" in p.stderr, p.stderr
        assert ctx.replica.state.globals() == {"b": {"c": [1]}, "d": "x"}
