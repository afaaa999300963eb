"""Fencing at the node: the gossipmgr_fence module's rule, its lock, and real playbook runs.

Pure part: the module's compare/record logic (Hypothesis) and its file work under the
flock, including concurrent runs. Real part: the shipped playbooks (which run the
gossipmgr_fence role first) through ansible-runner on ansible_connection=local hosts, with
the fence record under tmp_path; a job whose epoch is older than one that acted on the
node fails with the fence's message and changes nothing. Clients cannot set the fence
variables, over real HTTP too.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import random
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import trio
from _apiutil import add_nodes, serving, standalone
from hypothesis import given, settings
from hypothesis import strategies as st

import gossipmgr
from gossipmgr.api import create_app
from gossipmgr.core.lease import Lease, LeaseConfig
from gossipmgr.core.state import LEASE_KEY, global_key
from gossipmgr.errors import BadRequest
from gossipmgr.runtime.ansible import (
    FENCE_VARS,
    AnsibleSettings,
    Host,
    RunInputs,
    check_client_var,
    parse_extra_vars,
    run_playbook,
    run_workflow,
)
from gossipmgr.runtime.jobs import ACTIVE, JobManager
from gossipmgr.runtime.replica import Replica
from gossipmgr.testing.wait import until

PLAYBOOKS = Path(gossipmgr.__file__).parent / "playbooks"
MODULE_PATH = PLAYBOOKS / "roles" / "gossipmgr_fence" / "library" / "gossipmgr_fence.py"
LOCAL = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
DEADLINE_S = 60  # a playbook run costs a few seconds on a loaded 2-core box
LONG_LEASE = LeaseConfig(ttl_ms=2 * 10**9)


def _load_module() -> ModuleType:
    # The module is shipped as a file for ansible to copy to the node, not as a package.
    spec = importlib.util.spec_from_file_location("gossipmgr_fence_module", MODULE_PATH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


fm = _load_module()


def record_of(directory: Path) -> dict[str, Any]:
    rec: dict[str, Any] = json.loads((directory / "epoch.json").read_text())
    return rec


# --------------------------------------------------------------------------- pure rule


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=2**63 - 1), max_size=30))
def test_decide_keeps_the_highest_epoch_and_fences_exactly_the_lower_ones(
    epochs: list[int],
) -> None:
    recorded: dict[str, Any] | None = None
    for i, epoch in enumerate(epochs):
        before = recorded
        try:
            recorded = fm.decide(recorded, epoch, f"h{i}", f"j{i}")
        except fm.Fenced as exc:
            assert before is not None and epoch < before["epoch"]
            assert str(exc) == (
                f"fenced: epoch {epoch} is older than {before['epoch']} "
                f"(job {before['job']} by {before['holder']})"
            )
            continue
        assert before is None or epoch >= before["epoch"]  # never decreases
        assert recorded == {"epoch": epoch, "holder": f"h{i}", "job": f"j{i}"}
    if epochs:
        assert recorded is not None and recorded["epoch"] == max(epochs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=12))
def test_fence_on_disk_records_the_running_maximum(epochs: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "fence")
        highest = -1
        for i, epoch in enumerate(epochs):
            if epoch < highest:
                with pytest.raises(fm.Fenced):
                    fm.fence(d, epoch, "h", f"j{i}")
            else:
                out = fm.fence(d, epoch, "h", f"j{i}")
                assert out["record"] == {"epoch": epoch, "holder": "h", "job": f"j{i}"}
                highest = epoch
            assert record_of(Path(d))["epoch"] == highest  # on disk, never lower
        # temp files never stay behind: only the record and the lock
        assert sorted(os.listdir(d)) == ["epoch.json", "lock"]


def test_a_damaged_record_is_refused_not_guessed(tmp_path: Path) -> None:
    d = tmp_path / "fence"
    d.mkdir()
    for text in ("", "{", '{"epoch": "7"}', '{"epoch": true}', "[7]"):
        (d / "epoch.json").write_text(text)
        with pytest.raises(fm.BadRecord):
            fm.fence(str(d), 9, "h", "j")
        assert (d / "epoch.json").read_text() == text


def test_concurrent_runs_are_serialised_by_the_lock(tmp_path: Path) -> None:
    """Every accepted run saw the record of exactly one earlier accepted run (a single
    chain): two runs reading the same record and both writing would be a lost update."""
    d = str(tmp_path / "fence")
    rng = random.Random(18)
    plans = [[rng.randrange(50) for _ in range(15)] for _ in range(8)]
    accepted: list[dict[str, Any]] = []
    fenced: list[int] = []
    errors: list[BaseException] = []
    mu = threading.Lock()

    def worker(t: int) -> None:
        try:
            for i, epoch in enumerate(plans[t]):
                try:
                    out = fm.fence(d, epoch, f"h{t}", f"j{t}-{i}")
                except fm.Fenced:
                    with mu:
                        fenced.append(epoch)
                else:
                    with mu:
                        accepted.append(out)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(len(plans))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(DEADLINE_S)
    assert not errors and not any(th.is_alive() for th in threads)
    final = record_of(Path(d))
    assert final["epoch"] == max(e for p in plans for e in p)
    assert all(e < final["epoch"] for e in fenced)
    firsts = [a for a in accepted if a["previous"] is None]
    assert len(firsts) == 1
    successors = [a["previous"]["job"] for a in accepted if a["previous"] is not None]
    assert len(successors) == len(set(successors)), "two runs acted on the same record"
    for a in accepted:
        assert a["previous"] is None or a["record"]["epoch"] >= a["previous"]["epoch"]


def _waiting_on_lock(path: Path) -> bool:
    s = path.stat()
    ident = f"{os.major(s.st_dev):02x}:{os.minor(s.st_dev):02x}:{s.st_ino} "
    return any(
        "->" in line and ident in line for line in Path("/proc/locks").read_text().split("\n")
    )


def test_a_run_waits_for_the_lock_and_then_sees_the_newer_epoch(tmp_path: Path) -> None:
    """A run under epoch 5 that starts while a run under epoch 9 holds the node's lock waits
    (the kernel lists it as blocked on the lock), then is fenced by what 9 recorded."""
    d = tmp_path / "fence"
    d.mkdir()
    lock_fd = os.open(d / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    outcome: list[BaseException | dict[str, Any]] = []

    def stale() -> None:
        try:
            outcome.append(fm.fence(str(d), 5, "old", "j-old"))
        except BaseException as exc:
            outcome.append(exc)

    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        th = threading.Thread(target=stale)
        th.start()
        for _ in range(DEADLINE_S * 100):
            if _waiting_on_lock(d / "lock") or outcome:
                break
            threading.Event().wait(0.01)
        assert not outcome, f"the run did not wait for the lock: {outcome}"
        assert _waiting_on_lock(d / "lock")
        (d / "epoch.json").write_text(json.dumps({"epoch": 9, "holder": "new", "job": "j-new"}))
    finally:
        os.close(lock_fd)  # releases the lock
    th.join(DEADLINE_S)
    assert len(outcome) == 1 and isinstance(outcome[0], fm.Fenced)
    assert str(outcome[0]) == "fenced: epoch 5 is older than 9 (job j-new by new)"
    assert record_of(d)["epoch"] == 9


# --------------------------------------------------------------------------- client vars


@pytest.mark.parametrize("name", FENCE_VARS)
def test_clients_cannot_set_the_fence_vars(name: str) -> None:
    with pytest.raises(BadRequest, match=f'"{name}" is set by gossipmgr'):
        parse_extra_vars(json.dumps({"a": 1, name: 99}))
    with pytest.raises(BadRequest, match=f'"{name}" is set by gossipmgr'):
        parse_extra_vars({name: 99})
    with pytest.raises(BadRequest, match=f'"{name}" is set by gossipmgr'):
        check_client_var(name)
    check_client_var("gossipmgr_fence_dir")  # the operator's setting: allowed


@pytest.mark.ansible
async def test_the_api_refuses_fence_vars_with_a_400_naming_them(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx:
        await add_nodes(ctx, 1)
        async with serving(create_app(ctx)) as url, httpx.AsyncClient(base_url=url) as c:
            before = ctx.replica.state.map.copy()
            cases: list[tuple[str, str, dict[str, Any]]] = [
                (
                    "POST",
                    "/commission/nodes",
                    {
                        "nodes": ["node-0"],
                        "host_group": "service-master",
                        "extra_vars": '{"gossipmgr_epoch": 99}',
                    },
                ),
                (
                    "POST",
                    "/update/nodes",
                    {"nodes": ["node-0"], "extra_vars": {"gossipmgr_job": "x"}},
                ),
                (
                    "POST",
                    "/decommission/nodes",
                    {"nodes": ["node-0"], "extra_vars": '{"gossipmgr_holder": "x"}'},
                ),
                (
                    "POST",
                    "/discover/nodes",
                    {"addrs": ["127.0.9.9"], "extra_vars": '{"gossipmgr_epoch": 1}'},
                ),
                ("POST", "/globals", {"extra_vars": '{"gossipmgr_epoch": 99}'}),
                ("PUT", "/globals/gossipmgr_holder", {"value": "x"}),
                ("POST", "/node/node-0/extra_vars", {"extra_vars": '{"gossipmgr_job": "x"}'}),
                ("PUT", "/node/node-0/extra_vars/gossipmgr_epoch", {"value": 99}),
                (
                    "POST",
                    "/config",
                    {"config": {"ansible": {"extra_variables": '{"gossipmgr_epoch": 9}'}}},
                ),
            ]
            for method, path, body in cases:
                r = await c.request(method, path, json=body)
                assert r.status_code == 400, (path, r.text)
                err = r.json()["error"]
                assert any(f'"{v}" is set by gossipmgr' in err for v in FENCE_VARS), err
            assert ctx.replica.state.map == before  # refused requests wrote nothing
            assert ctx.jobs.active_record() is None


# --------------------------------------------------------------------------- real ansible


class Node:
    """One simulated node of a local run: its demo marker and its fence record."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def configured(self) -> Path:
        return self.root / "demo" / "configured"

    @property
    def fence_dir(self) -> Path:
        return self.root / "fence"


