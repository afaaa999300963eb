"""Queued jobs (issue 20, part 3): the pure rules (order, bound, the stored request) and
the JobManager's queue on a holder without ansible.

The jobs that run here use a playbook directory without playbooks (as in test_jobs.py):
each fails fast in its first step, so a run is real (record, statuses, log file) and ends
in milliseconds. Real playbooks, real agents and a holder takeover are in
test_jobqueue_agent.py.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from test_jobs import DEADLINE_S, _put, add_nodes, job_value, manager, put_job, rep

from gossipmgr.cli.parser import build_parser
from gossipmgr.config import load as load_config
from gossipmgr.core import jobqueue as jq
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import MAX_ENTRY_BYTES, check_entry
from gossipmgr.core.crdt import Entry
from gossipmgr.core.job import JobRecord, make_job_id
from gossipmgr.core.state import job_key
from gossipmgr.errors import BadRequest, ConfigError, Conflict, NotFound
from gossipmgr.runtime.joblog import Run
from gossipmgr.runtime.jobs import HISTORY, JobManager
from gossipmgr.runtime.replica import Replica

__all__ = ["rep"]  # the fixture, shared with test_jobs.py

NODES = (("rack-1", "10.0.0.1"), ("rack-2", "10.0.0.2"), ("rack-3", "10.0.0.3"))


def rec(job_id: str, status: str) -> JobRecord:
    return JobRecord(job_id, "d", "update", "update", (), status, "", 1, "a", 1, 1)


def commission(node: str) -> dict[str, Any]:
    return {"nodes": [node], "host_group": "service-master", "extra_vars": ""}


# --------------------------------------------------------------------------- pure


@given(st.lists(st.sampled_from(["Queued", "Running", "Queued"]), max_size=8), st.randoms())
def test_the_oldest_queued_job_starts_next_and_none_while_one_runs(
    statuses: list[str], rnd: Any
) -> None:
    recs = [rec(make_job_id(1000 + i, i, "a"), s) for i, s in enumerate(statuses)]
    shuffled = list(recs)
    rnd.shuffle(shuffled)
    waiting = [r for r in recs if r.status == "Queued"]
    assert jq.queued(shuffled) == waiting
    nxt = jq.next_to_start(shuffled)
    if "Running" in statuses or not waiting:
        assert nxt is None
    else:
        assert nxt == waiting[0]
    for i, r in enumerate(waiting, 1):
        assert jq.position(shuffled, r.id) == i
    assert all(jq.position(shuffled, r.id) is None for r in recs if r.status == "Running")


def test_the_queue_is_bounded() -> None:
    active = [rec(make_job_id(1000 + i, i, "a"), "Queued") for i in range(3)]
    jq.check_room(active[:2], 3)
    with pytest.raises(Conflict, match=r"the job queue is full \(3 queued, job_queue_max 3\)"):
        jq.check_room(active, 3)
    with pytest.raises(Conflict, match="job_queue_max 0"):
        jq.check_room([], 0)


def test_a_queued_record_carries_its_request_and_reads_back() -> None:
    req = jq.QueuedRequest("update", {"nodes": ["a", "b"], "host_group": "g", "extra_vars": {}})
    r = jq.queued_record("0000000001000-000001-a", req, 3, 1000, "ops")
    assert r.desc == "update nodes [a b] host-group g"
    assert (r.status, r.runner, r.started_ms, r.nodes, r.requested_by) == (
        "Queued",
        "",
        0,
        ("a", "b"),
        "ops",
    )
    back = JobRecord.from_value(r.to_value())
    assert back == r and jq.QueuedRequest.from_record(back) == req
    assert jq.QueuedRequest("upgrade", {"all": True, "batch": "50%", "max_fail": 0}).describe() == (
        "upgrade (all) batch=50% max_fail=0"
    )
    checked = jq.QueuedRequest("update", {"nodes": ["a"], "check": True})
    r = jq.queued_record("0000000001000-000002-a", checked, 3, 1000, "")
    assert r.check and r.desc == "update nodes [a] (check)"
    with pytest.raises(BadRequest, match="cannot be queued"):
        jq.check_op("forget_node")


@given(st.one_of(st.none(), st.integers(), st.text(), st.dictionaries(st.text(), st.integers())))
def test_a_forged_request_is_read_as_none_and_never_raises(forged: Any) -> None:
    value = {**rec("0000000001000-000001-a", "Queued").to_value(), "request": forged}
    r = JobRecord.from_value(value)
    assert r is not None and jq.QueuedRequest.from_record(r) is None


@pytest.mark.parametrize(
    "request_",
    [
        {"op": "forget_node", "args": {}},
        {"op": "commission", "args": {"nodes": ["rack-1"], "bogus": 1}},
        {"op": "commission", "args": {1: 2}},
        "no request",
    ],
)
def test_a_stored_request_of_an_op_that_cannot_be_queued_is_none(request_: Any) -> None:
    value = {**rec("0000000001000-000001-a", "Queued").to_value(), "request": request_}
    r = JobRecord.from_value(value)
    assert r is not None
    req = jq.QueuedRequest.from_record(r)
    # only the unknown argument gets through the pure check: the start ends it (TypeError)
    assert req is None or set(req.args) == {"nodes", "bogus"}


# --------------------------------------------------------------------------- JobManager


async def busy(rep: Replica) -> str:
    """A Running job of another instance (an orphan once a scan runs)."""
    jid = make_job_id(500, 1, "zz")
    await put_job(rep, jid, status="Running", runner="zz", task="commission")
    return jid


async def wait_idle(jm: JobManager) -> None:
    with trio.fail_after(DEADLINE_S):
        while jm.replica.state.active_jobs() or jm.running_job_id is not None:
            with trio.move_on_after(0.2):
                await jm.replica.wait_change()


async def test_default_is_409_and_queue_true_waits_bounded(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path, job_queue_max=2)
    await add_nodes(jm, *NODES)
    await busy(rep)
    with pytest.raises(Conflict, match="there is already an active job"):
        await jm.submit("commission", commission("rack-1"))
    with pytest.raises(Conflict, match="there is already an active job"):
        await jm.submit("commission", commission("rack-1"), queue=False)
    first = await jm.submit("commission", commission("rack-1"), queue=True)
    second = await jm.submit("commission", commission("rack-2"), queue=True)
    assert (first["status"], first["queue_position"]) == ("Queued", 1)
    assert (second["status"], second["queue_position"]) == ("Queued", 2)
    assert first["request"] == {
        "op": "commission",
        "args": {"nodes": ["rack-1"], "host_group": "service-master", "extra_vars": {}},
    }
    with pytest.raises(Conflict, match="the job queue is full"):
        await jm.submit("commission", commission("rack-3"), queue=True)
    assert jm.job(second["id"])["queue_position"] == 2
    assert [j.get("queue_position") for j in jm.jobs()] == [2, 1, None]
    # the configured default: job_queue = true queues a request that does not say
    jm.queue.enabled, jm.queue.limit = True, 3
    third = await jm.submit("commission", commission("rack-3"))
    assert third["queue_position"] == 3
    with pytest.raises(BadRequest, match="extra_vars"):  # the shape is checked when queued
        await jm.submit("update", {"nodes": ["rack-1"], "extra_vars": "[1]"}, queue=True)


async def test_queued_jobs_start_in_order_once_each_checked_when_they_start(
    rep: Replica, tmp_path: Path
) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, *NODES)
    orphan = await busy(rep)
    ids = [
        (await jm.submit(op, args, queue=True))["id"]
        for op, args in (
            ("commission", commission("rack-1")),
            # rack-1 is Unallocated after the failed commission: refused when it starts
            ("update", {"nodes": ["rack-1"], "host_group": "", "extra_vars": {"v": 1}}),
            ("commission", {**commission("rack-2"), "check": True}),  # rides through
            ("discover", {"addrs": ["10.9.9.9"], "extra_vars": ""}),
        )
    ]
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await wait_idle(jm)
        nursery.cancel_scope.cancel()
    recs = [rep.state.job(i) for i in ids]
    assert all(r is not None for r in recs)
    one, refused, three, four = (r for r in recs if r is not None)
    assert rep.state.job(orphan).status == "Errored"  # type: ignore[union-attr]
    assert [r.status for r in (one, refused, three, four)] == ["Errored"] * 4
    assert "playbook" in one.error and "playbook" in three.error  # they ran
    assert refused.error.startswith("queued job not started: ") and "transition" in refused.error
    assert refused.started_ms == 0 and not jm.log_path(refused.id).exists()
    assert one.started_ms <= one.ended_ms <= three.started_ms <= three.ended_ms
    assert three.ended_ms <= four.started_ms
    for r in (one, three, four):  # the queued record, started: its id, creation, epoch
        assert r.runner == "a" and r.epoch == 1 and r.request is None
        assert jm.log_path(r.id).read_text().count(f"gossipmgr: job {r.id} (") == 1
    assert four.addrs == ("10.9.9.9",)
    assert three.check and three.desc.endswith(" (check)") and not one.check
    assert rep.state.node("rack-2").inventory.status == "Unallocated"  # type: ignore[union-attr]


async def test_a_queued_job_cancelled_never_runs(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, *NODES)
    await busy(rep)
    a = (await jm.submit("commission", commission("rack-1"), queue=True))["id"]
    b = (await jm.submit("commission", commission("rack-2"), queue=True))["id"]
    res = await jm.cancel(a)
    assert (res["status"], res["error"]) == ("Cancelled", "job was cancelled while queued")
    assert jm.job(b)["queue_position"] == 1
    with pytest.raises(Conflict, match=f'job "{a}" is not active \\(it ended Cancelled\\)'):
        await jm.cancel(a)
    with pytest.raises(NotFound):
        await jm.cancel(make_job_id(1, 1, "nobody"))
    with pytest.raises(BadRequest):
        await jm.cancel("../etc")
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await wait_idle(jm)
        nursery.cancel_scope.cancel()
    ra, rb = rep.state.job(a), rep.state.job(b)
    assert ra is not None and rb is not None
    assert (ra.status, ra.started_ms, ra.runner) == ("Cancelled", 0, "")
    assert not jm.log_path(a).exists()
    assert rb.status == "Errored" and rb.started_ms > 0  # b ran
    assert rep.state.node("rack-1").inventory.status == "Unallocated"  # type: ignore[union-attr]


async def test_queued_records_are_not_orphans_and_forged_ones_never_run(
    rep: Replica, tmp_path: Path
) -> None:
    """A Queued record of an earlier holder (older epoch) waits; the new holder starts it
    under its own epoch. A Queued record whose request cannot run ends Errored."""
    jm = manager(rep, tmp_path)
    await add_nodes(jm, *NODES)
    req = {"op": "commission", "args": commission("rack-1")}
    old = make_job_id(600, 1, "old")
    await put_job(
        rep,
        old,
        status="Queued",
        runner="",
        epoch=0,
        request=req,
        task="commission",
        created_ms=600,
    )
    forged = []
    for i, bad in enumerate(
        [
            None,
            {"op": "forget_node", "args": {"name": "rack-2"}},
            {"op": "update", "args": {"x": 1}},
        ]
    ):
        jid = make_job_id(700 + i, i, "k")
        forged.append(jid)
        await put_job(rep, jid, status="Queued", runner="", request=bad)
    assert await jm.reconcile_orphans() == []
    assert rep.state.job(old).status == "Queued"  # type: ignore[union-attr]
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await wait_idle(jm)
        nursery.cancel_scope.cancel()
    started = rep.state.job(old)
    assert started is not None and started.epoch == 1 and started.runner == "a"
    assert started.created_ms == 600 and "playbook" in started.error
    for jid in forged:
        r = rep.state.job(jid)
        assert r is not None and r.status == "Errored" and r.runner == ""  # never ran
        assert r.error.startswith("queued job not started: ")


async def test_the_history_trim_never_removes_a_queued_job(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, *NODES)
    # two queued records older than every kept one: the trim's first candidates
    queued = [make_job_id(10 + i, i, "q") for i in range(2)]
    for jid, node in zip(queued, ("rack-1", "rack-2"), strict=True):
        req = {"op": "commission", "args": commission(node)}
        value = job_value(jid, status="Queued", runner="", request=req, task="commission")
        await rep.commit(partial(_put, job_key(jid), value))
    for i in range(HISTORY):
        await put_job(rep, make_job_id(1000 + i, i, "a"), status="Complete")
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await wait_idle(jm)
        nursery.cancel_scope.cancel()
    # the second waited through the first one's start (which trimmed the history) and ran;
    # the first, ended by then, was the oldest at the second one's start and went
    r = rep.state.job(queued[1])
    assert r is not None and r.started_ms > 0 and r.runner == "a"
    assert len(rep.state.jobs()) == HISTORY and rep.state.job(queued[0]) is None


# --------------------------------------------------------------------------- config, CLI


def test_the_config_switches(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("")
    assert (load_config(path, {}).job_queue, load_config(path, {}).job_queue_max) == (False, 10)
    path.write_text("job_queue = true\njob_queue_max = 3\n")
    cfg = load_config(path, {})
    assert (cfg.job_queue, cfg.job_queue_max) == (True, 3)
    for bad in ("job_queue_max = -1", "job_queue_max = 1001", "job_queue = 'yes'"):
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=r"job[-_]queue"):
            load_config(path, {})


class Recorder:
    """The CLI client's one method, recording what a command sends (pure: no server)."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self.answer, self.calls = answer, list[tuple[str, str, Any]]()

    def call(self, method: str, path: str, body: Any = None) -> Any:
        self.calls.append((method, path, body))
        return self.answer


