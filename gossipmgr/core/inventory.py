"""The node lifecycle: clusterm's inventory status table, its checks, and its events. Pure.

Rule 1 (after h11's ``_state.py``): everything that decides a node's inventory status, its
state, or whether a workflow may start lives here (importing: ``inventory_import``), as data
where possible. Nothing here awaits, reads the clock or touches the disk; every mutator takes
the state, the lease epoch and a timestamp and *returns a delta*; ``gossipmgr.runtime``
decides when to commit one. The records read are ``gossipmgr.core.node``'s.

A node has two independent variables, kept in one replicated register
``("n", node, "inv") = {status, prev_status, state, prev_state, epoch}`` so that a reader
never sees a status from one writer and its ``prev_status`` from another:

* **status** (Collins vocabulary, clusterm's ``inventory_state.status``) says what the
  cluster manager did to the node. It moves only along :data:`TRANSITIONS`; a move to the
  same status is always allowed (clusterm's rule), everything else is refused with
  ``transition from "<a>" to "<b>" is not allowed`` (:class:`~gossipmgr.errors.Conflict`)::

      Incomplete     -> Unallocated                 (a node's first discovery)
      Unallocated    -> Provisioning                (commission starts)
      Provisioning   -> Allocated | Unallocated     (commission ends well | badly)
      Allocated      -> Cancelled | Maintenance     (decommission | update starts)
      Cancelled      -> Decommissioned              (decommission ends, either way)
      Decommissioned -> Provisioning                (commissioned again)
      Maintenance    -> Allocated | Unallocated     (update ends well | badly)

* **state** (Unknown, Discovered, Disappeared) says what Serf last reported. It is set only
  by monitoring events and never checked against a table: any event may follow any other.

A workflow moves its nodes through one *status path* (:data:`STATUS_PATHS`): ``during``
when the job starts, ``success`` or ``failure`` when it ends. All the path's edges are in
:data:`TRANSITIONS`, so the end of a job never needs a check that could fail.

Atomic multi-node moves: clusterm moved nodes one by one and reverted the moved ones when a
later one failed. :func:`move_statuses` computes *every* transition first and raises on the
first refused one, returning no delta; the caller commits only a whole delta, so no reader,
peer or restart ever sees a partial set of moves, and nothing needs reverting.

Checks (:func:`check_workflow`, :func:`check_discover`) run before anything is written, with
clusterm's texts, raising :class:`~gossipmgr.errors.CheckFailed` (422): a rejected request
never becomes a job (clusterm took the job slot first). Lists in messages are formatted like
Go's ``%v`` of a ``[]string`` (``[a b]``), as clusterm printed them for users' scripts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import MAX_KEY_PART
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.node import (
    ALLOCATED,
    CANCELLED,
    DECOMMISSIONED,
    DISAPPEARED,
    DISCOVERED,
    HOST_GROUPS,
    INCOMPLETE,
    MAINTENANCE,
    MASTER,
    PROVISIONING,
    STATES,
    STATUSES,
    UNALLOCATED,
    UNKNOWN,
    WORKER,
    Inventory,
    Monitoring,
    NodeRecord,
)
from gossipmgr.core.state import (
    ClusterState,
    combine,
    host_group_key,
    inventory_key,
    monitoring_key,
    node_var_key,
)
from gossipmgr.errors import BadRequest, CheckFailed, Conflict, NotFound, ValueRefused

# fmt: off
__all__ = [  # with the vocabulary, defined with the records (core.node)
    "ALLOCATED", "CANCELLED", "DECOMMISSIONED", "DISAPPEARED", "DISCOVERED", "HOST_GROUPS",
    "INCOMPLETE", "MAINTENANCE", "MASTER", "NO_ADDRS", "NO_MASTER_FOR_WORKER", "NO_NODES",
    "ONLY_WORKERS_LEFT", "PROVISIONING", "STATES", "STATUSES", "STATUS_PATHS", "TRANSITIONS",
    "UNALLOCATED", "UNKNOWN", "UPDATE_NO_MASTER", "WORKER", "StatusPath", "addr_of", "allowed",
    "check_discover", "check_forget", "check_host_group", "check_monitor_node", "check_moves",
    "check_node_name", "check_transition", "check_workflow", "d_disappeared", "d_discovered",
    "d_forget", "find_node", "finish_statuses", "get_node", "go_list", "host_group_of",
    "move_statuses", "node_json", "node_missing", "node_name", "reappears_allocated",
    "resolve_nodes", "state_of", "status_of",
]
# fmt: on

#: The whole status machine (docs/migrating-from-clusterm.md, "Nodes and their status machine").
#: A move to the same status is allowed in addition.
TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    INCOMPLETE: frozenset({UNALLOCATED}),
    UNALLOCATED: frozenset({PROVISIONING}),
    PROVISIONING: frozenset({UNALLOCATED, ALLOCATED}),
    ALLOCATED: frozenset({CANCELLED, MAINTENANCE}),
    CANCELLED: frozenset({DECOMMISSIONED}),
    DECOMMISSIONED: frozenset({PROVISIONING}),
    MAINTENANCE: frozenset({UNALLOCATED, ALLOCATED}),
}


@dataclass(frozen=True)
class StatusPath:
    """A workflow's statuses: set when its job starts, and when it ends well or badly."""

    during: str
    success: str
    failure: str


