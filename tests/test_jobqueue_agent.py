"""Queued jobs across a holder takeover (issue 20, part 3), with real agents.

Three instances and three nodes (``gossipmgr.localcluster``: real ``serf agent``
processes, loopback only), real playbooks (tests/playbooks_queue/, ansible_connection=
local) that trace each job's runs to a file. One cluster for the whole story:

* the first job holds (a sleep); a request without ``queue`` is refused with 409, as
  clusterm did; requests with ``"queue": true`` wait, asked at the holder or at another
  instance (forwarded), their positions visible everywhere;
* a queued job is cancelled (asked at a non-holder) and never runs;
* the holder is SIGKILLed while the first job runs; the new holder ends that one as an
  orphan and runs the three queued jobs in order, each exactly once, under its epoch: the
  second (``update``) is only valid once the first queued one (``commission`` of the same
  node) has completed, so the order is checked by the state as well as by the trace.
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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    playbooks = ("--playbook-dir", str(HERE / "playbooks_queue"))
    with local_cluster(tmp_path / "c", lease_ttl_ms=6_000, extra_args=playbooks) as c:
        yield c


def test_queued_jobs_run_in_order_once_each_across_a_holder_takeover(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    c = cluster
    names = ("g1", "g2", "g3")
    c.add_instances(*names)
    nodes = [c.add_node("rack", f"000{i}").name for i in (1, 2, 3)]

    def discovered(inst: str) -> bool:
        info = c.get(inst, "/info/nodes")
        return all(
            info.get(n, {}).get("inventory_state", {}).get("state") == "Discovered" for n in nodes
        )

    wait_for(lambda: all(discovered(n) for n in names), 60, "the nodes to be discovered")
    holder = wait_for(c.holder, 30, "a holder")
    others = [n for n in names if n != holder]
    trace, tag = tmp_path / "trace", f"queue-hold-{uuid.uuid4().hex}"
    ev = {"queue_trace": str(trace)}

    def job(inst: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = c.post(inst, path, {"extra_vars": ev, **body})
        assert r.status_code == 200, r.text
        out: dict[str, Any] = r.json()
        return out

    try:
        first = job(
            holder,
            "/commission/nodes",
            {
                "nodes": [nodes[0]],
                "host_group": "service-master",
                "extra_vars": {**ev, "queue_hold": tag},
                "queue": True,  # idle: starts at once
            },
        )
        assert first["status"] == "Running"
        wait_for(lambda: trace.exists() and first["id"] in trace.read_text(), 60, "job 1 to run")
        # without "queue": today's 409, also when forwarded by another instance
        r = c.post(others[0], "/commission/nodes", {"nodes": [nodes[1]], "extra_vars": ev})
        assert r.status_code == 409 and "there is already an active job" in r.text
        commission = {"nodes": [nodes[1]], "host_group": "service-master", "queue": True}
        second = job(others[0], "/commission/nodes", commission)  # forwarded to the holder
        third = job(holder, "/update/nodes", {"nodes": [nodes[1]], "queue": True})
        doomed = job(others[1], "/decommission/nodes", {"nodes": [nodes[2]], "queue": True})
        assert [j["status"] for j in (second, third, doomed)] == ["Queued"] * 3
        assert [j["queue_position"] for j in (second, third, doomed)] == [1, 2, 3]
        last = {"nodes": [nodes[2]], "host_group": "service-master", "queue": True}
        fourth = job(others[1], "/commission/nodes", last)
        assert (fourth["status"], fourth["queue_position"]) == ("Queued", 4)
        r = c.post(others[1], "/job/cancel", {"job": doomed["id"]})
        assert r.status_code == 200 and r.json()["status"] == "Cancelled", r.text

        def replicated(inst: str) -> bool:
            jobs = {j["id"]: j for j in c.get(inst, "/info/jobs")["jobs"]}
            return bool(
                jobs.get(doomed["id"], {}).get("status") == "Cancelled"
                and jobs.get(third["id"], {}).get("queue_position") == 2
                and jobs.get(fourth["id"], {}).get("queue_position") == 3
            )

        wait_for(lambda: all(replicated(n) for n in others), 30, "the queue on every instance")
        c.kill9(holder)  # mid-job: the first job's sleep lingers
        kill_marked(tag)
        survivor = others[0]

        def ended(job_id: object) -> bool:
            rec = c.get(survivor, f"/info/job/{job_id}")
            return rec["status"] not in ("Queued", "Running")

        wait_for(lambda: ended(fourth["id"]), 150, "the new holder to run the queue")
    finally:
        kill_marked(tag)
    jobs = (first, second, third, doomed, fourth)
    one, two, three, four, five = (c.get(survivor, f"/info/job/{j['id']}") for j in jobs)
    assert one["status"] == "Errored" and "lost the lease" in one["error"]
    assert [j["status"] for j in (two, three, five)] == ["Complete"] * 3, (two, three, five)
    new_holder = two["runner"]
    assert new_holder in others and three["runner"] == five["runner"] == new_holder
    assert two["epoch"] > first["epoch"] and three["epoch"] == two["epoch"] == one["epoch"]
    assert five["epoch"] == two["epoch"]
    assert (four["status"], four["runner"], four["started_ms"]) == ("Cancelled", "", 0)
    lines = trace.read_text().splitlines()
    assert lines == [
        f"configure {first['id']} {nodes[0]}",
        f"configure {second['id']} {nodes[1]}",
        f"cleanup {third['id']} {nodes[1]}",
        f"configure {third['id']} {nodes[1]}",
        f"configure {fourth['id']} {nodes[2]}",
    ], lines
    info = c.get(survivor, "/info/nodes")
    statuses = [info[n]["inventory_state"]["status"] for n in nodes]
    assert statuses == ["Unallocated", "Allocated", "Allocated"], statuses
