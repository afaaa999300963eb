"""Check mode (issue 20 part 1): ``check: true`` on commission, update and decommission.

Pure part: the job record's ``check`` field (read tolerantly, never raising), the status
path and desc of a check job, and the gossipmgr_fence module comparing without recording.
Real part: the shipped playbooks through ansible-runner on ansible_connection=local hosts:
the fence role, in check mode, still refuses a stale epoch; a check commission asked with
the CLI's ``--check`` over real HTTP changes no file on the nodes and no record of theirs,
and its log shows the diff. The API's answers over real HTTP: ``check`` must be a boolean,
and a check job's preconditions are a real run's.
"""

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
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fence import DEADLINE_S, LOCAL, PLAYBOOKS, fm

from gossipmgr.core import checkmode
from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.inventory import STATUS_PATHS
from gossipmgr.core.job import JobRecord, make_job_id
from gossipmgr.core.state import ClusterState, combine, job_key
from gossipmgr.errors import BadRequest
from gossipmgr.runtime.ansible import AnsibleSettings, Host, RunInputs, run_playbook
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.runtime.webhooks import events_of
from gossipmgr.testing.wait import until

TOKEN = "check-mode-token"

RECORD: dict[str, Any] = {
    "id": "1764425000000-000001-i1",
    "desc": "commission nodes [a] (check)",
    "task": "commission",
    "workflow": "commission",
    "nodes": ["a"],
    "status": "Running",
    "error": "",
    "epoch": 1,
    "runner": "i1",
    "created_ms": 1,
    "started_ms": 1,
    "ended_ms": 0,
    "log_count": 0,
    "log_tail": [],
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=5,
)


# --------------------------------------------------------------------------- pure


def test_the_check_field_round_trips_and_is_absent_when_false() -> None:
    rec = JobRecord.from_value({**RECORD, "check": True})
    assert rec is not None and rec.check
    assert rec.to_value() == {**RECORD, "check": True}
    plain = JobRecord.from_value(RECORD)  # a record of a version before the field
    assert plain is not None and not plain.check
    assert "check" not in plain.to_value()


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_a_forged_check_value_never_raises_and_only_true_means_check(value: Any) -> None:
    rec = JobRecord.from_value({**RECORD, "check": value})
    assert rec is not None
    assert rec.check is (value is True)
    assert rec.to_value().get("check", False) is (value is True)


def test_a_check_jobs_end_tells_webhook_receivers_it_was_a_check() -> None:
    ts = Timestamp(5, 0, "i1")
    ended = {**RECORD, "status": "Complete"}
    for value, want in (({**ended, "check": True}, True), (ended, None)):
        (event,) = events_of(LWWMap().set_delta(job_key(RECORD["id"]), value, ts), {})
        assert event["type"] == "job.ended"
        assert event["job"].get("check") is want


@pytest.mark.parametrize("kind", ["commission", "update", "decommission", "reconfigure"])
def test_a_check_job_has_no_status_path_and_says_check_in_its_desc(kind: str) -> None:
    assert checkmode.status_path(kind, False) == STATUS_PATHS[kind]
    assert checkmode.status_path(kind, True) is None
    assert checkmode.job_desc(kind, ["a", "b"], "", False) == f"{kind} nodes [a b]"
    assert checkmode.job_desc(kind, ["a"], "service-master", True) == (
        f"{kind} nodes [a] host-group service-master (check)"
    )


def test_the_fence_in_check_mode_compares_and_records_nothing(tmp_path: Path) -> None:
    d = tmp_path / "fence"
    out = fm.fence(str(d), 3, "h", "j1", check=True)  # no record yet: would record
    assert out == {
        "changed": True,
        "previous": None,
        "record": {"epoch": 3, "holder": "h", "job": "j1"},
    }
    assert not d.exists()  # nothing created on the node
    fm.fence(str(d), 5, "h", "j5")  # a real run records epoch 5
    files = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(fm.Fenced, match=r"fenced: epoch 4 is older than 5 \(job j5 by h\)"):
        fm.fence(str(d), 4, "h", "j4", check=True)
    out = fm.fence(str(d), 9, "h2", "j9", check=True)
    assert out["changed"] and out["record"]["epoch"] == 9
    assert not fm.fence(str(d), 5, "h", "j5", check=True)["changed"]
    assert {p.name: p.read_bytes() for p in d.iterdir()} == files  # still epoch 5


