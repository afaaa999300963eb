"""What a local write costs the writer, pinned by counts (no timing): the front parses a
keep-alive client's repeated header lines once (``api.wire.FieldsMemo``); the push of a
local write to each peer is sealed and sent in the writer's task (``GossipService.
_local_write``), the send task only taking what the socket does not take at once."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import pytest
import trio
from _udpcluster import cluster
from hypothesis import given
from hypothesis import strategies as st

from gossipmgr.api.wire import FieldsMemo, Head, parse_head
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.errors import StoreError
from gossipmgr.gossip.service import GossipService
from gossipmgr.runtime.flusher import FlushThread
from gossipmgr.runtime.replica import Replica
from gossipmgr.testing.wait import until

LINES = [
    b"Host: 127.0.0.1:8080",
    b"host: other",
    b"Authorization: Bearer abc",
    b"Content-Type: application/json",
    b"Content-Length: 12",
    b"Content-Length: 0",
    b"Content-Length: 1x",
    b"Connection: close",
    b"Connection: upgrade",
    b"Transfer-Encoding: chunked",
    b" folded",
    b"X-Bare: a\nb",
    b"X-Cr: a\rb",
    b"Bad Name: x",
    b"Accept: */*",
]
REQUEST_LINES = [
    b"PUT /globals/k HTTP/1.1",
    b"GET /globals/a%2Fb HTTP/1.1",
    b"GET /health HTTP/1.1",
]


def _as_tuple(h: Head | None) -> tuple[object, ...] | None:
    if h is None:
        return None
    return (h.method, h.path, h.size, h.authorization, h.content_type, h.length, h.close)


@given(
    st.lists(
        st.tuples(st.sampled_from(REQUEST_LINES), st.lists(st.sampled_from(LINES), max_size=5)),
        max_size=12,
    )
)
def test_a_memo_reads_every_head_as_a_fresh_parse_does(
    heads: list[tuple[bytes, list[bytes]]],
) -> None:
    memo = FieldsMemo()
    for line, fields in heads:
        buf = b"\r\n".join([line, *fields]) + b"\r\n\r\nbody"
        end = buf.find(b"\r\n\r\n")
        assert _as_tuple(parse_head(buf, end, memo)) == _as_tuple(parse_head(buf, end))


def test_repeated_header_lines_are_parsed_once_and_a_changed_line_anew() -> None:
    memo = FieldsMemo()
    block = b"Host: h\r\nAuthorization: Bearer t\r\nContent-Length: 2"
    for i in range(5):
        buf = b"PUT /globals/k%d HTTP/1.1\r\n%s\r\n\r\n{}" % (i, block)
        head = parse_head(buf, buf.find(b"\r\n\r\n"), memo)
        assert head is not None and head.path == f"/globals/k{i}" and head.length == 2
    assert memo.hits == 4
    # the same request with a smuggling header: declined (handed to hypercorn), not memoized
    bad = b"PUT /globals/k HTTP/1.1\r\n%s\r\nTransfer-Encoding: chunked\r\n\r\n" % block
    assert parse_head(bad, bad.find(b"\r\n\r\n"), memo) is None
    assert memo.hits == 4


def _set(i: int, st: ClusterState, ts: Timestamp) -> LWWMap:
    return st.d_set(global_key(f"k{i}"), i, ts)


async def _write_and_see(services: list[GossipService[Replica]], keys: range) -> None:
    a = services[0].replica
    for i in keys:
        await a.commit(partial(_set, i))
    peers = [s.replica for s in services[1:]]

    def everywhere() -> bool:
        return all(p.state.has_global(f"k{i}") for p in peers for i in keys)

    await until(everywhere, 10, "the peers holding every write")


async def test_a_local_write_is_pushed_from_the_writers_task_one_datagram_a_peer() -> None:
    async with cluster(["a", "b", "c"], [os.urandom(32)] * 3) as services:
        await _write_and_see(services, range(20))
        # each of the 20 writes to each of the 2 peers: sealed and sent by the writer, not
        # queued for the send task (no wake-up of it, no address resolution)
        assert services[0].counters["pushed_now"] == 40


async def test_a_push_the_socket_does_not_take_at_once_goes_through_the_send_task() -> None:
    async with cluster(["a", "b"], [os.urandom(32)] * 2) as services:
        sent = services[0].counters["datagrams_sent"]
        services[0].transport.try_send = lambda data, addr: False  # type: ignore[method-assign]
        await _write_and_see(services, range(5))
        assert services[0].counters["pushed_now"] == 0
        assert services[0].counters["datagrams_sent"] >= sent + 5


async def test_a_local_write_is_pushed_once_while_the_store_thread_has_it(tmp_path: Path) -> None:
    rep = Replica("a", data_dir=tmp_path / "a", fsync=False)
    rep.open()
    store = rep._store
    assert store is not None
    seen: list[tuple[tuple[str, ...], bool]] = []
    # the push happens during the group commit (its lock held, the batch in the flush
    # thread's hands), not before the append starts
    rep.on_local_send(lambda d: seen.extend((k, store._flush_lock.locked()) for k, _ in d.items()))
    try:
        async with trio.open_nursery() as nursery:  # 8 writes at once: group commits
            for i in range(8):
                nursery.start_soon(rep.commit, partial(_set, i))
        assert sorted(k for k, _ in seen) == sorted(global_key(f"k{i}") for i in range(8))
        assert all(during for _, during in seen)
        store.close()
        with pytest.raises(StoreError):  # refused before the thread had it: pushed anyway
            await rep.commit(partial(_set, 99))
        assert [k for k, _ in seen[8:]] == [global_key("k99")]
    finally:
        await rep.aclose()


async def test_a_failing_when_queued_callback_is_logged_and_the_job_still_waited_for(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ft = FlushThread("test flush")

    def boom() -> None:
        raise RuntimeError("listener bug")

    ft.when_queued(boom)
    try:
        assert await ft.run(lambda x: x + 1, 41) == 42
    finally:
        ft.stop()
    assert "a callback failed" in caplog.text and "listener bug" in caplog.text
