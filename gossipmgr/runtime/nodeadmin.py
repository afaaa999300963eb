"""Inventory administration on the holder: importing an inventory, forgetting a node.

Both are fenced inventory writes (inventory records are epoch-fenced like a job's writes):
accepted by the lease holder only, under the runtime's one lock
(``gossipmgr.runtime.holder``), refused while a job is active (its nodes are moving), and
committed as one delta under the holder's epoch.
"""

from __future__ import annotations

import logging
from typing import Any

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.inventory_import import check_import_entries, d_import, plan_import
from gossipmgr.core.state import ClusterState
from gossipmgr.runtime.holder import HolderGate

log = logging.getLogger("gossipmgr.jobs")


class NodeAdmin:
    """``gossipmgr import clusterm`` and ``gossipmgr node forget`` for a JobManager."""

    def __init__(self, gate: HolderGate) -> None:
        self.gate = gate
        self.replica = gate.replica

    async def import_inventory(self, entries: Any, dry_run: bool = False) -> dict[str, Any]:
        """Set imported statuses and host-groups. Holder only.

        Refused with Conflict while a job is active, with BadRequest for a bad entry,
        Unavailable off the holder. See
        :func:`gossipmgr.core.inventory_import.plan_import` for what is changed and what is
        kept. Returns ``{"dry_run", "changed", "unchanged", "kept"}``."""
        parsed = check_import_entries(entries)
        async with self.gate.lock:
            epoch = self.gate.epoch()
            self.gate.check_idle()
            plan = plan_import(self.replica.state, parsed)
            if not dry_run and plan.changed:

                def make(state: ClusterState, ts: Timestamp) -> LWWMap:
                    nonlocal plan
                    self.gate.fence(epoch, "inventory import")
                    # Planned again on the state the commit sees: the same answer unless
                    # a Serf event slipped in, and then this one is the truth.
                    plan = plan_import(state, parsed)
                    d = d_import(state, plan.changed, epoch, ts)
                    why = "inventory import"
                    return self.gate.noted(state, d, ts, epoch, reason=why, imported=True)

                await self.replica.commit(make)
                log.info(
                    "%s: imported %d node(s) (%d unchanged, %d kept), epoch %d",
                    self.replica.name,
                    len(plan.changed),
                    len(plan.unchanged),
                    len(plan.kept),
                    epoch,
                )
        return {"dry_run": dry_run, **plan.to_json()}

    async def forget_node(self, name: str, force: bool = False) -> dict[str, Any]:
        """``gossipmgr node forget``: remove a node from the inventory. Holder only (a
        fenced inventory write). Refused while a job is active (Conflict), for a
        Discovered node unless ``force`` (CheckFailed), NotFound for an unknown one."""
        async with self.gate.lock:
            epoch = self.gate.epoch()
            self.gate.check_idle()
            rec = inv.check_forget(self.replica.state, name, force)

            def make(state: ClusterState, ts: Timestamp) -> LWWMap:
                self.gate.fence(epoch, f"forget of node {rec.name}")
                inv.check_forget(state, rec.name, force)
                d = inv.d_forget(state, rec.name, epoch, ts)
                why = "node forget" + (" (forced)" if force else "")
                return self.gate.noted(state, d, ts, epoch, reason=why)

            await self.replica.commit(make)
            log.info("%s: forgot node %s (epoch %d)", self.replica.name, rec.name, epoch)
            return {"forgotten": rec.name, "status": inv.status_of(rec), "state": inv.state_of(rec)}
