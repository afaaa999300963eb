"""A rolling upgrade's run on the lease holder: batch after batch, resumed after a takeover.

``JobManager.upgrade`` (``POST /upgrade/nodes``) checks the request here
(:meth:`Upgrades.request`, decisions in ``gossipmgr.core.upgrade``) and launches one job
whose record carries the progress (``JobRecord.upgrade``). The Executor
(``gossipmgr.runtime.jobrun``: fence watch, log flush, the job's end) calls
:meth:`Upgrades.run` as the job's workflow. For each batch, in order:

1. one commit: the batch's nodes Allocated -> Maintenance (history: "upgrade batch i of
   n"), the record's ``current`` = the batch;
2. one ansible run of the ``upgrade_playbook`` on the batch's nodes, with the fence's
   inputs (the playbook runs the ``gossipmgr_fence`` role first);
3. a bounded wait (``upgrade_wait_s``) for each node that ran well to be Discovered in
   Serf;
4. one commit: the batch done; nodes that ran well and are back -> Allocated; failed ones
   stay in Maintenance with the reason in their history (a ``noted`` entry); and when more
   than ``max_fail`` nodes failed in all, the reason goes to the nodes not started too,
   and the job ends Errored with it (they stay Allocated, untouched).

A takeover: the new holder's orphan scan calls :meth:`Upgrades.resume`, which adopts a
Running upgrade record (runner and epoch become its own, its log goes on after the last
replicated line) and runs the batches not recorded done. A batch that was in flight
(``current`` set, not done) is run again, whole, under the new epoch: the upgrade playbook
must be idempotent (docs/workflows.md, "Rolling upgrade").
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from gossipmgr.core import inventory as inv
from gossipmgr.core import joblog as chunks
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.history import Cause
from gossipmgr.core.job import RUNNING, JobRecord
from gossipmgr.core.state import ClusterState, combine, inventory_key, job_key
from gossipmgr.core.upgrade import (
    DURING,
    KIND,
    SUCCESS,
    batch_size,
    check_max_fail,
    failed_hosts,
    plan_batches,
)
from gossipmgr.core.upgrade import (
    Upgrade as Upgrade,  # re-exported for the JobManager's signature
)
from gossipmgr.core.upgrade_check import check_upgrade
from gossipmgr.errors import Conflict, JobError
from gossipmgr.runtime.ansible import (
    CANCELLED_ERROR,
    AnsibleSettings,
    Host,
    RunInputs,
    WorkflowResult,
    parse_extra_vars,
    run_playbook,
)
from gossipmgr.runtime.joblog import Run
from gossipmgr.runtime.jobrun import Executor

log = logging.getLogger("gossipmgr.jobs")
#: JobManager._launch: (kind, desc, names, epoch, hosts, request_vars, host_group, upgrade=)
Launch = Callable[..., Awaitable[dict[str, Any]]]


class Upgrades:
    """The rolling upgrades of a JobManager (it owns the gate, the executor and the
    nursery; this registers itself as the executor's ``upgrade`` workflow)."""

    def __init__(
        self,
        executor: Executor,
        settings: Callable[[], AnsibleSettings],
        log_path: Callable[[str], Path],
        max_bytes: int,
    ) -> None:
        self.gate = executor.gate
        self.replica = executor.replica
        self.executor = executor
        self.settings = settings
        self.log_path = log_path
        self.max_bytes = max_bytes
        executor.runners[KIND] = self.run

    # ------------------------------------------------------------------ request
    async def start(
        self,
        launch: Launch,
        nodes: object,
        all_: object = None,
        batch: object = None,
        max_fail: object = None,
        extra_vars: object = None,
    ) -> dict[str, Any]:
        """Check an upgrade request and launch its job with ``launch`` (the JobManager's:
        one commit of the record, then the run). Raises BadRequest, Unavailable, Conflict
        (a job is active; a node not Allocated), CheckFailed (unknown or not Discovered)."""
        request_vars = parse_extra_vars(extra_vars)
        async with self.gate.lock:
            epoch = self.gate.epoch()
            self.gate.check_idle()
            names, up, desc = self.request(nodes, all_, batch, max_fail, request_vars)
            # hosts: none up front; each batch's come from the inventory when it starts
            return await launch(KIND, desc, names, epoch, [], request_vars, None, upgrade=up)

    def request(
        self, nodes: object, all_: object, batch: object, max_fail: object, request_vars: Any
    ) -> tuple[list[str], Upgrade, str]:
        """(node names, the progress to start with, the job's desc) of a request; raises
        BadRequest, CheckFailed or Conflict (``gossipmgr.core.upgrade_check``)."""
        k = check_max_fail(max_fail)
        names = check_upgrade(self.replica.state, nodes, all_)
        size = batch_size(batch, len(names))
        up = Upgrade(plan_batches(names, size), max_fail=k, extra_vars=request_vars or None)
        n = len(up.batches)
        desc = (
            f"upgrade nodes {inv.go_list(names)} in {n} batch{'es' if n != 1 else ''} of "
            f"{size}, max-fail {k}"
        )
        return names, up, desc

    # ------------------------------------------------------------------ takeover
    async def resume(
        self, ids: Sequence[str], epoch: int, nursery: trio.Nursery | None
    ) -> list[str]:
        """Adopt the first orphaned upgrade among ``ids`` (lock held, holder at ``epoch``):
        it runs on here from its next batch. Returns the ids left for the orphan end."""
        left = list(ids)
        if self.gate.run is not None or nursery is None:
            return left
        for job_id in ids:
            rec = self.replica.state.job(job_id)
            if rec is not None and rec.upgrade is not None and rec.status == RUNNING:
                await self._adopt(rec, epoch, nursery)
                left.remove(job_id)
                break
        return left

    def cancel_resumed(self, job_id: str) -> None:
        """Cancel ``job_id`` if it is the run here (an upgrade :meth:`resume` adopted while a
        cancel was asked for it as an orphan)."""
        if (run := self.gate.run) is not None and run.job_id == job_id and not run.done:
            run.cancel.set()

    async def _adopt(self, rec: JobRecord, epoch: int, nursery: trio.Nursery) -> None:
        me, up = self.replica.name, rec.upgrade
        assert up is not None
        run = Run(rec.id, KIND, epoch, self.log_path(rec.id), max_bytes=self.max_bytes)
        get = self.replica.state.map.get
        if idx := chunks.chunk_indexes(get, rec.id):
            last = chunks.chunk_at(get, rec.id, idx[-1])
            if last is None:  # of no chunk's shape (forged): number on from the record's count
                last = chunks.Chunk(max(0, rec.log_count), (), 0, False, False)
            run.log.continue_after(last, idx[-1], chunks.log_size(get, rec.id))
            run.count = last.stop
        run.tail.extend(rec.log_tail)

        def make(state: ClusterState, ts: Timestamp) -> LWWMap:
            self.gate.fence(epoch, f"resume of job {rec.id}")
            cur = state.job(rec.id)
            if cur is None or cur.status != RUNNING:
                raise Conflict(f"job {rec.id} ended before it could be resumed")
            new = replace(cur, epoch=epoch, runner=me)
            return state.d_set(job_key(rec.id), new.to_value(), ts)

        await self.gate.start_run(run, make)
        run.line(
            f"gossipmgr: job {rec.id} resumed by {me} under epoch {epoch} after its runner "
            f"{rec.runner} (epoch {rec.epoch}) stopped; {up.done} of {len(up.batches)} "
            "batches were done"
        )
        inputs = RunInputs([], self.settings(), self.replica.state.globals(), up.extra_vars or {})
        nursery.start_soon(self.executor.execute, run, inputs)
        log.warning("%s: resumed upgrade job %s under epoch %d", me, rec.id, epoch)

    # ------------------------------------------------------------------ the run
    def _progress(self, run: Run) -> Upgrade:
        rec = self.replica.state.job(run.job_id)
        if rec is None or rec.upgrade is None:
            raise JobError(f"job {run.job_id} has no upgrade progress (its record was removed)")
        return rec.upgrade

    async def run(self, ex: Executor, run: Run, inputs: RunInputs) -> WorkflowResult:
        """The batches not done yet, in order (see the module docstring)."""
        up = self._progress(run)
        while (i := up.next_batch()) is not None:
            if run.cancel.is_set():
                if up.current == i:  # in flight at a takeover: its nodes are in Maintenance
                    await self._end(ex, run, i, dict.fromkeys(up.batches[i], CANCELLED_ERROR))
                return WorkflowResult(False, True, CANCELLED_ERROR, [])
            again = " again (it was in flight at a takeover)" if up.current == i else ""
            batch, n = up.batches[i], len(up.batches)
            run.line(f"gossipmgr: upgrade batch {i + 1} of {n}{again}: {inv.go_list(batch)}")
            hosts, failed = await self._start(ex, run, i)
            if hosts:
                cancelled = await self._upgrade(ex, run, inputs, hosts, failed)
                if cancelled:
                    await self._end(ex, run, i, failed)
                    return WorkflowResult(False, True, CANCELLED_ERROR, [])
            up = await self._end(ex, run, i, failed)
            if reason := up.stop_reason():
                left = up.untouched()
                run.line(f"gossipmgr: {reason}; not started: {inv.go_list(left)}")
                return WorkflowResult(False, False, reason, [])
        error = up.end_error()
        return WorkflowResult(not error, False, error, [])

    async def _upgrade(
        self,
        ex: Executor,
        run: Run,
        inputs: RunInputs,
        hosts: list[Host],
        failed: dict[str, str],
    ) -> bool:
        """One batch's run and wait; its failed nodes go into ``failed`` (name -> why).
        True when it was cancelled (during the run: every node of the batch failed; during
        the wait: the nodes not back yet)."""
        settings = inputs.settings
        result = await run_playbook(
            settings.upgrade_playbook,
            replace(inputs, hosts=hosts),
            log=run.line,
            cancel=run.cancel,
            work_root=ex.work_dir / "runs" / run.job_id,
            product_vars={
                "gossipmgr_epoch": run.epoch,
                "gossipmgr_holder": self.replica.name,
                "gossipmgr_job": run.job_id,
            },
            confirm_socket=run.confirm_socket,
        )
        if result.status == "canceled":
            failed.update({h.name: CANCELLED_ERROR for h in hosts})
            return True
        names = [h.name for h in hosts]
        why = f'playbook "{result.playbook}" failed on it: {result.error}'
        for name in failed_hosts(names, result.status == "successful", result.stats):
            failed[name] = why
        wait_s = settings.upgrade_wait_s
        ran_well = [n for n in names if n not in failed]
        away = await self._wait_back(ex, run, ran_well, wait_s)
        cancelled = run.cancel.is_set()  # a cancel ends the wait: the job ends Cancelled
        why = (
            CANCELLED_ERROR
            if cancelled
            else f"not Discovered in Serf within {wait_s:g} s of its batch's run"
        )
        for name in away:
            failed[name] = why
        return cancelled

    async def _wait_back(
        self, ex: Executor, run: Run, names: list[str], wait_s: float
    ) -> list[str]:
        """Wait (at most ``wait_s``, or until a cancel) for every node of ``names`` to be
        Discovered; returns the ones that are not."""

        def missing() -> list[str]:
            state = self.replica.state
            return [
                n
                for n in names
                if (r := state.node(n)) is None or r.inventory.state != inv.DISCOVERED
            ]

        deadline = trio.current_time() + wait_s
        if left := missing():
            run.line(
                f"gossipmgr: waiting up to {wait_s:g} s for {inv.go_list(left)} to be Discovered"
            )
        while left := missing():
            if run.cancel.is_set() or trio.current_time() >= deadline:
                run.line(f"gossipmgr: {inv.go_list(left)} not Discovered in time")
                return left
            with trio.move_on_at(deadline):
                await ex._change_or_cancel(run)
        return []

    async def _start(self, ex: Executor, run: Run, i: int) -> tuple[list[Host], dict[str, str]]:
        """Commit the start of batch ``i``: its nodes -> Maintenance, ``current`` = i.
        Returns the hosts to run and the nodes that cannot run (name -> why)."""
        hosts: list[Host] = []
        failed: dict[str, str] = {}

        def change(rec: JobRecord) -> JobRecord:
            assert rec.upgrade is not None
            return replace(rec, upgrade=rec.upgrade.started(i))

        def moves(state: ClusterState, ts: Timestamp) -> LWWMap:
            up = self._up(state, run)
            hosts.clear()
            failed.clear()
            for name in up.batches[i]:
                rec = state.node(name)
                if rec is None or rec.inventory.status not in (SUCCESS, DURING):
                    failed[name] = "not Allocated any more" if rec else "not in the inventory"
                else:
                    hg = inv.host_group_of(rec)
                    hosts.append(Host(name, rec.addr, name, hg, dict(rec.vars)))
            names = [h.name for h in hosts]
            moved = inv.move_statuses(state, names, DURING, run.epoch, ts)
            why = f"upgrade batch {i + 1} of {len(up.batches)}"
            return self._noted(state, moved, ts, run, why)

        await ex._write_job(run, change, moves)
        return hosts, failed

    async def _end(self, ex: Executor, run: Run, i: int, failed: Mapping[str, str]) -> Upgrade:
        """Commit the end of batch ``i``: done; nodes not ``failed`` -> Allocated; failed
        ones noted; when the job stops, the reason noted on the nodes not started."""
        out: list[Upgrade] = []

        def change(rec: JobRecord) -> JobRecord:
            assert rec.upgrade is not None
            out[:] = [rec.upgrade.finished(i, failed)]
            return replace(rec, upgrade=out[0])

        def moves(state: ClusterState, ts: Timestamp) -> LWWMap:
            up = self._up(state, run)
            after = up.finished(i, failed)
            n = len(up.batches)
            well = [x for x in up.batches[i] if x not in failed]
            moved = inv.finish_statuses(state, well, DURING, SUCCESS, run.epoch, ts)[0]
            parts = [self._noted(state, moved, ts, run, f"upgrade batch {i + 1} of {n}: upgraded")]
            for name, why in failed.items():
                parts.append(self._note(state, [name], ts, run, f"upgrade failed: {why}"))
            if reason := after.stop_reason():
                parts.append(
                    self._note(state, after.untouched(), ts, run, f"not upgraded: {reason}")
                )
            return combine(*parts)

        await ex._write_job(run, change, moves)
        return out[0] if out else self._progress(run)

    # ------------------------------------------------------------------ helpers
    def _up(self, state: ClusterState, run: Run) -> Upgrade:
        rec = state.job(run.job_id)
        if rec is None or rec.upgrade is None:
            raise JobError(f"job {run.job_id} has no upgrade progress (its record was removed)")
        return rec.upgrade

    def _cause(
        self, state: ClusterState, run: Run, reason: str, noted: Sequence[str] = ()
    ) -> Cause:
        rec = state.job(run.job_id)
        token = rec.requested_by if rec is not None else ""
        return Cause(
            self.replica.name, run.epoch, token, run.job_id, reason, noted=frozenset(noted)
        )

    def _noted(
        self, state: ClusterState, delta: LWWMap, ts: Timestamp, run: Run, why: str
    ) -> LWWMap:
        """``delta`` (status moves) with its history entries."""
        return state.d_history(delta, ts, self._cause(state, run, why), self.gate.history_limit)

    def _note(
        self, state: ClusterState, names: Sequence[str], ts: Timestamp, run: Run, why: str
    ) -> LWWMap:
        """A ``noted`` history entry on each of ``names`` (register rewritten, unchanged)."""
        parts = []
        for name in names:
            rec = state.node(name)
            if rec is not None:
                value = replace(rec.inventory, epoch=run.epoch).to_value()
                parts.append(state.d_set(inventory_key(name), value, ts))
        cause = self._cause(state, run, why, names)
        return state.d_history(combine(*parts), ts, cause, self.gate.history_limit)
