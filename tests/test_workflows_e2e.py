"""End to end: clusterm's workflows as jobs, with real ansible-runner and real playbooks.

Hosts are ``ansible_connection=local``; the playbooks (tests/playbooks_jobs/) only trace
what they did to ``{{ trace_dir }}/trace`` and keep a ``<host>.configured`` marker, so each
test can check what ran, in which order, for which host-group. One standalone Replica
holds the lease (epoch 1); the JobManager runs in the fixture's nursery.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from _bounds import bound

from gossipmgr.core.lease import Lease, LeaseConfig
from gossipmgr.core.state import LEASE_KEY, job_key
from gossipmgr.errors import CheckFailed, Conflict, Unavailable
from gossipmgr.runtime.ansible import AnsibleSettings
from gossipmgr.runtime.jobs import ACTIVE, JobManager
from gossipmgr.runtime.replica import Replica
from gossipmgr.testing.wait import until

#: Leases written by hand here last 10**9 ms; the bound on expiry must allow it.
LONG_LEASE = LeaseConfig(ttl_ms=2 * 10**9)

pytestmark = pytest.mark.ansible

PLAYBOOKS = Path(__file__).parent / "playbooks_jobs"
DEADLINE_S = 30


def marker_pids(marker: str) -> list[int]:
    """Live processes whose command line holds ``marker`` (the long playbook's sleepers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X"):
            pids.append(int(entry))
    return pids


@dataclass
class Env:
    r: Replica
    jm: JobManager
    trace_dir: Path
    cfg: dict[str, str]
    marker: str

    def trace(self) -> list[str]:
        p = self.trace_dir / "trace"
        return p.read_text().splitlines() if p.exists() else []

    def status(self, node: str) -> str:
        rec = self.r.state.node(node)
        assert rec is not None
        return str(rec.inventory.status)

    async def nodes(self, *names: str) -> None:
        for i, name in enumerate(names, start=1):
            label, serial = name.split("-", 1)
            await self.jm.apply_node_event("discovered", name, label, serial, f"127.0.0.{i}")

    async def ended(self, job_id: str) -> dict[str, Any]:
        def done() -> bool:
            rec = self.r.state.job(job_id)
            return rec is not None and rec.status not in ACTIVE

        await until(
            lambda: done() and self.jm.running_job_id != job_id, DEADLINE_S, f"job {job_id}"
        )
        rec = self.r.state.job(job_id)
        assert rec is not None
        return rec.to_value()


def settings_for(
    trace_dir: Path, cfg: dict[str, str], marker: str
) -> Callable[[], AnsibleSettings]:
    def settings() -> AnsibleSettings:
        return AnsibleSettings(
            playbook_dir=PLAYBOOKS,
            configure_playbook=cfg["configure"],
            cleanup_playbook="cleanup.yml",
            extra_variables={"trace_dir": str(trace_dir), "proc_marker": marker},
            host_vars={
                "ansible_connection": "local",
                "ansible_python_interpreter": sys.executable,
            },
            timeout_s=DEADLINE_S,
            discover_join_timeout_s=float(cfg.get("join_s", "0")),
        )

    return settings


async def holder_replica(path: Path, name: str, epoch: int = 1) -> Replica:
    # A replica-made lease (no lease loop here): it lasts as long as it says.
    r = Replica(name, data_dir=path, lease=LONG_LEASE)
    r.open()
    lease = Lease(name, epoch, r.now_ms() + 10**9).as_value()
    await r.commit(lambda st, ts: st.d_set(LEASE_KEY, lease, ts))
    return r


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    trace_dir = tmp_path / "trace"
    trace_dir.mkdir()
    marker = f"gossipmgr-jobs-test-{uuid.uuid4().hex}"
    cfg = {"configure": "site.yml"}
    r = await holder_replica(tmp_path / "a", "a")
    jm = JobManager(r, settings_for(trace_dir, cfg, marker), tmp_path / "work", log_flush_s=0.2)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(jm.run)
            yield Env(r, jm, trace_dir, cfg, marker)
            nursery.cancel_scope.cancel()  # kills a still-running job's process tree
    finally:
        await r.aclose()
        for pid in marker_pids(marker):  # only if a test failed half-way
            os.kill(pid, 9)


async def test_commission_update_decommission_reappear(env: Env) -> None:
    await env.nodes("m-1", "w-1")
    with pytest.raises(CheckFailed, match="Cannot commission a worker node"):
        await env.jm.commission(["w-1"], "service-worker")

    job = await env.jm.commission(["m-1"], "service-master", '{"color": "red"}')
    assert env.status("m-1") == "Provisioning"
    rec = await env.ended(job["id"])
    assert (rec["status"], rec["error"]) == ("Complete", "")
    assert env.status("m-1") == "Allocated"
    assert (env.trace_dir / "m-1.configured").read_text().split() == ["service-master", "m-1"]

    job = await env.jm.commission(["127.0.0.2"], "service-worker")  # by address
    assert (await env.ended(job["id"]))["status"] == "Complete"
    assert env.status("w-1") == "Allocated"
    assert (env.trace_dir / "w-1.configured").read_text().split() == ["service-worker", "w-1"]

    with pytest.raises(CheckFailed, match="will leave only worker nodes"):
        await env.jm.decommission(["m-1"])
    with pytest.raises(CheckFailed, match="Updating these nodes as worker"):
        await env.jm.update(["m-1"], "service-worker")

    before = len(env.trace())
    job = await env.jm.update(["w-1"], "service-master")
    assert env.status("w-1") == "Maintenance"
    assert (await env.ended(job["id"]))["status"] == "Complete"
    assert env.status("w-1") == "Allocated"
    assert env.r.state.node("w-1").host_group == "service-master"  # type: ignore[union-attr]
    assert env.trace()[before:] == ["cleanup w-1", "configure w-1 service-master"]

    job = await env.jm.decommission(["m-1"])
    assert env.status("m-1") == "Cancelled"
    assert (await env.ended(job["id"]))["status"] == "Complete"
    assert env.status("m-1") == "Decommissioned"
    assert not (env.trace_dir / "m-1.configured").exists()
    assert env.trace()[-1] == "cleanup m-1"

    # clusterm #123: an Allocated node that comes back is reconfigured (opt-in).
    env.jm.reconfigure_on_reappear = True
    await env.jm.apply_node_event("disappeared", "w-1", "w", "1", "")
    (env.trace_dir / "w-1.configured").unlink()
    await env.jm.apply_node_event("discovered", "w-1", "w", "1", "127.0.0.2")
    last = env.jm.jobs()[0]
    assert last["task"] == "reconfigure" and last["nodes"] == ["w-1"]
    assert (await env.ended(last["id"]))["status"] == "Complete"
    assert env.status("w-1") == "Allocated"
    assert (env.trace_dir / "w-1.configured").exists()
    assert env.jm.counters["reappear_jobs"] == 1
    assert [j["task"] for j in env.jm.jobs()] == [
        "reconfigure",
        "decommission",
        "update",
        "commission",
        "commission",
    ]


async def test_discover(env: Env) -> None:
    job = await env.jm.discover(["127.0.0.9", "127.0.0.8"], '{"x": 1}')
    rec = await env.ended(job["id"])
    assert rec["status"] == "Complete" and rec["addrs"] == ["127.0.0.9", "127.0.0.8"]
    assert sorted(env.trace()) == ["configure node1 cluster-node", "configure node2 cluster-node"]
    assert env.r.state.node_names() == []  # nodes appear later, through Serf
    info = env.jm.job("last")
    assert any("node1" in line for line in info["logs"])


async def test_discover_fails_when_the_node_never_joins_serf(env: Env) -> None:
    """clusterm issue #157: the playbook succeeded but the node never joined Serf."""
    env.cfg["join_s"] = "1"
    job = await env.jm.discover(["127.0.0.9", "127.0.0.8"])
    rec = await env.ended(job["id"])
    assert rec["status"] == "Errored", rec
    assert rec["error"].startswith(
        "node(s) [127.0.0.9 127.0.0.8] did not join the Serf cluster within 1 s of the "
        "discover playbook's end"
    )
    assert sorted(env.trace()) == ["configure node1 cluster-node", "configure node2 cluster-node"]


async def test_discover_completes_once_the_node_joins_serf(env: Env) -> None:
    env.cfg["join_s"] = "120"
    job = await env.jm.discover(["127.0.0.9"])
    with trio.fail_after(60):  # the playbook ran and the job waits for Serf
        async with contextlib.aclosing(env.jm.follow(job["id"])) as lines:  # type: ignore[type-var]
            async for line in lines:
                if "to join the Serf cluster" in line:
                    break
    assert env.r.state.job(job["id"]).status == "Running"  # type: ignore[union-attr]
    # the node's Serf agent joins: the holder turns the member into a Discovered node
    await env.jm.apply_node_event("discovered", "n-9", "n", "9", "127.0.0.9")
    rec = await env.ended(job["id"])
    assert (rec["status"], rec["error"]) == ("Complete", "")
    assert any("[127.0.0.9] joined the Serf cluster" in ln for ln in env.jm.job("last")["logs"])


async def test_failure_path_runs_cleanup(env: Env) -> None:
    env.cfg["configure"] = "missing.yml"  # read at the next job start
    await env.nodes("u-1")
    job = await env.jm.commission(["u-1"], "service-master")
    rec = await env.ended(job["id"])
    assert rec["status"] == "Errored"
    assert rec["error"].startswith('commission failed: playbook "missing.yml" failed')
    assert env.status("u-1") == "Unallocated"
    assert env.trace() == ["cleanup u-1"]  # the failure path ran for real


async def test_one_active_job_and_cancel(env: Env) -> None:
    env.cfg["configure"] = "long.yml"
    await env.nodes("m-1", "u-1")
    # Two requests at once: the lock lets exactly one pass the active-job check.
    outcomes: list[str] = []

    async def request(node: str) -> None:
        try:
            await env.jm.commission([node], "service-master")
            outcomes.append("ok")
        except Conflict as exc:
            outcomes.append(str(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(request, "m-1")
        nursery.start_soon(request, "u-1")
    assert outcomes.count("ok") == 1
    active = env.jm.job("active")
    assert [o for o in outcomes if o != "ok"] == [
        f"there is already an active job, please try in sometime. Job: [{active['desc']}]"
    ]
    node = active["nodes"][0]
    other = "u-1" if node == "m-1" else "m-1"
    assert env.status(other) == "Unallocated"  # the refused request moved nothing

    await until(lambda: marker_pids(env.marker), DEADLINE_S, "the long playbook's processes")
    followed: list[str] = []

    async def follow() -> None:
        async for line in env.jm.follow("active"):
            followed.append(line)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(follow)
        await until(lambda: followed, DEADLINE_S, "the first followed line")
        t0 = trio.current_time()
        answer = await env.jm.cancel()
        assert answer["id"] == active["id"]
        rec = await env.ended(active["id"])
    elapsed = trio.current_time() - t0
    assert (rec["status"], rec["error"]) == ("Cancelled", "job was cancelled")
    assert env.status(node) == "Unallocated"
    assert marker_pids(env.marker) == []  # the whole tree, setsid() workers included
    assert env.trace() == [f"configure-long {node}", f"cleanup {node}"]
    assert followed == env.jm.log_path(active["id"]).read_text().splitlines()
    assert any("cancel requested" in line for line in followed)
    bound("jobs.cancel_to_ended", elapsed, 15)


async def test_lease_lost_mid_run(env: Env, tmp_path: Path) -> None:
    env.cfg["configure"] = "long.yml"
    await env.nodes("m-1")
    job = await env.jm.commission(["m-1"], "service-master")
    await until(lambda: marker_pids(env.marker), DEADLINE_S, "the long playbook's processes")
    # Another instance took over with a higher epoch (its lease reached us by gossip).
    new_lease = Lease("b", 2, env.r.now_ms() + 10**9).as_value()
    await env.r.commit(lambda st, ts: st.d_set(LEASE_KEY, new_lease, ts))
    await until(lambda: env.jm.running_job_id is None, DEADLINE_S, "the fenced run to stop")
    assert env.jm.counters["fenced_runs"] == 1
    assert marker_pids(env.marker) == []
    # The deposed runner wrote nothing after the lease moved: no final status, no cleanup.
    rec = env.r.state.job(job["id"])
    assert rec is not None
    assert (rec.status, rec.epoch, rec.ended_ms) == ("Running", 1, 0)
    assert env.status("m-1") == "Provisioning"
    assert "cleanup m-1" not in env.trace()
    with pytest.raises(Unavailable, match="holder is b"):
        await env.jm.cancel()

    # The new holder (same replicated state) ends the orphan on its failure path.
    rb = Replica("b", data_dir=tmp_path / "b", lease=LONG_LEASE)
    rb.open()
    try:
        rb.state.apply(env.r.state.map.copy())
        jb = JobManager(rb, settings_for(env.trace_dir, env.cfg, env.marker), tmp_path / "wb")
        async with trio.open_nursery() as nursery:
            await nursery.start(jb.run)
            await until(
                lambda: getattr(rb.state.job(job["id"]), "status", None) == "Errored",
                DEADLINE_S,
                "the orphan",
            )
            nursery.cancel_scope.cancel()
        orphan = rb.state.job(job["id"])
        assert orphan is not None
        assert orphan.error == "runner a lost the lease (epoch 1) while the job was running"
        assert orphan.epoch == 2
        m1 = rb.state.node("m-1")
        assert m1 is not None and m1.inventory.status == "Unallocated"
        # A late write from the deposed runner (epoch 1, newer clock) loses everywhere.
        late = {**rec.to_value(), "status": "Complete"}
        fenced = rb.state.map.fenced
        rb.state.apply(rb.state.d_set(job_key(job["id"]), late, rb.hlc.now(rb.now_ms() + 10**6)))
        assert rb.state.job(job["id"]).status == "Errored"  # type: ignore[union-attr]
        assert rb.state.map.fenced == fenced + 1
    finally:
        await rb.aclose()
