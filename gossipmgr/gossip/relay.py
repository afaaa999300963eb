"""Which deltas go on to other peers than their writer's: forwards and relays. PURE.

A write reaches every peer by its writer's push, and its resends until each peer
acknowledges it (``gossipmgr.gossip.protocol``). A receiver does not forward what came
straight from its writer: in a 3-instance cluster each receiver got every write a second
time that way, forwarded by the other receiver at its next retransmit, and decoded and
joined it for nothing (~half its datagrams). What forwarding was for, a one-way cut from the
writer to one peer healed by the others, is done by a *relay*: when a peer behind us has
acknowledged nothing for ``relay_after_ms``, or goes silent without acknowledging while Serf
lists it alive, the writer sends the deltas it lacks to its other peers heard from lately as
well, as ``RELAY`` messages (``_relay``), and a receiver forwards those (``_forwards``),
with its own acks and resends. A lost push is resent once the peer has acknowledged nothing
for ``retransmit_ms`` (``_resend_due``), while writes go on too. Beyond
``forward_all_up_to`` peers nothing is relayed: the repair rounds heal a cut
(docs/design.md, "Anti-entropy").

``Relays`` is a mixin of ``AntiEntropy`` (the protocol's state is one object); it declares
what it uses of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

from gossipmgr.core.crdt import Entry, Key, LWWMap, wins
from gossipmgr.gossip.datagram import Counters
from gossipmgr.gossip.encoder import MessageEncoder, Payloads
from gossipmgr.gossip.messages import DELTA, Delta
from gossipmgr.gossip.peers import GossipConfig, PeerState

__all__ = ["RELAY", "Relays"]

#: ``(lo, hi)`` of a relay: a DELTA for the interval (0, 0], which acknowledges nothing (an
#: older instance joins it as any delta, and forwards only what is new to it).
RELAY = (0, 0)


class Relays:
    """The forward and relay part of ``AntiEntropy`` (a mixin: see the module)."""

    seq: int
    cfg: GossipConfig
    counters: Counters
    peers: dict[str, PeerState]
    buffer: deque[tuple[int, str, LWWMap]]
    enc: MessageEncoder
    _alive: Mapping[str, str] | None

    def _forwards(self, sender: str, m: Delta, novel: LWWMap) -> LWWMap | None:
        """What of a remote delta is buffered, and so sent on to our other peers: None for
        nothing.

        - A relay (``RELAY``: its writer sends it for a peer that does not acknowledge):
          all of it, new to us or not, with at most ``forward_all_up_to`` peers.
        - Passed on by its sender (an entry not stamped by it): its novel part.
        - Straight from its writer, otherwise: nothing. The writer pushes every write to
          every peer itself and resends it until each acknowledges. Forwarding it made each
          receiver of a 3-instance cluster get every write twice, the second copy decoded
          and joined for nothing: ~half its datagrams, while nothing was lost.
        """
        if (m.lo, m.hi) == RELAY:
            if not m.entries or len(self.peers) > self.cfg.forward_all_up_to:
                return None
            relayed = LWWMap.lazy()  # a delta: never digested, so never hashed
            relayed.merge(m.entries)
            return relayed
        if len(novel) and any(e.ts.node != sender for _, e in m.entries):
            return novel
        return None

    def _resend_due(self, ps: PeerState, now_ms: float) -> bool:
        """At each tick: whether ``ps`` gets the interval it has not acknowledged again.

        After ``retransmit_ms`` with nothing sent to it (a pause in our writes), as always;
        and, while we keep writing (each push puts that off), once it acknowledged nothing
        for ``retransmit_ms`` (a push lost: it acknowledges only up to the gap), at most
        every ``retransmit_ms``. Without the second, a lost push was resent only at a pause
        in the writes; the forward of the other receivers hid it, and the relay alone would
        send every write through them until then."""
        if ps.acked >= self.seq:
            ps.caught_up_ms = now_ms
            return False
        retransmit = self.cfg.retransmit_ms
        if now_ms - ps.last_sent_ms >= retransmit:
            return True
        stalled = now_ms - max(ps.caught_up_ms, ps.last_ack_ms) >= retransmit
        return stalled and now_ms - ps.last_resent_ms >= retransmit

    def _relay(self, peer: str, ps: PeerState, now_ms: float, *, silent: bool = False) -> Payloads:
        """At each tick: our deltas ``peer`` has not acknowledged, and not relayed yet, when it has
        acknowledged nothing for ``relay_after_ms`` (since it last held all), or went
        ``silent`` without acknowledging while Serf lists it alive: sent to our other
        peers heard from lately as well, as ``RELAY`` messages (each key once, its
        newest entry), which they forward (``_forwards``), with their own acks and
        resends: a one-way cut from us to ``peer`` heals in a few ticks, and nothing is
        forwarded while datagrams arrive. What a relay cannot reach, the repair rounds
        heal."""
        if ps.acked >= self.seq:
            ps.caught_up_ms = now_ms
            return []
        if silent:
            if self._alive is not None and peer not in self._alive:
                return []
        elif now_ms - max(ps.caught_up_ms, ps.last_ack_ms) < self.cfg.relay_after_ms:
            return []
        lo = max(ps.acked, ps.relayed)
        if lo >= self.seq or len(self.peers) > self.cfg.forward_all_up_to:
            return []
        ps.relayed = self.seq
        out: Payloads = []
        for other, o in self.peers.items():
            if other == peer or now_ms - o.last_heard_ms >= self.cfg.silent_after_ms:
                continue
            out += self.enc.pack_entries(other, DELTA, list(RELAY), self._newest(lo, other))
        if out:
            self.counters.incr("relays")
        return out

    def _newest(self, lo: int, other: str) -> list[tuple[Key, Entry]]:
        """The buffered deltas after ``lo``, but ``other``'s own (BP), each key once: its
        newest entry."""
        newest: dict[Key, Entry] = {}
        for seq, origin, delta in self.buffer:
            if seq <= lo or origin == other:
                continue
            for k, e in delta.items():
                old = newest.get(k)
                if old is None or wins(k, e, old):
                    newest[k] = e
        return list(newest.items())