# --------------------------------------------------------------------------- real ansible


@pytest.mark.ansible
async def test_the_fence_role_still_refuses_a_stale_epoch_in_check_mode(tmp_path: Path) -> None:
    """ansible skips a module that does not support check mode: the fence did, so a stale
    holder's check job passed it (and showed a diff it could never apply)."""
    fence_dir, demo = tmp_path / "fence", tmp_path / "demo"
    fm.fence(str(fence_dir), 7, "b", "J7")
    before = (fence_dir / "epoch.json").read_bytes()
    host_vars = {**LOCAL, "gossipmgr_demo_root": str(demo), "gossipmgr_fence_dir": str(fence_dir)}
    settings_ = AnsibleSettings(playbook_dir=PLAYBOOKS, host_vars=host_vars, timeout_s=DEADLINE_S)
    lines: list[str] = []
    inputs = RunInputs([Host("m-1", "127.0.0.1", "m-1", "service-master")], settings_, {}, {})
    with trio.fail_after(DEADLINE_S):
        result = await run_playbook(
            "site.yml",
            RunInputs(inputs.hosts, settings_, {}, {}, check=True),
            log=lines.append,
            cancel=trio.Event(),
            work_root=tmp_path / "work",
            product_vars={"gossipmgr_epoch": 1, "gossipmgr_holder": "a", "gossipmgr_job": "J1"},
        )
    assert result.status == "failed", lines
    assert result.error == "fenced: epoch 1 is older than 7 (job J7 by b)"
    assert any("in check mode (--check --diff)" in ln for ln in lines)
    assert (fence_dir / "epoch.json").read_bytes() == before
    assert not demo.exists()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _node_entries(ctx: AgentApiContext) -> dict[Any, Any]:
    """Every live entry of the nodes' namespace: inventory, host-group, vars, history."""
    return {k: v for k, v in ctx.replica.state.map.live() if k[0] == "n"}


