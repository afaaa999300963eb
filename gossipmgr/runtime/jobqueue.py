"""Queued jobs on the lease holder: queueing a request, starting the next, cancelling one.

The pure rules (order, bound, the stored request) are ``gossipmgr.core.jobqueue``. Here:

* :meth:`JobQueue.submit` is what the API calls for a workflow request: without queueing
  (the default) it calls the JobManager entry point, which answers 409 while a job is
  active (clusterm's behaviour); with it, an idle cluster starts the job at once (same
  answer, same 4xx), a busy one gets a Queued record carrying the request (the arguments
  are checked for shape now, against the state when the job starts).
* :meth:`JobQueue.start_next` is called by the JobManager's service loop on every replica
  change (and at least once a second) while this instance holds the lease: when no job is
  Running it starts the oldest Queued record by calling the same entry point with the
  stored arguments (``gossipmgr.runtime.queuestart``); a request the state of now refuses
  ends the job Errored with the reason, and the next one starts at the next wake.
* :meth:`JobQueue.cancel` ends a Queued record Cancelled; it never runs.

Every write is the holder's, fenced by its lease epoch inside the commit. A takeover keeps
the queue: Queued records are replicated like every job record, the orphan scan leaves
them alone, and the new holder starts them in order, each under its own epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

from gossipmgr.core import jobqueue as jq
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.job import CANCELLED, ERRORED, QUEUED, RUNNING, JobRecord, valid_job_id
from gossipmgr.core.state import ClusterState, job_key
from gossipmgr.errors import (
    BadRequest,
    Conflict,
    GossipmgrError,
    NotFound,
    StaleEpoch,
    Unavailable,
)
from gossipmgr.runtime.actor import asked_by
from gossipmgr.runtime.ansible_vars import parse_extra_vars
from gossipmgr.runtime.holder import HolderGate
from gossipmgr.runtime.jobreads import job_info
from gossipmgr.runtime.queuestart import starting_queued

log = logging.getLogger("gossipmgr.jobs")

#: An entry point of the JobManager: keyword arguments in, the job's answer out.
Entry = Callable[..., Awaitable[dict[str, Any]]]


class JobQueue:
    """The holder's job queue over a JobManager's gate and entry points."""

    def __init__(
        self,
        gate: HolderGate,
        entry: Callable[[str], Entry | None],
        new_id: Callable[[], str],
        *,
        enabled: bool = False,
        limit: int = jq.DEFAULT_MAX,
    ) -> None:
        self.gate = gate
        self.replica = gate.replica
        self._entry = entry
        self._new_id = new_id
        #: Queue a request while a job is active when the request does not say (job_queue).
        self.enabled = enabled
        #: Queued records at most (job_queue_max).
        self.limit = limit
        #: False holds the queue (the agent: while its Serf agent is unreachable, node
        #: membership is unknown, and the API refuses job requests with 503).
        self.may_start: Callable[[], bool] = lambda: True

    def _busy(self) -> bool:
        return self.gate.run is not None or bool(self.replica.state.active_jobs())

    def entry(self, op: str) -> Entry:
        jq.check_op(op)
        method = self._entry(op)
        if method is None:
            raise BadRequest(f"this version of gossipmgr has no {op!r} job")
        return method

    # ------------------------------------------------------------------ requests
    async def submit(
        self, op: str, args: Mapping[str, Any], queue: bool | None = None
    ) -> dict[str, Any]:
        """Run ``op`` (an entry point) with ``args`` now, or queue it (``queue``; None: the
        configured default) while a job is active. Raises what the entry point raises, and
        Conflict when the queue is full."""
        method = self.entry(op)
        if not (self.enabled if queue is None else queue):
            return await method(**args)
        if not self._busy():
            try:
                return await method(**args)
            except Conflict:
                if not self._busy():
                    raise  # a refused transition, not a job that started meanwhile
        return await self._enqueue(op, args)

    async def _enqueue(self, op: str, args: Mapping[str, Any]) -> dict[str, Any]:
        stored = dict(args)
        if "extra_vars" in stored:  # the shape check the entry point makes first
            stored["extra_vars"] = parse_extra_vars(stored["extra_vars"])
        req = jq.QueuedRequest(op, stored)
        async with self.gate.lock:
            epoch = self.gate.epoch()
            job_id, asked = self._new_id(), asked_by()

            def make(state: ClusterState, ts: Timestamp) -> LWWMap:
                self.gate.fence(epoch, f"queueing of job {job_id}")
                jq.check_room(state.active_jobs(), self.limit)
                rec = jq.queued_record(job_id, req, epoch, ts.ms, asked)
                return state.d_set(job_key(job_id), rec.to_value(), ts)

            await self.replica.commit(make)
        rec = self.replica.state.job(job_id)
        assert rec is not None
        log.info("%s: job %s queued (%s), epoch %d", self.replica.name, job_id, rec.desc, epoch)
        return self.info(rec)

    def info(self, rec: JobRecord) -> dict[str, Any]:
        """The record's answer, with its ``queue_position`` while Queued."""
        return self.with_position(job_info(rec))

    def with_position(self, out: dict[str, Any]) -> dict[str, Any]:
        """``out`` (a job's answer) with ``queue_position`` (1: starts next) if Queued."""
        if out.get("status") == QUEUED:
            pos = jq.position(self.replica.state.active_jobs(), str(out.get("id")))
            if pos is not None:
                out["queue_position"] = pos
        return out

    # ------------------------------------------------------------------ start
    async def start_next(self) -> None:
        """Start the oldest queued job if this instance holds the lease and none runs."""
        if not self.replica.is_holder() or self.gate.run is not None or not self.may_start():
            return
        rec = jq.next_to_start(self.replica.state.active_jobs())
        if rec is None:
            return
        req = jq.QueuedRequest.from_record(rec)
        method = self._entry(req.op) if req is not None else None
        if req is None or method is None:
            why = "its stored request is not one this version of gossipmgr can run"
            await self._end(rec.id, ERRORED, f"queued job not started: {why}")
            return
        try:
            with starting_queued(rec):
                await method(**req.args)
        except (Unavailable, StaleEpoch) as exc:  # the lease moved: the next holder starts it
            log.warning("%s: queued job %s not started: %s", self.replica.name, rec.id, exc)
        except (GossipmgrError, TypeError) as exc:  # refused by the state of now, or forged
            await self._end(rec.id, ERRORED, f"queued job not started: {exc}")
        except Exception as exc:  # a bug must end the job, not stop the queue
            log.exception("%s: queued job %s: start failed", self.replica.name, rec.id)
            await self._end(rec.id, ERRORED, f"queued job not started: internal error: {exc!r}")
        else:
            log.info("%s: queued job %s started", self.replica.name, rec.id)

    async def _end(self, job_id: str, status: str, error: str) -> JobRecord | None:
        """End Queued ``job_id`` with ``status`` under our epoch; None if it is not Queued
        any more (started, cancelled, removed) or we lost the lease."""
        async with self.gate.lock:
            try:
                epoch = self.gate.epoch()
            except Unavailable:
                return None
            ended: list[JobRecord] = []

            def make(state: ClusterState, ts: Timestamp) -> LWWMap:
                self.gate.fence(epoch, f"end of queued job {job_id}")
                cur = state.job(job_id)
                if cur is None or cur.status != QUEUED:
                    return LWWMap()
                rec = cur.transition(status, error=error[:1000], ended_ms=ts.ms, epoch=epoch)
                # the stored request is for the start only: dropped, the ended record is
                # never larger than the Queued one by more than its error (it always fits)
                rec = replace(rec, request=None)
                ended[:] = [rec]
                return state.d_set(job_key(job_id), rec.to_value(), ts)

            await self.replica.commit(make)
        if ended:
            log.warning("%s: queued job %s ended %s: %s", self.replica.name, job_id, status, error)
            return ended[0]
        return None

    # ------------------------------------------------------------------ cancel
    async def cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel job ``job_id``: a Queued one ends Cancelled now (answered); None for the
        Running one (the caller cancels its run). Raises BadRequest (malformed id),
        NotFound, Conflict (the job has ended), Unavailable (not the holder)."""
        if not valid_job_id(job_id):
            raise BadRequest(f'Invalid or empty job label specified: "{job_id}"')
        rec = self.replica.state.job(job_id)
        if rec is None:
            raise NotFound(f'info for "{job_id}" job doesn\'t exist')
        if rec.status == RUNNING:
            return None
        if rec.status == QUEUED:
            self.gate.epoch()  # Unavailable off the holder, before anything else
            ended = await self._end(job_id, CANCELLED, "job was cancelled while queued")
            if ended is not None:
                return self.info(ended)
            rec = self.replica.state.job(job_id) or rec  # it started (or ended) meanwhile
            if rec.status == RUNNING:
                return None
            if rec.status == QUEUED:
                self.gate.epoch()  # still Queued: the lease moved on (Unavailable)
        raise Conflict(f'job "{job_id}" is not active (it ended {rec.status})')
