"""A job's whole log survives its runner (issue 19, "Complete job logs everywhere").

Real agents (``gossipmgr.localcluster``: real ``serf agent`` processes, loopback only), a
real ansible job printing more than 1,000 lines, and the CLI following it. The runner is
SIGKILLed mid-job: the other instance serves the log up to the kill, identical to the
runner's own file, from its replicated chunks; the CLI's follow, broken by the kill,
resumes at its line offset once the runner is back, and prints every line exactly once.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gossipmgr.localcluster import LocalCluster, kill_marked, local_cluster, wait_for

HERE = Path(__file__).resolve().parent
pytestmark = [pytest.mark.serf, pytest.mark.ansible, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    playbooks = ("--playbook-dir", str(HERE / "playbooks_biglog"))
    with local_cluster(tmp_path / "c", lease_ttl_ms=6_000, extra_args=playbooks) as c:
        yield c


def _log(c: LocalCluster, name: str, job_id: str, offset: int | None = None) -> str:
    url = f"{c.instances[name].url}/info/logs/{job_id}"
    if offset is not None:
        url += f"?offset={offset}"
    r = httpx.get(url, headers=c.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def test_the_log_up_to_a_mid_job_kill_is_served_by_another_instance_and_the_follow_resumes(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    c = cluster
    c.add_instances("g1", "g2")
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
    tag = f"biglog-{uuid.uuid4().hex}"
    body = {
        "nodes": [node.name],
        "host_group": "service-master",
        "extra_vars": {"biglog_linger": 60, "biglog_tag": tag},
    }
    r = c.post(runner, "/commission/nodes", body)
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    out, err = tmp_path / "follow.out", tmp_path / "follow.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
    env |= {"GOSSIPMGR_URL": c.instances[runner].url, "GOSSIPMGR_TOKEN_FILE": str(c.token_file)}
    cmd = [sys.executable, "-m", "gossipmgr.cli.main", "job", "get", job_id, "-f"]
    with open(out, "w") as fo, open(err, "w") as fe:
        follow = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, env=env)
    try:

        def printed_all() -> bool:
            return sum("biglog-line-" in x for x in out.read_text().splitlines()) == 1200

        wait_for(printed_all, 60, "the CLI to print the 1,200 lines")
        c.kill9(runner)  # mid-job: the playbook lingers
        kill_marked(tag)
        wait_for(
            lambda: c.get(other, f"/info/job/{job_id}")["status"] == "Errored",
            60,
            "the other instance to end the orphaned job",
        )
        # the other instance serves the log up to the kill: the runner's own file, line for
        # line (the playbook printed nothing more while it lingered)
        file_text = (c.instances[runner].data_dir / "work" / "jobs" / f"{job_id}.log").read_text()
        lines = file_text.splitlines()
        assert len(lines) > 1000 and _log(c, other, job_id) == file_text
        rec = c.get(other, f"/info/job/{job_id}")
        assert rec["log_count"] == len(lines) and rec["logs"] == lines
        assert _log(c, other, job_id, offset=700).splitlines() == lines[700:]
        # the runner comes back; the CLI, which lost its stream, resumes where it was
        c.start(runner)
        c.wait_ready(runner)
        assert follow.wait(60) == 1  # the job ended Errored
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait(10)
        kill_marked(tag)
    printed = out.read_text().splitlines()
    assert printed[:-1] == lines  # every line once: none lost, none repeated
    assert printed[-1].startswith(f"job {job_id}: Errored")
    resumed = [int(n) for n in re.findall(r"resuming at line (\d+)", err.read_text())]
    assert resumed and min(resumed) >= 1200, err.read_text()
