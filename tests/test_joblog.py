"""Complete job logs: the chunks (``gossipmgr.core.joblog``), following them from an offset
(``gossipmgr.runtime.joblog``), their garbage collection with the job history, and a real
ansible job whose long log is truncated past its cap.

The end-to-end case (the runner SIGKILLed, the whole log read from another instance) is
tests/test_joblog_agent.py.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from test_jobs import add_nodes, make_replica, wait_ended

from gossipmgr.core import joblog as jl
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import check_entry, decode_map_untrusted, encode_entries
from gossipmgr.core.crdt import Entry, Key
from gossipmgr.core.job import JobRecord, make_job_id
from gossipmgr.core.state import ClusterState, job_key
from gossipmgr.errors import BadPacket, BadRequest
from gossipmgr.runtime.ansible import AnsibleSettings
from gossipmgr.runtime.joblog import follow_log
from gossipmgr.runtime.jobs import HISTORY, JobManager
from gossipmgr.runtime.replica import Replica

HERE = Path(__file__).resolve().parent
DEADLINE_S = 60
LOCAL = {
    "ansible_connection": "local",
    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
}
TS = Timestamp(1, 0, "a")

lines_st = st.lists(st.text(st.characters(codec="utf-8"), max_size=300), max_size=400)


def _write(m: dict[Key, Any], job: str, taken: list[tuple[int, dict[str, Any]]]) -> None:
    for i, v in taken:
        m[jl.log_key(job, i)] = v


def _fill(lines: list[str], cap: int, flush_every: int) -> tuple[jl.LogChunks, dict[Key, Any]]:
    w = jl.LogChunks(cap, "[truncated]")
    m: dict[Key, Any] = {}
    for n, line in enumerate(lines):
        w.add(line)
        if n % flush_every == 0:
            _write(m, "j", w.take(1))
    w.end()
    _write(m, "j", w.take(1))
    return w, m


@settings(max_examples=60, deadline=None)
@given(lines_st, st.integers(1, 50), st.integers(0, 450))
def test_chunks_hold_the_whole_log_and_resume_at_any_offset(
    lines: list[str], flush_every: int, offset: int
) -> None:
    _, m = _fill(lines, 1 << 30, flush_every)
    want = [jl.cut(x) for x in lines]
    assert jl.all_lines(m.get, "j") == want
    got, cur, complete = jl.read(m.get, "j", jl.seek(m.get, "j", offset))
    assert got == want[offset:] and complete and cur.offset == max(offset, len(want))
    for key, value in m.items():  # every chunk is what a peer's decoder accepts, and small
        check_entry(key, Entry(TS, value))
        assert jl.chunk_of(value) is not None
        assert sum(map(jl.line_bytes, value["lines"])) <= jl.CHUNK_BYTES + 4 * jl.LINE_CHARS


@settings(max_examples=60, deadline=None)
@given(lines_st, st.integers(200, 5000), st.integers(1, 20))
def test_the_cap_truncates_with_one_marker_line(lines: list[str], cap: int, every: int) -> None:
    w, m = _fill(lines, cap, every)
    got = jl.all_lines(m.get, "j")
    want = [jl.cut(x) for x in lines]
    kept = 0
    total = 0
    for x in want:  # the lines that fit the cap, in order
        if total + jl.line_bytes(x) > cap:
            break
        total += jl.line_bytes(x)
        kept += 1
    if kept == len(want):
        assert got == want and not w.truncated
    else:
        assert got == [*want[:kept], "[truncated]"] and w.truncated
        assert total <= cap
    assert jl.read(m.get, "j", jl.Cursor())[2]  # complete: the end or the marker says so


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(max_size=40), min_size=1, max_size=3000), st.randoms())
def test_a_follower_never_repeats_or_skips_when_chunks_arrive_out_of_order(
    lines: list[str], rnd: random.Random
) -> None:
    """Gossip may deliver a later chunk before the last lines of the one it follows: the
    reader waits at the gap, and what it yields is always a prefix of the log."""
    w = jl.LogChunks(1 << 30, "[truncated]")
    writes: list[list[tuple[int, dict[str, Any]]]] = []
    for n, line in enumerate(lines):
        w.add(line)
        if rnd.random() < 0.05 or n == len(lines) - 1:
            writes.append(w.take(1))
    w.end()
    writes.append(w.take(1))
    # deliver every chunk write once, shuffled; a late old version of a chunk loses (LWW)
    flat = [(seq, i, v) for seq, ws in enumerate(writes) for i, v in ws]
    rnd.shuffle(flat)
    m: dict[Key, Any] = {}
    newest: dict[int, int] = {}
    got: list[str] = []
    cur = jl.Cursor()
    for seq, i, v in flat:
        if newest.get(i, -1) < seq:
            newest[i] = seq
            m[jl.log_key("j", i)] = v
        more, cur, _ = jl.read(m.get, "j", cur)
        got += more
        assert got == lines[: len(got)]
    assert got == lines


def test_chunk_keys_pass_the_untrusted_decoder_and_bad_shapes_do_not() -> None:
    good = jl.log_key("0000000000001-000001-a", 7)
    assert good == ("jl", "0000000000001-000001-a", "000007")
    data = encode_entries([(good, Entry(TS, {"epoch": 1, "first": 0, "lines": ["x"]}))])
    assert decode_map_untrusted(data).get(good) == {"epoch": 1, "first": 0, "lines": ["x"]}
    for bad in (("jl", "j"), ("jl", "j", "7"), ("jl", "j", "00000x"), ("jl", "j", "0" * 7)):
        with pytest.raises(BadPacket):
            decode_map_untrusted(encode_entries([(bad, Entry(TS, 1))]))
    # a forged value of another shape reads as no chunk (never raises)
    for forged in (None, 3, {"first": -1, "lines": []}, {"first": 0, "lines": [1]}):
        assert jl.chunk_of(forged) is None


# --------------------------------------------------------------------------- following


@pytest.fixture
async def rep(tmp_path: Path) -> AsyncIterator[Replica]:
    r = await make_replica(tmp_path / "d")
    try:
        yield r
    finally:
        await r.aclose()


async def _put_job(rep: Replica, jid: str, status: str, count: int, **kw: Any) -> None:
    rec = JobRecord(jid, "d", "discover", "discover", (), status, "", 1, "b", 1, 1, 0, count)
    value = {**rec.to_value(), **kw}
    await rep.commit(lambda s, ts: s.d_set(job_key(jid), value, ts))


async def _put_chunks(rep: Replica, jid: str, taken: list[tuple[int, dict[str, Any]]]) -> None:
    await rep.commit(lambda s, ts: jl.d_chunks(jid, taken, ts))


async def test_follow_a_job_running_elsewhere_resumes_at_an_offset(rep: Replica) -> None:
    jid = make_job_id(rep.now_ms(), 1, "b")
    w = jl.LogChunks(1 << 20, "[truncated]")
    lines = [f"l{i}" for i in range(2500)]
    for x in lines[:1500]:
        w.add(x)
    await _put_chunks(rep, jid, w.take(1))
    await _put_job(rep, jid, "Running", 1500)
    got: list[str] = []
    resumed: list[str] = []

    async def reader(into: list[str], offset: int) -> None:
        async for line in follow_log(rep, jid, offset):
            into.append(line)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, got, 0)
            await trio.testing.wait_all_tasks_blocked()
            assert got == lines[:1500]
            # a client that had 1,200 lines reconnects: it gets the rest, once
            nursery.start_soon(reader, resumed, 1200)
            for x in lines[1500:]:
                w.add(x)
            await _put_chunks(rep, jid, w.take(1))
            await _put_job(rep, jid, "Running", 2500)
            await trio.testing.wait_all_tasks_blocked()
            assert got == lines and resumed == lines[1200:]
            w.end()
            await _put_chunks(rep, jid, w.take(1))
            await _put_job(rep, jid, "Complete", 2500)
    assert got == lines and resumed == lines[1200:]
    # an offset past the end: nothing, and the stream ends
    assert [x async for x in follow_log(rep, jid, 10_000)] == []


async def test_a_follower_resuming_past_what_this_replica_holds_gets_the_rest(
    rep: Replica,
) -> None:
    """A client that read 1,500 lines on another instance resumes here, where only the first
    500 have arrived: once the rest arrives it gets lines 1,500 on, once (it used to wait at
    the chunk starting at line 1,000, before its offset, for good)."""
    jid = make_job_id(rep.now_ms(), 1, "b")
    w = jl.LogChunks(1 << 20, "[truncated]")
    lines = [f"l{i}" for i in range(2500)]
    for x in lines[:500]:
        w.add(x)
    await _put_chunks(rep, jid, w.take(1))
    await _put_job(rep, jid, "Running", 500)
    resumed: list[str] = []

    async def reader() -> None:
        async for line in follow_log(rep, jid, 1500):
            resumed.append(line)

    with trio.fail_after(DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert resumed == []
            for x in lines[500:]:
                w.add(x)
            w.end()
            await _put_chunks(rep, jid, w.take(1))
            await _put_job(rep, jid, "Complete", 2500)
    assert resumed == lines[1500:]
    # the pure reader alike, from a cursor sought before the later chunks existed
    m: dict[Key, Any] = {}
    w2 = jl.LogChunks(1 << 20, "[truncated]")
    for x in lines[:500]:
        w2.add(x)
    _write(m, "j", w2.take(1))
    cur = jl.seek(m.get, "j", 1500)
    for x in lines[500:]:
        w2.add(x)
    w2.end()
    _write(m, "j", w2.take(1))
    got, cur, complete = jl.read(m.get, "j", cur)
    assert got == lines[1500:] and complete and cur.offset == 2500


async def test_an_ended_job_without_chunks_shows_its_tail_with_a_note(rep: Replica) -> None:
    """A job run by a version before the chunks (or whose log was removed): its tail."""
    jid = make_job_id(rep.now_ms(), 1, "b")
    await _put_job(rep, jid, "Complete", 50, log_tail=[f"l{i}" for i in range(30, 50)])
    got = [x async for x in follow_log(rep, jid, 40)]
    assert "not kept" in got[0] and got[1:] == [f"l{i}" for i in range(40, 50)]


async def test_a_missing_chunk_of_an_ended_job_ends_the_follow_with_a_note(
    rep: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("gossipmgr.runtime.joblog.GAP_WAIT_S", 0.2)
    jid = make_job_id(rep.now_ms(), 1, "b")
    w = jl.LogChunks(1 << 20, "[truncated]")
    for i in range(10):
        w.add(f"l{i}")
    await _put_chunks(rep, jid, w.take(1))
    await _put_job(rep, jid, "Errored", 12)  # counts two lines this replica never got
    got = [x async for x in follow_log(rep, jid)]
    assert got[:10] == [f"l{i}" for i in range(10)]
    assert got[10:] == ["[gossipmgr: 2 more lines of this log have not reached this instance]"]


# --------------------------------------------------------------------------- GC


def test_chunks_leave_with_their_job_record_and_past_the_budget() -> None:
    state = ClusterState()
    ids = [make_job_id(1000 + i, i, "a") for i in range(HISTORY)]
    for n, jid in enumerate(ids):
        rec = JobRecord(jid, "d", "discover", "discover", (), "Complete", "", 1, "a", 1, 1)
        w = jl.LogChunks(1 << 20, "[truncated]")
        for i in range(3 if n < HISTORY - 2 else 1000):
            w.add(f"{jid} line {i:04d} " + "x" * 40)
        w.end()
        state.apply(state.d_set(job_key(jid), rec.to_value(), TS))
        state.apply(jl.d_chunks(jid, w.take(1), TS))
    jm = JobManager.__new__(JobManager)  # only _history_trim's inputs
    jm.job_log_max_bytes = 64 * 1024  # budget 15 x 64 KiB: the two big logs (~75 KB each) fit
    delta, old = jm._history_trim(state, Timestamp(2, 0, "a"))
    assert old == ids[:1]
    gone = {k for k, e in delta.items() if e.deleted}
    assert job_key(ids[0]) in gone and jl.log_key(ids[0], 0) in gone
    assert not any(k[1] in ids[1:] for k in gone)
    # budget 15 x 8 KiB = 120 KiB: the newest log fits, every older one goes (oldest first)
    jm.job_log_max_bytes = 8 * 1024
    delta, _ = jm._history_trim(state, Timestamp(2, 0, "a"))
    gone = {k for k, e in delta.items() if e.deleted}
    assert {k[1] for k in gone if k[0] == "jl"} == set(ids[:-1])
    assert all(jl.log_key(ids[-2], i) in gone for i in jl.chunk_indexes(state.map.get, ids[-2]))
    state.apply(delta)
    assert state.job(ids[-2]) is not None and not jl.has_log(state.map.get, ids[-2])


# --------------------------------------------------------------------------- real ansible


@pytest.mark.ansible
async def test_a_real_job_log_past_its_cap_is_truncated_and_complete_up_to_it(
    rep: Replica, tmp_path: Path
) -> None:
    settings_ = AnsibleSettings(playbook_dir=HERE / "playbooks_biglog", host_vars=LOCAL)
    jm = JobManager(
        rep, lambda: settings_, tmp_path / "work", log_flush_s=0.05, job_log_max_bytes=8192
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await add_nodes(jm, ("m-1", "127.0.0.1"))
        jid = (await jm.commission(["m-1"], "service-master"))["id"]
        followed = [x async for x in jm.follow(jid)]
        rec = await wait_ended(jm, jid)
        nursery.cancel_scope.cancel()
    assert rec["status"] == "Complete"
    full = jm.log_path(jid).read_text().splitlines()  # the runner's file: every line
    assert sum("biglog-line-" in x for x in full) == 1200 and rec["log_count"] == len(full)
    assert followed[-1].startswith("[gossipmgr: log truncated: it passed job_log_max_bytes")
    kept = followed[:-1]
    assert kept == full[: len(kept)] and sum(map(jl.line_bytes, kept)) <= 8192
    assert len(kept) > 50  # the cap, not a tail, bounds what is kept
    assert jm.job(jid)["logs"] == followed
    with pytest.raises(BadRequest):
        jm.follow(jid, -1)
