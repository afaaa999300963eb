"""Which health events make the inventory agree with a Serf view. Pure.

The lease holder reconciles at takeover, when the instance set changes and periodically
(``core.lease.reconcile_due``), only once its Serf view has settled; this module says what
a reconcile writes. ``gossipmgr.runtime.health`` commits it under the holder's epoch, and the
lease simulation (``gossipmgr.testing.majoritysim``) runs the same code.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.node import Monitoring
from gossipmgr.core.state import ClusterState, combine

__all__ = ["NodeEvent", "apply_events", "comeback", "differences"]

#: (kind, node name, label, serial, addr); kind is "discovered" or "disappeared".
NodeEvent = tuple[str, str, str, str, str]


def differences(
    state: ClusterState,
    alive_nodes: Mapping[str, tuple[str, str, str]],
    unsettled: Collection[str] = (),
) -> list[NodeEvent]:
    """The events that make the inventory agree with ``alive_nodes`` (node name ->
    ``(label, serial, addr)`` of every node Serf lists alive): every Discovered node not
    alive becomes Disappeared; every alive node not Discovered (or with changed tags) is
    discovered. Nodes in ``unsettled`` (whose Serf status just changed) are left alone."""
    events: list[NodeEvent] = []
    for rec in state.nodes():
        if rec.name in unsettled:
            continue
        if inv.state_of(rec) == inv.DISCOVERED and rec.name not in alive_nodes:
            events.append(("disappeared", rec.name, "", "", ""))
    for nm, (label, serial, addr) in sorted(alive_nodes.items()):
        if nm in unsettled:
            continue
        known = state.node(nm)
        if (
            known is None
            or inv.state_of(known) != inv.DISCOVERED
            or known.monitoring != Monitoring(label, serial, addr)
        ):
            events.append(("discovered", nm, label, serial, addr))
    return events


def apply_events(
    state: ClusterState, events: Sequence[NodeEvent], epoch: int, ts: Timestamp
) -> LWWMap:
    """The delta of ``events`` written under ``epoch`` (the lease the holder holds)."""
    parts = []
    for kind, nm, label, serial, addr in events:
        if kind == "discovered":
            parts.append(inv.d_discovered(state, nm, label, serial, addr, epoch, ts))
        else:
            parts.append(inv.d_disappeared(state, nm, epoch, ts))
    return combine(*parts)


def comeback(state: ClusterState, event: NodeEvent) -> bool:
    """True for a "discovered" event of a node the inventory holds as Disappeared.

    The holder applies such a comeback only through a reconcile, once the node has been
    alive in its Serf view for the settle bound: a view caught mid-change (right after a
    heal, members it had lost contact with are listed alive for a moment) once brought a
    dead node back to Discovered. A failure, or a node seen for the first time, is applied
    at once; a dead node shown alive could be commissioned, a live one shown Disappeared
    for a few seconds is only late.
    """
    if event[0] != "discovered":
        return False
    rec = state.node(event[1])
    return rec is not None and inv.state_of(rec) == inv.DISAPPEARED
