"""Job records and the job status machine. Pure.

A job record is the value of ``("j", id)`` (epoch-fenced, see ``gossipmgr.core.state``)::

    id          "<ms:013>-<counter:06>-<instance>": sorts by creation time
    desc, task  clusterm's fields; task is the workflow ("commission", ...), so is workflow
    nodes       node names (discover: [] and ``addrs``)
    host_group  only when the request named one (commission, update)
    addrs       discover only: the addresses it configures
    status      Queued -> Running -> Complete | Errored | Cancelled (JOB_TRANSITIONS)
    error       "" or why it failed ("job was cancelled" for a cancel)
    epoch       the lease epoch it was started under; every write of it carries it
    runner      the instance that runs it; its full log is work_dir/jobs/<id>.log there
    created_ms, started_ms, ended_ms
    log_count   lines logged so far; log_tail: the last lines of them
    requested_by  optional: the name of the API token that asked (absent: none did, e.g.
                a reconfigure job, or a record written before the field existed)
    check       optional: true for a check-mode job (ansible's check and diff modes: it
                showed what the workflow would change and changed nothing; absent: false)
    request     optional, Queued records only: the stored request the holder starts the job
                with, ``{"op": <JobManager entry point>, "args": {<its arguments>}}``
                (``gossipmgr.core.jobqueue``); the record written at the start has none
    upgrade     optional: a rolling upgrade's progress (``gossipmgr.core.upgrade``); a
                value of another shape reads as absent, an older version ignores it

:meth:`JobRecord.to_value` gives exactly that map, in that field order (the stored and the
served shape: GET /info/job answers it plus ``logs``). Every record gossipmgr wrote, since
the first version, has all these fields; :meth:`JobRecord.from_value` reads a value of any
other shape (not a map, a field missing or of another type: forged by a key holder) as no
record at all, so no reader has to guess, and none raises. The optional fields,
``requested_by``, ``check`` and ``request``, are read tolerantly both ways: a version before
them ignores them, and this one reads ``requested_by`` absent, or of another type, as "",
``check`` as true only when it is exactly ``true`` (and then does not write a default
back), and ``request`` absent, or of any other shape than the map above, as None (a Queued
record without one is ended Errored when its turn comes, never run).

A record's status changes only through :meth:`JobRecord.transition`, which consults
:data:`JOB_TRANSITIONS` and refuses anything else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from gossipmgr.core.upgrade import Upgrade
from gossipmgr.errors import Conflict

QUEUED: Final = "Queued"
RUNNING: Final = "Running"
COMPLETE: Final = "Complete"
ERRORED: Final = "Errored"
CANCELLED: Final = "Cancelled"

#: The job status machine. gossipmgr writes a record Running in the same commit that
#: accepts it (a request answers only once its job is launched), or Queued when the request
#: asked to wait for the running job (``gossipmgr.core.jobqueue``); both are active.
JOB_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    QUEUED: frozenset({RUNNING, ERRORED, CANCELLED}),
    RUNNING: frozenset({COMPLETE, ERRORED, CANCELLED}),
    COMPLETE: frozenset(),
    ERRORED: frozenset(),
    CANCELLED: frozenset(),
}
ACTIVE: Final = frozenset({QUEUED, RUNNING})

_ID_RE: Final = re.compile(r"[0-9]{13}-[0-9]{6}-[A-Za-z0-9_.-]+")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


def make_job_id(ms: int, counter: int, instance: str) -> str:
    """``<ms:013>-<counter:06>-<instance>``: sorts by creation time, unique per instance."""
    return f"{ms:013d}-{counter % 1_000_000:06d}-{_UNSAFE.sub('_', instance) or '_'}"


def valid_job_id(job_id: object) -> bool:
    return isinstance(job_id, str) and _ID_RE.fullmatch(job_id) is not None


def check_job_transition(a: str, b: str) -> None:
    """Raise Conflict ``job status transition from "<a>" to "<b>" is not allowed`` unless
    ``b`` follows ``a`` in :data:`JOB_TRANSITIONS`."""
    if b not in JOB_TRANSITIONS.get(a, frozenset()):
        raise Conflict(f'job status transition from "{a}" to "{b}" is not allowed')


def _is_int(v: object) -> bool:
    return type(v) is int


def _is_texts(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _request(v: object) -> dict[str, Any] | None:
    """A stored request ``{"op": str, "args": map}`` (other keys dropped), else None."""
    if not isinstance(v, dict):
        return None
    op, args = v.get("op"), v.get("args")
    if not isinstance(op, str) or not isinstance(args, dict):
        return None
    return {"op": op, "args": args}


_TEXT: Final = ("id", "desc", "task", "workflow", "status", "error", "runner")
_INT: Final = ("epoch", "created_ms", "started_ms", "ended_ms", "log_count")


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One job's replicated record (see the module docstring for its fields)."""

    id: str
    desc: str
    task: str
    workflow: str
    nodes: tuple[str, ...]
    status: str
    error: str
    epoch: int
    runner: str
    created_ms: int
    started_ms: int
    ended_ms: int = 0
    log_count: int = 0
    log_tail: tuple[str, ...] = ()
    host_group: str | None = None
    addrs: tuple[str, ...] | None = None
    requested_by: str = ""
    check: bool = False
    request: dict[str, Any] | None = field(default=None, hash=False)
    upgrade: Upgrade | None = None

    @classmethod
    def from_value(cls, value: object) -> JobRecord | None:
        """The record in a replicated value, or None when it is not a job record's shape."""
        if not isinstance(value, dict):
            return None
        if not all(isinstance(value.get(k), str) for k in _TEXT):
            return None
        if not all(_is_int(value.get(k)) for k in _INT):
            return None
        if not _is_texts(value.get("nodes")) or not _is_texts(value.get("log_tail")):
            return None
        hg, addrs = value.get("host_group"), value.get("addrs")
        if (hg is not None and not isinstance(hg, str)) or (
            addrs is not None and not _is_texts(addrs)
        ):
            return None
        return cls(
            **{k: value[k] for k in (*_TEXT, *_INT)},
            nodes=tuple(value["nodes"]),
            log_tail=tuple(value["log_tail"]),
            host_group=hg,
            addrs=tuple(addrs) if addrs is not None else None,
            requested_by=by if isinstance(by := value.get("requested_by"), str) else "",
            check=value.get("check") is True,
            request=_request(value.get("request")),
            upgrade=Upgrade.from_value(value.get("upgrade")),
        )

    def to_value(self) -> dict[str, Any]:
        """The stored (and served) shape, fields in the order gossipmgr always wrote them."""
        out: dict[str, Any] = {
            "id": self.id,
            "desc": self.desc,
            "task": self.task,
            "workflow": self.workflow,
            "nodes": list(self.nodes),
        }
        if self.host_group is not None:
            out["host_group"] = self.host_group
        if self.addrs is not None:
            out["addrs"] = list(self.addrs)
        out.update(
            status=self.status,
            error=self.error,
            epoch=self.epoch,
            runner=self.runner,
            created_ms=self.created_ms,
            started_ms=self.started_ms,
            ended_ms=self.ended_ms,
            log_count=self.log_count,
            log_tail=list(self.log_tail),
        )
        if self.requested_by:
            out["requested_by"] = self.requested_by
        if self.check:
            out["check"] = True
        if self.request is not None:
            out["request"] = self.request
        if self.upgrade is not None:
            out["upgrade"] = self.upgrade.to_value()
        return out

    def to_json(self) -> dict[str, Any]:
        """The served shape: the stored one (JSON-ready: strings, ints and lists), but an
        upgrade's stored request extra-vars."""
        out = self.to_value()
        if self.upgrade is not None:
            out["upgrade"] = self.upgrade.to_json()
        return out

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def transition(self, to: str, *, error: str, ended_ms: int, epoch: int) -> JobRecord:
        """The record ended (or moved) to status ``to`` under ``epoch``. Raises Conflict for
        a move :data:`JOB_TRANSITIONS` does not have (an ended job stays ended)."""
        check_job_transition(self.status, to)
        return replace(self, status=to, error=error, ended_ms=ended_ms, epoch=epoch)

    def with_log(self, tail: tuple[str, ...], count: int, epoch: int) -> JobRecord:
        """The record with a newer log tail (status unchanged), written under ``epoch``."""
        return replace(self, log_tail=tail, log_count=count, epoch=epoch)
