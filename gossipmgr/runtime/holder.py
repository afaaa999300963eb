"""What every holder-only write of the job runtime shares.

Jobs (``gossipmgr.runtime.jobs``), monitoring events (``health``) and inventory
administration (``nodeadmin``) are accepted only by the lease holder and serialised by one
lock, so that two concurrent requests cannot both pass the one-active-job check. The
:class:`HolderGate` owns that lock, the lease checks, the counters they all report
(``JobManager.counters``) and the one run this instance may have.
"""

from __future__ import annotations

import trio

from gossipmgr.core import checkmode
from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.history import DEFAULT_LIMIT, Cause
from gossipmgr.core.job import ERRORED, QUEUED, RUNNING, JobRecord
from gossipmgr.core.lease import check_fence
from gossipmgr.core.state import ClusterState, combine, job_key
from gossipmgr.errors import Conflict, StaleEpoch, Unavailable
from gossipmgr.runtime.actor import asked_by
from gossipmgr.runtime.joblog import Run
from gossipmgr.runtime.queuestart import starting
from gossipmgr.runtime.replica import Make, Replica


class HolderGate:
    """The request lock, the lease checks, the counters and the current run."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.lock = trio.Lock()
        self.counters: dict[str, int] = {
            "jobs_started": 0,
            "jobs_ended": 0,
            "fenced": 0,  # writes refused because the lease moved on
            "fenced_runs": 0,  # runs stopped because the lease moved on
            "orphans": 0,
            "reappear_jobs": 0,
            "reappear_skipped": 0,
        }
        #: The job this instance runs now (its process tree may be alive).
        self.run: Run | None = None
        #: History entries kept per node (``node_history_limit``; 0: none written).
        self.history_limit = DEFAULT_LIMIT

    def noted(
        self,
        state: ClusterState,
        delta: LWWMap,
        ts: Timestamp,
        epoch: int,
        *,
        token: str | None = None,
        job: str = "",
        reason: str = "",
        imported: bool = False,
    ) -> LWWMap:
        """``delta`` with the node history entries of the inventory changes in it
        (``gossipmgr.core.history``): by this instance under ``epoch``, asked by ``token``
        (default: the token of the request being served, ``runtime.actor``)."""
        who = asked_by() if token is None else token
        cause = Cause(self.replica.name, epoch, who, job, reason, imported)
        return state.d_history(delta, ts, cause, self.history_limit)

    async def start_run(self, run: Run, make: Make) -> None:
        """Take the job slot for ``run`` and commit ``make`` (its record); the slot is
        given back when the commit fails or is cancelled. Lock held."""
        self.run = run
        try:
            await self.replica.commit(make)
        except BaseException:
            self.run = None
            raise

    def epoch(self) -> int:
        """The lease epoch if we hold it; raises Unavailable otherwise."""
        lease = self.replica.lease()
        if lease is None or not self.replica.is_holder():
            who = lease.holder if lease is not None else "none"
            raise Unavailable(f"not the lease holder; holder is {who}")
        return lease.epoch

    def fence(self, epoch: int, what: str) -> None:
        """Raise StaleEpoch (and count it) unless we still hold the lease at ``epoch``."""
        try:
            check_fence(self.replica.lease(), epoch, self.replica.name, what)
        except StaleEpoch:
            self.counters["fenced"] += 1
            raise

    def active_record(self) -> JobRecord | None:
        """The active job record, if any: the Running one, else the next queued one."""
        active = self.replica.state.active_jobs()  # in id order
        running = [j for j in active if j.status == RUNNING]
        return running[-1] if running else (active[0] if active else None)

    def check_idle(self) -> None:
        """Raise Conflict (clusterm's text) while a job is active (but for the queued one
        being started, ``gossipmgr.runtime.queuestart``: only one Running job blocks it)."""
        rec = self.active_record()
        if rec is not None and not (rec.status == QUEUED and starting() is not None):
            raise Conflict(
                f"there is already an active job, please try in sometime. Job: [{rec.desc}]"
            )
        if self.run is not None:  # our own run whose record was overtaken: still busy
            raise Conflict(
                f"there is already an active job, please try in sometime. Job: [{self.run.job_id}]"
            )

    def d_end_orphan(self, state: ClusterState, job_id: str, epoch: int, ts: Timestamp) -> LWWMap:
        """End orphan ``job_id`` Errored and move its nodes along the failure path (if it is
        still active: the scan ran before the commit), noted in their history."""
        cur = state.job(job_id)
        if cur is None or cur.status != RUNNING:  # a Queued one waits for its turn
            return LWWMap()
        if cur.runner != self.replica.name or cur.epoch != epoch:
            why = (
                f"runner {cur.runner} lost the lease (epoch {cur.epoch}) while the job was running"
            )
        else:
            why = f"runner {cur.runner} stopped (epoch {cur.epoch}) while the job was running"
        ended = cur.transition(ERRORED, error=why, ended_ms=ts.ms, epoch=epoch)
        parts = [state.d_set(job_key(job_id), ended.to_value(), ts)]
        path = checkmode.status_path(cur.task, cur.check)  # a check job moved no status
        if path is not None:
            moved = inv.finish_statuses(state, cur.nodes, path.during, path.failure, epoch, ts)[0]
            by = cur.requested_by
            parts.append(self.noted(state, moved, ts, epoch, token=by, job=job_id, reason=why))
        return combine(*parts)