async def _gm(url: str, *args: str) -> str:
    """The ``gossipmgr`` command line, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
    env.update(GOSSIPMGR_URL=url, GOSSIPMGR_TOKEN=TOKEN)
    with trio.fail_after(DEADLINE_S):
        p = await trio.run_process(
            [sys.executable, "-m", "gossipmgr.cli.main", *args],
            env=env,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert p.returncode == 0, (p.stdout, p.stderr)
    return p.stdout.decode()


@pytest.mark.ansible
async def test_a_check_commission_from_the_cli_changes_nothing_and_logs_the_diff(
    tmp_path: Path,
) -> None:
    async with standalone(tmp_path, token=TOKEN) as ctx:
        a, b = await add_nodes(ctx, 2)
        demo = tmp_path / "nodes"
        for n in (a, b):  # a marker directory of each node's own
            await ctx.jobs.set_node_var(n, "gossipmgr_demo_root", str(demo / n))
        (demo / b).mkdir(parents=True)
        (demo / b / "configured").write_text("stale=1\n")  # a real run would add its block
        files, nodes = _files(demo), _node_entries(ctx)
        fence_dir = tmp_path / "i1" / "fence"  # _apiutil.ansible_config's

        argv = ("nodes", "commission", a, b, "-g", "service-master", "--check")
        out = await _gm(ctx.agent.api_url, *argv)
        job_id = out.split()[1]
        assert out == f"job {job_id} started (Running)\n"

        def ended() -> bool:
            rec = ctx.replica.state.job(job_id)
            return rec is not None and not rec.active and ctx.jobs.running_job_id is None

        await until(ended, DEADLINE_S, f"check job {job_id}")
        rec = ctx.replica.state.job(job_id)
        assert rec is not None
        logs = "\n".join(ctx.jobs.job(job_id)["logs"])
        assert (rec.status, rec.error, rec.check) == ("Complete", "", True), logs
        assert rec.desc == f"commission nodes [{a} {b}] host-group service-master (check)"
        assert rec.to_value()["check"] is True
        # Nothing changed on the nodes: no marker written, the stale one as it was, no
        # epoch recorded by the fence; nor in their records (status, host-group, history).
        assert _files(demo) == files
        assert not (fence_dir / "epoch.json").exists()
        assert _node_entries(ctx) == nodes
        # The would-be changes are in the replicated log: blockinfile's diff per node.
        assert f"--- before: {demo / a}/configured" in logs
        assert f"+node_name={a}" in logs and f"+node_name={b}" in logs
        assert " stale=1" in logs  # b's existing line, as diff context
        assert "+groups=service-master" in logs
        shown = json.loads(await _gm(ctx.agent.api_url, "job", "get", job_id, "--json"))
        assert shown["check"] is True


async def test_check_must_be_a_boolean_and_is_refused_like_a_real_run(tmp_path: Path) -> None:
    """Refused requests write nothing; a check decommission of an Unallocated node gets the
    real one's 409 (preconditions and transitions are checked as for a real run)."""
    async with standalone(tmp_path, token=TOKEN) as ctx:
        (a,) = await add_nodes(ctx, 1)
        before = ctx.replica.state.map.copy()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=ctx.agent.api_url, headers=headers) as c:
            cases: list[tuple[str, dict[str, Any]]] = [
                ("/commission/nodes", {"nodes": [a], "host_group": "service-master"}),
                ("/update/nodes", {"nodes": [a]}),
                ("/decommission/nodes", {"nodes": [a]}),
            ]
            for path, body in cases:
                for bad, kind in (("yes", "string"), (1, "number"), (None, "null")):
                    r = await c.post(path, json={**body, "check": bad})
                    assert r.status_code == 400, (path, r.text)
                    assert r.json()["error"] == f'"check" must be true or false, got {kind}'
            real = await c.post("/decommission/nodes", json={"nodes": [a]})
            check = await c.post("/decommission/nodes", json={"nodes": [a], "check": True})
            assert real.status_code == check.status_code == 409, (real.text, check.text)
            assert check.json() == real.json()
            assert "transition from" in check.json()["error"]
            r = await c.post("/commission/nodes", json={"nodes": ["ghost"], "check": True})
            assert r.status_code == 422
            assert r.json()["error"] == 'node with name or address "ghost" doesn\'t exists'
            # The JobManager entry points (which a queued request also reaches) check it too.
            forged: Any = "yes"
            with pytest.raises(BadRequest, match='"check" must be true or false'):
                await ctx.jobs.commission([a], "service-master", None, check=forged)
        assert ctx.replica.state.map == before
        assert ctx.jobs.active_record() is None


@pytest.mark.parametrize("check", [False, True])
async def test_an_orphaned_check_job_is_ended_without_moving_its_nodes(
    tmp_path: Path, check: bool
) -> None:
    """The holder's orphan scan ends a job whose runner is gone and moves its nodes still in
    the workflow's ``during`` status along the failure path; a check job's, never. (The
    node is put in Provisioning by hand: a check job never moves it there itself.)"""
    async with standalone(tmp_path) as ctx:
        (a,) = await add_nodes(ctx, 1)
        lease = ctx.replica.lease()
        assert lease is not None
        rec = JobRecord(
            id=make_job_id(ctx.replica.now_ms(), 1, "gone"),
            desc=checkmode.job_desc("commission", [a], "service-master", check),
            task="commission",
            workflow="commission",
            nodes=(a,),
            status="Running",
            error="",
            epoch=lease.epoch,
            runner="gone",
            created_ms=1,
            started_ms=1,
            check=check,
        )

        def make(s: ClusterState, ts: Timestamp) -> LWWMap:
            moved = inv.move_statuses(s, [a], inv.PROVISIONING, lease.epoch, ts)
            return combine(moved, s.d_set(job_key(rec.id), rec.to_value(), ts))

        await ctx.replica.commit(make)

        def ended() -> bool:
            cur = ctx.replica.state.job(rec.id)
            return cur is not None and not cur.active

        await until(ended, DEADLINE_S, "the orphan scan")
        cur, node = ctx.replica.state.job(rec.id), ctx.replica.state.node(a)
        assert cur is not None and node is not None
        assert cur.status == "Errored" and "runner gone" in cur.error
        assert cur.check is check
        expected = inv.PROVISIONING if check else inv.UNALLOCATED
        assert node.inventory.status == expected