#: Workflow kind -> its status path (docs/workflows.md). "discover" changes no status: the node
#: appears later through Serf. "reconfigure" is gossipmgr's own (clusterm issue #123): the
#: configure playbook re-run on an Allocated node that came back; it parks the node in
#: Maintenance like an update does, the only status an Allocated node may move to that
#: also leads back to Allocated.
STATUS_PATHS: Final[Mapping[str, StatusPath | None]] = {
    "commission": StatusPath(PROVISIONING, ALLOCATED, UNALLOCATED),
    "decommission": StatusPath(CANCELLED, DECOMMISSIONED, DECOMMISSIONED),
    "update": StatusPath(MAINTENANCE, ALLOCATED, UNALLOCATED),
    "reconfigure": StatusPath(MAINTENANCE, ALLOCATED, UNALLOCATED),
    "discover": None,
}


def go_list(items: Iterable[str]) -> str:
    """Format like Go's ``fmt.Sprintf("%v", []string{...})``: ``[a b c]``."""
    return "[" + " ".join(items) + "]"


# --------------------------------------------------------------------------- transitions


def allowed(a: str, b: str) -> bool:
    """True if status ``a`` may move to ``b`` (same status always may)."""
    return a == b or b in TRANSITIONS.get(a, frozenset())


def check_transition(a: str, b: str) -> None:
    """Raise Conflict ``transition from "<a>" to "<b>" is not allowed`` unless allowed."""
    if not allowed(a, b):
        raise Conflict(f'transition from "{a}" to "{b}" is not allowed')


def node_name(label: str, serial: str) -> str:
    """clusterm's node name: ``<NodeLabel>-<NodeSerial>``."""
    return f"{label}-{serial}"


def status_of(rec: NodeRecord) -> str:
    return rec.inventory.status


def state_of(rec: NodeRecord) -> str:
    return rec.inventory.state


def addr_of(rec: NodeRecord) -> str:
    return rec.addr


def host_group_of(rec: NodeRecord) -> str:
    # A node record always gets a host-group when it is created; a missing one (a record
    # written by hand, or a lost hg entry) reads as clusterm's default.
    return rec.host_group or MASTER


def move_statuses(
    state: ClusterState, names: Sequence[str], to: str, epoch: int, ts: Timestamp
) -> LWWMap:
    """Move every node in ``names`` to status ``to``: all of them, or none.

    Every transition is checked before the delta is built; the first refused one raises
    Conflict ``failed to update <name>'s state in inventory, Error: transition from "<a>"
    to "<b>" is not allowed`` and nothing is returned, so there is nothing to revert.
    A name without a node raises CheckFailed (callers resolve names first).
    """
    check_moves(state, names, to)
    out: list[LWWMap] = []
    for name in names:
        rec = _node(state, name)  # checked just above
        out.append(_d_inventory(state, name, rec.inventory.with_status(to, epoch), ts))
    return combine(*out)


def _d_inventory(state: ClusterState, name: str, inv: Inventory, ts: Timestamp) -> LWWMap:
    return state.d_set(inventory_key(name), inv.to_value(), ts)


