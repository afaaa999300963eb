"""The JobManager's reads: a job by label, the history, a job's log (followed live).

Part of :class:`gossipmgr.runtime.jobs.JobManager` (a base class it inherits): every
instance serves these from its replica, holder or not.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from gossipmgr.core.job import JobRecord, valid_job_id
from gossipmgr.errors import BadRequest, Conflict, NotFound
from gossipmgr.runtime.holder import HolderGate
from gossipmgr.runtime.joblog import follow_log, replicated_lines
from gossipmgr.runtime.replica import Replica


def job_info(record: JobRecord, logs: Sequence[str] | None = None) -> dict[str, Any]:
    """clusterm's job answer ``{desc, task, status, error, logs}`` plus gossipmgr's fields."""
    out = record.to_json()
    out["logs"] = list(logs) if logs is not None else list(record.log_tail)
    return out


class _Positions(Protocol):
    def with_position(self, out: dict[str, Any]) -> dict[str, Any]: ...


class JobReads:
    """The reads of a JobManager (which sets these attributes)."""

    replica: Replica
    gate: HolderGate
    queue: _Positions
    work_dir: Path

    def active_record(self) -> JobRecord | None:
        """The active job record, if any: the Running one, else the next queued one."""
        return self.gate.active_record()

    # ------------------------------------------------------------------ reads
    def job(self, label: str) -> dict[str, Any]:
        """``active`` | ``last`` | a job id -> ``{desc, task, status, error, logs, ...}``.

        Raises BadRequest ``Invalid or empty job label specified: "<x>"`` and NotFound
        ``info for "<x>" job doesn't exist``. ``logs`` is the replicated log (its last
        INFO_LOG_LINES; :func:`~gossipmgr.runtime.joblog.replicated_lines`)."""
        if label not in ("active", "last") and not valid_job_id(label):
            raise BadRequest(f'Invalid or empty job label specified: "{label}"')
        rec = self._record(label)
        if rec is None:
            raise NotFound(f'info for "{label}" job doesn\'t exist')
        return self.queue.with_position(job_info(rec, replicated_lines(self.replica, rec)))

    def _record(self, label: str) -> JobRecord | None:
        if label == "active":
            return self.active_record()
        if label == "last":
            ended = [j for j in self.replica.state.jobs().values() if not j.active]
            return max(ended, key=lambda j: j.id) if ended else None
        return self.replica.state.job(label)

    def jobs(self) -> list[dict[str, Any]]:
        """Every job record kept (at most HISTORY), newest first."""
        recs = self.replica.state.jobs()
        return [self.queue.with_position(recs[k].to_json()) for k in sorted(recs, reverse=True)]

    def log_path(self, job_id: str) -> Path:
        """Where the runner keeps the full log of ``job_id``. Raises BadRequest for a
        malformed id (it becomes a file name)."""
        if not valid_job_id(job_id):
            raise BadRequest(f'Invalid or empty job label specified: "{job_id}"')
        return self.work_dir / "jobs" / f"{job_id}.log"

    def follow(self, label: str, offset: int = 0) -> AsyncIterator[str]:
        """Stream a job's log from line ``offset`` (0-based): the lines so far, then live
        ones until it ends, from the replicated chunks on every instance alike
        (:func:`gossipmgr.runtime.joblog.follow_log`).

        ``label`` is a job id or ``active``. Validated eagerly: raises BadRequest/NotFound
        like :meth:`job` (and for a negative offset), and Conflict ``job is not Running``
        for ``active`` when no job is active (clusterm's GET /info/logs/active)."""
        if label == "active":
            rec = self.active_record()
            if rec is None:
                raise Conflict("job is not Running")
        else:
            if not valid_job_id(label):
                raise BadRequest(f'Invalid or empty job label specified: "{label}"')
            rec = self.replica.state.job(label)
            if rec is None:
                raise NotFound(f'info for "{label}" job doesn\'t exist')
        if type(offset) is not int or offset < 0:
            raise BadRequest(f"offset must be a line number (0 or more), not {offset!r}")
        return follow_log(self.replica, rec.id, offset)
