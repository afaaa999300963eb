"""A job's whole log survives its runner (issue 19, "Complete job logs everywhere").

Real agents (``gossipmgr.localcluster``: real ``serf agent`` processes, loopback only) and a
real ansible job printing more than 1,000 lines. The runner is SIGKILLed once the job has
ended; the other instance serves the complete log, identical to the runner's own file, from
its replicated chunks, and a follow that reconnects with an offset gets no line twice.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gossipmgr.localcluster import LocalCluster, wait_for

HERE = Path(__file__).resolve().parent


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(
        tmp_path / "c",
        lease_ttl_ms=6_000,
        extra_args=("--playbook-dir", str(HERE / "playbooks_biglog")),
    )
    try:
        yield c
    finally:
        c.close()


def _log(c: LocalCluster, name: str, job_id: str, offset: int | None = None) -> str:
    url = f"{c.instances[name].url}/info/logs/{job_id}"
    if offset is not None:
        url += f"?offset={offset}"
    r = httpx.get(url, headers=c.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def test_the_whole_log_is_read_from_another_instance_after_the_runner_was_killed(
    cluster: LocalCluster,
) -> None:
    c = cluster
    for n in ("g1", "g2"):
        c.add_instance(n)
    for n in ("g1", "g2"):
        c.wait_ready(n)
    node = c.add_node("rack1", "0001")
    wait_for(
        lambda: (
            c.get("g2", "/info/nodes").get(node.name, {}).get("inventory_state", {}).get("state")
            == "Discovered"
        ),
        30,
        "the node to be discovered",
    )
    runner = wait_for(c.holder, 30, "a holder")
    other = "g2" if runner == "g1" else "g1"
    r = c.post(runner, "/commission/nodes", {"nodes": [node.name], "host_group": "service-master"})
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]

    def ended_at(name: str) -> bool:
        return str(c.get(name, f"/info/job/{job_id}")["status"]) not in ("Queued", "Running")

    wait_for(lambda: ended_at(runner), 60, "the job to end on its runner")
    file_text = (c.instances[runner].data_dir / "work" / "jobs" / f"{job_id}.log").read_text()
    lines = file_text.splitlines()
    assert sum("biglog-line-" in x for x in lines) == 1200 and len(lines) > 1000
    wait_for(lambda: ended_at(other), 30, "the ended record to reach the other instance")
    c.kill9(runner)

    # the other instance serves every line, from its own replica (the runner is gone)
    assert _log(c, other, job_id) == file_text
    rec = c.get(other, f"/info/job/{job_id}")
    assert rec["status"] == "Complete" and rec["log_count"] == len(lines)
    assert rec["logs"] == lines  # GET /info/job answers the whole log too, not a tail
    # a follower that had 700 lines reconnects: the rest, each line once
    assert _log(c, other, job_id, offset=700).splitlines() == lines[700:]
    assert _log(c, other, job_id, offset=len(lines)) == ""
