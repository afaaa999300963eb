"""The rolling upgrade through the JobManager, on a replica with no Serf (issue 20).

As in test_jobs.py, most runs use a playbook directory without playbooks: the bridge fails
each batch's run at once ("playbook file not found"), so the batch loop, --max-fail, the
statuses, the history notes and a takeover's resume run for real in milliseconds. One test
runs a real (trivial) playbook, ansible_connection=local, for the bounded wait: a node
that ran well but is not Discovered in time counts as failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from test_jobs import add_nodes, make_replica, manager, rep, set_status, wait_ended

from gossipmgr.core import inventory as inv
from gossipmgr.core import joblog as chunks
from gossipmgr.core.job import JobRecord, make_job_id
from gossipmgr.core.joblog import d_chunks
from gossipmgr.core.state import combine, job_key
from gossipmgr.core.upgrade import Upgrade
from gossipmgr.errors import CheckFailed, Conflict, Unavailable
from gossipmgr.runtime.ansible import AnsibleSettings
from gossipmgr.runtime.joblog import Run
from gossipmgr.runtime.jobs import JobManager
from gossipmgr.runtime.replica import Replica

__all__ = ["rep"]  # the fixture, used by name

NODES = [(f"n-{i}", f"10.0.0.{i + 1}") for i in range(5)]


async def _allocated(jm: JobManager, count: int = 5) -> list[str]:
    await add_nodes(jm, *NODES[:count])
    names = [n for n, _ in NODES[:count]]
    for n in names:
        await set_status(jm.replica, n, "Allocated")
    return names


def _status(r: Replica, name: str) -> str:
    rec = r.state.node(name)
    assert rec is not None
    return rec.inventory.status


def _history(r: Replica, name: str) -> list[dict[str, Any]]:
    return r.state.history(name, 50)


async def test_max_fail_stops_after_the_batch_that_passed_it(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    names = await _allocated(jm)
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        info = await jm.upgrade(names, batch="40%", max_fail=1)
        assert info["upgrade"]["batches"] == [names[:2], names[2:4], names[4:]]
        assert "extra_vars" not in info["upgrade"]
        with pytest.raises(Conflict, match="already an active job"):
            await jm.upgrade(names)
        done = await wait_ended(jm, info["id"])
        nursery.cancel_scope.cancel()
    reason = "stopped after batch 1 of 3: 2 nodes failed, more than --max-fail 1"
    assert done["status"] == "Errored" and done["error"].startswith(reason), done
    assert done["upgrade"]["done"] == 1 and done["upgrade"]["failed"] == names[:2]
    assert [_status(rep, n) for n in names] == ["Maintenance"] * 2 + ["Allocated"] * 3
    first = _history(rep, names[0])
    assert [e["event"] for e in first[:2]] == ["noted", "status"]
    assert first[0]["reason"].startswith('upgrade failed: playbook "rolling-upgrade.yml"')
    assert first[1]["reason"] == "upgrade batch 1 of 3" and first[1]["job"] == info["id"]
    for n in names[2:]:
        h = _history(rep, n)
        assert h[0]["event"] == "noted" and h[0]["reason"] == f"not upgraded: {done['error']}"
        assert h[0]["status"] == "Allocated"
    assert "gossipmgr: upgrade batch 2" not in "\n".join(jm.job(info["id"])["logs"])


async def test_refusals_write_nothing(rep: Replica, tmp_path: Path) -> None:
    jm = manager(rep, tmp_path)
    names = await _allocated(jm, 3)
    await set_status(rep, names[1], "Maintenance")
    before = dict(rep.state.map.items())
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        with pytest.raises(Conflict, match=f"{names[1]} is Maintenance"):
            await jm.upgrade(names)
        with pytest.raises(CheckFailed, match="doesn't exists"):
            await jm.upgrade(["zz"])
        nursery.cancel_scope.cancel()
    assert dict(rep.state.map.items()) == before
    off = await make_replica(tmp_path / "b", name="b", holder=None)
    try:
        with pytest.raises(Unavailable, match="not the lease holder"):
            await manager(off, tmp_path).upgrade(names[:1])
    finally:
        await off.aclose()


async def test_a_new_holder_resumes_from_the_batch_in_flight_and_its_log_goes_on(
    rep: Replica, tmp_path: Path
) -> None:
    """An upgrade record left Running by another runner (epoch 0), batch 1 done and batch 2
    in flight: the holder (epoch 1) adopts it, runs batch 2 again and batch 3, never batch
    1, with the request's extra-vars; its log continues the replicated one."""
    jm = manager(rep, tmp_path)
    names = await _allocated(jm)
    await set_status(rep, names[2], "Maintenance")  # moved by the old runner's batch 2
    await set_status(rep, names[3], "Maintenance")
    up = Upgrade(
        ((names[0], names[1]), (names[2], names[3]), (names[4],)),
        done=1,
        current=1,
        max_fail=5,
        extra_vars={"v": 1},
    )
    jid = make_job_id(rep.now_ms(), 1, "old")
    rec = JobRecord(jid, "upgrade", "upgrade", "upgrade", tuple(names), "Running", "", 0,
                    "old", 1, 1, log_count=3, log_tail=("l0", "l1", "l2"), upgrade=up)  # fmt: skip
    old_log = chunks.LogChunks(chunks.DEFAULT_MAX_BYTES, "")
    for line in ("l0", "l1", "l2"):
        old_log.add(line)
    taken = old_log.take(0)
    await rep.commit(
        lambda st, ts: combine(st.d_set(job_key(jid), rec.to_value(), ts), d_chunks(jid, taken, ts))
    )
    history_before = _history(rep, names[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        done = await wait_ended(jm, jid)
        nursery.cancel_scope.cancel()
    assert done["runner"] == "a" and done["epoch"] == 1, done
    assert done["status"] == "Errored" and done["error"].startswith("upgrade finished: 3 nodes")
    assert done["upgrade"]["done"] == 3 and done["upgrade"]["failed"] == names[2:]
    assert jm.counters["orphans"] == 0
    lines = chunks.all_lines(rep.state.map.get, jid)
    assert lines[:3] == ["l0", "l1", "l2"] and "resumed by a under epoch 1" in lines[3]
    text = "\n".join(lines)
    assert "upgrade batch 2 of 3 again (it was in flight at a takeover)" in text
    assert "upgrade batch 1 of 3" not in text  # a finished batch is never run again
    assert _history(rep, names[0]) == history_before and _status(rep, names[0]) == "Allocated"
    assert [_status(rep, n) for n in names[2:]] == ["Maintenance"] * 3
    assert JobRecord.from_value(rep.state.map.get(job_key(jid))).upgrade.extra_vars == {"v": 1}  # type: ignore[union-attr]


def _holding(rep: Replica, tmp_path: Path, wait_s: float = 0.5) -> tuple[JobManager, Path]:
    """A JobManager whose upgrade playbook (real, ansible_connection=local) holds each
    batch until the returned file exists; upgrade_wait_s ``wait_s``."""
    books, release = tmp_path / "books", tmp_path / "release"
    books.mkdir()
    (books / "rolling-upgrade.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.raw: 'while [ ! -e {release} ]; do sleep 0.1; done'\n"
        "      changed_when: false\n"
    )
    settings = AnsibleSettings(
        playbook_dir=books,
        host_vars={"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        upgrade_wait_s=wait_s,
    )
    return JobManager(rep, lambda: settings, tmp_path / "work"), release


async def _until(rep: Replica, cond: Callable[[], bool]) -> None:
    """Wait (60 s at most) until ``cond()`` holds, checked again at every change of ``rep``."""
    with trio.fail_after(60):
        while not cond():
            await rep.wait_change()


async def _until_status(rep: Replica, name: str, status: str) -> None:
    await _until(rep, lambda: _status(rep, name) == status)


def _logged(jm: JobManager, job_id: str, text: str) -> Callable[[], bool]:
    return lambda: text in "\n".join(jm.job(job_id)["logs"])


async def _ended(rep: Replica, job_id: str) -> JobRecord:
    with trio.fail_after(60):
        while (rec := rep.state.job(job_id)) is None or rec.active:
            await rep.wait_change()
    return rec


@pytest.mark.ansible
async def test_a_node_not_discovered_within_upgrade_wait_s_counts_as_failed(
    rep: Replica, tmp_path: Path
) -> None:
    jm, release = _holding(rep, tmp_path)
    names = await _allocated(jm, 2)
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        info = await jm.upgrade(names, batch=2, max_fail=0)
        await _until_status(rep, names[1], "Maintenance")  # the batch started
        # the node goes while its playbook runs, and does not come back
        await jm.apply_node_event("disappeared", names[1], "n", "1", "")
        release.touch()
        rec = await _ended(rep, info["id"])
        nursery.cancel_scope.cancel()
    assert rec.status == "Errored" and rec.upgrade is not None
    assert list(rec.upgrade.failed) == [names[1]], rec
    assert _status(rep, names[0]) == "Allocated" and _status(rep, names[1]) == "Maintenance"
    why = _history(rep, names[1])[0]["reason"]
    assert why == "upgrade failed: not Discovered in Serf within 0.5 s of its batch's run"


@pytest.mark.ansible
async def test_a_cancel_stops_the_batch_and_leaves_the_rest_untouched(
    rep: Replica, tmp_path: Path
) -> None:
    jm, _ = _holding(rep, tmp_path)
    names = await _allocated(jm, 2)
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        info = await jm.upgrade(names, max_fail=5)
        await _until(rep, _logged(jm, info["id"], "running"))  # ansible started
        await jm.cancel()
        rec = await _ended(rep, info["id"])
        nursery.cancel_scope.cancel()
    assert rec.status == "Cancelled" and rec.error == "job was cancelled"
    assert rec.upgrade is not None and rec.upgrade.done == 1 and rec.upgrade.failed == (names[0],)
    assert _status(rep, names[0]) == "Maintenance" and _status(rep, names[1]) == "Allocated"
    assert _history(rep, names[0])[0]["reason"] == "upgrade failed: job was cancelled"


async def test_a_forged_log_chunk_does_not_stop_the_resume(rep: Replica, tmp_path: Path) -> None:
    """The last chunk of an orphaned upgrade's log is of no chunk's shape (forged by a key
    holder): the scan must not crash on it; the upgrade is resumed, its log numbered on
    from the record's line count."""
    jm = manager(rep, tmp_path)
    names = await _allocated(jm, 2)
    up = Upgrade(((names[0],), (names[1],)), max_fail=5)
    jid = make_job_id(rep.now_ms(), 1, "old")
    rec = JobRecord(jid, "upgrade", "upgrade", "upgrade", tuple(names), "Running", "", 0,
                    "old", 1, 1, log_count=3, log_tail=("l0", "l1", "l2"), upgrade=up)  # fmt: skip
    await rep.commit(
        lambda st, ts: combine(
            st.d_set(job_key(jid), rec.to_value(), ts),
            st.d_set(chunks.log_key(jid, 0), {"forged": True}, ts),
        )
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        done = await wait_ended(jm, jid)
        nursery.cancel_scope.cancel()
    assert done["runner"] == "a" and done["epoch"] == 1, done
    assert done["upgrade"]["done"] == 2, done
    assert done["log_count"] > 3 and rep.state.map.get(chunks.log_key(jid, 1)) is not None


@pytest.mark.ansible
async def test_a_cancel_during_the_wait_for_discovered_ends_the_job_cancelled(
    rep: Replica, tmp_path: Path
) -> None:
    """A cancel while the batch waits for its nodes to be Discovered ends the job Cancelled
    (not Errored by --max-fail), the node still away noted as cancelled, not as slow."""
    jm, release = _holding(rep, tmp_path, wait_s=600.0)
    names = await _allocated(jm, 3)
    async with trio.open_nursery() as nursery:
        await nursery.start(jm.run)
        info = await jm.upgrade(names, batch=2, max_fail=0)
        await _until_status(rep, names[1], "Maintenance")  # the batch started
        await jm.apply_node_event("disappeared", names[1], "n", "1", "")
        release.touch()
        await _until(rep, _logged(jm, info["id"], "to be Discovered"))
        await jm.cancel()
        rec = await _ended(rep, info["id"])
        nursery.cancel_scope.cancel()
    assert rec.status == "Cancelled" and rec.error == "job was cancelled", rec
    assert _status(rep, names[0]) == "Allocated" and _status(rep, names[1]) == "Maintenance"
    assert _status(rep, names[2]) == "Allocated"
    assert _history(rep, names[1])[0]["reason"] == "upgrade failed: job was cancelled"


async def test_a_log_flush_during_a_batch_commit_loses_no_progress(
    rep: Replica, tmp_path: Path
) -> None:
    """The run's log flush and a batch's start (or end) write the same job record: made at
    once, the flush (read before the batch's write landed, stamped after it) must not put
    the old progress back."""
    jm = manager(rep, tmp_path)
    names = await _allocated(jm, 2)
    jid = make_job_id(rep.now_ms(), 1, "a")
    up = Upgrade(((names[0],), (names[1],)))
    rec = JobRecord(jid, "upgrade", "upgrade", "upgrade", tuple(names), "Running", "", 1,
                    "a", 1, 1, upgrade=up)  # fmt: skip
    await rep.commit(lambda st, ts: st.d_set(job_key(jid), rec.to_value(), ts))
    run = Run(jid, "upgrade", 1, tmp_path / "job.log")
    run.line("a line for the flush")

    def started(r: JobRecord) -> JobRecord:
        assert r.upgrade is not None
        return replace(r, upgrade=r.upgrade.started(0))

    # The batch's write (made first) is held at its disk write until the flush got as far
    # as it can: without a lock, the flush has made its delta from the state before it.
    store = rep._store
    assert store is not None
    append, held = store.append, [False]

    async def held_append(record: bytes) -> None:
        if not held[0]:
            held[0] = True
            await trio.testing.wait_all_tasks_blocked()
        await append(record)

    store.append = held_append  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(jm.executor._write_job, run, started)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(jm.executor._write_job, run)
    now = rep.state.job(jid)
    assert now is not None and now.upgrade is not None
    assert now.upgrade.current == 0, now.upgrade


async def test_a_cancel_of_an_orphaned_upgrade_notes_the_batch_in_flight(
    rep: Replica, tmp_path: Path
) -> None:
    """``job cancel`` of an upgrade left Running by another runner, batch 1 in flight: the
    holder adopts it and it ends Cancelled at once; that batch's nodes stay in Maintenance
    noted as cancelled (as for a cancel during the batch's run), the rest untouched."""
    jm = manager(rep, tmp_path)
    names = await _allocated(jm, 2)
    await set_status(rep, names[0], "Maintenance")  # moved by the old runner's batch 1
    up = Upgrade(((names[0],), (names[1],)), done=0, current=0, max_fail=5)
    jid = make_job_id(rep.now_ms(), 1, "old")
    rec = JobRecord(jid, "upgrade", "upgrade", "upgrade", tuple(names), "Running", "", 0,
                    "old", 1, 1, upgrade=up)  # fmt: skip
    await rep.commit(lambda st, ts: st.d_set(job_key(jid), rec.to_value(), ts))
    async with trio.open_nursery() as nursery:
        jm._nursery = nursery  # the service's nursery, without its scan: the cancel adopts
        await jm.cancel()
        ended = await _ended(rep, jid)
    assert ended.status == "Cancelled" and ended.runner == "a", ended
    assert ended.upgrade is not None and ended.upgrade.done == 1, ended.upgrade
    assert ended.upgrade.failed == (names[0],)
    assert _status(rep, names[0]) == "Maintenance" and _status(rep, names[1]) == "Allocated"
    assert _history(rep, names[0])[0]["reason"] == "upgrade failed: job was cancelled"


async def test_a_serf_event_during_a_batch_end_loses_neither_change(
    rep: Replica, tmp_path: Path
) -> None:
    """A batch's end (node back to Allocated) and a Serf event for the same node (it went
    away) write the same inventory register: made at once, the later-stamped write must
    not put back what the other changed (the status move or the Disappeared state)."""
    jm = manager(rep, tmp_path)
    names = await _allocated(jm, 1)
    await set_status(rep, names[0], "Maintenance")
    jid = make_job_id(rep.now_ms(), 1, "a")
    rec = JobRecord(jid, "upgrade", "upgrade", "upgrade", tuple(names), "Running", "", 1,
                    "a", 1, 1, upgrade=Upgrade(((names[0],),)))  # fmt: skip
    await rep.commit(lambda st, ts: st.d_set(job_key(jid), rec.to_value(), ts))
    run = Run(jid, "upgrade", 1, tmp_path / "job.log")

    def back(st: Any, ts: Any) -> Any:
        return inv.finish_statuses(st, names, "Maintenance", "Allocated", 1, ts)[0]

    store = rep._store
    assert store is not None
    append, held = store.append, [False]

    async def held_append(record: bytes) -> None:  # the batch's write waits at its disk write
        if not held[0]:
            held[0] = True
            await trio.testing.wait_all_tasks_blocked()
        await append(record)

    store.append = held_append  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(jm.executor._write_job, run, None, back)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(jm.apply_node_event, "disappeared", names[0], "n", "0", "")
    node = rep.state.node(names[0])
    assert node is not None
    assert (node.inventory.status, node.inventory.state) == ("Allocated", "Disappeared")
