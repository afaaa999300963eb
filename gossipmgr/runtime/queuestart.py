"""The start of a queued job, as the entry point it calls sees it.

The holder starts a queued job (``gossipmgr.runtime.jobqueue``) by calling the same
JobManager entry point a request calls, with the stored arguments, inside
:func:`starting_queued`. While it runs, the entry point's checks and launch see which
queued record they start: the one-active-job check lets that record (Queued) pass
(``HolderGate.check_idle``), the launch writes the job under its id (:func:`launch_id`) and
keeps its creation time, after checking in its commit that the record is still Queued
(:func:`claim`: a cancel in between wins). Everything else about the start (the checks
against the state of now, the statuses, the record Running under the holder's epoch) is
the entry point's own, as for a fresh request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from gossipmgr.core.job import RUNNING, JobRecord, check_job_transition
from gossipmgr.core.state import ClusterState
from gossipmgr.errors import Conflict
from gossipmgr.runtime.actor import set_asked_by

_STARTING: ContextVar[JobRecord | None] = ContextVar("gossipmgr_queued_start", default=None)


def starting() -> JobRecord | None:
    """The queued record being started by the current task, if any."""
    return _STARTING.get()


@contextmanager
def starting_queued(rec: JobRecord) -> Iterator[None]:
    """Within: the entry point called starts ``rec``, asked by its ``requested_by``."""
    token, asked = _STARTING.set(rec), set_asked_by(rec.requested_by)
    try:
        yield
    finally:
        asked.var.reset(asked)
        _STARTING.reset(token)


def launch_id(new: Callable[[], str]) -> str:
    """The id of the job a launch writes: the queued record's when starting one."""
    rec = starting()
    return rec.id if rec is not None else new()


def claim(state: ClusterState, job_id: str, ms: int) -> int:
    """The ``created_ms`` of the record a launch writes at ``ms`` under ``job_id``: the
    queued record's, which must still be Queued (raises Conflict otherwise: it was
    cancelled or ended meanwhile), or ``ms`` for a fresh job."""
    rec = starting()
    if rec is None or rec.id != job_id:
        return ms
    cur = state.job(job_id)
    if cur is None:
        raise Conflict(f"queued job {job_id} was removed before it started")
    check_job_transition(cur.status, RUNNING)
    return cur.created_ms
