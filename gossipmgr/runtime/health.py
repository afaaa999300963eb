"""Node health on the holder: Serf events, POST /monitor/event, reconciliation, reappearance.

Monitoring events are applied by the lease holder only, as pure deltas from
:mod:`gossipmgr.core.inventory`, each in one fenced commit under the holder's epoch and under
the runtime's one lock (``gossipmgr.runtime.holder``). After a takeover, and periodically,
:meth:`HealthEvents.reconcile` makes the inventory agree with Serf's view in one commit, so
no event is lost in a handover.

With ``reconfigure_on_reappear`` an Allocated node that comes back after it disappeared
gets a "reconfigure" job (the configure playbook, Maintenance -> Allocated | Unallocated)
when no job is active; otherwise it is skipped with a log line (clusterm issue #123).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.reconcile import NodeEvent, differences
from gossipmgr.core.state import ClusterState, combine
from gossipmgr.errors import BadRequest, Conflict, Unavailable
from gossipmgr.runtime.holder import HolderGate

log = logging.getLogger("gossipmgr.jobs")


class HealthEvents:
    """Applies node health events for a JobManager. ``reconfigure(names, epoch)`` launches
    the reconfigure job for reappeared nodes (called with the lock held)."""

    def __init__(
        self,
        gate: HolderGate,
        reconfigure: Callable[[list[str], int], Awaitable[None]],
        *,
        reconfigure_on_reappear: bool = False,
    ) -> None:
        self.gate = gate
        self.replica = gate.replica
        self.reconfigure = reconfigure
        self.reconfigure_on_reappear = reconfigure_on_reappear

    async def set_monitor_event(self, name: str, nodes: Sequence[Any]) -> dict[str, Any]:
        """clusterm's POST /monitor/event. Raises BadRequest
        ``Invalid or empty event name specified: "<name>"`` or for a malformed node,
        Unavailable off the holder. The name is case-insensitive, as in clusterm."""
        if not isinstance(name, str) or name.lower() not in ("discovered", "disappeared"):
            raise BadRequest(f'Invalid or empty event name specified: "{name}"')
        name = name.lower()
        if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence):
            raise BadRequest(f"monitor event nodes must be a list, got {nodes!r}")
        parsed = [inv.check_monitor_node(n) for n in nodes]
        self.gate.epoch()  # an empty list must be refused off the holder too
        done: list[str] = []
        for label, serial, addr in parsed:
            nm = inv.node_name(label, serial)
            await self.apply_node_event(name, nm, label, serial, addr, source="monitor event")
            done.append(nm)
        return {"event": name, "nodes": done}

    async def apply_node_event(
        self, kind: str, name: str, label: str, serial: str, addr: str, *, source: str = "serf"
    ) -> bool:
        """Apply one Serf health event ("discovered" | "disappeared"). Holder only.

        Returns True if the inventory changed. Raises BadRequest for an unknown kind,
        Unavailable off the holder."""
        if kind not in ("discovered", "disappeared"):
            raise BadRequest(f'Invalid or empty event name specified: "{kind}"')
        reappear: list[str] = []
        async with self.gate.lock:
            epoch = self.gate.epoch()
            event = (kind, name, label, serial, addr)
            changed = await self._apply(epoch, [event], reappear, source)
        await self._reappeared(reappear)
        return changed

    async def reconcile(
        self,
        alive_nodes: Mapping[str, tuple[str, str, str]],
        unsettled: Collection[str] = (),
    ) -> dict[str, Any]:
        """After a takeover (and periodically): make the inventory agree with Serf.

        Every Discovered node not alive becomes Disappeared; every alive node not
        Discovered (or with changed tags) is discovered. Nodes in ``unsettled`` (whose
        Serf status just changed: the view may be mid-change, e.g. right after a heal) are
        left alone until a later round. One commit, so no event is lost in a handover.
        Returns ``{"discovered": [...], "disappeared": [...]}``."""
        reappear: list[str] = []
        async with self.gate.lock:
            epoch = self.gate.epoch()
            events = self._differences(alive_nodes, unsettled)
            await self._apply(epoch, events, reappear, "reconcile with serf")
        await self._reappeared(reappear)
        return {
            "discovered": [e[1] for e in events if e[0] == "discovered"],
            "disappeared": [e[1] for e in events if e[0] == "disappeared"],
        }

    def _differences(
        self, alive_nodes: Mapping[str, tuple[str, str, str]], unsettled: Collection[str]
    ) -> list[NodeEvent]:
        """The events that make the inventory agree with ``alive_nodes``."""
        return differences(self.replica.state, alive_nodes, unsettled)

    async def _apply(
        self, epoch: int, events: Sequence[NodeEvent], reappear: list[str], source: str
    ) -> bool:
        def make(state: ClusterState, ts: Timestamp) -> LWWMap:
            self.gate.fence(epoch, "monitoring event")
            reappear.clear()
            parts = []
            for kind, nm, label, serial, addr in events:
                if kind == "discovered":
                    if inv.reappears_allocated(state, nm):
                        reappear.append(nm)
                    d = inv.d_discovered(state, nm, label, serial, addr, epoch, ts)
                else:
                    d = inv.d_disappeared(state, nm, epoch, ts)
                # the node's history (runtime.holder): who, where, why
                why = f"{source}: {kind}"
                parts.append(self.gate.noted(state, d, ts, epoch, reason=why))
            return combine(*parts)

        return len(await self.replica.commit(make)) > 0

    async def _reappeared(self, names: Sequence[str]) -> None:
        if not names:
            return
        me = self.replica.name
        if not self.reconfigure_on_reappear:
            log.info("%s: Allocated nodes %s came back; reconfigure_on_reappear is off", me, names)
            return
        async with self.gate.lock:
            try:
                epoch = self.gate.epoch()
                self.gate.check_idle()
            except (Unavailable, Conflict) as exc:
                self.gate.counters["reappear_skipped"] += 1
                log.warning("%s: not reconfiguring reappeared nodes %s: %s", me, names, exc)
                return
            state = self.replica.state
            ok = [
                n
                for n in names
                if (r := state.node(n)) is not None
                and inv.status_of(r) == inv.ALLOCATED
                and inv.state_of(r) == inv.DISCOVERED
            ]
            if ok:
                await self.reconfigure(ok, epoch)
                self.gate.counters["reappear_jobs"] += 1
