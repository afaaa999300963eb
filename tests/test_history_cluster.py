"""Node history, replicated: a commission, a failed update and a disappearance show
identically on every instance of a real cluster (two gossipmgr agents with their embedded
``serf agent``, a node that is a real ``serf agent``, real ansible with the shipped
playbooks), with who asked (a named token added by SIGHUP), where, when, under which epoch
and why. Every process is stopped by the cluster fixture, even on failure."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from serfutil import local_cluster

from gossipmgr.core.tokens import ADMIN, make_token
from gossipmgr.localcluster import LocalCluster, wait_for

pytestmark = [pytest.mark.serf, pytest.mark.ansible, pytest.mark.slow]

OPS = "ops-secret-for-the-history-test"
INSTANCES = ("g1", "g2")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    tokens = tmp_path / "tokens"
    tokens.write_text("# named tokens\n")
    with local_cluster(tmp_path / "cluster", lease_ttl_ms=6_000) as c:
        c.extra_args = ["--api-tokens-file", str(tokens)]
        yield c


def _call(c: LocalCluster, inst: str, method: str, path: str, body: Any = None) -> Any:
    url = c.instances[inst].url + path
    r = httpx.request(
        method, url, json=body, headers={"Authorization": f"Bearer {OPS}"}, timeout=30
    )
    assert r.status_code == 200, (r.status_code, r.text)
    return r.json()


def _history(c: LocalCluster, inst: str, node: str) -> list[dict[str, Any]]:
    return list(c.get(inst, f"/info/node/{node}/history")["history"])


def _job_end(c: LocalCluster, inst: str, job_id: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        rec = dict(c.get(inst, f"/info/job/{job_id}"))
        return rec if rec["status"] in ("Complete", "Errored", "Cancelled") else None

    return wait_for(ended, 120, f"job {job_id} to end")


def test_history_is_the_same_on_every_instance(cluster: LocalCluster, tmp_path: Path) -> None:
    c = cluster
    c.add_instances(*INSTANCES)
    # A named token, added while the agents run: SIGHUP makes them read the file again.
    (tmp_path / "tokens").write_text(make_token("ops", ADMIN, OPS).line() + "\n")
    for inst in c.instances.values():
        assert inst.proc is not None
        inst.proc.send_signal(signal.SIGHUP)

    def ops_accepted() -> bool:
        h = {"Authorization": f"Bearer {OPS}"}
        return all(
            httpx.get(i.url + "/info/nodes", headers=h, timeout=5).status_code == 200
            for i in c.instances.values()
        )

    wait_for(ops_accepted, 30, "every instance to accept the ops token")
    holder = wait_for(c.holder, 30, "one lease holder")
    node = c.add_node("rack", "1").name
    wait_for(lambda: len(_history(c, holder, node)) == 1, 60, "the node to be discovered")
    # commission (asked by ops on a non-holder: forwarded), then an update that fails
    other = next(n for n in INSTANCES if n != holder)
    body = {"nodes": [node], "host_group": "service-master"}
    job1 = _call(c, other, "POST", "/commission/nodes", body)
    assert _job_end(c, holder, job1["id"])["status"] == "Complete"
    # The update fails at the node: its fence record says a newer lease epoch acted there
    # (docs/ansible.md, "Fencing at the node"), so its first play refuses to run.
    record = {"epoch": 99, "holder": "elsewhere", "job": "newer-job"}
    (c.root / "hosts" / node / "fence" / "epoch.json").write_text(json.dumps(record))
    job2 = _call(c, holder, "POST", "/update/nodes", {"nodes": [node]})
    failed = _job_end(c, holder, job2["id"])
    assert failed["status"] == "Errored" and failed["requested_by"] == "ops"
    # the node disappears (its Serf agent killed -9)
    c.kill9_node(node)
    epoch = c.lease(holder)["epoch"]

    def converged() -> list[dict[str, Any]] | None:
        views = [_history(c, n, node) for n in INSTANCES]
        first = views[0]
        if not first or first[0]["event"] != "disappeared":
            return None
        return first if all(v == first for v in views) else None

    hist = wait_for(converged, 60, "the same history on every instance")
    got = [
        (h["event"], h["prev_status"], h["status"], h["state"], h["job"], h["token"])
        for h in reversed(hist)
    ]
    assert got == [
        ("discovered", "Incomplete", "Unallocated", "Discovered", "", ""),
        ("status", "Unallocated", "Provisioning", "Discovered", job1["id"], "ops"),
        ("status", "Provisioning", "Allocated", "Discovered", job1["id"], "ops"),
        ("status", "Allocated", "Maintenance", "Discovered", job2["id"], "ops"),
        # update's failure path (docs/workflows.md)
        ("status", "Maintenance", "Unallocated", "Discovered", job2["id"], "ops"),
        ("disappeared", "Maintenance", "Unallocated", "Disappeared", "", ""),
    ]
    # where and under which epoch: a job's entries by its runner under its epoch (the
    # holder, unless a loaded machine made the lease move: then the others name the new one)
    jobs = {j["id"]: j for j in (c.get(holder, f"/info/job/{i}") for i in (job1["id"], job2["id"]))}
    for h in hist:
        assert h["instance"] in INSTANCES and 1 <= h["epoch"] <= epoch and h["ms"] > 0
        if h["job"]:
            assert (h["instance"], h["epoch"]) == (
                jobs[h["job"]]["runner"],
                jobs[h["job"]]["epoch"],
            )
    assert [h["ms"] for h in hist] == sorted((h["ms"] for h in hist), reverse=True)
    fail_entry = hist[1]
    assert fail_entry["reason"] == failed["error"]
    why = f"fenced: epoch {failed['epoch']} is older than 99 (job newer-job by elsewhere)"
    assert why in failed["error"]
    assert hist[0]["reason"] == "serf: disappeared"
    assert hist[-1]["reason"] in ("serf: discovered", "reconcile with serf: discovered")
