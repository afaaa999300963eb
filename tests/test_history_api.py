"""Node history over the API and the CLI, on a standalone instance (the agent's own wiring
over a fake Serf) served over real HTTP: what each writer records (Serf events, monitor
events, forget, jobs with real ansible), ``?limit=``, the configured bound, 404/400, and
``gossipmgr node history``. The replicated, multi-instance case with real Serf agents is
tests/test_history_cluster.py."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _apiutil import add_nodes, standalone

from gossipmgr.core.tokens import ADMIN, make_token
from gossipmgr.runtime import leaseloop
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.testing.standalone import fake_serf

TOKEN = "default-secret"
OPS = "ops-secret-0123456789"


@pytest.fixture(autouse=True)
def quick_reconcile(monkeypatch: pytest.MonkeyPatch) -> None:
    """A node's comeback is applied by the periodic reconcile (every 5 s) once Serf has
    listed it alive for 26 s, and the instance has held the lease for 56 s (the comeback
    bounds of the lan profile of these standalone instances); these tests are about what
    the history records, not that timing (tests/test_majority.py is), and wait for four
    comebacks: every 1 s, settled after 0.5 s and comeback bounds of 0.5 s here."""
    monkeypatch.setattr(leaseloop, "RECONCILE_EVERY_S", 1.0)
    monkeypatch.setattr(leaseloop, "RECONCILE_SETTLE_S", 0.5)
    monkeypatch.setattr(leaseloop, "comeback_bounds", lambda profile, members: (0.5, 0.5))


async def _get(url: str, path: str, token: str = TOKEN) -> tuple[int, Any]:
    async with httpx.AsyncClient() as c:
        r = await c.get(url + path, headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.json()


async def _post(url: str, path: str, body: Any, token: str = TOKEN) -> tuple[int, Any]:
    async with httpx.AsyncClient() as c:
        r = await c.post(url + path, json=body, headers={"Authorization": f"Bearer {token}"})
    return r.status_code, r.json()


async def _history_until(ctx: AgentApiContext, node: str, n: int) -> list[dict[str, Any]]:
    """The node's history once it has at least ``n`` entries (bounded wait)."""
    with trio.fail_after(30):
        while len(h := ctx.replica.state.history(node, 1000)) < n:
            await ctx.replica.wait_change()
    return h


