"""The write path costs what it writes: nothing a write wakes reads unrelated state, and
concurrent writers share the fsync.

Every commit wakes the holder's orphan scan (``JobManager.run`` waits on the replica's
change event). It used to build every job record of the history on each wake-up
(``ClusterState.jobs()``), so each write on the holder cost O(jobs). Now the scan starts from
the index of active jobs; counted here in record decodes, not in time.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _apiutil import standalone

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.job import COMPLETE, RUNNING, JobRecord, make_job_id
from gossipmgr.core.state import ClusterState, combine, job_key
from gossipmgr.runtime import store as store_mod
from gossipmgr.testing.wait import until


def _job(i: int, status: str) -> JobRecord:
    ended = 3 if status == COMPLETE else 0
    jid = make_job_id(1_000 + i, i, "i1")
    return JobRecord(jid, "d", "update", "update", (), status, "", 1, "i1", 1, 2, ended)


async def test_the_orphan_scan_every_write_wakes_does_not_read_the_job_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with standalone(tmp_path) as ctx:
        history = [_job(i, COMPLETE) for i in range(300)]

        def make(s: ClusterState, ts: Timestamp) -> LWWMap:
            return combine(*(s.d_set(job_key(j.id), j.to_value(), ts) for j in history))

        await ctx.replica.commit(make)
        decoded = 0
        real = JobRecord.from_value.__func__  # type: ignore[attr-defined]

        def counting(cls: type[JobRecord], value: object) -> Any:
            nonlocal decoded
            decoded += 1
            return real(cls, value)

        monkeypatch.setattr(JobRecord, "from_value", classmethod(counting))
        assert await ctx.jobs.reconcile_orphans() == []
        assert ctx.jobs.active_record() is None
        assert decoded == 0  # was 600: the whole history, twice

        # an active record not run here is still found (and ended) by the scan
        orphan = _job(999, RUNNING)
        await ctx.replica.commit(lambda s, ts: s.d_set(job_key(orphan.id), orphan.to_value(), ts))
        ended = await ctx.jobs.reconcile_orphans()
        assert ended in ([orphan.id], [])  # [] when the scan woken by the commit was first
        rec = ctx.replica.state.job(orphan.id)
        assert rec is not None and rec.status == "Errored"
        assert decoded < 10


async def test_concurrent_api_writers_share_one_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit end to end: PUTs arriving while a commit's fsync runs are written and
    made durable together by the next one (one batch, one fdatasync), and each is
    answered only after it. Deterministic: the first fsync waits until all are queued."""
    release = threading.Event()
    calls: list[int] = []
    real_fsync = store_mod._sys_fsync

    def held_fsync(fd: int) -> None:
        calls.append(fd)
        release.wait(30)
        real_fsync(fd)

    async with standalone(tmp_path, fsync=True) as ctx:
        monkeypatch.setattr(store_mod, "_sys_fsync", held_fsync)
        try:
            await _writers_while_fsync_is_held(ctx, calls, release)
        finally:
            release.set()  # never leave a worker thread waiting


async def _writers_while_fsync_is_held(
    ctx: Any, calls: list[int], release: threading.Event
) -> None:
    store = ctx.replica.store
    before = store.stats.batches
    answers: list[int] = []
    limits = httpx.Limits(max_connections=32)
    async with (
        httpx.AsyncClient(base_url=ctx.agent.api_url, limits=limits, timeout=60) as c,
        trio.open_nursery() as nursery,
    ):

        async def put(i: int) -> None:
            r = await c.put(f"/globals/k{i}", json={"value": i})
            answers.append(r.status_code)

        nursery.start_soon(put, 0)
        await until(lambda: calls, 30, "the first commit in its fsync")
        for i in range(1, 21):
            nursery.start_soon(put, i)

        def queued() -> bool:
            batch = store._open_batch  # the records waiting for the next flush
            return batch is not None and batch.records == 20

        await until(queued, 30, "20 writes queued behind the first fsync")
        assert answers == []  # nobody is answered before its fsync
        release.set()
    assert answers == [200] * 21
    assert store.stats.batches == before + 2  # the first write, then the 20 together
    assert set(ctx.replica.state.globals()) == {f"k{i}" for i in range(21)}


