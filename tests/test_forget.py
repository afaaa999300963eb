"""``gossipmgr node forget`` (clusterm issue #158): removing a node that is gone, over real
HTTP against a standalone instance; a forgotten node that comes back is a new node that
passes commission's checks."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import pytest
import trio
from _apiutil import add_nodes, serving, standalone

from gossipmgr.api import create_app
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.inventory import MASTER, check_moves, check_workflow, d_discovered, d_forget
from gossipmgr.core.state import ClusterState, inventory_key
from gossipmgr.errors import Conflict
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.testing.standalone import fake_serf


async def _disappear(ctx: AgentApiContext, label: str, serial: str) -> None:
    """The node fails in Serf (so the holder's reconcile agrees) and the event says so."""
    fake_serf(ctx.agent).see(f"{label}-{serial}", status="failed")
    await ctx.jobs.set_monitor_event(
        "disappeared", [{"label": label, "serial": serial, "addr": ""}]
    )


async def test_forget_a_gone_node_and_commission_it_when_it_comes_back(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx:
        await add_nodes(ctx, 2)  # node-0, node-1: Unallocated/Discovered
        async with serving(create_app(ctx)) as url, httpx.AsyncClient() as c:
            # alive: refused without force, nothing changes
            r = await c.post(url + "/node/node-0/forget", json={})
            assert r.status_code == 422
            assert "is Discovered (alive in Serf)" in r.json()["error"]
            assert ctx.replica.state.node("node-0") is not None
            r = await c.post(url + "/node/nope/forget")
            assert r.status_code == 404
            r = await c.post(url + "/node/node-0/forget", json={"force": "yes"})
            assert r.status_code == 400

            await c.put(url + "/node/node-0/extra_vars/rack", json={"value": "r1"})
            epoch = ctx.replica.lease().epoch  # type: ignore[union-attr]
            allocated = {
                "status": "Allocated",
                "prev_status": "Provisioning",
                "state": "Discovered",
                "prev_state": "Unknown",
                "epoch": epoch,
            }
            await ctx.replica.commit(
                lambda st, ts: st.d_set(inventory_key("node-0"), allocated, ts)
            )
            await _disappear(ctx, "node", "0")
            # clusterm #158: an Allocated node that is gone cannot be commissioned again
            with pytest.raises(Conflict):
                check_moves(ctx.replica.state, ["node-0"], "Provisioning")
            r = await c.post(url + "/node/node-0/forget")
            assert r.status_code == 200, r.text
            assert r.json() == {
                "forgotten": "node-0",
                "status": "Allocated",
                "state": "Disappeared",
            }
            assert ctx.replica.state.node("node-0") is None
            assert set((await c.get(url + "/info/nodes")).json()) == {"node-1"}
            assert (await c.get(url + "/info/node/node-0")).status_code == 404

            # it comes back: a new node, its old vars gone, and it can be commissioned
            fake_serf(ctx.agent).see("node-0", status="alive")
            await ctx.jobs.set_monitor_event(
                "discovered", [{"label": "node", "serial": "0", "addr": "127.0.1.1"}]
            )
            rec = ctx.replica.state.node("node-0")
            assert rec is not None
            assert rec.inventory.to_json() == {
                "status": "Unallocated",
                "prev_status": "Incomplete",
                "state": "Discovered",
                "prev_state": "Unknown",
            }
            assert rec.vars == {} and rec.host_group == "service-master"
            # commission's checks and its first status move now pass (the job machinery
            # itself is tested elsewhere)
            assert check_workflow(ctx.replica.state, "commission", ["node-0"], MASTER)
            check_moves(ctx.replica.state, ["node-0"], "Provisioning")

            # force: an alive node goes, and is discovered again by the next event
            r = await c.post(url + "/node/node-1/forget", json={"force": True})
            assert r.status_code == 200 and ctx.replica.state.node("node-1") is None

            # the CLI
            env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
            cli = [sys.executable, "-m", "gossipmgr.cli.main", "--url", url, "node", "forget"]
            p = await trio.run_process(
                [*cli, "node-0", "--force"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
            assert p.returncode == 0 and p.stdout == b"forgot node-0 (Unallocated, Discovered)\n"


def test_a_forgotten_node_comes_back_whatever_the_delivery_order() -> None:
    """The forget marker and a later discovery may reach a replica in either order; the
    discovery (same epoch, later timestamp) wins on both, and a tombstone never would."""
    a = ClusterState()
    a.apply(d_discovered(a, "n-1", "n", "1", "10.0.0.1", 3, Timestamp(1000, 0, "x")))
    forget = d_forget(a, "n-1", 3, Timestamp(2000, 0, "x"))
    a.apply(forget)
    assert a.node("n-1") is None and a.node_names() == []
    back = d_discovered(a, "n-1", "n", "1", "10.0.0.2", 3, Timestamp(3000, 0, "x"))
    a.apply(back)
    b = ClusterState()
    b.apply(back)
    b.apply(forget)
    for s in (a, b):
        rec = s.node("n-1")
        assert rec is not None and rec.inventory.status == "Unallocated"
        assert rec.addr == "10.0.0.2"
