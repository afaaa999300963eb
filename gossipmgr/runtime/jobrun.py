"""One job's run on the holder: the playbooks, the fence watch, the log tail, the end.

``gossipmgr.runtime.jobs`` accepts a request and starts :meth:`Executor.execute` in its
nursery once the job record (Running) is committed. The run:

* writes its log (``gossipmgr.runtime.joblog``) and replicates it, its new chunks and the
  record's tail in one commit, at most every ``log_flush_s``;
* runs the workflow's playbooks (``gossipmgr.runtime.ansible``) with the fence's inputs
  (``gossipmgr_epoch``, ``gossipmgr_holder``, ``gossipmgr_job``) as extra-vars, set after
  every client layer, so the ``gossipmgr_fence`` role refuses a run on a node where a newer
  epoch already acted (docs/ansible.md);
* is stopped (trio cancellation: ansible's whole process tree is killed, no further
  playbook runs) by a watcher as soon as the lease moved on;
* ends the record Complete, Errored or Cancelled through the job status machine
  (``JobRecord.transition``) and moves its nodes along the workflow's success or failure
  path, in one commit.

Every write checks ``check_fence(lease, job_epoch, me)`` inside the commit's ``make``, so
nothing can change between the check and the write; refused writes are counted in
``counters["fenced"]``. Even a write that slipped through would lose on every replica: job
and inventory records merge epoch-first.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Final

import trio

from gossipmgr.core import checkmode
from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import MAX_COUNTER
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.job import CANCELLED, COMPLETE, ERRORED, JobRecord
from gossipmgr.core.joblog import d_chunks
from gossipmgr.core.lease import check_fence
from gossipmgr.core.state import ClusterState, combine, job_key
from gossipmgr.errors import Conflict, GossipmgrError, JobError, StaleEpoch, ValueTooLarge
from gossipmgr.runtime.ansible import (
    CANCELLED_ERROR,
    RunInputs,
    WorkflowResult,
    run_workflow,
)
from gossipmgr.runtime.confirm import Confirmer
from gossipmgr.runtime.holder import HolderGate
from gossipmgr.runtime.joblog import LOG_LINE_CHARS, LOG_TAIL_LINES, Run, encodable, trim
from gossipmgr.runtime.replica import check_writable

log = logging.getLogger("gossipmgr.jobs")

#: Characters of a job's error text kept in its record (the whole text is in its log).
ERROR_CHARS: Final = 1_000
#: How often a running job checks that its instance still sees a majority (the lease loop
#: updates it every 250 ms; a replica change wakes the check at once too).
QUORUM_CHECK_S: Final = 0.5


def outcome(result: WorkflowResult) -> tuple[str, str]:
    """The status a run ends with, and its error text."""
    if result.ok:
        return COMPLETE, ""
    if result.cancelled:
        return CANCELLED, CANCELLED_ERROR
    return ERRORED, result.error or "job failed"


def check_record_room(record: JobRecord, ts: Timestamp) -> None:
    """Refuse a new job record that leaves no room for what its run adds later: the log
    tail (LOG_TAIL_LINES of LOG_LINE_CHARS), the error text (ERROR_CHARS), the end time and
    a later epoch. Those later writes of the record cannot be refused; a record accepted
    here always fits them (``codec.MAX_ENTRY_BYTES``, ``MAX_VALUE_ITEMS``).

    Raises ValueTooLarge (413) or ValueRefused (422) naming the limit."""
    wide = "\U0010ffff"  # 4 bytes in UTF-8: the largest a character encodes to
    worst = {
        **record.to_value(),
        "status": wide * 16,
        "error": wide * ERROR_CHARS,
        "epoch": MAX_COUNTER,
        "ended_ms": MAX_COUNTER,
        "log_count": MAX_COUNTER,
        "log_tail": [wide * LOG_LINE_CHARS] * LOG_TAIL_LINES,
    }
    if record.upgrade is not None:  # its progress grows up to every node failed
        worst["upgrade"] = record.upgrade.worst().to_value()
    try:
        check_writable(LWWMap({job_key(record.id): Entry(ts, worst)}))
    except ValueTooLarge as exc:
        raise ValueTooLarge(
            f"the job record leaves no room for its log tail and result ({exc}; counted "
            f"with {LOG_TAIL_LINES} log lines of {LOG_LINE_CHARS} and an error of "
            f"{ERROR_CHARS} characters)"
        ) from None


class Executor:
    """Runs jobs for a JobManager: ``work_dir/runs/<id>`` holds ansible-runner's files."""

    def __init__(self, gate: HolderGate, work_dir: Path, log_flush_s: float) -> None:
        self.gate = gate
        self.replica = gate.replica
        self.work_dir = work_dir
        self.log_flush_s = log_flush_s
        #: workflows run by another module instead of run_workflow (kind -> runner):
        #: ``upgrade`` (gossipmgr.runtime.upgrade)
        self.runners: dict[str, Callable[[Executor, Run, RunInputs], Awaitable[WorkflowResult]]]
        self.runners = {}
        #: serves each run's confirms to its ansible runs (``runtime.confirm``); the agent
        #: sets it once gossip runs (None: the runs get no confirm socket)
        self.confirmer: Confirmer | None = None
        #: held across each job-record write (read, make, commit): the log flush and a
        #: workflow's own writes during the run (an upgrade's batch start and end) are
        #: read-modify-writes of the same record; made at once, the later-stamped one would
        #: put back what the other changed
        self._write_lock = trio.Lock()

    async def execute(self, run: Run, inputs: RunInputs) -> None:
        me = self.replica.name
        try:
            try:
                run.path.parent.mkdir(parents=True, exist_ok=True)
                run.file = open(run.path, "a", encoding="utf-8")  # closed in the finally below
            except OSError as exc:  # run anyway: the replicated tail still shows the log
                log.error("%s: job %s: cannot write its log file: %s", me, run.job_id, exc)
            run.line(f"gossipmgr: job {run.job_id} ({run.kind}) run by {me}, epoch {run.epoch}")
            result = await self._run_watched(run, inputs)
            if run.fenced or result is None:
                self.gate.counters["fenced_runs"] += 1
                why = run.fenced_why or "the lease moved on"
                run.line(f"gossipmgr: job {run.job_id} stopped: {why} (fenced)")
                log.warning("%s: job %s stopped under epoch %d: %s", me, run.job_id, run.epoch, why)
                return
            await self._finish(run, result, inputs.check)
        finally:
            run.done = True
            if run.file is not None:
                run.file.close()
            run.wake()
            if self.gate.run is run:
                self.gate.run = None

    async def _run_watched(self, run: Run, inputs: RunInputs) -> WorkflowResult | None:
        """The workflow's result; None when the fence watcher stopped it first."""
        result: WorkflowResult | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_fence, run, nursery.cancel_scope)
            nursery.start_soon(self._flush_tail, run)
            if self.confirmer is not None:
                where = self.work_dir / "runs" / run.job_id / "confirm"
                live = lambda: self.gate.run is run and not run.done and not run.fenced  # noqa: E731
                run.confirm_socket = await nursery.start(self.confirmer.serve, run, where, live)
            result = await self._workflow(run, inputs)
            timeout_s = inputs.settings.discover_join_timeout_s
            if run.kind == "discover" and result.ok and timeout_s > 0:
                addrs = [h.addr for h in inputs.hosts]
                result = await self._await_join(run, addrs, timeout_s, result)
            nursery.cancel_scope.cancel()
        return result

    async def _workflow(self, run: Run, inputs: RunInputs) -> WorkflowResult:
        me = self.replica.name
        kind = "commission" if run.kind == "reconfigure" else run.kind
        try:
            if (runner := self.runners.get(run.kind)) is not None:
                return await runner(self, run, inputs)
            return await run_workflow(
                kind,
                inputs,
                log=run.line,
                cancel=run.cancel,
                work_root=self.work_dir / "runs" / run.job_id,
                # the fence's inputs, set after every client layer (docs/ansible.md)
                product_vars={
                    "gossipmgr_epoch": run.epoch,
                    "gossipmgr_holder": me,
                    "gossipmgr_job": run.job_id,
                },
                confirm_socket=run.confirm_socket,
            )
        except JobError as exc:
            return WorkflowResult(False, False, str(exc), [])
        except Exception as exc:  # a bug must end the job, not leave it Running
            log.exception("%s: job %s crashed", me, run.job_id)
            return WorkflowResult(False, False, f"internal error: {exc!r}", [])

    async def _await_join(
        self, run: Run, addrs: Sequence[str], timeout_s: float, result: WorkflowResult
    ) -> WorkflowResult:
        """clusterm issue #157: a discover job ended when its playbook did, even when the
        node never joined Serf. Wait (bounded) until every address is a Discovered node's
        management address; a cancel ends the wait (the job ends Cancelled)."""

        def missing() -> list[str]:
            seen = {r.addr for r in self.replica.state.nodes() if inv.state_of(r) == inv.DISCOVERED}
            return [a for a in addrs if a not in seen]

        run.line(
            f"gossipmgr: waiting up to {timeout_s:g} s for {inv.go_list(addrs)} to join the "
            "Serf cluster"
        )
        deadline = trio.current_time() + timeout_s
        while left := missing():
            if run.cancel.is_set():
                return WorkflowResult(False, True, CANCELLED_ERROR, result.steps)
            if trio.current_time() >= deadline:
                error = (
                    f"node(s) {inv.go_list(left)} did not join the Serf cluster within "
                    f"{timeout_s:g} s of the discover playbook's end: check each node's "
                    "serf agent (running, its -join/-discover settings and encryption key, "
                    "tags NodeLabel, NodeSerial and NodeAddr=<that address>)"
                )
                run.line(f"gossipmgr: {error}")
                return WorkflowResult(False, False, error, result.steps)
            with trio.move_on_at(deadline):
                await self._change_or_cancel(run)
        run.line(f"gossipmgr: {inv.go_list(addrs)} joined the Serf cluster")
        return result

    async def _change_or_cancel(self, run: Run) -> None:
        """Return at the next replica change or at a cancel of ``run``, whichever is first."""
        async with trio.open_nursery() as wait:

            async def on_cancel() -> None:
                await run.cancel.wait()
                wait.cancel_scope.cancel()

            wait.start_soon(on_cancel)
            await self.replica.wait_change()
            wait.cancel_scope.cancel()

    async def _watch_fence(self, run: Run, scope: trio.CancelScope) -> None:
        """Stop the run when the lease moves past its epoch, or when this instance no longer
        sees a majority (``Quorum.may_hold``; a forced grant excepted, as in ``is_holder``): a
        minority side must not act on nodes while a majority side may (docs/design.md, "The
        lease"). Nothing more is written: the record stays Running until the next holder's
        orphan scan ends it."""
        while True:
            q, lease = self.replica.quorum, self.replica.lease()
            try:
                check_fence(lease, run.epoch, self.replica.name)
            except StaleEpoch as exc:
                run.fenced, run.fenced_why = True, str(exc)
            # known == 0: no Serf view at all (our own agent restarting), not a minority: a
            # long outage stops the run through the lease moving on, a short one does not.
            minority = q.known > 0 and not q.may_hold
            if not run.fenced and minority and not (lease and lease.forced_by):
                run.fenced, run.fenced_why = (
                    True,
                    f"this instance lost the majority ({q.describe()})",
                )
            if run.fenced:
                log.warning(
                    "%s: job %s: %s; stopping the run",
                    self.replica.name,
                    run.job_id,
                    run.fenced_why,
                )
                scope.cancel()
                return
            with trio.move_on_after(QUORUM_CHECK_S):
                await self.replica.wait_change()

    async def _flush_tail(self, run: Run) -> None:
        while True:
            await trio.sleep(self.log_flush_s)
            if run.dirty:
                run.dirty = False
                try:
                    await self._write_job(run)
                except StaleEpoch:
                    pass  # the watcher stops the run; this write is simply not made
                except GossipmgrError as exc:  # the next flush or the final write carries it
                    log.warning(
                        "%s: job %s: log tail not saved: %s", self.replica.name, run.job_id, exc
                    )

    async def _write_job(
        self,
        run: Run,
        change: Callable[[JobRecord], JobRecord] | None = None,
        extra: Callable[[ClusterState, Timestamp], LWWMap] | None = None,
    ) -> None:
        """Write the run's log tail into its record and its changed log chunks, with
        ``change`` applied to the record and the ``extra`` delta in the same commit.
        One at a time (``_write_lock``); one with ``extra`` (node status moves) also under
        the holder's lock, as every other inventory write of the holder (Serf events):
        each is a read-modify-write of a node's register, and one made while the other's
        commit is under way would put back what that one changed."""
        if extra is None:
            async with self._write_lock:
                await self._write_job_locked(run, change, extra)
            return
        async with self.gate.lock, self._write_lock:
            await self._write_job_locked(run, change, extra)

    async def _write_job_locked(
        self,
        run: Run,
        change: Callable[[JobRecord], JobRecord] | None,
        extra: Callable[[ClusterState, Timestamp], LWWMap] | None,
    ) -> None:
        tail, count = tuple(run.tail), run.count
        taken = run.log.take(run.epoch)  # taken with the count: the record counts them

        def make(state: ClusterState, ts: Timestamp) -> LWWMap:
            self.gate.fence(run.epoch, f"write of job {run.job_id}")
            rec = state.job(run.job_id)
            if rec is None:
                return LWWMap()  # trimmed from history meanwhile
            rec = rec.with_log(tail, count, run.epoch)
            if change is not None:
                rec = change(rec)
            parts = [state.d_set(job_key(run.job_id), rec.to_value(), ts)]
            parts.append(d_chunks(run.job_id, taken, ts))
            if extra is not None:
                parts.append(extra(state, ts))
            return combine(*parts)

        try:
            await self.replica.commit(make)
        except BaseException:
            run.log.failed(i for i, _ in taken)  # the next flush carries them
            raise
        run.log.written(i for i, _ in taken)

    async def _finish(self, run: Run, result: WorkflowResult, check: bool) -> None:
        me = self.replica.name
        status, error = outcome(result)
        run.line(f"gossipmgr: job {run.job_id} ended {status}{': ' + error if error else ''}")
        rec = self.replica.state.job(run.job_id)
        names = list(rec.nodes) if rec is not None else []
        asked = rec.requested_by if rec is not None else ""
        path = checkmode.status_path(run.kind, check)  # a check job moves no status
        skipped: list[str] = []
        error = trim(encodable(error), ERROR_CHARS)  # the whole text is in the log
        why = error or f"job {run.kind} {status}"

        def statuses(state: ClusterState, ts: Timestamp) -> LWWMap:
            if path is None:
                return LWWMap()
            to = path.success if result.ok else path.failure
            delta, skip = inv.finish_statuses(state, names, path.during, to, run.epoch, ts)
            skipped[:] = skip
            note = self.gate.noted
            return note(state, delta, ts, run.epoch, token=asked, job=run.job_id, reason=why)

        ended_ms = self.replica.now_ms()
        run.log.end()  # the last chunk says the log is complete

        def ended(rec: JobRecord) -> JobRecord:
            return rec.transition(status, error=error, ended_ms=ended_ms, epoch=run.epoch)

        try:
            await self._write_job(run, ended, statuses)
        except (StaleEpoch, Conflict) as exc:  # the lease moved on | the record had ended
            log.warning("%s: job %s: final write refused: %s", me, run.job_id, exc)
            return
        except GossipmgrError as exc:
            # Disk trouble, or a record (overwritten by a key holder) the end no longer fits
            # in: it stays Running; once this run is gone the orphan scan ends it.
            log.error("%s: job %s: final write failed: %s", me, run.job_id, exc)
            return
        self.gate.counters["jobs_ended"] += 1
        if skipped:
            during = path.during if path else ""
            log.warning(
                "%s: job %s: nodes %s had left %s; status left as is",
                me,
                run.job_id,
                skipped,
                during,
            )
        log.info("%s: job %s ended %s %s", me, run.job_id, status, error)