async def test_history_of_serf_and_api_events(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(make_token("ops", ADMIN, OPS).line() + "\n")
    async with standalone(tmp_path, token=TOKEN, api_tokens_file=tokens) as ctx:
        url = ctx.agent.api_url
        await add_nodes(ctx, 1)
        epoch = ctx.replica.lease().epoch  # type: ignore[union-attr]
        # Serf says the node failed: the lease loop applies it, and notes it
        serf = fake_serf(ctx.agent)
        tags = {"NodeLabel": "node", "NodeSerial": "0", "NodeAddr": "127.0.1.1"}
        serf.cluster.set_member("node-0", tags, status="failed")
        await _history_until(ctx, "node-0", 2)
        serf.cluster.set_member("node-0", tags)  # back
        await _history_until(ctx, "node-0", 3)
        # an API monitor event, asked by the "ops" token
        nodes = [{"label": "other", "serial": "1", "addr": "127.0.1.9"}]
        body = {"monitor_event": {"name": "discovered", "nodes": nodes}}
        st, _ = await _post(url, "/monitor/event", body, OPS)
        assert st == 200
        (other,) = ctx.replica.state.history("other-1", 10)
        assert (other["event"], other["token"]) == ("discovered", "ops")
        assert other["reason"] == "monitor event: discovered"
        st, r = await _get(url, "/info/node/node-0/history")
        assert st == 200 and r["name"] == "node-0" and r["limit"] == 200
        got = [(h["event"], h["state"], h["token"], h["reason"]) for h in r["history"]]
        # A comeback is applied by the reconcile once Serf has listed the node alive for a
        # while (docs/design.md, "Health only from a settled view"); a failure by the Serf
        # event, or by a reconcile that sees it first.
        assert got[0] == ("reappeared", "Discovered", "", "reconcile with serf: discovered")
        assert got[1][:3] == ("disappeared", "Disappeared", "")
        assert got[1][3] in ("serf: disappeared", "reconcile with serf: disappeared")
        assert got[2] == ("discovered", "Discovered", "", "monitor event: discovered")
        assert len(got) == 3
        for h in r["history"]:
            assert h["instance"] == "i1" and h["epoch"] == epoch and h["job"] == ""
            assert h["status"] == "Unallocated" and h["ms"] > 0
        assert [h["id"] for h in r["history"]] == sorted(
            (h["id"] for h in r["history"]), reverse=True
        )
        # ?limit=
        st, r1 = await _get(url, "/info/node/node-0/history?limit=1")
        assert st == 200 and [h["event"] for h in r1["history"]] == ["reappeared"]
        # odd digits (a superscript, Python's 4300-digit int limit): 400, not a 500
        for bad in ("0", "abc", "201", "-1", "\u00b2", "0" * 5000):
            st, err = await _get(url, f"/info/node/node-0/history?limit={bad}")
            assert st == 400 and "limit must be a whole number from 1 to 200" in err["error"]
        st, err = await _get(url, "/info/node/nope/history")
        assert st == 404 and err["error"] == 'node with name or address "nope" doesn\'t exists'
        # by management address, as every node read
        st, by_addr = await _get(url, "/info/node/127.0.1.1/history")
        assert st == 200 and by_addr == r
        # forget: the node is gone, its history stays (with the forget, by ops)
        serf.cluster.set_member("node-0", tags, status="failed")
        await _history_until(ctx, "node-0", 4)
        st, _ = await _post(url, "/node/node-0/forget", {}, OPS)
        assert st == 200
        st, r = await _get(url, "/info/node/node-0/history")
        assert st == 200 and r["history"][0]["event"] == "forgotten"
        assert (r["history"][0]["token"], r["history"][0]["reason"]) == ("ops", "node forget")
        assert (await _get(url, "/info/node/node-0"))[0] == 404
        # the CLI's table and --json
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
        cmd = [sys.executable, "-m", "gossipmgr.cli.main", "-u", url, "--token", TOKEN]
        res = await trio.run_process(
            [*cmd, "node", "history", "node-0"], capture_stdout=True, env=env
        )
        lines = res.stdout.decode().splitlines()
        assert lines[0].split() == [
            "WHEN", "EVENT", "STATUS", "STATE", "INSTANCE", "EPOCH", "TOKEN", "JOB", "WHY"
        ]  # fmt: skip
        assert lines[1].split()[2:4] == ["forgotten", "Unallocated"]
        assert "Discovered -> Disappeared" in lines[2] and "serf: disappeared" in lines[2]
        assert len(lines) == 1 + 5
        res = await trio.run_process(
            [*cmd, "node", "history", "node-0", "-n", "2", "--json"], capture_stdout=True, env=env
        )
        assert json.loads(res.stdout)["history"] == r["history"][:2]


async def test_the_bound_keeps_the_newest_entries(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN, node_history_limit=3) as ctx:
        await add_nodes(ctx, 1)
        serf = fake_serf(ctx.agent)
        tags = {"NodeLabel": "node", "NodeSerial": "0", "NodeAddr": "127.0.1.1"}
        for i in range(3):  # disappear and reappear: 6 more entries
            for status, n in (("failed", 2 + 2 * i), ("alive", 3 + 2 * i)):
                serf.cluster.set_member("node-0", tags, status=status)
                with trio.fail_after(30):
                    while len(ctx.replica.state.history("node-0", 1000)) < min(n, 3) or (
                        ctx.replica.state.history("node-0", 1)[0]["state"]
                        != ("Disappeared" if status == "failed" else "Discovered")
                    ):
                        await ctx.replica.wait_change()
        live = ctx.replica.state.history("node-0", 1000)
        assert [h["event"] for h in live] == ["reappeared", "disappeared", "reappeared"]
        st, r = await _get(ctx.agent.api_url, "/info/node/node-0/history")
        assert st == 200 and r["limit"] == 3 and r["history"] == live


@pytest.mark.ansible
async def test_jobs_record_who_asked(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(make_token("ops", ADMIN, OPS).line() + "\n")
    async with standalone(tmp_path, token=TOKEN, api_tokens_file=tokens) as ctx:
        url = ctx.agent.api_url
        await add_nodes(ctx, 1)
        body = {"nodes": ["node-0"], "host_group": "service-master"}
        st, job = await _post(url, "/commission/nodes", body, OPS)
        assert st == 200 and job["requested_by"] == "ops"
        with trio.fail_after(120):
            while (rec := ctx.replica.state.job(job["id"])) is None or rec.active:
                await ctx.replica.wait_change()
        assert rec.status == "Complete" and rec.requested_by == "ops"
        st, got = await _get(url, "/info/job/" + job["id"])
        assert st == 200 and got["requested_by"] == "ops"
        st, r = await _get(url, "/info/node/node-0/history?limit=2")
        assert [(h["event"], h["prev_status"], h["status"]) for h in r["history"]] == [
            ("status", "Provisioning", "Allocated"),
            ("status", "Unallocated", "Provisioning"),
        ]
        for h in r["history"]:
            assert h["job"] == job["id"] and h["token"] == "ops" and h["instance"] == "i1"
        assert r["history"][0]["reason"] == "job commission Complete"
        assert r["history"][1]["reason"] == "commission nodes [node-0] host-group service-master"


async def test_an_import_is_noted_as_imported(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN) as ctx:
        url = ctx.agent.api_url
        body = {"nodes": [{"name": "imp-1", "status": "Allocated", "host_group": "service-worker"}]}
        st, r = await _post(url, "/inventory/import", body)
        assert st == 200 and [c["name"] for c in r["changed"]] == ["imp-1"]
        st, h = await _get(url, "/info/node/imp-1/history")
        assert st == 200
        ((event, status, token, reason),) = [
            (e["event"], e["status"], e["token"], e["reason"]) for e in h["history"]
        ]
        assert (event, status, token, reason) == (
            "imported",
            "Allocated",
            "default",
            "inventory import",
        )
