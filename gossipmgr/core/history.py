"""Per-node history: who did what to a node, where, when, under which epoch, and why. Pure.

Every change of a node's inventory register (``("n", node, "inv")``) made by this version
is written together with one history entry, in the same commit::

    ("n", node, "h", "<ms:013>-<logical:010>-<instance>")  ->  {event, status, prev_status,
        state, prev_state, epoch, instance, token, job, reason, ms}

The key's last part is the commit's hybrid timestamp, so entries of one node from different
instances (two holders on the two sides of a partition) never collide and merge without
loss: each is a plain LWW entry, and the map's join is the merge. Keys sort by time.

``event`` is ``discovered`` (a node seen for the first time, or again after it was
forgotten), ``reappeared`` (Disappeared -> Discovered), ``disappeared``, ``status`` (a
status change, ``job`` says which job moved it), ``imported`` (a status set by an
inventory import), ``forgotten``, or ``noted``: a job's note on a node whose register
it rewrote without a change (``Cause.noted``: e.g. a rolling upgrade that failed on a node
leaves it in Maintenance, and says why).

**The bound.** A node keeps its newest ``limit`` entries (200 by default). The writer of a
new entry also writes tombstones for that node's live entries beyond the newest ``limit``,
in the same commit. Pruning is thus itself replicated state: every replica that has the
same entries has the same tombstones, so they converge; a pruned entry cannot come back by
gossip (its tombstone carries a later timestamp than the entry: the writer's clock had
observed the entry), and tombstones are collected after the tombstone TTL like any other
(the agent's rule: an instance cut off longer than that does not rejoin with its data).
Entries two holders wrote concurrently (a partition) may leave a node a few entries over
its bound until its next entry; readers therefore also cut at the bound
(:func:`newest`), newest first by key, which is the same on every replica.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.core.node import DISAPPEARED, DISCOVERED, Inventory
from gossipmgr.core.orders import NODE

#: The third part of a history key, ``("n", node, "h", id)``.
HISTORY_PART: Final = "h"
#: Entries kept per node unless configured otherwise (``node_history_limit``).
DEFAULT_LIMIT: Final = 200
#: Characters of a reason kept in an entry (the job's log has the whole text).
REASON_CHARS: Final = 500

EVENTS: Final = (
    "discovered",
    "reappeared",
    "disappeared",
    "status",
    "imported",
    "forgotten",
    "noted",
)


@dataclass(frozen=True, slots=True)
class Cause:
    """Who made a change and why: the instance and the lease epoch it acted under, the API
    token name that asked ("" for Serf events and the holder's own scans), the job that
    moved the node ("" for none) and the reason or error text."""

    instance: str
    epoch: int
    token: str = ""
    job: str = ""
    reason: str = ""
    #: ``imported`` instead of ``status`` for a status change (an inventory import)
    imported: bool = False
    #: nodes whose rewritten register gets a ``noted`` entry even though it did not change
    noted: frozenset[str] = frozenset()


def history_id(ts: Timestamp) -> str:
    """The key part of an entry written at ``ts``: sorts as the timestamp does."""
    return f"{ts.ms:013d}-{ts.logical:010d}-{ts.node}"


def history_key(node: str, hid: str) -> Key:
    return (NODE, node, HISTORY_PART, hid)


def is_history_key(key: Key) -> bool:
    return len(key) == 4 and key[0] == NODE and key[2] == HISTORY_PART


def _forgotten(value: Any) -> bool:
    return isinstance(value, dict) and bool(value.get("forgotten"))


def event_of(old: Any, new: Any, cause: Cause) -> str | None:
    """The event a change of the inventory value ``old`` (None: absent) to ``new`` is, or
    None when nothing a reader follows changed (a rewrite under a new epoch)."""
    if _forgotten(new):
        return None if _forgotten(old) else "forgotten"
    a = Inventory.from_value(old) if old is not None and not _forgotten(old) else None
    b = Inventory.from_value(new)
    changed = "imported" if cause.imported else "status"
    if a is None:
        return "discovered" if b.state == DISCOVERED else changed
    if a.state != b.state:
        if b.state == DISAPPEARED:
            return "disappeared"
        if b.state == DISCOVERED:
            return "reappeared" if a.state == DISAPPEARED else "discovered"
    return changed if a.status != b.status else None


def entry_value(event: str, old: Any, new: Any, ts: Timestamp, cause: Cause) -> dict[str, Any]:
    """The stored value of one entry: the register as it is now (a forgotten node's: as it
    was when it was forgotten, both current and previous)."""
    if _forgotten(new):
        last = Inventory() if old is None or _forgotten(old) else Inventory.from_value(old)
        inv = Inventory(last.status, last.status, last.state, last.state)
    else:
        inv = Inventory.from_value(new)
    return {
        "event": event,
        **inv.to_json(),
        "epoch": cause.epoch,
        "instance": cause.instance,
        "token": cause.token,
        "job": cause.job,
        "reason": cause.reason[:REASON_CHARS],
        "ms": ts.ms,
    }


def d_history(
    m: LWWMap,
    live: Mapping[str, Iterable[str]],
    delta: LWWMap,
    ts: Timestamp,
    cause: Cause,
    limit: int,
) -> LWWMap:
    """History entries (and pruning tombstones) for every inventory change in ``delta``.

    ``m`` is the state ``delta`` is about to be joined into, ``live`` each node's live
    history ids in it. Nothing is written when ``limit`` is 0 (history off). Returns a new
    delta; ``delta`` itself is not changed."""
    out = LWWMap.lazy()
    if limit <= 0:
        return out
    for key, e in delta.items():
        if len(key) != 3 or key[0] != NODE or key[2] != "inv" or e.deleted:
            continue
        node = key[1]
        old = m.get(key)
        event = event_of(old, e.value, cause)
        if event is None and node in cause.noted:
            event = "noted"
        if event is None:
            continue
        hid = history_id(ts)
        out.merge(
            [(history_key(node, hid), Entry(ts, entry_value(event, old, e.value, ts, cause)))]
        )
        ids = sorted({*live.get(node, ()), hid}, reverse=True)
        out.merge((history_key(node, old_id), Entry(ts, None, True)) for old_id in ids[limit:])
    return out


def newest(entries: Iterable[tuple[str, Any]], limit: int) -> list[dict[str, Any]]:
    """``(id, value)`` pairs as served: newest first, at most ``limit``, each value a map
    with its ``id`` (a value of another shape, forged, is left out)."""
    out: list[dict[str, Any]] = []
    for hid, v in sorted(entries, key=lambda p: p[0], reverse=True):
        if len(out) >= limit:
            break
        if isinstance(v, dict) and v.get("event") in EVENTS:
            out.append({"id": hid, **v})
    return out
