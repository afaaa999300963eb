"""The peer set, liveness and catch-up, for ``AntiEntropy`` (``gossipmgr.gossip.protocol``). PURE.

Who the peers are (``set_peers``, from Serf's view) and what happens when that changes: a
peer that is new, or comes back (listed alive again after failing or leaving, or under a
new boot id: restarted), and every peer at this instance's own start, is *caught up with*
at once: a digest goes to each of them in the same instant and their resyncs run in
parallel (``catch_up``), instead of one peer at a time from the next tick, or at the next
repair round. An instance that restarts thus starts pulling what it missed as soon as Serf
names its peers (docs/design.md, "Catch-up").

And what each peer costs while nothing happens, so that it does not grow with the cluster:
only a peer that owes us something, or that Serf lists failed, is *silent* and probed by
digest (``_owes``); an idle one gets a small heartbeat (``_heartbeat``); and beyond a few
peers a delta that came straight from its writer is not forwarded (``_forwards``).

``CatchUpPeers`` is a mixin of ``AntiEntropy`` (the protocol's state is one object); it
declares what it uses of it. ``CatchUp`` records one catch-up for the service's log.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gossipmgr.core.crdt import Entry, Key
from gossipmgr.gossip.datagram import Counters
from gossipmgr.gossip.encoder import MessageEncoder, Payloads
from gossipmgr.gossip.messages import ACK, Body, Leaves, SyncOk
from gossipmgr.gossip.peers import GossipConfig, LeafClaims, PeerState

__all__ = ["CatchUp", "CatchUpPeers"]

#: Senders not (yet) in the peer set whose last resync with us is remembered; the least
#: recent is forgotten first.
MAX_STRANGERS = 256


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
    peers: dict[str, PeerState]
    catchup: CatchUp | None
    enc: MessageEncoder
    _alive: dict[str, str] | None
    _strangers: dict[str, float]
    _claims: LeafClaims
    _last_sync_ms: float

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
        hears almost nobody in a large cluster (nothing forwarded beyond
        ``forward_all_up_to`` peers; heartbeats only to the peers sorting after their
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

    def _forwards(self, sender: str, entries: Sequence[tuple[Key, Entry]]) -> bool:
        """Whether a remote delta's novel part is buffered, and so sent on to our other
        peers. Always with at most ``forward_all_up_to`` peers; beyond that, not when it
        came straight from the instance that wrote it (every entry stamped by the sender):
        the writer pushes it to every peer itself and retransmits until each acknowledges;
        what it cannot reach is repaired by the digest rounds (push-pull). Forwarding it
        cost every instance one datagram (and one ack) per peer per write: at 30 instances
        the lease holder's renewals alone made ~3 KB/s per idle instance."""
        if len(self.peers) <= self.cfg.forward_all_up_to:
            return True
        return any(e.ts.node != sender for _, e in entries)

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

    def catch_up(self, names: Sequence[str], now_ms: float) -> Payloads:
        """Resync with these peers now and in parallel: a digest to each at once (to
        ``catchup_fanout`` of them, chosen at random beyond), not from the next tick one peer
        at a time. Each differing leaf is still pulled from one of them (``LeafClaims``).
        This period's repair round is taken by it."""
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
        for n in names:
            ps = self.peers[n]
            ps.needs_resync = ps.catchup = True
            ps.catchup_resent = False
            if not ps.inflight and not ps.pending_leaves:
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
        if isinstance(body, Leaves | SyncOk) or ps.catchup_resent:
            return []
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
