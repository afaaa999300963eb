"""Importing an inventory (``gossipmgr import clusterm``): the checks and the plan. Pure.

``POST /inventory/import`` carries ``[{"name", "status", "host_group"}, ...]``;
:func:`check_import_entries` validates it, :func:`plan_import` decides what it would change
against the current state, and :func:`d_import` is the delta of a plan's ``changed`` part
(a fenced inventory write: ``gossipmgr.runtime.nodeadmin`` commits it on the holder).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.inventory import host_group_of
from gossipmgr.core.node import (
    CANCELLED,
    HOST_GROUPS,
    INCOMPLETE,
    MAINTENANCE,
    MASTER,
    PROVISIONING,
    STATUSES,
    UNALLOCATED,
    UNKNOWN,
    Inventory,
    NodeRecord,
)
from gossipmgr.core.state import ClusterState, combine, host_group_key, inventory_key
from gossipmgr.errors import BadRequest

#: clusterm statuses a workflow leaves behind when its job is cut off (clusterm stopped
#: mid-job), and the workflow to run again: a same-status move is always allowed, so the
#: node can be acted on as it is.
CUT_OFF: Final[Mapping[str, str]] = {
    PROVISIONING: "commission",
    CANCELLED: "decommission",
    MAINTENANCE: "update",
}


@dataclass(frozen=True, slots=True)
class ImportEntry:
    """One validated entry of an import request."""

    name: str
    status: str
    host_group: str


@dataclass(frozen=True, slots=True)
class ImportChange:
    """A node the import creates (``from_*`` None) or changes."""

    name: str
    from_status: str | None
    status: str
    from_host_group: str | None
    host_group: str


@dataclass(frozen=True, slots=True)
class ImportKept:
    """A known node the import leaves alone: a workflow here already moved it."""

    name: str
    status: str
    prev_status: str
    reason: str


@dataclass(frozen=True, slots=True)
class ImportPlan:
    changed: tuple[ImportChange, ...]
    unchanged: tuple[str, ...]
    kept: tuple[ImportKept, ...]

    def to_json(self) -> dict[str, list[Any]]:
        """``{"changed": [{name, from_status, status, from_host_group, host_group}],
        "unchanged": [name], "kept": [{name, status, prev_status, reason}]}``."""
        return {
            "changed": [asdict(c) for c in self.changed],
            "unchanged": list(self.unchanged),
            "kept": [asdict(k) for k in self.kept],
        }


def _fresh(rec: NodeRecord) -> bool:
    """A node only Serf has touched here: discovered, never moved by a workflow."""
    return rec.inventory.status == UNALLOCATED and rec.inventory.prev_status == INCOMPLETE


def check_import_entries(entries: Any) -> list[ImportEntry]:
    """Validate ``[{"name", "status", "host_group"}, ...]``. Raises BadRequest naming the
    first bad entry. Returns the entries in order."""
    if not isinstance(entries, list):
        raise BadRequest('"nodes" must be an array of {"name", "status", "host_group"}')
    out: list[ImportEntry] = []
    seen: set[str] = set()
    for e in entries:
        if not isinstance(e, Mapping):
            raise BadRequest(f"an imported node must be an object, got {e!r}")
        name, status, hg = e.get("name"), e.get("status"), e.get("host_group", MASTER)
        if not isinstance(name, str) or not name:
            raise BadRequest(f'an imported node needs a non-empty "name": {dict(e)!r}')
        if name in seen:
            raise BadRequest(f'node "{name}" is listed twice')
        if status not in STATUSES:
            raise BadRequest(
                f'node "{name}": invalid status {status!r} (one of {", ".join(STATUSES)})'
            )
        if hg not in HOST_GROUPS:
            raise BadRequest(f'node "{name}": invalid or empty host-group specified: "{hg}"')
        seen.add(name)
        out.append(ImportEntry(name, str(status), str(hg)))
    return out


def plan_import(state: ClusterState, entries: Sequence[ImportEntry]) -> ImportPlan:
    """What importing ``entries`` would change. Pure.

    * unknown node: created with that status, state Unknown (Serf sets Discovered when
      the node is seen) and the host-group;
    * known node with the same status: only a different host-group is changed;
    * known node that gossipmgr has not moved (Unallocated after its first discovery):
      status set, state kept;
    * any other known node is *kept*: a workflow here already moved it, and the file
      must not undo that.
    """
    changed: list[ImportChange] = []
    unchanged: list[str] = []
    kept: list[ImportKept] = []
    for e in entries:
        rec = state.node(e.name)
        if rec is None:
            changed.append(ImportChange(e.name, None, e.status, None, e.host_group))
            continue
        cur, cur_hg = rec.inventory.status, host_group_of(rec)
        if cur != e.status and not _fresh(rec):
            prev = rec.inventory.prev_status
            why = f"gossipmgr already moved it to {cur} (from {prev}); not set to {e.status}"
            kept.append(ImportKept(e.name, cur, prev, why))
        elif cur == e.status and cur_hg == e.host_group:
            unchanged.append(e.name)
        else:
            changed.append(ImportChange(e.name, cur, e.status, cur_hg, e.host_group))
    return ImportPlan(tuple(changed), tuple(unchanged), tuple(kept))


def d_import(
    state: ClusterState, changed: Sequence[ImportChange], epoch: int, ts: Timestamp
) -> LWWMap:
    """The delta for :func:`plan_import`'s ``changed`` list (status under ``epoch``)."""
    out: list[LWWMap] = []
    for c in changed:
        rec = state.node(c.name)
        if rec is None:
            inv = Inventory(c.status, INCOMPLETE, UNKNOWN, UNKNOWN, epoch)
            out.append(state.d_set(inventory_key(c.name), inv.to_value(), ts))
        elif rec.inventory.status != c.status:
            inv = rec.inventory.with_status(c.status, epoch)
            out.append(state.d_set(inventory_key(c.name), inv.to_value(), ts))
        if rec is None or host_group_of(rec) != c.host_group or not rec.host_group:
            out.append(state.d_set(host_group_key(c.name), c.host_group, ts))
    return combine(*out)
