"""Which deltas go on to other peers than their writer's: forwards and relays. PURE.

A write reaches every peer by its writer's push, and its resends until each peer
acknowledges it (``gossipmgr.gossip.protocol``). A receiver does not forward what came
straight from its writer: in a 3-instance cluster each receiver got every write a second
time that way, forwarded by the other receiver at its next retransmit, and decoded and
joined it for nothing (~half its datagrams). What forwarding was for, a one-way cut from
the writer to one peer healed by the others, is done by a *relay*: when a peer behind us has
acknowledged nothing for ``relay_after_ms``, or goes silent without acknowledging while
Serf lists it alive, the writer sends the deltas it lacks to its other peers heard from
lately as well (``_relay``); they hold them already, and a delta straight from its writer
that brings nothing new is what a receiver forwards (``_forwards``), with its own acks
and resends. Beyond ``forward_all_up_to`` peers nothing is relayed: the repair rounds
heal a cut (docs/design.md, "Anti-entropy").

``Relays`` is a mixin of ``AntiEntropy`` (the protocol's state is one object); it declares
what it uses of it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.gossip.datagram import Counters
from gossipmgr.gossip.encoder import MessageEncoder, Payloads
from gossipmgr.gossip.peers import GossipConfig, PeerState

__all__ = ["Relays"]


class Relays:
    """The forward and relay part of ``AntiEntropy`` (a mixin: see the module)."""

    seq: int
    cfg: GossipConfig
    counters: Counters
    peers: dict[str, PeerState]
    buffer: deque[tuple[int, str, LWWMap]]
    enc: MessageEncoder
    _alive: Mapping[str, str] | None

    def _forwards(
        self, sender: str, entries: Sequence[tuple[Key, Entry]], novel: LWWMap
    ) -> LWWMap | None:
        """What of a remote delta is buffered, and so sent on to our other peers: None for
        nothing.

        - Passed on by its sender (an entry not stamped by it): its novel part.
        - Straight from its writer (every entry stamped by the sender), bringing something
          new: nothing. The writer pushes every write to every peer itself and resends it
          until each acknowledges. Forwarding it made each receiver of a 3-instance cluster
          get every write twice, the second copy decoded and joined for nothing: ~half its
          datagrams, and more than half its entries, while nothing was lost.
        - Straight from its writer and bringing nothing new, with at most
          ``forward_all_up_to`` peers: all of it. The writer resends only what a peer has not
          acknowledged, and sends it to the others as well when that peer's acks stall
          (``AntiEntropy._relay``, a one-way cut): forwarding is how it gets there.
        """
        if any(e.ts.node != sender for _, e in entries):
            return novel if len(novel) else None
        if len(novel) or not entries or len(self.peers) > self.cfg.forward_all_up_to:
            return None
        repeat = LWWMap.lazy()  # a delta: never digested, so never hashed
        repeat.merge(entries)
        return repeat

    def _relay(self, peer: str, ps: PeerState, now_ms: float, *, silent: bool = False) -> Payloads:
        """At each tick: our deltas ``peer`` has not acknowledged, and not relayed yet, when
        it has acknowledged nothing for ``relay_after_ms`` (since it last held all), or went
        ``silent`` without acknowledging while Serf lists it alive: sent to our other peers
        heard from lately as well, each as the interval ``peer`` would get from its
        ``acked``. They hold those deltas already, and a delta straight from its writer that
        brings nothing new is what they forward (``_forwards``), with their own acks and
        resends: a one-way cut from us to ``peer`` heals in a few ticks, and nothing is
        forwarded while datagrams arrive. What a relay cannot reach, the repair rounds heal."""
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
            if other != peer and now_ms - o.last_heard_ms < self.cfg.silent_after_ms:
                out += self.enc.interval_messages(other, lo, self.buffer)
        if out:
            self.counters.incr("relays")
        return out
