"""The rolling upgrade with real parts (issue 20, "Rolling upgrade").

Two real agents (``gossipmgr.localcluster``: real ``serf agent`` processes, loopback
only), six nodes that are real ``serf agent`` processes, and a real ansible playbook
(tests/playbooks_upgrade/rolling-upgrade.yml, ansible_connection=local, writing marker
lines under the cluster's tmp dir). One cluster for both promises:

1. batches of 2 with one failing node and --max-fail 0: the job stops after the failing
   batch, Errored with the reason; the nodes of the later batch are untouched (no marker
   file, still Allocated, the reason in their history); the failed node stays in
   Maintenance with the reason in its history;
2. the holder SIGKILLed while a batch runs: the other instance resumes the job under its
   new epoch, re-runs the batch that was in flight, never a finished batch, and runs
   the rest exactly once (marker lines counted per node).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gossipmgr.localcluster import LocalCluster, kill_marked, local_cluster, wait_for

HERE = Path(__file__).resolve().parent
pytestmark = [pytest.mark.serf, pytest.mark.ansible, pytest.mark.slow]
DEADLINE_S = 120  # a few playbook runs on a loaded 2-core machine


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    playbooks = ("--playbook-dir", str(HERE / "playbooks_upgrade"))
    with local_cluster(tmp_path / "c", lease_ttl_ms=6_000, extra_args=playbooks) as c:
        yield c


def _lines(c: LocalCluster, node: str, name: str, job: str) -> list[str]:
    """The node's marker lines of ``job`` in file ``name``: their epochs."""
    path = c.root / "hosts" / node / name
    if not path.exists():
        return []
    return [ln.split()[2] for ln in path.read_text().splitlines() if ln.split()[1] == job]


def _job_ended(c: LocalCluster, inst: str, job: str) -> dict[str, Any] | None:
    rec: dict[str, Any] = c.get(inst, f"/info/job/{job}")
    return rec if rec["status"] not in ("Queued", "Running") else None


def _status(c: LocalCluster, inst: str, node: str) -> str:
    return str(c.get(inst, f"/info/node/{node}")["inventory_state"]["status"])


