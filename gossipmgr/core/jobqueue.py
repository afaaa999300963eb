"""The job queue: queued job records, their order, the bound, the stored request. Pure.

A request that asks to wait (``"queue": true``, or the holder's ``job_queue`` switch) while
a job is active is not refused: the lease holder writes a job record with status Queued
(``gossipmgr.core.job``) that carries the request, ``{"op": <entry point>, "args": {...}}``
(:class:`QueuedRequest`), under its lease epoch like every job write. The holder starts
queued jobs one at a time, oldest first (job ids sort by creation time), whenever no job
is Running (:func:`next_to_start`); at the start the request is checked against the state
of that moment, as a fresh request would be. At most ``job_queue_max`` records are Queued
at once (:func:`check_room`). The trio side is ``gossipmgr.runtime.jobqueue``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gossipmgr.core.job import QUEUED, RUNNING, JobRecord
from gossipmgr.errors import BadRequest, Conflict

#: The JobManager entry points a queued record may name (``upgrade``: the rolling upgrade).
QUEUEABLE: Final = ("commission", "decommission", "update", "discover", "upgrade")
#: Queued records at most, unless configured (``job_queue_max``).
DEFAULT_MAX: Final = 10
#: The largest ``job_queue_max`` the configuration accepts.
MAX_LIMIT: Final = 1000
#: Arguments shown in a queued job's ``desc`` as a list (Go's ``%v``, like clusterm's).
_LISTS: Final = ("nodes", "addrs")


@dataclass(frozen=True, slots=True)
class QueuedRequest:
    """A request stored in a Queued record: the entry point and its keyword arguments."""

    op: str
    args: Mapping[str, Any]

    @classmethod
    def from_record(cls, rec: JobRecord) -> QueuedRequest | None:
        """The request a Queued record carries, or None (absent, forged, unknown op)."""
        req = rec.request
        if req is None or req["op"] not in QUEUEABLE:
            return None
        if not all(isinstance(k, str) for k in req["args"]):
            return None
        return cls(req["op"], req["args"])

    def to_value(self) -> dict[str, Any]:
        return {"op": self.op, "args": dict(self.args)}

    def describe(self) -> str:
        """The queued record's ``desc``: ``commission nodes [a b] host-group g``, a true
        flag as ``(check)``, other arguments (extra-vars aside) as ``name=value``."""
        parts = [self.op]
        for name, value in self.args.items():
            if name == "extra_vars" or value is None or value is False or value == "":
                continue
            if name in _LISTS and isinstance(value, list):
                parts.append(f"{name} [{' '.join(str(v) for v in value)}]")
            elif name == "host_group":
                parts.append(f"host-group {value}")
            elif value is True:
                parts.append(f"({name})")
            else:
                parts.append(f"{name}={value}")
        return " ".join(parts)


def check_op(op: str) -> None:
    """Raise BadRequest unless ``op`` is an entry point a queued record may name."""
    if op not in QUEUEABLE:
        raise BadRequest(f"{op!r} cannot be queued (queueable: {', '.join(QUEUEABLE)})")


def queued(active: Sequence[JobRecord]) -> list[JobRecord]:
    """The Queued records among ``active``, oldest first (the order they start in)."""
    return sorted((r for r in active if r.status == QUEUED), key=lambda r: r.id)


def next_to_start(active: Sequence[JobRecord]) -> JobRecord | None:
    """The queued job to start now: the oldest Queued one, or None while one is Running."""
    if any(r.status == RUNNING for r in active):
        return None
    waiting = queued(active)
    return waiting[0] if waiting else None


def position(active: Sequence[JobRecord], job_id: str) -> int | None:
    """1 for the next queued job to start, 2 for the one after it, ...; None if not queued."""
    for i, rec in enumerate(queued(active), 1):
        if rec.id == job_id:
            return i
    return None


def check_room(active: Sequence[JobRecord], limit: int) -> None:
    """Raise Conflict (409) when ``limit`` records are Queued already."""
    waiting = queued(active)
    if len(waiting) >= limit:
        raise Conflict(
            f"the job queue is full ({len(waiting)} queued, job_queue_max {limit}); "
            "retry once a job has ended"
        )


def queued_record(job_id: str, req: QueuedRequest, epoch: int, ms: int, asked: str) -> JobRecord:
    """The Queued record of ``req``: no runner yet, not started, its request stored."""
    nodes = req.args.get("nodes")
    addrs = req.args.get("addrs")
    return JobRecord(
        id=job_id,
        desc=req.describe(),
        task=req.op,
        workflow=req.op,
        nodes=tuple(str(n) for n in nodes) if isinstance(nodes, list) else (),
        status=QUEUED,
        error="",
        epoch=epoch,
        runner="",
        created_ms=ms,
        started_ms=0,
        addrs=tuple(str(a) for a in addrs) if isinstance(addrs, list) else None,
        requested_by=asked,
        check=req.args.get("check") is True,  # a check job once started (core.checkmode)
        request=req.to_value(),
    )
