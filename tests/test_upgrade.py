"""The rolling upgrade's pure decisions (``gossipmgr.core.upgrade``, ``upgrade_check``):
batch sizes (N, P%, rounding), the plan, --max-fail accounting, the progress record (read
tolerantly inside a job record), which hosts of a run failed, and the request checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from msgpack import packb

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.job import JobRecord
from gossipmgr.core.node import Inventory, Monitoring
from gossipmgr.core.state import ClusterState, inventory_key, monitoring_key
from gossipmgr.core.upgrade import (
    Upgrade,
    batch_size,
    check_max_fail,
    failed_hosts,
    plan_batches,
)
from gossipmgr.core.upgrade_check import NO_ALLOCATED, check_upgrade
from gossipmgr.errors import BadRequest, CheckFailed, Conflict

NAMES = st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=40, unique=True)


# --------------------------------------------------------------------------- batching


@settings(max_examples=200, deadline=None)
@given(NAMES, st.integers(min_value=1, max_value=60))
def test_batches_of_n_cover_the_nodes_in_order_each_once(names: list[str], n: int) -> None:
    size = batch_size(n, len(names))
    batches = plan_batches(names, size)
    assert size == min(n, len(names))
    assert [x for b in batches for x in b] == names
    assert all(len(b) == size for b in batches[:-1]) and 1 <= len(batches[-1]) <= size
    assert len(batches) == -(-len(names) // size)  # ceil
    assert batch_size(str(n), len(names)) == size  # "N" as text, as the CLI may send


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=500), st.integers(min_value=1, max_value=100))
def test_a_percentage_rounds_down_like_ansible_serial_and_is_at_least_one(
    count: int, pct: int
) -> None:
    size = batch_size(f"{pct}%", count)
    assert size == max(1, count * pct // 100)
    assert 1 <= size <= count


def test_batch_examples_and_refusals() -> None:
    assert batch_size(None, 7) == 1  # the default: one node at a time
    assert batch_size("50%", 5) == 2 and batch_size("10%", 5) == 1 and batch_size("100%", 5) == 5
    assert batch_size(10, 3) == 3
    assert plan_batches(list("abcde"), 2) == (("a", "b"), ("c", "d"), ("e",))
    bad: object
    for bad in (0, -1, "0%", "101%", "x", "%", "2.5", 2.0, True, [], "1e3"):
        with pytest.raises(BadRequest, match='"batch"'):
            batch_size(bad, 10)
    assert check_max_fail(None) == 0 and check_max_fail(3) == 3
    for bad_k in (-1, "1", 1.0, True):
        with pytest.raises(BadRequest, match='"max_fail"'):
            check_max_fail(bad_k)


# --------------------------------------------------------------------------- accounting


@settings(max_examples=150, deadline=None)
@given(NAMES, st.integers(1, 5), st.integers(0, 6), st.data())
def test_max_fail_accounting_stops_exactly_when_more_than_k_failed(
    names: list[str], size: int, k: int, data: st.DataObject
) -> None:
    up = Upgrade(plan_batches(names, size), max_fail=k)
    failed_so_far: list[str] = []
    while (i := up.next_batch()) is not None:
        up = up.started(i)
        assert up.current == i and up.untouched() == tuple(
            n for b in up.batches[i + 1 :] for n in b
        )
        batch = up.batches[i]
        failed = data.draw(st.lists(st.sampled_from(batch), unique=True))
        up = up.finished(i, failed)
        failed_so_far += [n for n in batch if n in failed]
        assert up.done == i + 1 and up.current == -1 and list(up.failed) == failed_so_far
        reason = up.stop_reason()
        assert bool(reason) == (len(failed_so_far) > k)
        if reason:
            word = "node" if len(failed_so_far) == 1 else "nodes"
            assert reason.startswith(
                f"stopped after batch {i + 1} of {len(up.batches)}: "
                f"{len(failed_so_far)} {word} failed, more than --max-fail {k}"
            )
            assert up.untouched() == tuple(n for b in up.batches[i + 1 :] for n in b)
            break
    else:
        assert bool(up.end_error()) == bool(failed_so_far)
    # the record's room: the worst case encodes at least as large as any progress
    assert len(packb(up.worst().to_value())) >= len(packb(up.to_value()))


def test_the_stop_reason_text() -> None:
    up = Upgrade((("a", "b"), ("c", "d"), ("e", "f")), max_fail=0)
    up = up.finished(0, []).started(1).finished(1, ["d"])
    assert up.stop_reason() == (
        "stopped after batch 2 of 3: 1 node failed, more than --max-fail 0 (failed: [d])"
    )
    assert up.untouched() == ("e", "f")
    with pytest.raises(Conflict):
        up.finished(0, [])  # a finished batch is never recorded again
    with pytest.raises(Conflict):
        up.started(0)


# --------------------------------------------------------------------------- the record

_UP = st.builds(
    lambda b, k, d: Upgrade(plan_batches(b, 2), max_fail=k, extra_vars=d or None),
    NAMES,
    st.integers(0, 5),
    st.dictionaries(st.text(min_size=1, max_size=3), st.integers(), max_size=2),
)


@settings(max_examples=50, deadline=None)
@given(_UP)
def test_progress_round_trips_in_a_job_record_and_is_served_without_extra_vars(
    up: Upgrade,
) -> None:
    rec = JobRecord("0000000000001-000001-i1", "d", "upgrade", "upgrade", up.nodes, "Running",
                    "", 3, "i1", 1, 1, upgrade=up)  # fmt: skip
    value = rec.to_value()
    assert JobRecord.from_value(value) == rec
    served = rec.to_json()["upgrade"]
    assert "extra_vars" not in served and served["batches"] == [list(b) for b in up.batches]


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()),
                 st.dictionaries(st.sampled_from(["batches", "done", "current", "failed",
                                                  "max_fail", "extra_vars"]),
                                 st.one_of(st.integers(-2, 3), st.text(max_size=2),
                                           st.lists(st.lists(st.text(max_size=2))),
                                           st.lists(st.text(max_size=2))))))  # fmt: skip
def test_a_forged_progress_never_raises_and_never_hides_the_record(value: Any) -> None:
    base = JobRecord("0000000000001-000001-i1", "d", "upgrade", "upgrade", ("a",), "Running",
                     "", 3, "i1", 1, 1)  # fmt: skip
    up = Upgrade.from_value(value)
    rec = JobRecord.from_value({**base.to_value(), "upgrade": value})
    assert rec is not None and rec.upgrade == up  # the record stays; bad progress: None
    if up is not None:
        assert 0 <= up.done <= len(up.batches) and up.current in (-1, up.done)


# --------------------------------------------------------------------------- failed hosts


def test_failed_hosts_from_the_recap() -> None:
    batch = ["a", "b", "c"]
    assert failed_hosts(batch, True, {}) == []
    stats = {"failures": {"b": 1}, "dark": {}, "processed": {"a": 1, "b": 1, "c": 1}}
    assert failed_hosts(batch, False, stats) == ["b"]
    unreachable = {"dark": {"c": 1}, "processed": {"a": 1, "b": 1, "c": 1}}
    assert failed_hosts(batch, False, unreachable) == ["c"]
    # serial: the play stopped before c: it was never upgraded
    assert failed_hosts(batch, False, {"failures": {"a": 1}, "processed": {"a": 1}}) == [
        "a",
        "b",
        "c",
    ]
    assert failed_hosts(batch, False, {"failures": {"a": 1}, "processed": {"a": 1, "b": 1}}) == [
        "a",
        "c",
    ]
    # failed outside any host (no recap, a timeout, a fence refusal everywhere): all failed
    assert failed_hosts(batch, False, {}) == batch
    assert failed_hosts(batch, False, {"processed": {"a": 1, "b": 1, "c": 1}}) == batch


# --------------------------------------------------------------------------- the checks


def _state(nodes: dict[str, tuple[str, str]]) -> ClusterState:
    s = ClusterState()
    for i, (name, (status, state)) in enumerate(sorted(nodes.items())):
        ts = Timestamp(1000 + i, 0, "t")
        s.apply(s.d_set(inventory_key(name), Inventory(status, status, state).to_value(), ts))
        mon = Monitoring(name, str(i), f"127.0.1.{i + 1}").to_value()
        s.apply(s.d_set(monitoring_key(name), mon, ts))
    return s


def test_only_discovered_allocated_nodes_are_upgraded() -> None:
    s = _state(
        {
            "a": (inv.ALLOCATED, inv.DISCOVERED),
            "b": (inv.ALLOCATED, inv.DISCOVERED),
            "m": (inv.MAINTENANCE, inv.DISCOVERED),
            "u": (inv.UNALLOCATED, inv.DISCOVERED),
            "gone": (inv.ALLOCATED, inv.DISAPPEARED),
        }
    )
    assert check_upgrade(s, ["b", "a", "b"], None) == ["b", "a"]
    assert check_upgrade(s, ["127.0.1.1"], False) == ["a"]  # by address too
    with pytest.raises(
        Conflict, match=r"only Allocated nodes can be upgraded: m is Maintenance, u is Unallocated"
    ):
        check_upgrade(s, ["a", "m", "u"], None)
    with pytest.raises(CheckFailed, match=r"Non-discovered nodes: \[gone\]"):
        check_upgrade(s, ["a", "gone"], None)
    with pytest.raises(CheckFailed, match="doesn't exists"):
        check_upgrade(s, ["zz"], None)
    with pytest.raises(CheckFailed, match="atleast one node"):
        check_upgrade(s, [], None)
    with pytest.raises(BadRequest, match="not both"):
        check_upgrade(s, ["a"], True)
    with pytest.raises(BadRequest, match='"all"'):
        check_upgrade(s, None, "yes")
    # --all: every Allocated node, by name; one that is not Discovered refuses the whole
    with pytest.raises(CheckFailed, match=r"\[gone\]"):
        check_upgrade(s, None, True)
    s2 = _state({"b": (inv.ALLOCATED, inv.DISCOVERED), "a": (inv.ALLOCATED, inv.DISCOVERED),
                 "u": (inv.UNALLOCATED, inv.DISCOVERED)})  # fmt: skip
    assert check_upgrade(s2, None, True) == ["a", "b"]
    with pytest.raises(CheckFailed, match=NO_ALLOCATED):
        check_upgrade(_state({"u": (inv.UNALLOCATED, inv.DISCOVERED)}), None, True)


# --------------------------------------------------------------------------- the CLI


def test_the_cli_builds_the_upgrade_request() -> None:
    from gossipmgr.cli.client import CliError
    from gossipmgr.cli.commands import _upgrade_body
    from gossipmgr.cli.parser import build_parser

    def body(*argv: str) -> dict[str, Any]:
        args = build_parser(["nodes", "upgrade"]).parse_args(["nodes", "upgrade", *argv])
        return _upgrade_body(args, {"nodes": list(args.names), "extra_vars": ""})

    assert body("a", "b", "--batch", "25%", "--max-fail", "1") == {
        "nodes": ["a", "b"],
        "extra_vars": "",
        "batch": "25%",
        "max_fail": 1,
    }
    assert body("--all", "--batch", "2") == {
        "all": True,
        "extra_vars": "",
        "batch": 2,
        "max_fail": 0,
    }
    assert body("--all", "--queue")["queue"] is True  # waits in the job queue
    for argv in ((), ("a", "--all")):
        with pytest.raises(CliError, match="names or --all"):
            body(*argv)