def fence_settings(node: Node, **extra: Any) -> AnsibleSettings:
    return AnsibleSettings(
        playbook_dir=PLAYBOOKS,  # the shipped playbooks: they run the fence role first
        host_vars={
            **LOCAL,
            "gossipmgr_demo_root": str(node.root / "demo"),
            "gossipmgr_fence_dir": str(node.fence_dir),
        },
        extra_variables=extra,
        timeout_s=DEADLINE_S,
        discover_join_timeout_s=0,
    )


@pytest.fixture
async def holder(tmp_path: Path) -> AsyncIterator[tuple[Replica, JobManager, Node]]:
    """Instance "a" holding the lease at epoch 1 with a running JobManager; one node m-1."""
    node = Node(tmp_path / "m-1")
    r = Replica("a", data_dir=tmp_path / "a", lease=LONG_LEASE)
    r.open()
    lease = Lease("a", 1, r.now_ms() + 10**9).as_value()
    await r.commit(lambda s, ts: s.d_set(LEASE_KEY, lease, ts))
    # Stored data that got in before the API refused these names (or by a buggy
    # writer): the product's values must still win over it.
    await r.commit(lambda s, ts: s.d_set(global_key("gossipmgr_epoch"), 99, ts))
    jm = JobManager(r, lambda: fence_settings(node, gossipmgr_holder="config"), tmp_path / "work")
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(jm.run)
            await jm.apply_node_event("discovered", "m-1", "m", "1", "127.0.0.1")
            yield r, jm, node
            nursery.cancel_scope.cancel()
    finally:
        await r.aclose()


