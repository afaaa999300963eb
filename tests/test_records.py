"""Pure tests of the typed records (gossipmgr.core.job, gossipmgr.core.node): the stored
shapes are exactly the ones earlier versions wrote, forged shapes never raise, and a job's
status moves only along JOB_TRANSITIONS."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import decode_map_trusted, encode_map
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.job import (
    ACTIVE,
    CANCELLED,
    COMPLETE,
    ERRORED,
    JOB_TRANSITIONS,
    QUEUED,
    RUNNING,
    JobRecord,
)
from gossipmgr.core.node import Inventory, Monitoring
from gossipmgr.errors import Conflict
from gossipmgr.runtime.ansible import WorkflowResult
from gossipmgr.runtime.jobrun import outcome

STATUSES = (QUEUED, RUNNING, COMPLETE, ERRORED, CANCELLED)

texts = st.text(max_size=8)
ints = st.integers(min_value=0, max_value=2**40)
names = st.lists(texts, max_size=3)


def old_job_value(**f: Any) -> dict[str, Any]:
    """A job record as gossipmgr wrote it before the typed records (its ``_launch`` literal,
    then ``dict.update`` for the tail and the end, which keep the key order)."""
    extra: dict[str, Any] = {k: f[k] for k in ("host_group", "addrs") if k in f}
    return {
        "id": f["id"],
        "desc": f["desc"],
        "task": f["task"],
        "workflow": f["task"],
        "nodes": f["nodes"],
        **extra,
        "status": f["status"],
        "error": f["error"],
        "epoch": f["epoch"],
        "runner": f["runner"],
        "created_ms": f["created_ms"],
        "started_ms": f["started_ms"],
        "ended_ms": f["ended_ms"],
        "log_count": f["log_count"],
        "log_tail": f["log_tail"],
    }


old_jobs = st.fixed_dictionaries(
    {
        "id": texts,
        "desc": texts,
        "task": texts,
        "nodes": names,
        "status": st.sampled_from(STATUSES),
        "error": texts,
        "epoch": ints,
        "runner": texts,
        "created_ms": ints,
        "started_ms": ints,
        "ended_ms": ints,
        "log_count": ints,
        "log_tail": names,
    },
    optional={"host_group": texts, "addrs": names},
).map(lambda f: old_job_value(**f))


@given(old_jobs)
def test_a_stored_job_record_reads_and_writes_back_byte_for_byte(value: dict[str, Any]) -> None:
    rec = JobRecord.from_value(value)
    assert rec is not None
    assert rec.to_value() == value
    assert list(rec.to_value()) == list(value)  # field order too: the same msgpack bytes
    assert rec.to_json() == value  # served as stored (GET /info/job adds "logs")
    ts = Timestamp(1, 0, "a")
    key: tuple[str, ...] = ("j", "x")
    old = encode_map(LWWMap({key: Entry(ts, value)}))
    assert encode_map(LWWMap({key: Entry(ts, rec.to_value())})) == old
    again = decode_map_trusted(old).get(("j", "x"))  # as an old data directory reads back
    assert JobRecord.from_value(again) == rec


forged_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


#: A record as written, and its fields (each required; host_group and addrs are optional).
BASE = old_job_value(
    id="x",
    desc="d",
    task="update",
    nodes=["n-1"],
    status="Running",
    error="",
    epoch=1,
    runner="a",
    created_ms=1,
    started_ms=1,
    ended_ms=0,
    log_count=0,
    log_tail=[],
)


@given(old_jobs, st.sampled_from(list(BASE)), forged_values)
def test_a_job_record_of_another_shape_reads_as_no_record(
    value: dict[str, Any], field: str, forged: object
) -> None:
    """A key holder can gossip anything under ("j", id): a field missing or of another type
    makes the whole value no job record (never an exception, never a guessed field)."""
    missing = {k: v for k, v in value.items() if k != field}
    assert JobRecord.from_value(missing) is None
    rec = JobRecord.from_value({**value, field: forged})
    if rec is not None:  # the forged value happened to be of the right type
        assert rec.to_value()[field] == forged


@pytest.mark.parametrize("bad", [None, 7, "x", [1, 2], [["id", "x"]], {}])
def test_a_job_value_that_is_not_a_map_reads_as_no_record(bad: object) -> None:
    assert JobRecord.from_value(bad) is None


def test_a_bool_is_not_an_int_and_optional_fields_are_checked() -> None:
    assert JobRecord.from_value(BASE) is not None
    assert JobRecord.from_value({**BASE, "epoch": True}) is None
    assert JobRecord.from_value({**BASE, "nodes": ["a", 1]}) is None
    assert JobRecord.from_value({**BASE, "nodes": ("a",)}) is None  # msgpack gives lists
    assert JobRecord.from_value({**BASE, "host_group": 3}) is None
    assert JobRecord.from_value({**BASE, "addrs": "10.0.0.1"}) is None


# --------------------------------------------------------------------------- status machine


def job(status: str) -> JobRecord:
    return JobRecord("i", "d", "update", "update", ("n-1",), status, "", 1, "a", 5, 5)


@given(st.sampled_from(STATUSES), st.sampled_from(STATUSES) | st.text(max_size=4))
def test_a_job_status_changes_only_along_the_table(a: str, b: str) -> None:
    rec = job(a)
    if b in JOB_TRANSITIONS[a]:
        moved = rec.transition(b, error="e", ended_ms=9, epoch=2)
        assert (moved.status, moved.error, moved.ended_ms, moved.epoch) == (b, "e", 9, 2)
        assert moved.nodes == rec.nodes and moved.id == rec.id
    else:
        with pytest.raises(Conflict, match=f'job status transition from "{a}" to'):
            rec.transition(b, error="e", ended_ms=9, epoch=2)


def test_an_ended_job_stays_ended_and_a_status_never_moves_to_itself() -> None:
    for ended in (COMPLETE, ERRORED, CANCELLED):
        for to in STATUSES:
            with pytest.raises(Conflict):
                job(ended).transition(to, error="", ended_ms=1, epoch=1)
    with pytest.raises(Conflict):
        job(RUNNING).transition(RUNNING, error="", ended_ms=1, epoch=1)


def test_every_transition_the_runtime_makes_is_in_the_table() -> None:
    """The runtime moves a record in two places: a run's end (``jobrun.outcome`` of its
    result, from Running) and the orphan scan (Errored, from any active status). A
    new record is written Running; its log tail is written without a status change."""
    for ok in (True, False):
        for cancelled in (True, False):
            status, _ = outcome(WorkflowResult(ok, cancelled, "why", []))
            assert status in JOB_TRANSITIONS[RUNNING]
            job(RUNNING).transition(status, error="", ended_ms=1, epoch=1)
    for active in ACTIVE:
        assert ERRORED in JOB_TRANSITIONS[active]
    assert job(RUNNING).with_log(("l",), 1, 2).status == RUNNING


# --------------------------------------------------------------------------- node records


def test_inventory_and_monitoring_write_the_stored_shapes() -> None:
    inv = Inventory("Unallocated", "Incomplete", "Discovered", "Unknown", 3)
    assert list(inv.to_value().items()) == [
        ("status", "Unallocated"),
        ("prev_status", "Incomplete"),
        ("state", "Discovered"),
        ("prev_state", "Unknown"),
        ("epoch", 3),
    ]
    assert Inventory.from_value(inv.to_value()) == inv
    assert "epoch" not in inv.to_json()
    moved = inv.with_status("Provisioning", 4).with_state("Disappeared", 5)
    assert moved == Inventory("Provisioning", "Unallocated", "Disappeared", "Discovered", 5)
    mon = Monitoring("n", "1", "10.0.0.1")
    assert list(mon.to_value().items()) == [("label", "n"), ("serial", "1"), ("addr", "10.0.0.1")]
    assert Monitoring.from_value(mon.to_value()) == mon


@given(forged_values)
def test_node_records_of_any_shape_read_as_before_never_raise(value: object) -> None:
    """Inventory and monitoring values read field by field, as the readers always did: a
    value that is not a map is absent, a missing field is its default, another type its
    text."""
    inv = Inventory.from_value(value)
    mon = Monitoring.from_value(value)
    if not isinstance(value, dict):
        assert inv == Inventory() and mon is None
        return
    assert inv.status == str(value.get("status", "Incomplete"))
    assert inv.prev_state == str(value.get("prev_state", "Unknown"))
    assert inv.epoch == (value["epoch"] if type(value.get("epoch")) is int else -1)
    assert mon is not None and mon.addr == str(value.get("addr", ""))
