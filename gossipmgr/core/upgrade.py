"""The rolling upgrade's decisions: which nodes, in which batches, when to stop. Pure.

``gossipmgr nodes upgrade NAMES|--all [--batch N|P%] [--max-fail K]`` (``POST
/upgrade/nodes``) runs the configured ``upgrade_playbook`` over Allocated nodes, one
ansible run per batch (``gossipmgr.runtime.upgrade`` runs it; docs/workflows.md, "Rolling
upgrade"). Everything that decides something is here:

* ``gossipmgr.core.upgrade_check``: the nodes (by name or address, or every Allocated
  node), each one Discovered and Allocated, or the request is refused with the reason.
* :func:`batch_size` and :func:`plan_batches`: ``--batch N`` or ``P%`` (of the nodes,
  rounded down like ansible's ``serial``, at least 1).
* :class:`Upgrade`: the progress kept in the job record's optional ``upgrade`` field
  (batches, batches done, the batch in flight, failed nodes, --max-fail, the request's
  extra-vars for a resume), read tolerantly (a forged value reads as no progress).
* :func:`failed_hosts`: which nodes of a batch failed, from ansible's per-host stats.
* :meth:`Upgrade.stop_reason` and :meth:`Upgrade.end_error`: the --max-fail accounting.

Node statuses (:data:`DURING`, :data:`SUCCESS`): a batch's nodes go Allocated ->
Maintenance when its run starts, back to Allocated when it succeeded and the node is
Discovered again; a failed node stays in Maintenance (with the reason in its history).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

from gossipmgr.core.node import ALLOCATED, MAINTENANCE
from gossipmgr.errors import BadRequest, Conflict

KIND: Final = "upgrade"
#: A batch's nodes while it runs, and after it succeeded (a failed node stays DURING).
DURING: Final = MAINTENANCE
SUCCESS: Final = ALLOCATED


def _go_list(items: Sequence[str]) -> str:
    return "[" + " ".join(items) + "]"


def _nodes(n: int) -> str:
    return f"{n} node{'' if n == 1 else 's'}"


# --------------------------------------------------------------------------- the request


def batch_size(spec: object, count: int) -> int:
    """The nodes per batch for ``--batch`` ``spec`` over ``count`` nodes.

    ``spec``: None (1: one node at a time), a positive int N (or its text), or ``"P%"``
    with 0 < P <= 100: P% of ``count`` rounded down, at least 1 (ansible's ``serial``
    rule). Never more than ``count``. Raises BadRequest naming the value."""
    if spec is None:
        return 1
    if isinstance(spec, str) and spec.endswith("%"):
        pct = _number(spec[:-1], spec)
        if not 0 < pct <= 100:
            raise BadRequest(f'"batch" percentage must be 1% to 100%, got {spec!r}')
        return max(1, min(count, count * pct // 100))
    n = _number(spec, spec)
    if n < 1:
        raise BadRequest(f'"batch" must be 1 or more nodes, or a percentage, got {spec!r}')
    return max(1, min(count, n))


def _number(v: object, shown: object) -> int:
    if type(v) is int:
        return v
    if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= 9:
        return int(v)
    raise BadRequest(f'"batch" must be a number of nodes (N) or a percentage (P%), got {shown!r}')


def check_max_fail(value: object) -> int:
    """``--max-fail K``: an int >= 0 (None: 0). Raises BadRequest."""
    if value is None:
        return 0
    if type(value) is not int or value < 0:
        raise BadRequest(f'"max_fail" must be a number of nodes (0 or more), got {value!r}')
    return value


def plan_batches(names: Sequence[str], size: int) -> tuple[tuple[str, ...], ...]:
    """``names`` in order, cut into batches of ``size`` (the last may be smaller)."""
    if size < 1:
        raise BadRequest(f"batch size must be 1 or more, got {size}")
    return tuple(tuple(names[i : i + size]) for i in range(0, len(names), size))


# --------------------------------------------------------------------------- progress


def _texts(v: object) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A rolling upgrade's progress, the job record's ``upgrade`` field::

    batches     [[node, ...], ...]   fixed when the job starts
    done        batches finished (their result recorded): batches[:done]
    current     the batch started and not recorded done (== done), or -1
    failed      the nodes that failed so far, in the order they failed
    max_fail    the job stops once more than this many nodes failed
    extra_vars  the request's extra-vars (a resumed batch gets them too; not served)
    """

    batches: tuple[tuple[str, ...], ...]
    done: int = 0
    current: int = -1
    failed: tuple[str, ...] = ()
    max_fail: int = 0
    extra_vars: Mapping[str, Any] | None = None

    @classmethod
    def from_value(cls, value: object) -> Upgrade | None:
        """The progress in a stored value; None for any other shape (forged)."""
        if not isinstance(value, dict):
            return None
        batches, failed, ev = value.get("batches"), value.get("failed"), value.get("extra_vars")
        done, current, max_fail = (value.get(k) for k in ("done", "current", "max_fail"))
        if not isinstance(batches, list) or not all(_texts(b) for b in batches):
            return None
        if not _texts(failed) or not (type(done) is type(current) is type(max_fail) is int):
            return None
        assert isinstance(done, int) and isinstance(current, int) and isinstance(max_fail, int)
        if not 0 <= done <= len(batches) or current not in (-1, done) or max_fail < 0:
            return None
        assert isinstance(failed, list)
        return cls(
            tuple(tuple(b) for b in batches),
            done,
            current if current < len(batches) else -1,
            tuple(failed),
            max_fail,
            ev if isinstance(ev, dict) else None,
        )

    def to_value(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batches": [list(b) for b in self.batches],
            "done": self.done,
            "current": self.current,
            "failed": list(self.failed),
            "max_fail": self.max_fail,
        }
        if self.extra_vars:
            out["extra_vars"] = dict(self.extra_vars)
        return out

    def to_json(self) -> dict[str, Any]:
        """The served shape: the stored one without the request's extra-vars."""
        out = self.to_value()
        out.pop("extra_vars", None)
        return out

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(n for b in self.batches for n in b)

    def next_batch(self) -> int | None:
        """The index of the batch to run next (the one in flight first), or None."""
        return self.done if self.done < len(self.batches) else None

    def started(self, i: int) -> Upgrade:
        if i != self.done:
            raise Conflict(f"upgrade batch {i + 1} is not the next one ({self.done + 1})")
        return replace(self, current=i)

    def finished(self, i: int, failed: Collection[str]) -> Upgrade:
        """Batch ``i`` recorded done with the nodes of it that ``failed``."""
        if i != self.done:
            raise Conflict(f"upgrade batch {i + 1} is not the one running ({self.done + 1})")
        new = tuple(n for n in self.batches[i] if n in failed and n not in self.failed)
        return replace(self, done=i + 1, current=-1, failed=self.failed + new)

    def stop_reason(self) -> str:
        """Why the job stops now ("" to go on): more than max_fail nodes failed."""
        if len(self.failed) <= self.max_fail:
            return ""
        return (
            f"stopped after batch {self.done} of {len(self.batches)}: "
            f"{_nodes(len(self.failed))} failed, more than --max-fail {self.max_fail} "
            f"(failed: {_go_list(self.failed)})"
        )

    def untouched(self) -> tuple[str, ...]:
        """The nodes of the batches not started (left as they are when the job stops)."""
        start = self.done + (1 if self.current == self.done else 0)
        return tuple(n for b in self.batches[start:] for n in b)

    def end_error(self) -> str:
        """The job's error once every batch ran ("" when no node failed)."""
        if not self.failed:
            return ""
        return (
            f"upgrade finished: {_nodes(len(self.failed))} failed "
            f"{_go_list(self.failed)}, within --max-fail {self.max_fail}"
        )

    def worst(self) -> Upgrade:
        """The largest this progress can grow to (every node failed): the record's room."""
        n = len(self.batches)
        return replace(self, done=n, current=n, failed=self.nodes)


def failed_hosts(batch: Sequence[str], ok: bool, stats: Mapping[str, Any]) -> list[str]:
    """The nodes of ``batch`` whose part of an ansible run failed.

    ``ok``: the run succeeded (then none failed). Otherwise a node failed when ansible's
    recap (``stats``: the ``playbook_on_stats`` event's data) counts a failure or an
    unreachable for it, or does not list it as processed (a play stopped before it, e.g.
    ``serial``); when that names none (the run failed before or outside any host:
    cancelled, timed out, a playbook not found), every node of the batch failed."""
    if ok:
        return []

    def hosts(name: str) -> Collection[str]:
        v = stats.get(name)
        return v if isinstance(v, dict) else ()

    bad = {*hosts("failures"), *hosts("dark")}
    processed = hosts("processed")
    out = [n for n in batch if n in bad or n not in processed]
    return out or list(batch)