def check_moves(state: ClusterState, names: Sequence[str], to: str) -> None:
    """Raise as :func:`move_statuses` would, without building anything."""
    for name in names:
        rec = state.node(name)
        if rec is None:
            raise CheckFailed(node_missing(name))
        try:
            check_transition(status_of(rec), to)
        except Conflict as exc:
            raise Conflict(f"failed to update {name}'s state in inventory, Error: {exc}") from None


def finish_statuses(
    state: ClusterState, names: Sequence[str], during: str, to: str, epoch: int, ts: Timestamp
) -> tuple[LWWMap, list[str]]:
    """End a job's status path: move the nodes still in ``during`` to ``to``.

    Nodes no longer in ``during`` (someone moved them, or they were removed) are left alone
    and returned as the second element, for the caller to log. Never raises: every path's
    ``during -> success/failure`` edge is in the table.
    """
    out: list[LWWMap] = []
    skipped: list[str] = []
    for name in names:
        rec = state.node(name)
        if rec is None or status_of(rec) != during or not allowed(during, to):
            skipped.append(name)
            continue
        out.append(_d_inventory(state, name, rec.inventory.with_status(to, epoch), ts))
    return combine(*out), skipped


def node_json(rec: NodeRecord) -> dict[str, Any]:
    """clusterm's node shape, as GET /info/node/{name} answers it (docs/api.md)."""
    addr = rec.addr
    return {
        "monitoring_state": (rec.monitoring or Monitoring()).to_json(),
        "inventory_state": {"name": rec.name, **rec.inventory.to_json()},
        "configuration_state": {
            "inventory_name": rec.name,
            "host_group": host_group_of(rec),
            "ssh_address": addr,
            # The node's own extra-vars come last: ansible sees them the same way
            # (gossipmgr.runtime.ansible.build_inventory puts them after node_name/node_addr).
            "inventory_vars": {"node_name": rec.name, "node_addr": addr, **rec.vars},
        },
    }


# --------------------------------------------------------------------------- monitoring


def check_monitor_node(obj: Any) -> tuple[str, str, str]:
    """Validate one ``{"label", "serial", "addr"}`` of a monitor event. Raises BadRequest."""
    if not isinstance(obj, Mapping):
        raise BadRequest(f"a monitor event node must be an object (label, serial, addr): {obj!r}")
    out = []
    for field in ("label", "serial", "addr"):
        v = obj.get(field, "")
        if not isinstance(v, str) or (field != "addr" and not v):
            raise BadRequest(f'monitor event node needs a non-empty string "{field}": {obj!r}')
        out.append(v)
    check_node_name(node_name(out[0], out[1]))
    return out[0], out[1], out[2]


def check_node_name(name: str) -> None:
    """Raise ValueRefused (422) for a node name longer than a key part
    (``codec.MAX_KEY_PART``), which gossip cannot carry. A ``/`` is allowed: the API's node
    routes take the rest of the path as the name."""
    if len(name) > MAX_KEY_PART:
        raise ValueRefused(
            f'node name "{name[:40]}..." is {len(name)} characters, '
            f"more than the limit of {MAX_KEY_PART}"
        )


def d_discovered(
    state: ClusterState,
    name: str,
    label: str,
    serial: str,
    addr: str,
    epoch: int,
    ts: Timestamp,
) -> LWWMap:
    """Serf said the node is alive (member-join, or alive at a takeover).

    New node: Unallocated/Discovered (prev Incomplete/Unknown), host-group service-master,
    monitoring ``{label, serial, addr}``. Known node: state := Discovered with the old state
    as prev_state, status kept, monitoring refreshed. Returns an empty delta when nothing
    would change (a repeated event must not churn the replicated record).
    """
    mon = Monitoring(label, serial, addr)
    rec = state.node(name)
    if rec is None:
        inv = Inventory(UNALLOCATED, INCOMPLETE, DISCOVERED, UNKNOWN, epoch)
        return combine(
            _d_inventory(state, name, inv, ts),
            state.d_set(monitoring_key(name), mon.to_value(), ts),
            state.d_set(host_group_key(name), MASTER, ts),
        )
    out: list[LWWMap] = []
    if rec.monitoring != mon:
        out.append(state.d_set(monitoring_key(name), mon.to_value(), ts))
    if rec.inventory.state != DISCOVERED:
        out.append(_d_inventory(state, name, rec.inventory.with_state(DISCOVERED, epoch), ts))
    return combine(*out)