async def ended(r: Replica, jm: JobManager, job_id: str) -> dict[str, Any]:
    def done() -> bool:
        rec = r.state.job(job_id)
        return rec is not None and rec.status not in ACTIVE and jm.running_job_id != job_id

    await until(done, DEADLINE_S, f"job {job_id}")
    rec = r.state.job(job_id)
    assert rec is not None
    return rec.to_value()


@pytest.mark.ansible
async def test_a_job_under_an_older_epoch_than_one_that_acted_is_fenced_and_changes_nothing(
    holder: tuple[Replica, JobManager, Node], tmp_path: Path
) -> None:
    r, jm, node = holder

    # 1. Under epoch 1 the job acts; its fence variables reached the play (the record on the
    # node is the job's), not the stored global or the config's value.
    job = await jm.commission(["m-1"], "service-master")
    rec = await ended(r, jm, job["id"])
    assert (rec["status"], rec["error"]) == ("Complete", "")
    assert record_of(node.fence_dir) == {"epoch": 1, "holder": "a", "job": job["id"]}
    assert "groups=service-master" in node.configured.read_text()

    # 2. A newer holder (epoch 2, on the other side of a partition, say) acts on the node.
    lines: list[str] = []
    with trio.fail_after(DEADLINE_S):
        newer = await run_workflow(
            "update",
            RunInputs(
                [Host("m-1", "127.0.0.1", "m-1", "service-worker")], fence_settings(node), {}, {}
            ),
            log=lines.append,
            cancel=trio.Event(),
            work_root=tmp_path / "newer",
            product_vars={"gossipmgr_epoch": 2, "gossipmgr_holder": "b", "gossipmgr_job": "J2"},
        )
    assert newer.ok, (newer, lines)
    assert record_of(node.fence_dir) == {"epoch": 2, "holder": "b", "job": "J2"}
    configured = node.configured.read_text()
    assert "groups=service-worker" in configured

    # 3. The stale holder (still epoch 1 in its own view) updates the node: the fence refuses
    # both the configure and the failure path's cleanup before their tasks run.
    job = await jm.update(["m-1"], "service-master")
    rec = await ended(r, jm, job["id"])
    fenced = "fenced: epoch 1 is older than 2 (job J2 by b)"
    assert rec["status"] == "Errored"
    assert rec["error"] == f'update failed: playbook "cleanup.yml" failed (rc 2): {fenced}'
    assert any(fenced in line for line in jm.job(job["id"])["logs"])
    assert node.configured.read_text() == configured  # not removed, not rewritten
    assert record_of(node.fence_dir) == {"epoch": 2, "holder": "b", "job": "J2"}
    # The job took its failure path: the node is back out of Maintenance.
    m1 = r.state.node("m-1")
    assert m1 is not None and m1.inventory.status != "Maintenance"


