"""The confirm before an action (issue 18), with real agents, real Serf and real ansible.

Three instances on loopback (``gossipmgr.localcluster``: real ``serf agent`` processes),
one node, the playbooks of tests/playbooks_confirm/ (``ansible_connection=local``), which
run the shipped ``gossipmgr_fence`` role (confirm, then the node's epoch check) first, and
the role again right before a later action, as docs/ansible.md tells operators to.

* On the formed cluster a commission is confirmed ("majority: 2 of 3 instances answered
  now", or 3 of 3: the round ends once a majority answered; in the job's log) and acts.
* A decommission acts once, then waits; the test freezes the two other instances'
  gossipmgr processes (SIGSTOP: their Serf agents run on, so the holder's Serf lists them
  alive, and they count as heard for the heard window: 8 s with this TTL) and lets the
  playbook go on. The confirm before the next action gets no answer: it is refused within
  its 1 s timeout, the action is never made, and the job (a decommission has no failure
  path) ends Errored with ``no majority: ...``, before the heard window would have stopped
  it (the watcher's stop leaves the record Running). Before the confirm existed the action
  was made: the holder still counted its frozen peers.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _bounds import bound

from gossipmgr.core.quorum import heard_window_ms
from gossipmgr.localcluster import LocalCluster, local_cluster, wait_for

HERE = Path(__file__).resolve().parent
pytestmark = [pytest.mark.serf, pytest.mark.ansible, pytest.mark.slow]
#: A longer TTL than the tests' usual 6-10 s: renewals every 4 s, so the heard window is
#: 8 s, well past the refusal (the playbook sees the go within 0.1 s, the confirm waits 1 s).
TTL_MS = 16_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    playbooks = ("--playbook-dir", str(HERE / "playbooks_confirm"))
    with local_cluster(tmp_path / "c", lease_ttl_ms=TTL_MS, extra_args=playbooks) as c:
        yield c


def _job(c: LocalCluster, inst: str, path: str, body: dict[str, Any]) -> str:
    r = c.post(inst, path, body)
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _ended(c: LocalCluster, inst: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        rec: dict[str, Any] = c.get(inst, f"/info/job/{job_id}")
        return rec if rec["status"] not in ("Queued", "Running") else None

    out = wait_for(done, 90, f"job {job_id} to end on {inst}")
    assert out is not None
    return out


def test_a_holder_cut_off_mid_job_is_refused_by_the_confirm_before_it_acts(
    cluster: LocalCluster,
) -> None:
    c = cluster
    names = ("g1", "g2", "g3")
    for n in names:
        c.add_instance(n)
    for n in names:
        c.wait_ready(n)
    node = c.add_node("rack1", "0001")

    def discovered() -> bool:
        infos = [c.get(n, "/info/nodes").get(node.name, {}) for n in names]
        return all(i.get("inventory_state", {}).get("state") == "Discovered" for i in infos)

    wait_for(discovered, 60, "the node to be discovered everywhere")
    holder = wait_for(c.formed, 60, "a formed cluster and its holder")
    assert holder is not None
    others = [n for n in names if n != holder]
    actions = c.root / "hosts" / node.name / "actions"
    body = {"nodes": [node.name], "host_group": "service-master"}

    # 1. A formed cluster: the fence role's confirm is answered by all three, the job acts.
    first = _job(c, holder, "/commission/nodes", body)
    rec = _ended(c, holder, first)
    assert rec["status"] == "Complete", rec
    # the round ends once a majority answered: 2 or 3 of 3
    said = [
        re.search(r"confirm for (\S+): majority: ([23]) of 3 instances answered now", x)
        for x in rec["logs"]
    ]
    assert [m.group(1) for m in said if m] == [node.name], rec["logs"]
    assert actions.read_text().splitlines() == [f"configure {first}"]

    # 2. The holder is cut off mid-job: its next confirm gets no answer.
    go = c.root / "go"
    second = _job(c, holder, "/decommission/nodes", {**body, "extra_vars": {"confirm_go": str(go)}})
    wait_for(lambda: f"before {second}" in actions.read_text(), 90, "the first action of job 2")
    pids = []
    for n in others:
        proc = c.instances[n].proc
        assert proc is not None
        pids.append(proc.pid)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        go.touch()
        rec = _ended(c, holder, second)
        took = time.monotonic() - t0
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    assert rec["status"] == "Errored", rec
    assert "no majority: 1 of 3 instances answered within 1 s, 2 needed" in rec["error"], rec
    assert rec["error"].startswith('decommission failed: playbook "cleanup.yml" failed (rc 2)')
    assert any("no majority: 1 of 3" in line for line in rec["logs"]), rec["logs"]
    # never acted after the cut
    assert actions.read_text().splitlines() == [f"configure {first}", f"before {second}"]
    window_s = heard_window_ms(TTL_MS, TTL_MS // 4) / 1000
    assert window_s == 8.0
    bound("confirm: cut-off holder's job refused", took, window_s)