def d_disappeared(state: ClusterState, name: str, epoch: int, ts: Timestamp) -> LWWMap:
    """Serf said the node failed: state := Disappeared, status kept. Unknown node: no-op."""
    rec = state.node(name)
    if rec is None or rec.inventory.state == DISAPPEARED:
        return LWWMap()
    return _d_inventory(state, name, rec.inventory.with_state(DISAPPEARED, epoch), ts)


def reappears_allocated(state: ClusterState, name: str) -> bool:
    """True if a discovered event for ``name`` brings back an Allocated node that had
    disappeared (clusterm issue #123: it was never reconfigured)."""
    rec = state.node(name)
    return rec is not None and state_of(rec) == DISAPPEARED and status_of(rec) == ALLOCATED


# --------------------------------------------------------------------------- checks

NO_NODES: Final = "atleast one node should be specified"
NO_ADDRS: Final = "atleast one address should be specified"
NO_MASTER_FOR_WORKER: Final = (
    "Cannot commission a worker node without existence of a master node in the cluster, "
    "make sure atleast one master node is commissioned."
)
ONLY_WORKERS_LEFT: Final = (
    "decommissioning the specified node(s) will leave only worker nodes in the cluster, "
    "make sure all worker nodes are decommissioned before last master node."
)
UPDATE_NO_MASTER: Final = (
    "Updating these nodes as worker will result in no master node in the cluster, "
    "make sure atleast one node is commissioned as master."
)


def node_missing(ident: str) -> str:
    return f'node with name or address "{ident}" doesn\'t exists'


def find_node(state: ClusterState, ident: str) -> NodeRecord | None:
    """A node by name, else by management address (clusterm accepted either); of several
    nodes at one address, the first in name order."""
    rec = state.node(ident)
    if rec is not None:
        return rec
    found = (state.node(n) for n in state.nodes_at(ident))  # indexed: no scan of every node
    return next((r for r in found if r is not None), None)


def resolve_nodes(state: ClusterState, idents: Sequence[str]) -> list[str]:
    """Names for the given names-or-addresses, deduplicated in order.

    Raises CheckFailed ``atleast one node should be specified`` for none, and
    ``node with name or address "<n>" doesn't exists`` for the first unknown one.
    """
    if not idents:
        raise CheckFailed(NO_NODES)
    names: list[str] = []
    for ident in idents:
        if not isinstance(ident, str) or not ident:
            raise BadRequest(f"a node must be a non-empty string, got {ident!r}")
        rec = find_node(state, ident)
        if rec is None:
            raise CheckFailed(node_missing(ident))
        if rec.name not in names:
            names.append(rec.name)
    return names


def _healthy_groups(state: ClusterState, exclude: Iterable[str]) -> tuple[list[str], list[str]]:
    """(masters, workers) among Discovered + Allocated nodes not in ``exclude``."""
    skip = set(exclude)
    masters: list[str] = []
    workers: list[str] = []
    for rec in state.nodes():
        if rec.name in skip or state_of(rec) != DISCOVERED or status_of(rec) != ALLOCATED:
            continue
        (masters if host_group_of(rec) == MASTER else workers).append(rec.name)
    return masters, workers


