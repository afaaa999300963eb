"""JobManager without ansible: holder-only requests, checks before writes, job records,
labels, monitor events, takeover reconciliation, orphans, history, log following.

Jobs that do run here use a playbook directory without playbooks, so the bridge fails the
step before starting ansible-runner ("playbook file not found"): the whole job life
(record, statuses, log file, tail) runs for real in milliseconds. Real playbooks are in
test_workflows_e2e.py.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio
import trio.testing

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import MAX_ENTRY_BYTES, entry_to_wire
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.job import JOB_TRANSITIONS, JobRecord, make_job_id, valid_job_id
from gossipmgr.core.lease import Lease, LeaseConfig
from gossipmgr.core.state import LEASE_KEY, ClusterState, global_key, inventory_key, job_key
from gossipmgr.errors import BadRequest, CheckFailed, Conflict, NotFound, Unavailable
from gossipmgr.runtime import jobs as jobs_module
from gossipmgr.runtime.ansible import AnsibleSettings
from gossipmgr.runtime.joblog import LOG_TAIL_LINES
from gossipmgr.runtime.jobs import ACTIVE, HISTORY, JobManager
from gossipmgr.runtime.replica import Replica

#: Leases written by hand here last 10**9 ms; the bound on expiry must allow it.
LONG_LEASE = LeaseConfig(ttl_ms=2 * 10**9)

DEADLINE_S = 10


def _put(key: tuple[str, ...], value: Any, st: ClusterState, ts: Timestamp) -> LWWMap:
    """A commit function writing one value (``partial(_put, key, value)``)."""
    return st.d_set(key, value, ts)


async def make_replica(path: Path, name: str = "a", holder: str | None = "a") -> Replica:
    # A replica-made lease (no lease loop here): it lasts as long as it says.
    r = Replica(name, data_dir=path, lease=LONG_LEASE)
    r.open()
    if holder is not None:
        lease = Lease(holder, 1, r.now_ms() + 10**9).as_value()
        await r.commit(lambda st, ts: st.d_set(LEASE_KEY, lease, ts))
    return r


@pytest.fixture
async def rep(tmp_path: Path) -> AsyncIterator[Replica]:
    r = await make_replica(tmp_path / "d")
    try:
        yield r
    finally:
        await r.aclose()


def manager(r: Replica, tmp_path: Path, **kw: Any) -> JobManager:
    # No playbooks in this directory: every step fails fast without ansible-runner.
    (tmp_path / "empty").mkdir(exist_ok=True)
    settings = AnsibleSettings(playbook_dir=tmp_path / "empty")
    return JobManager(r, lambda: settings, tmp_path / "work", **kw)


async def add_nodes(jm: JobManager, *nodes: tuple[str, str]) -> None:
    for name, addr in nodes:
        label, serial = name.split("-", 1)
        assert await jm.apply_node_event("discovered", name, label, serial, addr)


async def set_status(r: Replica, name: str, status: str, hg: str | None = None) -> None:
    rec = r.state.node(name)
    assert rec is not None
    inv = {**rec.inventory.to_value(), "status": status}
    await r.commit(lambda st, ts: st.d_set(inventory_key(name), inv, ts))
    if hg is not None:
        await r.commit(lambda st, ts: st.d_set(("n", name, "hg"), hg, ts))


def job_value(job_id: str, **fields: Any) -> dict[str, Any]:
    """A job record's value as an instance writes it, with ``fields`` changed."""
    rec = JobRecord(job_id, "d", "discover", "discover", (), "Running", "", 1, "a", 1, 1)
    value = {**rec.to_value(), **fields}
    return {**value, "workflow": value["task"]}


async def put_job(rep: Replica, job_id: str, **fields: Any) -> None:
    """Commit :func:`job_value` ``(job_id, **fields)`` as that job's record."""
    await rep.commit(partial(_put, job_key(job_id), job_value(job_id, **fields)))


async def wait_ended(jm: JobManager, job_id: str) -> dict[str, Any]:
    with trio.fail_after(DEADLINE_S):
        while True:
            rec = jm.replica.state.job(job_id)
            if rec is not None and rec.status not in ACTIVE and jm.running_job_id is None:
                return rec.to_value()
            with trio.move_on_after(0.2):
                await jm.replica.wait_change()


# --------------------------------------------------------------------------- holder only