@pytest.mark.parametrize(
    ("argv", "sent", "printed"),
    [
        (
            ["nodes", "update", "a", "b", "--queue"],
            ("POST", "/update/nodes", {"nodes": ["a", "b"], "extra_vars": "", "host_group": ""}),
            "job J queued (position 2)",
        ),
        (
            ["discover", "10.0.0.1", "--queue"],
            ("POST", "/discover/nodes", {"addrs": ["10.0.0.1"], "extra_vars": ""}),
            "job J queued (position 2)",
        ),
        (["job", "cancel", "J"], ("POST", "/job/cancel", {"job": "J"}), "job J: cancel requested"),
        (["job", "cancel"], ("POST", "/job/cancel", None), "job J: cancel requested"),
    ],
)
def test_the_cli_sends_queue_and_the_job_to_cancel(
    argv: list[str], sent: tuple[str, str, Any], printed: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = build_parser(argv).parse_args(argv)
    rec = Recorder({"id": "J", "status": "Queued", "queue_position": 2})
    assert args.func(rec, args) == 0
    method, path, body = sent
    if "--queue" in argv:
        body = {**body, "queue": True}
    assert rec.calls == [(method, path, body)]
    assert capsys.readouterr().out.startswith(printed)


async def test_a_queued_upgrade_keeps_its_options_and_is_checked_when_it_starts(
    rep: Replica, tmp_path: Path
) -> None:
    """``POST /upgrade/nodes`` with ``"queue": true`` goes through the same queue: its
    options are stored as given, and the upgrade's own checks run when it starts (the
    nodes here are Unallocated: refused then, with the upgrade's reason)."""
    jm = manager(rep, tmp_path)
    await add_nodes(jm, *NODES)
    await busy(rep)
    args = {"nodes": ["rack-1", "rack-2"], "all_": False, "batch": "50%", "max_fail": 1}
    queued = await jm.submit("upgrade", {**args, "extra_vars": ""}, queue=True)
    assert queued["status"] == "Queued" and queued["request"]["op"] == "upgrade"
    assert queued["request"]["args"] == {**args, "extra_vars": {}}
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await wait_idle(jm)
        nursery.cancel_scope.cancel()
    done = rep.state.job(queued["id"])
    assert done is not None and done.status == "Errored"
    assert done.error.startswith("queued job not started: only Allocated nodes can be upgraded")


def _queued_entry_size(rep: Replica, args: dict[str, Any]) -> int:
    """The encoded size of the Queued record (its entry) :meth:`JobQueue.submit` writes."""
    now = rep.now_ms()
    jid = make_job_id(now, 1, rep.name)
    value = jq.queued_record(jid, jq.QueuedRequest("update", args), 1, now, "").to_value()
    packed = check_entry(job_key(jid), Entry(Timestamp(now, 0, rep.name), value))
    assert packed is not None
    return len(packed)


async def test_a_queued_job_near_the_size_limit_can_be_ended_and_never_stops_the_service(
    rep: Replica, tmp_path: Path
) -> None:
    """A Queued record that fits one gossip message with a few bytes to spare: ending it
    (Cancelled, or Errored with the reason its start was refused) must still be writable,
    and a write that fails there must not escape the JobManager's service loop (the
    agent's nursery: the whole agent would stop, on every holder in turn)."""
    jm = manager(rep, tmp_path)
    await add_nodes(jm, *NODES)
    await busy(rep)

    def args(pad: int) -> dict[str, Any]:
        # rack-1 is Unallocated: an update of it is refused when it starts
        return {"nodes": ["rack-1"], "host_group": "", "extra_vars": {"pad": "x" * pad}}

    pad = 600_000
    pad += MAX_ENTRY_BYTES - 40 - _queued_entry_size(rep, args(pad))
    assert MAX_ENTRY_BYTES - 60 < _queued_entry_size(rep, args(pad)) <= MAX_ENTRY_BYTES - 40
    cancelled = (await jm.submit("update", args(pad), queue=True))["id"]
    refused = (await jm.submit("update", args(pad), queue=True))["id"]
    res = await jm.cancel(cancelled)
    assert res["status"] == "Cancelled" and "request" not in res
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await wait_idle(jm)
        nursery.cancel_scope.cancel()
    r = rep.state.job(refused)
    assert r is not None and r.status == "Errored" and r.request is None
    assert r.error.startswith("queued job not started: ") and "transition" in r.error


async def test_a_forged_queued_record_too_big_to_end_leaves_the_service_running(
    rep: Replica, tmp_path: Path
) -> None:
    """A key holder's Queued record with no request to run and a desc that leaves no room
    for the Errored end: the start cannot write that end; the service logs it and goes
    on (retrying at its next wake) instead of raising out of its loop."""
    jm = manager(rep, tmp_path)
    jid = make_job_id(700, 1, "k")
    fields: dict[str, Any] = {"status": "Queued", "runner": "", "request": None}
    pad = 600_000
    for _ in range(2):  # the size is linear in the pad beyond 64 KiB
        value = job_value(jid, **fields, desc="x" * pad)
        packed = check_entry(job_key(jid), Entry(Timestamp(rep.now_ms(), 0, rep.name), value))
        assert packed is not None
        pad += MAX_ENTRY_BYTES - 40 - len(packed)
    await put_job(rep, jid, **fields, desc="x" * pad)
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await jm._start_queued()  # what the loop calls: the end is refused, logged
        nursery.cancel_scope.cancel()
    r = rep.state.job(jid)
    assert r is not None and r.status == "Queued"


async def test_cancelling_a_job_by_id_never_cancels_another_one(
    rep: Replica, tmp_path: Path
) -> None:
    """``cancel(X)`` with X Running but not this holder's run (another runner's, an orphan
    the scan has not ended yet, e.g. after a partition heals) ends X, and leaves the run
    of this holder (job Y) alone: the id names the job to cancel."""
    jm = manager(rep, tmp_path)
    mine = make_job_id(900, 1, "a")
    await put_job(rep, mine, status="Running", runner="a", task="commission")
    run = Run(mine, "commission", 1, jm.log_path(mine))
    jm.gate.run = run  # this holder's run of Y (no playbook needed to stand for one)
    other = make_job_id(800, 1, "zz")
    await put_job(rep, other, status="Running", runner="zz", task="commission")
    res = await jm.cancel(other)
    assert res["id"] == other and res["status"] == "Errored"
    assert not run.cancel.is_set()
    assert rep.state.job(mine).status == "Running"  # type: ignore[union-attr]