def check_workflow(
    state: ClusterState, kind: str, idents: Sequence[str], host_group: str = ""
) -> list[str]:
    """clusterm's checks for commission, decommission and update (docs/workflows.md, "Checks").

    Returns the resolved node names. Raises CheckFailed with clusterm's text for the first
    failed check, in this order: at least one node, every node exists, every node
    Discovered, the host-group, the master/worker rule. Status transitions are checked
    later, by :func:`move_statuses` (Conflict).
    """
    if kind not in ("commission", "decommission", "update"):
        raise BadRequest(f"unknown workflow {kind!r}")
    names = resolve_nodes(state, idents)
    bad = [n for n in names if (r := state.node(n)) is None or state_of(r) != DISCOVERED]
    if bad:
        raise CheckFailed(
            "one or more nodes are not in discovered state, please check their network "
            f"reachability. Non-discovered nodes: {go_list(bad)}"
        )
    masters, workers = _healthy_groups(state, names)
    if kind == "commission":
        if host_group not in HOST_GROUPS:
            raise CheckFailed(f'invalid or empty host-group specified: "{host_group}"')
        if host_group == WORKER and not masters:
            raise CheckFailed(NO_MASTER_FOR_WORKER)
    elif kind == "decommission":
        # Leaving healthy workers behind with no healthy master is refused; removing the
        # last master together with (or after) every worker is fine.
        leaving = [n for n in names if host_group_of(_node(state, n)) == MASTER]
        if leaving and not masters and workers:
            raise CheckFailed(ONLY_WORKERS_LEFT)
    else:  # update
        if host_group and host_group not in HOST_GROUPS:
            raise CheckFailed(f'invalid host-group specified: "{host_group}"')
        if host_group == WORKER and not masters:
            raise CheckFailed(UPDATE_NO_MASTER)
    return names


def _node(state: ClusterState, name: str) -> NodeRecord:
    rec = state.node(name)
    assert rec is not None  # resolved just before
    return rec


def check_discover(state: ClusterState, addrs: Sequence[str]) -> list[str]:
    """Discover's checks: at least one address, none already a node's management address.

    Returns the addresses deduplicated in order. Raises CheckFailed
    ``one or more nodes already exist with the specified management addresses. Existing
    nodes: [name:addr ...]``, BadRequest for a non-string address.
    """
    if not addrs:
        raise CheckFailed(NO_ADDRS)
    seen: dict[str, None] = {}  # ordered, and linear: a 1 MiB body holds ~150k addresses
    for a in addrs:
        if not isinstance(a, str) or not a:
            raise BadRequest(f"an address must be a non-empty string, got {a!r}")
        seen.setdefault(a)
    out = list(seen)
    by_addr = {addr_of(r): r.name for r in state.nodes() if addr_of(r)}
    existing = [f"{by_addr[a]}:{a}" for a in out if a in by_addr]
    if existing:
        raise CheckFailed(
            "one or more nodes already exist with the specified management addresses. "
            f"Existing nodes: {go_list(existing)}"
        )
    return out


def check_host_group(host_group: str) -> str:
    """For setting a node's host-group directly. Raises CheckFailed with commission's text."""
    if host_group not in HOST_GROUPS:
        raise CheckFailed(f'invalid or empty host-group specified: "{host_group}"')
    return host_group


def get_node(state: ClusterState, ident: str) -> NodeRecord:
    """A node by name or address. Raises NotFound with clusterm's text."""
    rec = find_node(state, ident)
    if rec is None:
        raise NotFound(node_missing(ident))
    return rec


# --------------------------------------------------------------------------- forget


def check_forget(state: ClusterState, name: str, force: bool) -> NodeRecord:
    """clusterm issue #158: a node that is gone for good stays in the inventory. Forgetting
    a Discovered node (alive in Serf) needs ``force``: it would be discovered again at
    once, as a new Unallocated node. Raises NotFound, CheckFailed."""
    rec = state.node(name)
    if rec is None:
        raise NotFound(node_missing(name))
    if state_of(rec) == DISCOVERED and not force:
        raise CheckFailed(
            f'node "{name}" is Discovered (alive in Serf): forget only a node that is gone '
            "(Disappeared), or force it"
        )
    return rec


def d_forget(state: ClusterState, name: str, epoch: int, ts: Timestamp) -> LWWMap:
    """Remove a node: its inventory record becomes a ``forgotten`` marker under ``epoch``
    (a later discovery under this epoch or a newer one creates the node afresh, as
    Unallocated), its other entries (monitoring, host-group, own vars) tombstones."""
    out = [state.d_set(inventory_key(name), {"forgotten": True, "epoch": epoch}, ts)]
    rec = state.node(name)
    if rec is not None:
        out.append(state.d_remove(monitoring_key(name), ts))
        out.append(state.d_remove(host_group_key(name), ts))
        out.extend(state.d_remove(node_var_key(name, v), ts) for v in rec.vars)
    return combine(*out)