@pytest.mark.ansible
async def test_a_fenced_configure_runs_the_failure_path_which_is_fenced_too(
    tmp_path: Path,
) -> None:
    node = Node(tmp_path / "n")
    fm.fence(str(node.fence_dir), 7, "b", "J7")
    lines: list[str] = []
    with trio.fail_after(DEADLINE_S):
        result = await run_workflow(
            "commission",
            RunInputs(
                [Host("n", "127.0.0.1", "n", "service-master")], fence_settings(node), {}, {}
            ),
            log=lines.append,
            cancel=trio.Event(),
            work_root=tmp_path / "work",
            product_vars={"gossipmgr_epoch": 6, "gossipmgr_holder": "a", "gossipmgr_job": "J6"},
        )
    fenced = "fenced: epoch 6 is older than 7 (job J7 by b)"
    assert [(s.playbook, s.status, s.error) for s in result.steps] == [
        ("site.yml", "failed", fenced),
        ("cleanup.yml", "failed", fenced),
    ]
    assert result.error == (
        f'commission failed: playbook "site.yml" failed (rc 2): {fenced}; '
        f'then playbook "cleanup.yml" failed (rc 2): {fenced}'
    )
    assert not node.configured.exists()  # the configure task never ran
    assert not node.configured.parent.exists()
    assert record_of(node.fence_dir)["epoch"] == 7


OPERATOR_PLAYBOOK = """\
- hosts: all
  gather_facts: false
  roles:
    - gossipmgr_fence
  tasks:
    - name: The operator's action, after the fence
      ansible.builtin.raw: echo "acted {{ gossipmgr_epoch }}" >> {{ marker | quote }}
"""


@pytest.mark.ansible
async def test_an_operators_own_playbook_uses_the_role_by_name(tmp_path: Path) -> None:
    """A playbook outside gossipmgr's directory finds the role through ANSIBLE_ROLES_PATH,
    and its later task does not run when the fence refuses the run."""
    book = tmp_path / "ops"
    book.mkdir()
    (book / "site.yml").write_text(OPERATOR_PLAYBOOK)
    node = Node(tmp_path / "n")
    marker = tmp_path / "acted"
    settings = AnsibleSettings(
        playbook_dir=book,
        host_vars={**LOCAL, "gossipmgr_fence_dir": str(node.fence_dir)},
        extra_variables={"marker": str(marker)},
        timeout_s=DEADLINE_S,
    )

    async def run(epoch: int) -> Any:
        with trio.fail_after(DEADLINE_S):
            return await run_playbook(
                "site.yml",
                RunInputs([Host("n", "127.0.0.1", "n", "service-master")], settings, {}, {}),
                log=lambda _: None,
                cancel=trio.Event(),
                work_root=tmp_path / "work",
                product_vars={
                    "gossipmgr_epoch": epoch,
                    "gossipmgr_holder": "h",
                    "gossipmgr_job": f"J{epoch}",
                },
            )

    assert (await run(3)).status == "successful"
    assert marker.read_text() == "acted 3\n"
    stale = await run(2)
    assert (stale.status, stale.error) == (
        "failed",
        "fenced: epoch 2 is older than 3 (job J3 by h)",
    )
    assert marker.read_text() == "acted 3\n"  # the later task did not run
