"""Confirm rounds: ask every peer to answer *now*, and collect who did. PURE.

The confirm of a running job (``core.confirm``, ``runtime.confirm``) needs a round trip
that started after it was asked: "heard from lately" (what the lease's majority rule
counts) includes peers a holder cut off a moment ago still counts for seconds. A round
sends ``PING nonce`` to the peers it is given; each answers ``PONG nonce, epoch, holder``
(the lease as it reads it, so a peer that has seen a newer lease says so). Only a PONG that
carries the round's nonce, from a peer the round asked, counts: it left that peer after
the PING did, so after the round started. The nonce comes from the caller (the I/O layer
draws it at random; this module stays deterministic); every datagram is sealed and
replay-guarded below this layer (``gossip.crypto``), so an answer cannot be forged or
replayed by anyone without the gossip key.

``ConfirmRounds`` is a mixin of ``AntiEntropy`` (one protocol object); it declares what it
uses of it. An instance that predates these messages drops them (unknown type) and never
answers: it counts as not answering.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gossipmgr.core.confirm import Answer
from gossipmgr.core.lease import Lease
from gossipmgr.core.state import ClusterState
from gossipmgr.gossip.datagram import Counters
from gossipmgr.gossip.encoder import MessageEncoder, Payloads
from gossipmgr.gossip.messages import MAX_NAME, PING, PONG, Ping, Pong
from gossipmgr.gossip.peers import PeerState

__all__ = ["MAX_ROUNDS", "ConfirmRound", "ConfirmRounds"]

#: Confirm rounds open at once; beyond it the oldest is forgotten (its confirm then sees no
#: more answers and is refused at its timeout). A round lives about a second.
MAX_ROUNDS = 64


@dataclass
class ConfirmRound:
    """One round: whom it asked, when, and who answered with which lease."""

    nonce: int
    asked: set[str]
    started_ms: float
    answers: dict[str, Answer] = field(default_factory=dict)


class ConfirmRounds:
    """The confirm part of ``AntiEntropy`` (a mixin: see the module)."""

    name: str
    state: ClusterState
    enc: MessageEncoder
    counters: Counters
    peers: dict[str, PeerState]
    rounds: dict[int, ConfirmRound]

    def confirm_ask(self, names: Iterable[str], nonce: int, now_ms: float) -> Payloads:
        """Start round ``nonce``: a PING to each of ``names`` that is a peer."""
        asked = {n for n in names if n in self.peers and n != self.name}
        self.rounds.pop(nonce, None)
        self.rounds[nonce] = ConfirmRound(nonce, asked, now_ms)
        while len(self.rounds) > MAX_ROUNDS:
            del self.rounds[next(iter(self.rounds))]
        return self.confirm_resend(nonce)

    def confirm_resend(self, nonce: int) -> Payloads:
        """The round's PING again, to the peers it asked that have not answered (a datagram
        may be lost); nothing for a round that is over."""
        r = self.rounds.get(nonce)
        if r is None:
            return []
        out: Payloads = []
        for n in sorted(r.asked - set(r.answers)):
            self.counters.incr("confirm_pings")
            out += self.enc.encode(n, PING, [nonce])
        return out

    def confirm_answers(self, nonce: int) -> dict[str, Answer]:
        """The peers that answered round ``nonce`` so far, with the lease each reads."""
        r = self.rounds.get(nonce)
        return dict(r.answers) if r is not None else {}

    def confirm_end(self, nonce: int) -> None:
        self.rounds.pop(nonce, None)

    def _on_confirm(self, sender: str, body: Ping | Pong) -> Payloads:
        if isinstance(body, Ping):
            lease = Lease.from_value(self.state.lease() or {})
            epoch, holder = (lease.epoch, lease.holder) if lease is not None else (0, "")
            self.counters.incr("confirm_pongs")
            return self.enc.encode(sender, PONG, [body.nonce, max(0, epoch), holder[:MAX_NAME]])
        r = self.rounds.get(body.nonce)
        if r is None or sender not in r.asked:
            self.counters.incr("confirm_stray")  # a round that is over, or not ours
            return []
        r.answers[sender] = Answer(body.lease_epoch, body.lease_holder)
        return []
