"""The peer set, liveness and catch-up, for ``AntiEntropy`` (``gossipmgr.gossip.protocol``). PURE.

Who the peers are (``set_peers``, from Serf's view) and what happens when that changes: a
peer that is new, or comes back (listed alive again after failing or leaving, or under a
new boot id: restarted), and every peer at this instance's own start, is *caught up with*
at once: a digest goes to each of them in the same instant and their resyncs run in
parallel (``catch_up``), instead of one peer at a time from the next tick, or at the next
repair round. An instance that restarts thus starts pulling what it missed as soon as it
knows its peers (docs/design.md, "Catch-up").

An instance's first catch-up, when it holds a state (a restart), asks instead with a
``SINCE``: its newest timestamp per origin, and a share of the leaves for each peer; each
peer answers at once with its entries newer than that in its share (``_on_since``), so what
was written while the instance was down arrives in one round trip, from all its peers in
parallel, each entry once, with no digest computed first. The digest comparison with the
catch-up peers follows once all the answers are in, or given up (``_since_end``,
``since_waiting``): it finds whatever the summary cannot tell (an older write it never
got, a share whose peer is gone) and mostly says "equal".

And what each peer costs while nothing happens, so that it does not grow with the cluster:
only a peer that owes us something, or that Serf lists failed, is *silent* and probed by
digest (``_owes``); an idle one gets a small heartbeat (``_heartbeat``); and beyond a few
peers a relay of our writes to a peer that does not acknowledge them is not sent
(``gossipmgr.gossip.relay``).

``CatchUpPeers`` is a mixin of ``AntiEntropy`` (the protocol's state is one object); it
declares what it uses of it. ``CatchUp`` records one catch-up for the service's log.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Any

from gossipmgr.core.state import ClusterState
from gossipmgr.gossip.datagram import Counters
from gossipmgr.gossip.encoder import MessageEncoder, Payloads
from gossipmgr.gossip.messages import (
    ACK,
    ENTRIES,
    MAX_ORIGINS,
    PULL_DONE,
    SINCE,
    Body,
    Leaves,
    PullDone,
    Since,
    SyncOk,
)
from gossipmgr.gossip.peers import GossipConfig, LeafClaims, PeerState

__all__ = ["CatchUp", "CatchUpPeers"]

#: Senders not (yet) in the peer set whose last resync with us is remembered; the least
#: recent is forgotten first.
MAX_STRANGERS = 256
#: What all the answers to one ``SINCE`` round may hold together (each peer its share of
#: it): the rest of a larger miss comes by the digest comparison, paced by its pull
#: windows. 512 KiB is ~2,500 globals of ~200 B, and fits the 4 MiB socket buffers.
SINCE_BUDGET_BYTES = 512 * 1024
#: Entries one peer looks at for one answer, at most (its work is bounded however old the
#: summary; the budget usually ends the answer first).
SINCE_MAX_ENTRIES = 16_384
#: One SINCE per sender is answered within this long; another gets an empty answer (its
#: asker goes on by the digests). A restart sends one per peer: only a key holder making
#: them (the replay guard stops repeats of one datagram) met the bound below at each.
SINCE_EVERY_MS = 1_000
#: Once one peer's answer to a SINCE round is complete, the others are waited for at
#: least this long (and as long as that answer took) before the digests go.
SINCE_GRACE_MS = 50


@dataclass
class CatchUp:
    """One catch-up (``AntiEntropy.catch_up``): when it started, with whom, what it brought,
    and when every one of its peers had answered "equal" or was given up (gone or silent).
    The service logs it; times are the protocol's milliseconds."""

    started_ms: float
    peers: list[str]
    #: its peers not yet equal
    waiting: set[str]
    #: its peers given up on (dropped from the peer set, or silent)
    lost: list[str] = field(default_factory=list)
    #: novel entries joined while it ran (from any peer), and when the last one was
    entries: int = 0
    last_entry_ms: float | None = None
    first_answer_ms: float | None = None
    done_ms: float | None = None
    #: when the first answer to its SINCEs was complete (the others get as long again)
    since_done_ms: float | None = None

    def add(self, names: Sequence[str]) -> None:
        self.peers += [n for n in names if n not in self.peers]
        self.waiting |= set(names)

    def answered(self, now_ms: float) -> None:
        if self.first_answer_ms is None:
            self.first_answer_ms = now_ms

    def joined(self, novel: int, now_ms: float) -> None:
        if novel and self.done_ms is None:
            self.entries += novel
            self.last_entry_ms = now_ms

    def end(self, peer: str, now_ms: float, *, lost: bool = False) -> None:
        if peer not in self.waiting:
            return
        self.waiting.discard(peer)
        if lost:
            self.lost.append(peer)
        if not self.waiting and self.done_ms is None:
            self.done_ms = now_ms

    def summary(self) -> str:
        def after(t: float | None) -> str:
            return "-" if t is None else f"{t - self.started_ms:.0f} ms"

        text = (
            f"with {', '.join(self.peers)}: first answer after {after(self.first_answer_ms)}, "
            f"{self.entries} entries (the last after {after(self.last_entry_ms)}), equal "
            f"after {after(self.done_ms)}"
        )
        return text + (f"; gave up on {', '.join(self.lost)}" if self.lost else "")