async def test_an_answer_of_known_length_is_written_in_one_send(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """hypercorn wrote a response's head and its body in two ``send()`` calls (two wake-ups
    of the client on loopback); the API's server writes one of known length in one. Counted
    on the server's side of the connection, for answers of the fast path and of Quart, a
    refusal and an empty HEAD answer."""
    sends: list[int] = []
    real_send_all = trio.SocketStream.send_all

    async with standalone(tmp_path) as ctx:
        port = int(ctx.agent.api_url.rsplit(":", 1)[1])

        async def counting_send_all(self: trio.SocketStream, data: Any) -> None:
            if self.socket.getsockname()[1] == port and len(data):
                sends.append(len(data))
            await real_send_all(self, data)

        monkeypatch.setattr(trio.SocketStream, "send_all", counting_send_all)
        async with httpx.AsyncClient(base_url=ctx.agent.api_url, timeout=60) as c:
            for method, path, body, status in [
                ("PUT", "/globals/k", {"value": "v" * 160}, 200),
                ("GET", "/globals/k", None, 200),
                ("GET", "/info/globals", None, 200),
                ("GET", "/globals/absent", None, 404),
                ("PUT", "/globals/k", {"novalue": 1}, 400),
                ("HEAD", "/health", None, 200),
            ]:
                del sends[:]
                r = await c.request(method, path, json=body)
                assert r.status_code == status, (method, path, r.text)
                assert len(sends) == 1, (method, path, sends)
                assert sends[0] == len(r.content) + len(_head(r)), (method, path)


def _head(r: httpx.Response) -> bytes:
    """The bytes of ``r``'s status line and headers as they were on the wire."""
    lines = [f"HTTP/1.1 {r.status_code} ".encode() + r.reason_phrase.encode()]
    lines += [k + b": " + v for k, v in r.headers.raw]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def test_the_idle_timer_of_a_served_connection_never_yields(tmp_path: Path) -> None:
    """hypercorn disarms a connection's idle timer between reading a request and handing it
    to the app, and arms it again after the answer. Its own timer took a lock on both (a
    checkpoint: a round through the scheduler) and armed with ``nursery.start`` (a wait for
    the new task): scheduling rounds on every request, one on the way to the app. The timer
    ``serve`` installs (``api/idletimer.py``) awaits nothing: checked here inside an already
    cancelled scope, where any checkpoint raises. It still runs its action when armed, and
    a new arming or a disarm cancels the previous one."""
    import hypercorn.trio.tcp_server as tcp_server
    from _apiutil import serving

    from gossipmgr.api import create_app

    async with standalone(tmp_path) as ctx, serving(create_app(ctx)) as url:
        async with httpx.AsyncClient() as c:
            for _ in range(3):  # one keep-alive connection: armed and disarmed each time
                assert (await c.get(url + "/health")).status_code == 200
    timer = tcp_server.TrioSingleTask()  # type: ignore[attr-defined]
    started: list[int] = []
    ended: list[int] = []

    def action(i: int) -> Any:
        async def run() -> None:
            await trio.lowlevel.checkpoint()  # as hypercorn's: cancelled before it runs
            started.append(i)
            try:
                await trio.sleep_forever()
            finally:
                ended.append(i)

        return run

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            group = type("Group", (), {"_nursery": nursery})()
            with trio.CancelScope() as already:
                already.cancel()
                await timer.stop()
                await timer.restart(group, action(1))
                await timer.restart(group, action(2))
            assert not already.cancelled_caught, "the idle timer yielded (a checkpoint)"
            await until(lambda: started == [2], 5, "the second action running")
            await timer.stop()
        assert ended == [2] and started == [2]
