"""The lease and what its holder does: claim/renew, node health events, reconcile.

Every instance runs :meth:`Holder.lease_loop`: each ``LEASE_LOOP_S`` it refreshes the gossip
peers and lease candidates from Serf membership, writes what ``core.lease.decide`` says
(a renewal or a claim) and, while it holds the lease and Serf answers, reconciles the
inventory against Serf's member list (``core.lease.reconcile_due`` says when).
:meth:`Holder.membership_loop` applies Serf's node events, on the holder only (a takeover
reconciles whatever the others ignored).
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.lease import Lease, candidates, decide, reconcile_due, settling
from gossipmgr.core.quorum import Quorum, heard_window_ms, keeps_through_catch_up, quorum
from gossipmgr.core.reconcile import comeback, comebacks_waiting
from gossipmgr.core.state import LEASE_KEY, ClusterState
from gossipmgr.errors import GossipmgrError, StoreError
from gossipmgr.gossip.service import GossipService
from gossipmgr.runtime.jobs import JobManager
from gossipmgr.runtime.replica import Replica
from gossipmgr.serf.membership import SerfMembership
from gossipmgr.serf.view import (
    PUSH_PULL_S,
    Absences,
    InstancesChanged,
    MembershipEvent,
    NodeEvent,
    comeback_bounds,
)

log = logging.getLogger("gossipmgr.agent")

#: A lease candidate counts as live (first in the claim order) if we heard from it over
#: gossip this recently. An idle live peer is heard at least every ~6 s by the peers sorting
#: after it (its heartbeat, GossipConfig.heartbeat_ms), the only ones whose claim order it
#: can change; 10 s leaves room for the round trip.
LIVE_PEER_MS = 10_000
#: How often the lease loop decides (renewals are due every ~2.5 s; 250 ms keeps a
#: takeover within a quarter second of the lease becoming claimable).
LEASE_LOOP_S = 0.25
#: The holder reconciles inventory against Serf at takeover, when the instance set changes
#: (a heal merges another side's writes in) and then this often, so a health event lost
#: anywhere (a Serf outage, a handover, the other side of a partition) is repaired within
#: seconds. The partition suite measured 30 s of wrong state with a 30 s period.
RECONCILE_EVERY_S = 5.0
#: ...and Discovered nodes our Serf agent does not list at all, until they have been absent
#: from its list this many push-pull intervals (``PUSH_PULL_S``): our agent may simply not
#: have heard of them yet. A node Serf lists as failed or left is acted on at once.
ABSENT_GRACE_PUSH_PULLS = 2.0
#: A new holder, or one whose instance set just changed, reconciles (and applies Serf's
#: node events) only once its Serf member list has not changed for this long: the view has
#: settled. Right after a heal members come back in bursts as memberlist's alive messages
#: spread (a gossip round is 200 ms, a probe 1 s with the lan profile), and a view caught
#: mid-change flapped a dead node back to Discovered (docs/design.md, "Takeover").
VIEW_SETTLE_S = 3.0
#: ...and each reconcile skips nodes whose Serf status changed this recently (the same
#: bound: a node listed alive again for less than this may be a view mid-change).
RECONCILE_SETTLE_S = VIEW_SETTLE_S
# A comeback (a Disappeared node alive in our Serf view, ``core.reconcile.comeback``) is
# left to the reconcile, which applies it only once the node has been alive in our view,
# and we have held the lease, long enough for a view that missed the node's death to have
# been corrected: ``serf.view.comeback_bounds`` of our Serf profile and member count
# (``core.reconcile.comebacks_waiting``).


def absent_grace_s(serf_profile: str) -> float:
    """Seconds a Discovered node must be missing from our Serf list before a reconcile
    marks it Disappeared (an external Serf's profile is unknown: assume lan)."""
    return ABSENT_GRACE_PUSH_PULLS * PUSH_PULL_S.get(serf_profile, 30.0)


class Holder:
    """The lease loop and the node-event loop of one instance. Owns neither argument.

    ``counters`` is the agent's (``lease_*``, ``node_events_*``, ``reconciles``), shared
    with its metrics.
    """

    def __init__(
        self,
        replica: Replica,
        jobs: JobManager,
        gossip: GossipService[Replica],
        membership: SerfMembership,
        counters: dict[str, int],
        *,
        absent_grace_s: float,
        solo_after_s: float | None = None,
        serf_profile: str = "lan",
    ) -> None:
        self.replica = replica
        self.jobs = jobs
        self.gossip = gossip
        self.membership = membership
        self.counters = counters
        self.absent_grace_s = absent_grace_s
        #: our Serf profile (its timing sets the comeback bounds; an external Serf: lan)
        self.serf_profile = serf_profile
        #: ``trio.current_time()`` when this instance last became the holder
        self.held_since = 0.0
        #: the two-instance rule's bound (``core.quorum``; None: off)
        self.solo_after_s = solo_after_s
        self._failed_since: dict[str, float] = {}
        #: caught up with a peer since the start (``refresh_peers``)
        self._synced = False
        #: our previous evaluation of the majority (none at the start: the replica's
        #: ``ALONE`` is no evidence of a majority)
        self._last_quorum = Quorum(0, 0)
        self.reconcile_soon = False
        self._absences = Absences()
        self._comebacks_waiting: set[str] = set()
        self._bounded_seen: dict[str, Any] | None = None
        self._was_holder = False
        self._reconciled_epoch = -1
        self._last_reconcile = 0.0
        self._serf_named_peers = False

    # ------------------------------------------------------------------ membership
    def refresh_peers(self) -> None:
        m = self.membership
        if not m.healthy:
            # Without Serf we cannot know who is alive: stop being a candidate (so we stop
            # acting), but keep gossiping with the peers we last knew.
            self.replica.candidates = []
            self._set_quorum(Quorum(0, 0))
            return
        alive = [i for i in m.instances if i.status == "alive"]
        # Keep gossiping with instances Serf marks failed (memberlist's GossipToTheDead):
        # after a partition the data heals when the network does, not at Serf's 30 s
        # reconnect, and a cut-off holder learns of the newer lease at once. They are never
        # lease candidates, and an unreachable one only costs its unacknowledged deltas
        # (bounded by max_buffer) and a share of the periodic digests.
        peers = {i.name: i.gossip_addr for i in (*alive, *m.view.failed_instances)}
        # A Serf agent that has not joined yet lists only us: until Serf has named another
        # instance once, gossip keeps the peers this instance last knew (the agent's peer
        # file: a restart catches up from them before Serf has joined; issue 17).
        self._serf_named_peers |= any(n != self.replica.name for n in peers)
        if self._serf_named_peers:
            # An instance alive again, or under a new boot id, is caught up with at once.
            self.gossip.set_peers(peers, {i.name: i.boot_id for i in alive})
        self.replica.candidates = candidates([i.name for i in alive])
        now = trio.current_time()
        failed = [i.name for i in m.view.failed_instances]
        self._failed_since = {n: self._failed_since.get(n, now) for n in failed}
        cfg = self.replica.lease_cfg
        ae = self.gossip.ae
        window = heard_window_ms(cfg.ttl_ms, cfg.renew_ms)
        now_ms, me = self.replica.now_ms(), self.replica.name
        heard = ae.heard_from(now_ms, window)
        caught = ae.caught_up(now_ms, window)
        behind = heard - caught  # heard again (or restarted, or new), not caught up with
        # Until this instance has caught up with a peer since its start (or its start's
        # catch-up gave up on all of them, or Serf listed no other instance while no other
        # holder is on record: a first instance), an instance Serf lists that never spoke
        # to us counts as known: a restarted instance counted "1 of 1" and claimed on its
        # expired copy of the lease before its first answer arrived.
        lease, cu = self.replica.lease(), ae.catchup
        self._synced = (
            self._synced
            or bool(caught)
            or (cu is not None and cu.done_ms is not None)
            or (not set(peers) - {me} and (lease is None or lease.holder == me))
        )
        ever = {n for n, ps in ae.peers.items() if ps.incarnation != 0} if self._synced else None
        # A holder with a majority keeps it while it catches up with returning peers.
        keep = keeps_through_catch_up(me, lease, now_ms, self._last_quorum)
        q = quorum(
            me,
            self.replica.candidates,
            self._failed_since,
            now,
            self.solo_after_s,
            heard,
            ever,
            behind,
            keep,
        )
        self._set_quorum(q)
        if (not q.may_hold or q.catching_up) and self._may_claim_soon(window):
            # Heard from too few to claim, or catching up with returning peers: ask them
            # (large idle clusters hear little).
            self.gossip.probe_unheard([i.name for i in alive], window)

    def _may_claim_soon(self, window_ms: int) -> bool:
        """This instance holds the lease, or its lease ends within ``window_ms`` (a live
        holder's renewals keep it further off): the majority it may need must be heard."""
        lease = self.replica.lease()
        return (
            lease is None
            or lease.holder == self.replica.name
            or lease.expires_ms - self.replica.now_ms() <= window_ms
        )

    def _set_quorum(self, q: Quorum) -> None:
        old = self.replica.quorum
        self.replica.quorum = self._last_quorum = q
        if q.may_hold != old.may_hold:
            log.warning("%s: %s", self.replica.name, q.describe())

    async def membership_loop(self, events: trio.MemoryReceiveChannel[MembershipEvent]) -> None:
        async for ev in events:
            self.refresh_peers()
            if isinstance(ev, InstancesChanged):
                self.reconcile_soon = True
            elif ev.kind in ("discovered", "disappeared"):
                await self._node_event(ev)

    async def _node_event(self, ev: NodeEvent) -> None:
        if not self.replica.is_holder():
            # The holder applies it; a takeover reconciles against Serf.
            self.counters["node_events_ignored"] += 1
            return
        lease = self.replica.lease()
        if lease is not None and settling(lease.epoch, self._reconciled_epoch, self.reconcile_soon):
            # A takeover or instance-set reconcile is pending: it runs from a settled
            # view and covers this event; the view it came from may be mid-change.
            self.counters["node_events_deferred"] = self.counters.get("node_events_deferred", 0) + 1
            return
        if comeback(self.replica.state, (ev.kind, ev.name, ev.label, ev.serial, ev.addr)):
            # A node back from Disappeared: the periodic reconcile applies it once Serf has
            # listed it alive, and we have held the lease, long enough (``unsettled_nodes``:
            # a view mid-change, and a holder whose agent missed the death, flapped dead ones).
            self.counters["node_events_deferred"] = self.counters.get("node_events_deferred", 0) + 1
            return
        try:
            await self.jobs.apply_node_event(ev.kind, ev.name, ev.label, ev.serial, ev.addr)
            self.counters["node_events_applied"] += 1
        except (GossipmgrError, StoreError) as exc:
            log.error("%s: node event %s refused: %s", self.replica.name, ev, exc)

    def alive_nodes(self) -> dict[str, tuple[str, str, str]]:
        m = self.membership
        return {n.name: (n.label, n.serial, n.addr) for n in m.nodes.values() if n.up}

    def unsettled_nodes(self) -> set[str]:
        now = trio.current_time()
        known = self.membership.nodes
        out = {n.name for n in known.values() if now - n.since < RECONCILE_SETTLE_S}
        # Only nodes Serf does not list can be absent: look up just those (normally none),
        # not every record (jobs.reconcile scans them all once already).
        state = self.replica.state
        unlisted = [
            n
            for n in state.node_names()
            if n not in known
            and (r := state.node(n)) is not None
            and inv.state_of(r) == inv.DISCOVERED
        ]
        out |= self._absences.young(unlisted, known, now, self.absent_grace_s)
        up = {n.name: n.since for n in known.values() if n.up}
        alive_s, held_s = comeback_bounds(self.serf_profile, self.membership.view.members)
        waiting = comebacks_waiting(state, up, up, self.held_since, now, alive_s, held_s)
        for name in sorted(waiting - self._comebacks_waiting):
            log.warning(
                "%s: %s is Disappeared and alive in our Serf view: applied once it has been "
                "alive there for %.0f s and we have held the lease for %.0f s",
                self.replica.name,
                name,
                alive_s,
                held_s,
            )
        self._comebacks_waiting = waiting
        return out | waiting

    # ------------------------------------------------------------------ lease
    def _note_bounded_lease(self, lease: Lease | None) -> None:
        """Log (once per entry) and count a lease whose expiry was cut by the bound."""
        if lease is None:
            return  # no entry, or one that is not a lease (not even a map: forged)
        raw = self.replica.state.lease()
        if raw is None or raw.get("expires_ms") == lease.expires_ms:
            return
        if raw != self._bounded_seen:
            self._bounded_seen = raw
            self.counters["lease_bounded"] += 1
            log.warning(
                "%s: the lease entry (holder %r, epoch %d) expires %s ms ahead, more than a "
                "TTL after it was written: read as expiring at %d (forged, or a peer with a "
                "longer --lease-ttl-ms)",
                self.replica.name,
                lease.holder,
                lease.epoch,
                raw.get("expires_ms"),
                lease.expires_ms,
            )

    async def lease_loop(self) -> None:
        while True:
            await self.step()
            await trio.sleep(LEASE_LOOP_S)

    async def step(self) -> None:
        """One decision: refresh peers, renew or claim, reconcile if due."""
        self.refresh_peers()
        await self._decide()
        holder = self.replica.is_holder()
        if holder != self._was_holder:
            log.warning(
                "%s: %s the lease holder", self.replica.name, "now" if holder else "no longer"
            )
            self._was_holder = holder
            if holder:
                self.held_since = trio.current_time()
        if holder and self.membership.healthy and self.membership.polls > 0:
            await self._maybe_reconcile()

    async def _decide(self) -> None:
        rep = self.replica
        lease = rep.lease()
        self._note_bounded_lease(lease)
        new = decide(
            rep.name,
            lease,
            rep.candidates,
            rep.now_ms(),
            rep.lease_cfg,
            rep.state.max_record_epoch,
            live=self.gossip.ae.heard_from(rep.now_ms(), LIVE_PEER_MS),
            may_hold=rep.quorum.may_hold,
        )
        if new is None:
            return
        renewal = lease is not None and lease.holder == rep.name
        value = new.as_value()

        def make(s: ClusterState, ts: Timestamp) -> LWWMap:
            return s.d_set(LEASE_KEY, value, ts)

        try:
            await rep.commit(make)
        except StoreError as exc:
            log.error("%s: cannot write the lease: %s", rep.name, exc)
            return
        if renewal:
            self.counters["lease_renewals"] += 1
        else:
            self.counters["lease_claims"] += 1
            log.warning(
                "%s: claimed the lease, epoch %d (%s)", rep.name, new.epoch, rep.quorum.describe()
            )

    async def _maybe_reconcile(self) -> None:
        """At takeover (a new epoch) and then periodically: repair any health event lost
        in the handover or during a Serf outage."""
        current = self.replica.lease()
        if current is None:
            return
        now = trio.current_time()
        if not reconcile_due(
            current.epoch,
            self._reconciled_epoch,
            now,
            self._last_reconcile,
            RECONCILE_EVERY_S,
            self.reconcile_soon,
            quiet_for=now - self.membership.view.changed_at,
            settle=VIEW_SETTLE_S,
        ):
            return
        self.reconcile_soon = False
        try:
            fixed = await self.jobs.reconcile(self.alive_nodes(), self.unsettled_nodes())
        except (GossipmgrError, StoreError) as exc:
            log.error("%s: reconcile failed: %s", self.replica.name, exc)
            return
        self.counters["reconciles"] += 1
        if fixed["discovered"] or fixed["disappeared"]:
            log.warning(
                "%s: reconcile against Serf (epoch %d): discovered %s, disappeared %s",
                self.replica.name,
                current.epoch,
                fixed["discovered"],
                fixed["disappeared"],
            )
        self._reconciled_epoch, self._last_reconcile = current.epoch, now