def _start(c: LocalCluster, inst: str, body: dict[str, Any]) -> str:
    r = c.post(inst, "/upgrade/nodes", body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def test_upgrade_stops_past_max_fail_and_a_new_holder_finishes_it_exactly_once(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    c = cluster
    c.add_instances("g1", "g2")
    nodes = sorted(c.add_node("rack", f"000{i}").name for i in range(6))

    def discovered() -> bool:
        inv = c.get("g1", "/info/nodes")
        return all(
            inv.get(n, {}).get("inventory_state", {}).get("state") == "Discovered" for n in nodes
        )

    wait_for(discovered, 60, "the six nodes to be discovered")
    holder = wait_for(c.holder, 30, "a holder")
    # Allocated without a commission run (an import sets statuses: no playbook, no job)
    entries = [{"name": n, "status": "Allocated", "host_group": "service-master"} for n in nodes]
    r = c.post(holder, "/inventory/import", {"nodes": entries})
    assert r.status_code == 200, r.text
    wait_for(lambda: all(_status(c, holder, n) == "Allocated" for n in nodes), 30, "the import")

    # ---- 1. --max-fail 0 stops after the failing batch; later nodes untouched
    bad = nodes[3]  # batches [0 1] [2 3] [4 5]
    r = c.put(holder, f"/node/{bad}/extra_vars/upgrade_fail", {"value": True})
    assert r.status_code == 200, r.text
    r = c.post(holder, "/upgrade/nodes", {"nodes": [nodes[0], "nope"], "batch": 2})
    assert r.status_code == 422 and "nope" in r.json()["error"]  # nothing started
    for bad_body in ({"all": True, "nodes": nodes}, {"all": True, "batch": "0%"},
                     {"all": True, "max_fail": -1}, {"all": True, "check": True}):  # fmt: skip
        r = c.post(holder, "/upgrade/nodes", bad_body)
        assert r.status_code == 400, (bad_body, r.text)
    job1 = _start(c, holder, {"all": True, "batch": 2, "max_fail": 0})
    rec = wait_for(lambda: _job_ended(c, holder, job1), DEADLINE_S, "the first upgrade")
    reason = "stopped after batch 2 of 3: 1 node failed, more than --max-fail 0"
    assert rec["status"] == "Errored" and rec["error"].startswith(reason), rec
    assert rec["upgrade"]["done"] == 2 and rec["upgrade"]["failed"] == [bad], rec
    for n in nodes[:3]:
        assert len(_lines(c, n, "upgraded", job1)) == 1, n
    assert _lines(c, bad, "started", job1) and not _lines(c, bad, "upgraded", job1)
    for n in nodes[4:]:  # the batch after the failing one: never started
        assert not (c.root / "hosts" / n / "started").exists(), n
        assert _status(c, holder, n) == "Allocated"
        hist = c.get(holder, f"/info/node/{n}/history")["history"]
        assert hist[0]["event"] == "noted" and reason in hist[0]["reason"], hist[0]
    assert [_status(c, holder, n) for n in nodes[:3]] == ["Allocated"] * 3
    assert _status(c, holder, bad) == "Maintenance"
    hist = c.get(holder, f"/info/node/{bad}/history")["history"]
    assert hist[0]["event"] == "noted" and hist[0]["job"] == job1, hist[0]
    assert "upgrade failed" in hist[0]["reason"], hist[0]

    # ---- 2. the holder SIGKILLed mid-batch; the new holder finishes, exactly once
    good = [n for n in nodes if n != bad]  # batches [0 1] [2 4] [5]
    hold, release, tag = good[2:4], tmp_path / "release", f"upgrade-{uuid.uuid4().hex}"
    body = {
        "nodes": good,
        "batch": 2,
        "extra_vars": {"upgrade_hold": hold, "upgrade_release": str(release), "upgrade_tag": tag},
    }
    other = "g2" if holder == "g1" else "g1"
    job2 = _start(c, other, body)  # forwarded to the holder
    assert job2.endswith(f"-{holder}")
    try:
        wait_for(
            lambda: all(_lines(c, n, "started", job2) for n in hold),
            DEADLINE_S,
            "the second batch to start",
        )
        # the instance that takes over must have seen batch 1 recorded done (a write the
        # killed holder never gossiped is lost with it, and the batch would run again)
        wait_for(
            lambda: c.get(other, f"/info/job/{job2}")["upgrade"]["current"] == 1,
            DEADLINE_S,
            "batch 2's start to reach the other instance",
        )
        old_epoch = c.get(other, f"/info/job/{job2}")["epoch"]
        c.kill9(holder)  # batch 1 done, batch 2 in flight
        kill_marked(tag)
        release.touch()
        rec = wait_for(lambda: _job_ended(c, other, job2), DEADLINE_S, "the resumed upgrade")
    finally:
        kill_marked(tag)
    assert rec["status"] == "Complete" and rec["error"] == "", rec
    assert rec["runner"] == other and rec["epoch"] > old_epoch, rec
    assert rec["upgrade"]["done"] == 3 and rec["upgrade"]["failed"] == [], rec
    new = str(rec["epoch"])
    for n in good[:2]:  # finished before the kill: never run again
        assert _lines(c, n, "started", job2) == [str(old_epoch)], n
        assert _lines(c, n, "upgraded", job2) == [str(old_epoch)], n
    for n in hold:  # in flight at the kill: run again, whole, under the new epoch
        assert _lines(c, n, "started", job2) == [str(old_epoch), new], n
        assert _lines(c, n, "upgraded", job2) == [new], n
    assert _lines(c, good[4], "started", job2) == [new]
    assert _lines(c, good[4], "upgraded", job2) == [new]
    assert [_status(c, other, n) for n in good] == ["Allocated"] * 5
    assert "resumed by" in "\n".join(rec["logs"])
