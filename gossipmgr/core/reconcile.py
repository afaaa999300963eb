"""Which health events make the inventory agree with a Serf view. Pure.

The lease holder reconciles at takeover, when the instance set changes and periodically
(``core.lease.reconcile_due``), only once its Serf view has settled; this module says what
a reconcile writes, and which comebacks it leaves for later. ``gossipmgr.runtime.health``
commits it under the holder's epoch, and the lease simulation
(``gossipmgr.testing.majoritysim``) runs the same code.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.node import Monitoring
from gossipmgr.core.state import ClusterState, combine

__all__ = ["NodeEvent", "apply_events", "comeback", "comebacks_waiting", "differences"]

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
    alive in its Serf view, and it has held the lease, long enough for a stale view to have
    been corrected (:func:`comebacks_waiting`): a view caught mid-change (right after a
    heal, members it had lost contact with are listed alive for a moment) once brought a
    dead node back to Discovered, and so did a holder whose own agent had missed the node's
    death. A failure, or a node seen for the first time, is applied at once; a dead node
    shown alive could be commissioned, a live one shown Disappeared a little longer is only
    late.
    """
    if event[0] != "discovered":
        return False
    rec = state.node(event[1])
    return rec is not None and inv.state_of(rec) == inv.DISAPPEARED


def comebacks_waiting(
    state: ClusterState,
    alive_nodes: Mapping[str, object],
    alive_since: Mapping[str, float],
    held_since: float,
    now: float,
    alive_s: float,
    held_s: float,
) -> set[str]:
    """The nodes whose comeback a reconcile leaves alone for now: Disappeared in the
    inventory, alive in our Serf view (``alive_nodes``), and either listed alive there
    for less than ``alive_s`` seconds (``alive_since``: when our view last changed the
    node's status; missing counts as just now) or we have held the lease for less than
    ``held_s`` (since ``held_since``). The bounds come from the Serf profile and the
    cluster's size (``gossipmgr.serf.view.comeback_bounds``).

    Why both: a dead node can be listed alive long after its death by a Serf agent that
    could not receive when it died (its member state carries a higher incarnation), and
    that agent's push-pull spreads the stale "alive" to every agent until probes fail the
    node again (suspicion). Our own view re-listing it alive is therefore waited out for
    ``alive_s`` (a probe and the longest suspicion); and a view that has listed it alive
    all along is trusted only once we have held the lease for ``held_s`` (a push-pull
    period more), so a holder whose own agent missed the death has been corrected. First
    sightings and failures are not affected: a live node shown Disappeared a little longer
    is only late."""
    out: set[str] = set()
    if not alive_nodes:
        return out
    held_long = now - held_since >= held_s
    for name in alive_nodes:
        rec = state.node(name)
        if rec is None or inv.state_of(rec) != inv.DISAPPEARED:
            continue
        if not held_long or now - alive_since.get(name, now) < alive_s:
            out.add(name)
    return out