async def test_requests_need_the_lease(tmp_path: Path) -> None:
    for holder, who in (("a", "a"), (None, "none")):
        r = await make_replica(tmp_path / f"d-{who}", name="b", holder=holder)
        try:
            await refused_off_holder(manager(r, tmp_path), who)
            assert r.state.jobs() == {}
        finally:
            await r.aclose()


async def refused_off_holder(jm: JobManager, who: str) -> None:
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: jm.commission(["x-1"], "service-master", ""),
        lambda: jm.decommission(["x-1"], ""),
        lambda: jm.update(["x-1"], "", ""),
        lambda: jm.discover(["10.0.0.1"], ""),
        jm.cancel,
        lambda: jm.set_monitor_event("discovered", []),
        lambda: jm.apply_node_event("discovered", "x-1", "x", "1", "10.0.0.1"),
        lambda: jm.reconcile({}),
    ]
    for call in calls:
        with pytest.raises(Unavailable) as ei:
            await call()
        assert str(ei.value) == f"not the lease holder; holder is {who}"
        assert ei.value.status_hint == 503


# --------------------------------------------------------------------------- checks first


async def test_rejected_requests_write_nothing(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"), ("w-1", "10.0.0.2"))
    writes = rep.counters["writes"]
    before = rep.state.map.copy()
    cases: list[tuple[Callable[[], Awaitable[Any]], type[Exception], str]] = [
        (
            lambda: jm.commission([], "service-master"),
            CheckFailed,
            "atleast one node should be specified",
        ),
        (
            lambda: jm.commission(["nope"], "service-master"),
            CheckFailed,
            'node with name or address "nope" doesn\'t exists',
        ),
        (
            lambda: jm.commission(["m-1"], ""),
            CheckFailed,
            'invalid or empty host-group specified: ""',
        ),
        (
            lambda: jm.commission(["w-1"], "service-worker"),
            CheckFailed,
            "Cannot commission a worker node without existence of a master node in the "
            "cluster, make sure atleast one master node is commissioned.",
        ),
        (
            lambda: jm.decommission(["m-1"]),
            Conflict,
            "failed to update m-1's state in inventory, Error: "
            'transition from "Unallocated" to "Cancelled" is not allowed',
        ),
        (
            lambda: jm.update(["m-1"], "bad"),
            CheckFailed,
            'invalid host-group specified: "bad"',
        ),
        (
            lambda: jm.commission(["m-1"], "service-master", "{not json"),
            BadRequest,
            '"extra_vars" should be a valid json. Error: ',
        ),
        (
            lambda: jm.discover(["10.0.0.2"]),
            CheckFailed,
            "one or more nodes already exist with the specified management addresses. "
            "Existing nodes: [w-1:10.0.0.2]",
        ),
        (lambda: jm.commission("m-1", "service-master"), BadRequest, '"nodes" must be a list'),
    ]
    for call, exc, text in cases:
        with pytest.raises(exc) as ei:
            await call()
        assert str(ei.value).startswith(text)
    # Not one byte: no job record (clusterm made rejected requests its "last" job).
    assert rep.counters["writes"] == writes
    assert rep.state.map == before
    with pytest.raises(NotFound, match='info for "last" job doesn\'t exist'):
        jm.job("last")


async def test_disappeared_node_is_refused(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"))
    await jm.set_monitor_event("disappeared", [{"label": "m", "serial": "1", "addr": ""}])
    with pytest.raises(CheckFailed) as ei:
        await jm.commission(["10.0.0.1"], "service-master")
    assert str(ei.value) == (
        "one or more nodes are not in discovered state, please check their network "
        "reachability. Non-discovered nodes: [m-1]"
    )


async def test_one_active_job_refuses_the_next(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)  # not started: the record below is not reconciled away
    await add_nodes(jm, ("m-1", "10.0.0.1"))
    jid = make_job_id(rep.now_ms(), 1, "a")
    await put_job(rep, jid, desc="commission nodes [x-1]", task="commission")
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: jm.commission(["m-1"], "service-master"),
        lambda: jm.discover(["10.9.9.9"]),
    ]
    for call in calls:
        with pytest.raises(Conflict) as ei:
            await call()
        assert str(ei.value) == (
            "there is already an active job, please try in sometime. Job: [commission nodes [x-1]]"
        )
    assert jm.job("active")["id"] == jid
    assert rep.state.node("m-1").inventory.status == "Unallocated"  # type: ignore[union-attr]


# --------------------------------------------------------------------------- a job's life


async def test_failed_job_life_without_ansible(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await add_nodes(jm, ("m-1", "10.0.0.1"))
        info = await jm.commission(["m-1"], "service-master", '{"color": "red"}')
        jid = info["id"]
        assert valid_job_id(jid)
        assert info["status"] == "Running" and info["task"] == "commission"
        assert info["epoch"] == 1 and info["runner"] == "a" and info["nodes"] == ["m-1"]
        assert info["desc"] == "commission nodes [m-1] host-group service-master"
        # Accepted and launched in one commit: the node is already Provisioning.
        node = rep.state.node("m-1")
        assert node is not None and node.inventory.status == "Provisioning"
        assert node.inventory.epoch == 1
        lines = [line async for line in jm.follow(jid)]
        rec = await wait_ended(jm, jid)
        nursery.cancel_scope.cancel()
    assert rec["status"] == "Errored"
    assert 'commission failed: playbook "site.yml" failed' in rec["error"]
    assert rec["ended_ms"] >= rec["started_ms"] > 0
    node = rep.state.node("m-1")
    assert node is not None
    assert (node.inventory.status, node.inventory.prev_status) == (
        "Unallocated",
        "Provisioning",
    )
    # The failure path ran (cleanup.yml, missing too) and the log says so.
    text = jm.log_path(jid).read_text()
    assert "playbook file not found" in text and "cleanup.yml" in text
    assert lines == text.splitlines()
    last = jm.job("last")
    assert last["id"] == jid and last["logs"] == text.splitlines()
    assert {"desc", "task", "status", "error", "logs"} <= set(last)
    assert rec["log_count"] == len(lines)
    cut = [x if len(x) <= 200 else x[:197] + "..." for x in lines[-LOG_TAIL_LINES:]]
    assert rec["log_tail"] == cut
    assert any(x.endswith("...") and len(x) == 200 for x in cut)  # the bound was exercised
    with pytest.raises(NotFound, match='info for "active" job doesn\'t exist'):
        jm.job("active")
    with pytest.raises(Conflict, match=r"^job is not Running$"):
        jm.follow("active")
    with pytest.raises(Conflict, match=r"^job is not Running$"):
        await jm.cancel()


async def test_job_labels(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    for bad in ("", "bogus", "../../etc/passwd", "1-2-a"):
        with pytest.raises(BadRequest) as ei:
            jm.job(bad)
        assert str(ei.value) == f'Invalid or empty job label specified: "{bad}"'
        with pytest.raises(BadRequest):
            jm.log_path(bad)
    jid = make_job_id(123, 7, "in stance/x")
    assert jid == "0000000000123-000007-in_stance_x" and valid_job_id(jid)
    assert make_job_id(124, 1, "a") > make_job_id(123, 9, "z")
    with pytest.raises(NotFound) as nf:
        jm.job(jid)
    assert str(nf.value) == f'info for "{jid}" job doesn\'t exist'
    with pytest.raises(NotFound):
        jm.follow(jid)


async def test_history_is_bounded(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    old = [make_job_id(1000 + i, i, "a") for i in range(HISTORY + 5)]
    for jid in old:
        await put_job(rep, jid, status="Complete")
    (tmp_path / "work" / "jobs").mkdir(parents=True)
    jm.log_path(old[0]).write_text("old\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        info = await jm.discover(["10.1.1.1"])
        await wait_ended(jm, info["id"])
        nursery.cancel_scope.cancel()
    ids = [j["id"] for j in jm.jobs()]
    assert len(ids) == HISTORY
    assert ids[0] == info["id"] and ids == sorted(ids, reverse=True)
    assert ids[-1] == old[6]  # the six oldest went, tombstoned
    assert rep.state.map.entry(job_key(old[0])).deleted  # type: ignore[union-attr]
    assert not jm.log_path(old[0]).exists()
    assert jm.job("last")["addrs"] == ["10.1.1.1"]


async def test_a_request_cancelled_after_its_job_is_committed_still_runs_it(
    rep: Replica, tmp_path: Path
) -> None:
    """A request is cancelled (its HTTP client went away) once its job record is committed,
    with the history full, so the launch then removes the dropped job's files in a thread.
    That thread call raised Cancelled before the run was started: the record stayed Running
    with this instance as its runner, the orphan scan skipped it as ours, and every later
    request was refused ("there is already an active job") until a restart."""
    jm = manager(rep, tmp_path)
    for i in range(HISTORY):
        jid = make_job_id(1000 + i, i, "a")
        await rep.commit(partial(_put, job_key(jid), job_value(jid, status="Complete")))
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        with trio.CancelScope() as request:

            def cancel_on_a_new_job(novel: LWWMap) -> None:
                if any(k[0] == "j" and not e.deleted for k, e in novel.items()):
                    request.cancel()  # delivered at the request's next checkpoint

            rep.on_local_write(cancel_on_a_new_job)
            await jm.discover(["10.1.1.1"])
        assert request.cancel_called
        new = max(rep.state.jobs())
        done = await wait_ended(jm, new)
        nursery.cancel_scope.cancel()
    assert done["status"] == "Errored"  # it ran (no playbooks here) and ended
    assert jm.active_record() is None


# --------------------------------------------------------------------------- monitoring


async def test_monitor_events(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    for bad in ("", "joined"):
        with pytest.raises(BadRequest) as ei:
            await jm.set_monitor_event(bad, [])
        assert str(ei.value) == f'Invalid or empty event name specified: "{bad}"'
    with pytest.raises(BadRequest):
        await jm.set_monitor_event("discovered", [{"label": "x"}])
    out = await jm.set_monitor_event(
        "discovered", [{"label": "n", "serial": "1", "addr": "10.0.0.1"}]
    )
    assert out == {"event": "discovered", "nodes": ["n-1"]}
    rec = rep.state.node("n-1")
    assert rec is not None and rec.inventory.state == "Discovered"
    assert rec.inventory.epoch == 1
    await jm.set_monitor_event("disappeared", [{"label": "n", "serial": "1", "addr": ""}])
    rec = rep.state.node("n-1")
    assert rec is not None
    assert (rec.inventory.status, rec.inventory.state) == ("Unallocated", "Disappeared")
    # Repeats change nothing.
    assert not await jm.apply_node_event("disappeared", "n-1", "n", "1", "")


async def test_reconcile_after_takeover(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("a-1", "10.0.0.1"), ("b-1", "10.0.0.2"), ("c-1", "10.0.0.3"))
    await jm.apply_node_event("disappeared", "c-1", "c", "1", "")
    out = await jm.reconcile(
        {
            "b-1": ("b", "1", "10.0.0.2"),
            "c-1": ("c", "1", "10.0.0.3"),
            "d-1": ("d", "1", "10.0.0.4"),
        }
    )
    assert out == {"discovered": ["c-1", "d-1"], "disappeared": ["a-1"]}
    state = {n.name: n.inventory.state for n in rep.state.nodes()}
    assert state == {
        "a-1": "Disappeared",
        "b-1": "Discovered",
        "c-1": "Discovered",
        "d-1": "Discovered",
    }
    assert await jm.reconcile(
        {
            "b-1": ("b", "1", "10.0.0.2"),
            "c-1": ("c", "1", "10.0.0.3"),
            "d-1": ("d", "1", "10.0.0.4"),
        }
    ) == {"discovered": [], "disappeared": []}


async def test_reappear_policy_off_starts_nothing(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"))
    await set_status(rep, "m-1", "Allocated")
    await jm.apply_node_event("disappeared", "m-1", "m", "1", "")
    await jm.apply_node_event("discovered", "m-1", "m", "1", "10.0.0.1")
    assert rep.state.jobs() == {}
    assert jm.counters["reappear_jobs"] == 0


# --------------------------------------------------------------------------- orphans


async def test_orphan_of_a_lost_runner_is_ended(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"), ("u-1", "10.0.0.2"))
    await set_status(rep, "m-1", "Provisioning")
    await set_status(rep, "u-1", "Unallocated")
    jid = make_job_id(rep.now_ms(), 1, "old")
    await put_job(
        rep, jid, desc="commission", task="commission", nodes=["m-1", "u-1"], epoch=0, runner="old"
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        done = await wait_ended(jm, jid)
        nursery.cancel_scope.cancel()
    assert done["status"] == "Errored"
    assert done["error"] == "runner old lost the lease (epoch 0) while the job was running"
    assert done["epoch"] == 1
    assert rep.state.node("m-1").inventory.status == "Unallocated"  # type: ignore[union-attr]
    assert rep.state.node("u-1").inventory.status == "Unallocated"  # type: ignore[union-attr]
    assert jm.counters["orphans"] == 1


async def test_a_forged_job_record_neither_stops_the_service_nor_blocks_jobs(
    rep: Replica, tmp_path: Path
) -> None:
    """A key holder can gossip a job record of any shape. One that looked active with a
    ``nodes`` that is not a list made the orphan scan raise TypeError inside its commit,
    and JobManager.run (the agent with it) died; until then it blocked every request as
    "the active job", and following it raised. Such a value is no job record now."""
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"))
    jid = make_job_id(rep.now_ms(), 1, "forger")
    forged = {"id": jid, "status": "Running", "task": "commission", "nodes": 5, "log_tail": 3}
    await rep.commit(lambda st, ts: st.d_set(job_key(jid), forged, ts))
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        info = await jm.commission(["m-1"], "service-master")
        done = await wait_ended(jm, info["id"])
        assert jm.counters["orphans"] == 0
        nursery.cancel_scope.cancel()
    assert done["status"] == "Errored"  # no playbooks here: it ran and failed
    assert [j["id"] for j in jm.jobs()] == [info["id"]]
    for call in (lambda: jm.job(jid), lambda: jm.follow(jid)):
        with pytest.raises(NotFound):
            call()


async def test_a_job_record_under_another_id_s_key_is_no_job(rep: Replica, tmp_path: Path) -> None:
    """Every record gossipmgr writes is under its own id's key. A well-shaped Running value
    under ("j", A) that says id B was read as the active job B: the orphan scan looked B up,
    found nothing to end, and ran again every second (counting and logging an orphan each
    time) while every request was refused ("there is already an active job") for good."""
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"))
    key_id = make_job_id(rep.now_ms(), 1, "forger")
    said_id = make_job_id(rep.now_ms(), 2, "forger")
    forged = job_value(said_id, runner="forger", epoch=1)
    await rep.commit(partial(_put, job_key(key_id), forged))
    assert rep.state.job(key_id) is None
    assert rep.state.jobs() == {}
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        info = await jm.commission(["m-1"], "service-master")
        await wait_ended(jm, info["id"])
        nursery.cancel_scope.cancel()
    assert jm.counters["orphans"] == 0
    assert [j["id"] for j in jm.jobs()] == [info["id"]]
    with pytest.raises(NotFound):
        jm.job(key_id)


def _padded_to_the_limit(
    key: tuple[str, ...], value: dict[str, Any], ts: Timestamp
) -> dict[str, Any]:
    """``value`` with its ``desc`` grown until the entry is a few bytes under the limit of
    one gossip message (``codec.MAX_ENTRY_BYTES``): a record any key holder can gossip."""

    def size(v: dict[str, Any]) -> int:
        return len(msgpack.packb(entry_to_wire(key, Entry(ts, v)), use_bin_type=True))

    pad = MAX_ENTRY_BYTES - size(value) - 16
    return {**value, "desc": value["desc"] + "x" * pad}


async def test_an_orphan_too_big_to_end_does_not_stop_the_service(
    rep: Replica, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An active record just under the size limit (gossiped by a key holder) cannot be
    ended: its error text does not fit. The orphan scan's commit raised ValueTooLarge,
    which only StoreError was caught for, and JobManager.run (the agent with it) died."""
    jm = manager(rep, tmp_path)
    jid = make_job_id(rep.now_ms(), 1, "forger")
    ts = Timestamp(rep.now_ms(), 0, "forger")
    key = job_key(jid)
    forged = _padded_to_the_limit(key, job_value(jid, runner="forger", epoch=0), ts)
    await rep.commit(partial(_put, key, forged))  # it fits: a commit takes it
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await trio.testing.wait_all_tasks_blocked()  # the first scan ran
        nursery.cancel_scope.cancel()
    assert "orphan reconciliation failed" in caplog.text
    assert rep.state.job(jid) is not None and rep.state.job(jid).active  # type: ignore[union-attr]


async def test_a_running_record_grown_to_the_limit_does_not_stop_the_service(
    rep: Replica, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key holder overwrites our running job's record (same epoch, later timestamp) with
    one just under the size limit: the run's final write (log tail, error) no longer fits.
    Its ValueTooLarge escaped the run (only StaleEpoch and StoreError were caught) and
    killed JobManager.run, the agent with it."""
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"))
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        info = await jm.commission(["m-1"], "service-master")
        # No checkpoint since the launch: the run has not written yet. Applied as gossip is.
        key = job_key(info["id"])
        ts = Timestamp(rep.now_ms() + 10**6, 0, "forger")
        current = rep.state.job(info["id"])
        assert current is not None
        grown = _padded_to_the_limit(key, current.to_value(), ts)
        rep.state.apply(LWWMap({key: Entry(ts, grown)}))
        with trio.fail_after(DEADLINE_S):
            while jm.running_job_id is not None:
                with trio.move_on_after(0.2):
                    await rep.wait_change()
        nursery.cancel_scope.cancel()
    assert "final write failed" in caplog.text


async def test_job_statuses_move_only_along_the_table(rep: Replica, tmp_path: Path) -> None:
    """Every status change the runtime writes (a run's end, an orphan's) is in
    JOB_TRANSITIONS, as seen by a reader of the replica."""
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"), ("u-1", "10.0.0.2"))
    seen: dict[str, list[str]] = {}

    def note() -> None:
        for jid, rec in rep.state.jobs().items():
            statuses = seen.setdefault(jid, [])
            if not statuses or statuses[-1] != rec.status:
                statuses.append(rec.status)

    async def watch() -> None:
        while True:
            note()
            await rep.wait_change()

    orphan = make_job_id(rep.now_ms(), 1, "old")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        await put_job(rep, orphan, task="update", nodes=["u-1"], epoch=0, runner="old")
        await nursery.start(jm.run)
        await wait_ended(jm, orphan)
        info = await jm.commission(["m-1"], "service-master")
        await wait_ended(jm, info["id"])
        note()
        nursery.cancel_scope.cancel()
    assert seen == {orphan: ["Running", "Errored"], info["id"]: ["Running", "Errored"]}
    for statuses in seen.values():
        assert all(b in JOB_TRANSITIONS[a] for a, b in itertools.pairwise(statuses))


# --------------------------------------------------------------------------- node settings


async def test_node_settings(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    await add_nodes(jm, ("m-1", "10.0.0.1"))
    await jm.set_host_group("10.0.0.1", "service-worker")
    assert rep.state.node("m-1").host_group == "service-worker"  # type: ignore[union-attr]
    with pytest.raises(CheckFailed, match='invalid or empty host-group specified: "boss"'):
        await jm.set_host_group("m-1", "boss")
    with pytest.raises(NotFound, match='node with name or address "z" doesn\'t exists'):
        await jm.set_host_group("z", "service-master")
    await jm.set_node_vars("m-1", {"a": 1, "b": [2]})
    await jm.set_node_var("m-1", "c", "x")
    await jm.remove_node_var("m-1", "a")
    assert dict(rep.state.node("m-1").vars) == {"b": [2], "c": "x"}  # type: ignore[union-attr]
    await jm.set_node_vars("m-1", {"d": True})
    assert dict(rep.state.node("m-1").vars) == {"d": True}  # type: ignore[union-attr]
    for bad in ("", "node_name", "node_addr"):
        with pytest.raises(BadRequest):
            await jm.set_node_var("m-1", bad, 1)
    with pytest.raises(BadRequest):
        await jm.set_node_vars("m-1", ["x"])  # type: ignore[arg-type]


async def test_the_job_service_wakes_for_jobs_and_the_lease_not_for_other_writes(
    rep: Replica, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's scans (orphans, the queue) depend on job records and the lease only:
    it used to wake, and scan, at every change (a step, a cancel scope and a holder check
    per write in every instance; ~6 % of a writer's CPU in sequential global writes)."""
    monkeypatch.setattr(jobs_module, "ORPHAN_SCAN_S", 3600.0)  # changes alone wake it here
    jm = manager(rep, tmp_path)
    scans: list[int] = []
    more = [trio.Event()]
    scan = jm._scan_orphans

    async def counted() -> None:
        scans.append(1)
        more[0].set()
        more[0] = trio.Event()
        await scan()

    monkeypatch.setattr(jm, "_scan_orphans", counted)

    async def scanned(n: int) -> None:
        with trio.fail_after(DEADLINE_S):
            while len(scans) < n:
                await more[0].wait()

    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        await scanned(1)
        for i in range(20):
            await rep.commit(partial(_put, global_key(f"g{i}"), i))
        await rep.commit(partial(_put, inventory_key("n1"), {"status": "Unallocated"}))
        await trio.testing.wait_all_tasks_blocked()
        assert len(scans) == 1, "woken by writes that are not a job's or the lease's"
        await put_job(rep, "j1", status="Errored")
        await scanned(2)
        lease = Lease("a", 1, rep.now_ms() + 10**9).as_value()
        await rep.commit(lambda st, ts: st.d_set(LEASE_KEY, lease, ts))
        await scanned(3)
        nursery.cancel_scope.cancel()
