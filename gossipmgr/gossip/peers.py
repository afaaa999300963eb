"""What the anti-entropy protocol keeps per peer, its timing and size knobs, and the table
of which peer each differing leaf is being pulled from. PURE (plain records).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from gossipmgr.core.crdt import Entry, Key
from gossipmgr.gossip.datagram import Counters

__all__ = ["GossipConfig", "LeafClaims", "PeerState"]


@dataclass(frozen=True)
class GossipConfig:
    """Timing and size knobs. Each default has its reason beside it."""

    #: Retransmission tick: 150 ms sits inside the issue's 100-200 ms and at memberlist's
    #: local-profile gossip interval, so a lost datagram costs ~1 tick.
    tick_ms: int = 150
    #: Resend an unacknowledged interval after this long: ~2 loopback/LAN RTTs plus a tick.
    retransmit_ms: int = 300
    #: Periodic repair with one random peer. 2 s keeps idle traffic near 3 kbit/s per
    #: instance (one ~600 B digest out + reply every 2 s) while repairing any miss quickly.
    sync_interval_ms: int = 2_000
    #: Retry a resync digest that got no answer after this long.
    sync_retry_ms: int = 500
    #: Leaves pulled per window. A leaf holds ~25 entries at 100,000 records, so 32 leaves is
    #: ~100 KB per window: well under a default 208 KB socket buffer, no burst loss.
    pull_window_leaves: int = 32
    #: Pull windows outstanding at once towards one peer (resync rounds run one peer at a
    #: time, so this is the whole catch-up pipeline).
    pull_windows_in_flight: int = 4
    #: An outstanding pull with no PULL_DONE after this long is re-queued.
    pull_timeout_ms: int = 1_000
    #: Deltas kept for peers that have not acknowledged them. Past this, laggards resync.
    max_buffer: int = 4_096
    #: Datagram payload budget: 1,400-byte datagrams minus the AEAD header/tag.
    max_payload: int = 1_300
    #: A peer heard nothing from for this long is *silent* (dead, or cut off): it gets no
    #: more interval retransmits and holds no deltas in the buffer; it is probed with a
    #: digest every ``silent_probe_ms`` instead and resyncs when it answers. 3 s is 10
    #: retransmit periods, and a live peer is heard from at least every sync interval.
    silent_after_ms: int = 3_000
    silent_probe_ms: int = 2_000
    #: A peer sorting after us that we sent nothing for this long gets an ACK, so it hears
    #: from us: the lease orders candidates heard from in the last 10 s first
    #: (``LIVE_PEER_MS``; ``CatchUpPeers._heartbeat`` says why only those). 6 s keeps that
    #: within 10 s with room for the round trip; 30 instances then send ~2.4 heartbeats/s
    #: each on average. Only a peer that owes us something (or that Serf lists failed) is
    #: *silent* and probed by digest (``CatchUpPeers._owes``).
    heartbeat_ms: int = 6_000
    #: A peer behind us that acknowledged nothing for this long gets our deltas by relay
    #: as well (``AntiEntropy._relay``): two retransmit periods, more than twice the
    #: longest wait of a deferred ack (``ack_delay_ms`` + a tick), so a peer whose datagrams
    #: arrive is not relayed to, even under load, and a one-way cut heals in ~5 ticks.
    relay_after_ms: int = 600
    #: With at most this many peers, a write that a peer does not acknowledge in
    #: ``relay_after_ms`` goes to our other peers too, who forward it (``AntiEntropy._relay``,
    #: ``CatchUpPeers._forwards``): a one-way cut heals in a few ticks. A delta that came
    #: straight from its writer is never forwarded otherwise (each receiver got every write
    #: a second time, forwarded by the other, before). Beyond this many peers there is no
    #: relay: the repair rounds heal a cut (a relay there would go to, and on from, dozens
    #: of peers).
    forward_all_up_to: int = 8
    #: A delta received within this long of our last ACK to its sender is acknowledged at
    #: the next tick (one ACK for all of them), not at once: sequential writes at r1 cost
    #: each peer an ACK sent and r1 an ACK received per write. The first delta after a
    #: quiet spell is acked at once. 100 ms + one tick stays under ``retransmit_ms``, so a
    #: deferred ACK causes no retransmit.
    ack_delay_ms: int = 100
    #: Catch-up: at start, and when a peer (re)appears, a digest goes at once (not at the next
    #: tick or repair round) to every such peer up to this many, chosen at random beyond it,
    #: and their resyncs run in parallel (each differing leaf is still pulled from one of
    #: them). 8 keeps the answers to one start (up to 64 leaf digests from each peer, ~40 KB)
    #: well inside a socket buffer however large the cluster; the other peers resync one at
    #: a time after it, as before, and mostly answer "equal".
    catchup_fanout: int = 8


@dataclass
class PeerState:
    acked: int = 0  # A[j]: highest local seq acknowledged by j
    received: int = 0  # r[j]: highest seq of j's we hold without a gap
    incarnation: int = 0  # j's incarnation as last seen (0 = never heard)
    last_sent_ms: float = -1e18  # when we last sent j an interval
    #: the last tick at which it had acknowledged all our deltas (``Relays._resend_due``)
    caught_up_ms: float = -1e18
    last_resent_ms: float = -1e18  # when we last resent it an interval
    #: our deltas up to this seq went by relay to our other peers for it
    relayed: int = 0
    needs_resync: bool = True
    last_digest_ms: float = -1e18
    pending_leaves: deque[int] = field(default_factory=deque)
    queued_leaves: set[int] = field(default_factory=set)
    inflight: dict[int, tuple[list[int], float]] = field(default_factory=dict)
    entries_seen: dict[int, int] = field(default_factory=dict)  # req id -> ENTRIES received
    #: req id -> the entries received for it: the peer's whole content of those leaves,
    #: against which what it lacks is pushed back once the pull is complete
    pulled: dict[int, dict[Key, Entry]] = field(default_factory=dict)
    #: when the peer last sent us a DIGEST or a PULL: it is resyncing with us, and its
    #: pulls push back what we lack, so a resync of ours would only pull its stale leaves
    their_resync_ms: float = -1e18
    last_heard_ms: float = -1e18
    last_ack_ms: float = -1e18
    last_beat_ms: float = -1e18  # our last heartbeat to it
    last_ack_sent_ms: float = -1e18  # our last ACK of its deltas (``AntiEntropy._on_delta``)
    #: A delta of its arrived within ``ack_delay_ms`` of our last ACK: the next tick acks it.
    ack_due: bool = False
    #: In the current catch-up: resyncs in parallel with the other catch-up peers.
    catchup: bool = False
    #: Our start's catch-up asked it for what we missed (``SINCE``): the request id (0:
    #: none open), when, and how many of its ENTRIES messages arrived so far.
    since_req: int = 0
    since_ms: float = -1e18
    since_seen: int = 0
    #: how many its PULL_DONE said it sent (-1: not known yet; datagrams may reorder)
    since_count: int = -1
    #: Our last digest has had no answer (LEAVES or SYNC_OK) yet.
    digest_unanswered: bool = False
    #: The catch-up digest was sent again on first hearing from the peer (at most once: it
    #: may have been dropped because the peer did not know our address yet).
    catchup_resent: bool = False
    #: The longest time we heard nothing from the peer since a digest exchange with it
    #: last came out equal (our state then held everything it held); a new or restarted
    #: peer starts at "forever". A peer heard again after such a gap may have written
    #: what has not reached us yet (the lease among it): ``CatchUpPeers.caught_up``
    #: counts it only after the next equal exchange, which resets this to 0.
    unsynced_gap_ms: float = 1e18

    def behind(self, gap_ms: float) -> bool:
        """We went ``gap_ms`` or longer without hearing from it since we last synced."""
        return self.unsynced_gap_ms >= gap_ms


class LeafClaims:
    """leaf -> (peer, since): the one peer a differing leaf is being pulled from, so a fresh
    instance resyncing with several peers moves each leaf once, not once per peer."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.owner: dict[int, tuple[str, float]] = {}

    def claim(self, peer: str, leaves: Sequence[int], now_ms: float) -> list[int]:
        """The leaves no other peer is already being pulled for (claimed for ``peer``).

        A leaf skipped here is compared again at the next digest round with ``peer``, after
        the other pull landed, and pulled from ``peer`` only if it still differs.
        """
        mine = []
        for leaf in leaves:
            owner = self.owner.get(leaf)
            # A claim lasts until its pull completes or its peer is dropped or goes silent
            # (both release it), however long the leaf waits in that peer's queue.
            if owner is not None and owner[0] != peer:
                self.counters.incr("resync_leaves_deduped")
                continue
            self.owner[leaf] = (peer, now_ms)
            mine.append(leaf)
        return mine

    def release(self, peer: str, leaves: Sequence[int]) -> None:
        for leaf in leaves:
            if self.owner.get(leaf, ("",))[0] == peer:
                del self.owner[leaf]

    def release_all(self, peer: str) -> None:
        self.owner = {k: v for k, v in self.owner.items() if v[0] != peer}