class CatchUpPeers:
    """The peer set and catch-up part of ``AntiEntropy`` (a mixin: see the module)."""

    name: str
    seq: int
    cfg: GossipConfig
    rng: random.Random
    counters: Counters
    state: ClusterState
    peers: dict[str, PeerState]
    _next_req: int
    catchup: CatchUp | None
    enc: MessageEncoder
    _alive: dict[str, str] | None
    _strangers: dict[str, float]
    _since_served: dict[str, float]
    _claims: LeafClaims
    _last_sync_ms: float
    #: Called when one peer's answer to our SINCE is complete (the agent's start waits on it).
    on_since_end: Callable[[], None] | None = None

    def _prune(self) -> None:
        raise NotImplementedError

    def _digest(self, peer: str, ps: PeerState, now_ms: float) -> Payloads:
        raise NotImplementedError

    def set_peers(
        self, names: Iterable[str], now_ms: float, alive: Mapping[str, str] | None = None
    ) -> Payloads:
        """The current peer set (gossipmgr instances Serf lists alive or failed; self is
        left out). ``alive``: those listed alive, each with its boot id (Serf tag ``boot``).

        Returns a catch-up's digests (``catch_up``) to the peers that are new (and alive,
        when ``alive`` is given) or came back: listed alive again after failing or leaving,
        or under a new boot id (restarted).
        """
        wanted = {n for n in names if n != self.name}
        for gone in set(self.peers) - wanted:
            del self.peers[gone]
            self._claims.release_all(gone)
            if self.catchup is not None:
                self.catchup.end(gone, now_ms, lost=True)
        new = wanted - set(self.peers)
        for n in new:
            # Everything up to now reaches the new peer through a digest resync; deltas
            # from here on flow normally.
            self.peers[n] = PeerState(
                acked=self.seq,
                needs_resync=True,
                last_heard_ms=now_ms,
                their_resync_ms=self._strangers.pop(n, -1e18),
            )
        self._prune()
        back = new
        if alive is not None:
            was = self._alive or {}
            back = {n for n, boot in alive.items() if n in wanted and was.get(n) != boot}
            self._alive = {n: boot for n, boot in alive.items() if n in wanted}
        return self.catch_up(sorted(back), now_ms)

    def heard_from(self, now_ms: float, within_ms: float) -> set[str]:
        """Peers that sent us an authenticated message in the last ``within_ms`` (never
        merely listed: a new peer starts as not heard from)."""
        return {
            n
            for n, ps in self.peers.items()
            if ps.incarnation != 0 and now_ms - ps.last_heard_ms < within_ms
        }

    def caught_up(self, now_ms: float, within_ms: float) -> set[str]:
        """The peers :meth:`heard_from` in ``within_ms`` that we are not *behind*
        (``PeerState.behind``): a peer heard again after a gap of ``within_ms`` or more
        since we last synced with it (a partition healed, a restart; a new peer) counts
        only once a digest exchange with it came out equal. The lease's majority rule
        counts these: an instance cut off while the others moved the lease on hears a
        majority again a round trip before it has their newer lease, and its own expired
        copy then looked claimable (the partition suite: an isolated instance claimed at
        the heal, reconciled from its stale Serf view and flapped a dead node)."""
        heard = self.heard_from(now_ms, within_ms)
        return {n for n in heard if not self.peers[n].behind(within_ms)}

    def probe_unheard(
        self, names: Iterable[str], now_ms: float, within_ms: float
    ) -> list[tuple[str, bytes]]:
        """Digests to the peers among ``names`` not heard from in ``within_ms``, or that we
        are behind (each at most every ``silent_probe_ms``): their answers make them heard
        and, once equal, caught up (:meth:`caught_up`). The lease's majority rule
        counts instances heard from lately, and an idle instance early in the claim order
        hears almost nobody in a large cluster (nothing a writer sends straight is
        forwarded, ``gossip.relay``; heartbeats only to the peers sorting after their
        sender): the lease loop calls this while its instance may have to claim, so the
        cost is paid then only, never by every idle instance."""
        out: list[tuple[str, bytes]] = []
        for n in names:
            ps = self.peers.get(n)
            if ps is None:
                continue
            heard = ps.incarnation != 0 and now_ms - ps.last_heard_ms < within_ms
            if heard and not ps.behind(within_ms):
                continue
            if now_ms - ps.last_digest_ms >= self.cfg.silent_probe_ms:
                out += self._digest(n, ps, now_ms)
        return out

    def _owes(self, peer: str, ps: PeerState) -> bool:
        """Whether we wait for something from ``peer`` (an ack, an answer to a digest, pulled
        entries) or Serf lists it failed: only such a peer, not heard from for
        ``silent_after_ms``, is silent (probed by digest). An idle peer Serf lists alive
        merely gets our heartbeat: at 30 instances every peer was "silent" at every other
        most of the time, and the probes (a 650-byte digest each, every 2-3 s, to each
        peer) grew every instance's idle traffic with the cluster's size."""
        failed = self._alive is not None and peer not in self._alive
        waiting = ps.inflight or ps.pending_leaves or ps.digest_unanswered
        return failed or ps.acked < self.seq or ps.needs_resync or bool(waiting)

    def _heartbeat(self, peer: str, ps: PeerState, now_ms: float) -> Payloads:
        """An ACK (~90 bytes sealed) to a peer sorting after us that we sent nothing for
        ``heartbeat_ms``, so it hears from us; it acknowledges what we hold of its deltas
        (``ps.received``), as any ACK does.

        Who needs to hear from whom is the lease's claim order (docs/design.md, "The
        lease"): candidates heard from in the last 10 s first, in name order. An instance's
        own place in it depends only on the candidates sorting before it, so only those
        must reach it; a heartbeat to every peer would cost each instance one datagram per
        peer per period, and its idle traffic would grow with the cluster again."""
        if ps.ack_due:  # deltas received since our last ACK (``_ack_received``)
            return self._ack(peer, ps, now_ms)
        last = max(ps.last_sent_ms, ps.last_digest_ms, ps.last_beat_ms)
        if peer < self.name or now_ms - last < self.cfg.heartbeat_ms:
            return []
        ps.last_beat_ms = now_ms
        self.counters.incr("heartbeats")
        return self._ack(peer, ps, now_ms)

    def _ack_received(self, peer: str, ps: PeerState, now_ms: float) -> Payloads:
        """The ACK of a delta just received from ``peer``: at once, or, within
        ``ack_delay_ms`` of our last ACK to it, at the next tick (``_heartbeat``), one for
        all the deltas received meanwhile (``GossipConfig.ack_delay_ms``)."""
        if now_ms - ps.last_ack_sent_ms < self.cfg.ack_delay_ms:
            ps.ack_due = True
            self.counters.incr("acks_deferred")
            return []
        return self._ack(peer, ps, now_ms)

    def _ack(self, peer: str, ps: PeerState, now_ms: float) -> Payloads:
        ps.last_ack_sent_ms, ps.ack_due = now_ms, False
        return self.enc.encode(peer, ACK, [ps.received])

    def _resyncing_with_us(self, sender: str, now_ms: float) -> None:
        """``sender`` sent a DIGEST or a PULL: it is resyncing with us. Remembered for an
        instance not yet in our peer set too (a start is often heard of before Serf names
        it): once Serf names it, our catch-up leaves it alone (``catch_up``)."""
        ps = self.peers.get(sender)
        if ps is not None:
            ps.their_resync_ms = now_ms
            return
        self._strangers.pop(sender, None)
        self._strangers[sender] = now_ms  # most recent last
        if len(self._strangers) > MAX_STRANGERS:
            del self._strangers[next(iter(self._strangers))]

    def _may_digest(self, ps: PeerState, now_ms: float) -> bool:
        """Not within ``sync_retry_ms`` of our last digest to it, nor while it resyncs with
        us (its pulls push back what we lack; ours would only pull its stale leaves)."""
        retry = self.cfg.sync_retry_ms
        if ps.catchup and self.since_waiting(now_ms):  # our start's SINCEs answer first
            return False
        return now_ms - ps.last_digest_ms >= retry and now_ms - ps.their_resync_ms >= retry

    def _resync_busy(self, peer: str, now_ms: float) -> bool:
        """True while another peer's resync round is under way (pulls, or a fresh digest)."""
        for other, ps in self.peers.items():
            if other == peer or not ps.needs_resync:
                continue
            if ps.inflight or ps.pending_leaves:
                return True
            if now_ms - ps.last_digest_ms < self.cfg.sync_retry_ms:
                return True
        return False

    def catch_up(self, names: Sequence[str], now_ms: float) -> Payloads:
        """Resync with these peers now and in parallel: a digest to each at once (to
        ``catchup_fanout`` of them, chosen at random beyond), not from the next tick one peer
        at a time. Each differing leaf is still pulled from one of them (``LeafClaims``).
        This period's repair round is taken by it. This instance's first catch-up, with a
        state restored, sends a SINCE to each instead (``_since``; the module docstring)."""
        # A peer already resyncing with us (it sent a digest or a pull just now: it knew of
        # us first) is left to it: its pulls push back what we lack.
        retry = self.cfg.sync_retry_ms
        names = [
            n for n in names if n in self.peers and now_ms - self.peers[n].their_resync_ms >= retry
        ]
        if len(names) > self.cfg.catchup_fanout:
            names = sorted(self.rng.sample(names, self.cfg.catchup_fanout))
        if not names:
            return []
        out: Payloads = []
        summary = self._summary() if self.catchup is None else None
        for i, n in enumerate(names):
            ps = self.peers[n]
            ps.needs_resync = ps.catchup = True
            ps.catchup_resent = False
            if ps.inflight or ps.pending_leaves:
                continue
            if summary is not None:
                out += self._since(n, ps, [i, len(names), summary], now_ms)
            else:
                out += self._digest(n, ps, now_ms)
        self._last_sync_ms = now_ms
        if self.catchup is None or self.catchup.done_ms is not None:
            self.catchup = CatchUp(now_ms, list(names), set(names))
        else:
            self.catchup.add(names)
        self.counters.incr("catchups")
        return out

    def _unanswered(self, sender: str, ps: PeerState, body: Body, now: float) -> Payloads:
        """A catch-up peer spoke without answering our digest: it may have dropped it, not
        knowing our address yet (its Serf view lags ours at a start). Send it again at once,
        once, instead of after ``sync_retry_ms``."""
        if isinstance(body, Leaves | SyncOk) or ps.catchup_resent or ps.last_digest_ms >= now:
            return []  # (a digest sent in answer to this very message is not unanswered)
        ps.catchup_resent = True
        self.counters.incr("catchup_resent")
        return self._digest(sender, ps, now)

    def _answered(self, ps: PeerState, now: float) -> None:
        ps.digest_unanswered = False
        if ps.catchup and self.catchup is not None:
            self.catchup.answered(now)

    def _end_catchup(self, peer: str, ps: PeerState, now: float, *, lost: bool = False) -> None:
        if ps.catchup:
            ps.catchup = False
            if self.catchup is not None:
                self.catchup.end(peer, now, lost=lost)

    def _recheck_catchup(self, now: float) -> Payloads:
        """Once a catch-up's pulls have all drained, compare again at once with its peers
        that answered but had nothing left to pull (another peer was pulled for their
        leaves), instead of at the next tick's retry."""
        mine = [(n, ps) for n, ps in self.peers.items() if ps.catchup]
        if any(ps.inflight or ps.pending_leaves for _, ps in mine):
            return []
        out: Payloads = []
        for n, ps in mine:
            if ps.needs_resync and not ps.digest_unanswered:
                out += self._digest(n, ps, now)
        return out

    # ------------------------------------------------------------------ SINCE
    def _summary(self) -> list[list[Any]] | None:
        """The restored state's newest timestamp per origin, as a SINCE carries it; None
        for an empty state (a first start: nothing to compare, the digests pull it all) or
        one with more than ``MAX_ORIGINS`` origins (a DIGEST instead)."""
        newest = self.state.map.newest_per_origin()
        if not newest or len(newest) > MAX_ORIGINS:
            return None
        return [[node, ts.ms, ts.logical] for node, ts in sorted(newest.items())]

    def _since(self, peer: str, ps: PeerState, fields: list[Any], now_ms: float) -> Payloads:
        """Ask ``peer`` for its entries newer than our summary, in its share of the leaves
        (``fields``: share, shares, summary). No digest goes until it answered, or
        ``pull_timeout_ms`` passed (``since_waiting``)."""
        req = self._next_req
        self._next_req += 1
        ps.since_req, ps.since_ms, ps.since_seen, ps.since_count = req, now_ms, 0, -1
        self.counters.incr("since_sent")
        return self.enc.encode(peer, SINCE, [req, *fields])

    def since_waiting(self, now_ms: float) -> bool:
        """Our start's SINCEs await an answer: each for up to ``pull_timeout_ms``, and
        once one was answered whole, the others for as long again as that took (at least
        ``SINCE_GRACE_MS``): a peer that is gone (remembered, not yet dropped by Serf)
        then costs its share a digest comparison with the others, not the whole timeout.
        Until then no catch-up peer gets a digest: one that went before another peer's
        share had arrived would be answered with the leaf digests of all of that share."""
        c = self.catchup
        first = c.since_done_ms if c is not None else None
        for ps in self.peers.values():
            if ps.since_req == 0:
                continue
            if first is not None:
                if now_ms - first < max(SINCE_GRACE_MS, first - ps.since_ms):
                    return True
            elif now_ms - ps.since_ms < self.cfg.pull_timeout_ms:
                return True
        return False

    def since_wait_until(self, now_ms: float) -> float | None:
        """When ``since_waiting`` turns False if no answer comes meanwhile (protocol ms);
        None when it is False already (at ``now_ms``)."""
        c = self.catchup
        first = c.since_done_ms if c is not None else None
        ends = [
            first + max(SINCE_GRACE_MS, first - ps.since_ms)
            if first is not None
            else ps.since_ms + self.cfg.pull_timeout_ms
            for ps in self.peers.values()
            if ps.since_req != 0
        ]
        end = max(ends, default=None)
        return end if end is not None and end > now_ms else None

    def _on_since(self, sender: str, m: Since, now_ms: float) -> Payloads:
        """A restarted peer asks what it missed: our entries newer than its summary in its
        share of the leaves, in ENTRIES messages at once (at most our part of
        ``SINCE_BUDGET_BYTES``), then PULL_DONE. It resyncs with us (``_resyncing_with_us``):
        its digest follows, and what it holds that we lack comes back by its pulls."""
        self._resyncing_with_us(sender, now_ms)
        served = self._since_served
        if now_ms - served.get(sender, -1e18) < SINCE_EVERY_MS:
            self.counters.incr("since_refused")
            return self.enc.encode(sender, PULL_DONE, [m.req, 0])
        served.pop(sender, None)
        served[sender] = now_ms  # most recent last
        if len(served) > MAX_STRANGERS:
            del served[next(iter(served))]
        found = self.state.map.newer_than(m.summary, m.share, m.shares)
        items = list(islice(found, SINCE_MAX_ENTRIES))
        budget = SINCE_BUDGET_BYTES // m.shares
        before = self.counters.get("sent_entries", 0)
        out = self.enc.pack_entries(sender, ENTRIES, [m.req], items, budget=budget)
        sent = self.counters.get("sent_entries", 0) - before  # messages, not FRAG pieces
        self.counters.incr("since_served")
        return out + self.enc.encode(sender, PULL_DONE, [m.req, sent])

    def _since_entries(self, sender: str, ps: PeerState, req: int, now_ms: float) -> Payloads:
        """One ENTRIES message of its answer to our SINCE (joined by the caller)."""
        if not req or req != ps.since_req:
            return []
        ps.since_seen += 1
        if ps.catchup and self.catchup is not None:
            self.catchup.answered(now_ms)
        if 0 <= ps.since_count <= ps.since_seen:  # its PULL_DONE came before this one
            return self._since_end(sender, ps, now_ms)
        return []

    def _since_done(self, sender: str, ps: PeerState, m: PullDone, now_ms: float) -> Payloads:
        """Its PULL_DONE for our SINCE: the answer is complete once that many ENTRIES
        arrived (datagrams may come out of order; a lost one leaves the SINCE open until
        ``since_waiting`` gives up, and the digests find what it held)."""
        ps.since_count = m.count
        if ps.since_seen < m.count:
            return []
        return self._since_end(sender, ps, now_ms)

    def _since_end(self, sender: str, ps: PeerState, now_ms: float) -> Payloads:
        """Its answer to our SINCE is complete: compare digests with it (and the other
        catch-up peers) now, unless other answers are still awaited: the rest of what we
        lack, if any, is pulled as in any resync; "equal" ends its catch-up."""
        ps.since_req = 0
        c = self.catchup
        if ps.catchup and c is not None:
            c.answered(now_ms)
            if c.since_done_ms is None:
                c.since_done_ms = now_ms
        if self.on_since_end is not None:
            self.on_since_end()
        if self.since_waiting(now_ms):
            return []
        return self._recheck_catchup(now_ms)
