"""The majority rule in a running instance (the agent's wiring over a fake Serf, real HTTP):
a minority instance stops holding, keeps serving reads and writes and says why; below the
two-instance bound only ``POST /lease/take`` makes the survivor hold; ``gossipmgr lease``
output. The two-instance bound itself runs with real agents in test_majority_agent.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import trio
from _apiutil import add_nodes, serving, standalone

from gossipmgr.api import create_app
from gossipmgr.cli.output import render_lease, render_quorum
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.testing.fakeserf import FakeSerfCluster
from gossipmgr.testing.standalone import wait_until_holder

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def instance_tags(name: str, port: int) -> dict[str, str]:
    return {
        "role": "gossipmgr",
        "gossip": f"127.0.0.1:{port}",
        "api": f"http://127.0.0.1:{port}",
        "boot": name,
    }


async def quorum_reason(ctx: AgentApiContext, want: str) -> None:
    with trio.fail_after(10):
        while want not in ctx.replica.quorum.describe():  # noqa: ASYNC110 (polled state)
            await trio.sleep(0.05)  # membership polls every 250 ms


async def test_a_minority_instance_stops_holding_serves_and_says_why(tmp_path: Path) -> None:
    cluster = FakeSerfCluster()
    async with standalone(tmp_path, token=TOKEN, cluster=cluster) as ctx:
        app = create_app(ctx)
        async with serving(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as c:
            held = ctx.replica.lease()
            assert held is not None and held.holder == ctx.replica.name
            # Two more instances, both failed in our Serf view: we see 1 of 3.
            cluster.set_member("i2", instance_tags("i2", 1), status="failed")
            cluster.set_member("i3", instance_tags("i3", 2), status="failed")
            await wait_until_holder(ctx.agent, holder=False)
            for path in ("/health", "/info/lease", "/info/peers"):
                q = (await c.get(path)).json()["quorum"]
                assert q["reason"] == "no majority: sees 1 of 3 instances", (path, q)
                assert (q["majority"], q["may_hold"], q["sees"], q["known"]) == (False, False, 1, 3)
            # Reads and writes go on, with no holder; a job has nobody to run it.
            r = await c.put("/globals/k", json={"value": 1})
            assert r.status_code == 200, r.text
            assert (await c.get("/info/globals")).json()["extra_vars"]["k"] == 1
            assert not ctx.replica.is_holder()
            # Listed alive by Serf but never heard from over gossip (a bare serf agent
            # tagged as an instance, or one just joining): not counted either way.
            cluster.set_member("i2", instance_tags("i2", 1), status="alive")
            await quorum_reason(ctx, "no majority: sees 1 of 2 instances")
            # Both leave gracefully: they no longer count, and we hold again.
            cluster.set_member("i2", instance_tags("i2", 1), status="left")
            cluster.set_member("i3", instance_tags("i3", 2), status="left")
            await quorum_reason(ctx, "majority: sees 1 of 1 instances")
            await wait_until_holder(ctx.agent)


async def test_two_instances_the_survivor_holds_when_forced(
    tmp_path: Path,
) -> None:
    cluster = FakeSerfCluster()
    # A huge bound: only the operator's override can make the survivor hold.
    async with standalone(tmp_path, token=TOKEN, cluster=cluster, lease_solo_after_s=3600.0) as ctx:
        app = create_app(ctx)
        async with serving(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as c:
            before = ctx.replica.lease()
            assert before is not None
            cluster.set_member("i0", instance_tags("i0", 1), status="failed")
            await wait_until_holder(ctx.agent, holder=False)
            await quorum_reason(ctx, "no majority: sees 1 of 2 instances")
            r = await c.post("/lease/take", json={})
            assert r.status_code == 409, r.text
            assert "no majority: sees 1 of 2 instances" in r.json()["error"]
            for bad in (
                {"force": "yes"},
                {"force": True, "by": 7},
                {"force": True, "by": "x" * 300},
            ):
                r = await c.post("/lease/take", json=bad)
                assert r.status_code == 400, (bad, r.text)
            assert ctx.replica.lease() == before  # nothing written by a refused request
            r = await c.post("/lease/take", json={"force": True, "by": "ops@console"})
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            assert body["lease"]["forced_by"] == "ops@console"
            assert body["lease"]["epoch"] > before.epoch
            await wait_until_holder(ctx.agent)
            # Renewed as forced while there is no majority, and shown as such.
            lease = (await c.get("/info/lease")).json()
            assert lease["is_holder"] and lease["lease"]["forced_by"] == "ops@console"
            text = render_lease(lease["lease"]) + render_quorum(lease["quorum"])
            assert "forced by ops@console" in text
            assert "no majority: sees 1 of 2 instances (this instance cannot hold" in text
            # The other leaves for good: one of one is a majority, an ordinary grant again.
            cluster.set_member("i0", instance_tags("i0", 1), status="left")
            with trio.fail_after(10):
                while (cur := ctx.replica.lease()) is None or cur.forced_by:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            assert cur.epoch == body["lease"]["epoch"] and cur.holder == ctx.replica.name


async def test_a_running_job_stops_when_its_instance_loses_the_majority(tmp_path: Path) -> None:
    """A holder that loses its majority stops taking work (``is_holder``) and stops the job
    it runs too (the fence watcher): a minority side does not act on nodes. Real ansible; the
    configure playbook waits for a file that never comes, so only the stop can end the run.
    Nothing more is written by the minority: the record stays Running for the next holder's
    orphan scan."""
    cluster = FakeSerfCluster()
    playbooks = Path(__file__).parent / "playbooks_console"
    async with standalone(tmp_path, cluster=cluster, playbook_dir=playbooks) as ctx:
        (node,) = await add_nodes(ctx, 1)
        never = tmp_path / "never-created"
        job = await ctx.jobs.commission([node], "service-master", {"console_release": str(never)})
        gate = ctx.agent.jobs.gate
        with trio.fail_after(120):
            while gate.run is None or "waiting for" not in "\n".join(gate.run.tail):  # noqa: ASYNC110
                await trio.sleep(0.05)  # the playbook reached its wait
        run = gate.run
        assert run is not None and not run.fenced
        # Two more instances, both failed in our Serf view: we see 1 of 3.
        cluster.set_member("i2", instance_tags("i2", 1), status="failed")
        cluster.set_member("i3", instance_tags("i3", 2), status="failed")
        with trio.fail_after(30):
            while not run.done:  # noqa: ASYNC110 (the watcher's state)
                await trio.sleep(0.05)
        assert run.fenced and "lost the majority (no majority: sees 1 of 3" in run.fenced_why
        assert any("lost the majority" in line for line in run.tail)
        assert gate.counters["fenced_runs"] == 1
        rec = ctx.replica.state.job(job["id"])
        assert rec is not None and rec.status == "Running"
        assert not never.exists()
