"""Delta anti-entropy between gossipmgr instances, sans-I/O.

This object takes bytes and time in and returns ``(peer, bytes)`` to send; it never awaits,
never reads a clock and never touches a socket (``h11`` style). ``gossipmgr.gossip.service``
moves the bytes over UDP; tests drive it over ``gossipmgr.testing.network.InMemoryNetwork``.

The algorithm is Almeida, Shoker and Baquero's delta-interval anti-entropy with per-peer
acknowledgements, plus the two fixes Enes et al. (ICDE 2019) showed are needed for deltas to
actually be cheaper than full state:

* Every change joined into the replica (local writes, and *novel* parts of received deltas)
  is appended to a delta buffer under a local sequence number, remembering its origin.
* **Eager push**: a local write is sent to every peer at once as the interval ``(c-1, c]``.
* **Tick** (every ``tick_ms``): a peer ``j`` whose ack ``A[j]`` is behind gets the join of
  ``D(A[j], c]`` again, after ``retransmit_ms`` without an ack.
* **BP** (never send a delta back to the peer it came from): deltas whose origin is ``j`` are
  left out of ``j``'s intervals.
* **RR** (remove redundancy): a receiver joins the delta and buffers only the part that
  changed its state (``LWWMap.join`` returns it), so old news is never forwarded again.
* Acks: a receiver keeps ``r[j]``, the highest sequence received without a gap from ``j``; an
  interval ``(lo, hi]`` with ``lo <= r[j]`` moves it to ``hi``. The entries of a gapped interval
  are applied anyway (a LWW join is order-free) but not acknowledged, so the sender resends
  from ``r[j]``. Sequence numbers are per *incarnation* (restart); a new incarnation resets them.
* **Bounded memory**: the buffer drops what every current peer acknowledged; when it would
  exceed ``max_buffer``, the oldest deltas are dropped and a peer that had not acknowledged
  them is switched to a digest resync instead (Akka's DeltaNack answered with full state,
  but here only the differing buckets move). A peer heard nothing from for
  ``silent_after_ms`` (dead, or cut off) is switched to resync at once: it holds nothing in
  the buffer and gets only a digest probe every ``silent_probe_ms`` until it answers.

Digest resync (new peers, restarted peers, peers too far behind, and a periodic repair round
with one random peer every ``sync_interval_ms``): the initiator sends its 64 super-bucket
digests (``DIGEST``); the responder answers ``SYNC_OK`` when they match, else the 64 leaf
digests of each differing super-bucket (``LEAVES``) and flags the initiator for its own pull;
the initiator pulls differing leaves a window at a time (``PULL`` -> ``ENTRIES``... ``PULL_DONE``),
then checks again. So both sides pull what they lack, only differing buckets travel, and
the window paces bulk transfer (no UDP burst larger than ``pull_window_leaves`` leaves).
Equal digests prove each side holds everything the other had acknowledged-or-not at that
instant, so ``SYNC_OK`` also acknowledges the whole buffer.

Every message fits one datagram payload of ``max_payload`` bytes (1,400 minus the crypto
overhead); a larger message (a huge value, a big interval) is split into ``FRAG`` pieces and
reassembled with bounded memory.

Message format (msgpack list): ``[PROTO_VERSION, type, sender, incarnation, *fields]``.
Types are append-only.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.codec import entries_from_wire_untrusted, entry_to_wire, unpack_untrusted
from gossipmgr.core.crdt import FANOUT, Entry, Key, LWWMap
from gossipmgr.core.state import ClusterState
from gossipmgr.errors import BadPacket, ClockError
from gossipmgr.gossip.datagram import Counters

log = logging.getLogger("gossipmgr.gossip")

PROTO_VERSION = 1

# Message types. WARNING: ONLY APPEND TO THIS LIST (wire compatibility).
DELTA = 1
ACK = 2
DIGEST = 3
SYNC_OK = 4
LEAVES = 5
PULL = 6
ENTRIES = 7
PULL_DONE = 8
FRAG = 9
TYPE_NAMES = {
    DELTA: "delta",
    ACK: "ack",
    DIGEST: "digest",
    SYNC_OK: "sync_ok",
    LEAVES: "leaves",
    PULL: "pull",
    ENTRIES: "entries",
    PULL_DONE: "pull_done",
    FRAG: "frag",
}

#: Largest reassembled message and how many partial ones are kept per instance.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_PARTIAL_MESSAGES = 64
FRAG_TTL_MS = 5_000
MAX_NAME = 128
#: Fixed cost of a message header, a conservative bound used when packing entries.
_HEADER_SLACK = 64


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


@dataclass
class PeerState:
    acked: int = 0  # A[j]: highest local seq acknowledged by j
    received: int = 0  # r[j]: highest seq of j's we hold without a gap
    incarnation: int = 0  # j's incarnation as last seen (0 = never heard)
    last_sent_ms: float = -1e18  # when we last sent j an interval
    needs_resync: bool = True
    last_digest_ms: float = -1e18
    pending_leaves: deque[int] = field(default_factory=deque)
    queued_leaves: set[int] = field(default_factory=set)
    inflight: dict[int, tuple[list[int], float]] = field(default_factory=dict)
    entries_seen: dict[int, int] = field(default_factory=dict)  # req id -> ENTRIES received
    last_heard_ms: float = -1e18
    last_ack_ms: float = -1e18


@dataclass
class Outcome:
    """What one input produced: datagram payloads to send and the novel delta to persist."""

    out: list[tuple[str, bytes]] = field(default_factory=list)
    novel: LWWMap | None = None


class AntiEntropy:
    """One instance's side of the protocol. Owns ``state`` mutations for remote deltas."""

    def __init__(
        self,
        name: str,
        incarnation: int,
        state: ClusterState,
        hlc: HLC,
        config: GossipConfig | None = None,
        *,
        rng: random.Random | None = None,
    ) -> None:
        if not name or len(name) > MAX_NAME:
            raise ValueError("instance name must be 1-128 characters")
        self.name = name
        self.incarnation = incarnation
        self.state = state
        self.hlc = hlc
        self.cfg = config or GossipConfig()
        self.rng = rng or random.Random(0)
        self.seq = 0  # c: our latest local sequence number
        self.buffer: deque[tuple[int, str, LWWMap]] = deque()  # (seq, origin, delta)
        self.peers: dict[str, PeerState] = {}
        self._next_req = 1
        self._next_msg = 1
        self._partial: OrderedDict[tuple[str, int], tuple[float, list[bytes | None]]] = (
            OrderedDict()
        )
        self._last_sync_ms = -1e18
        #: leaf -> (peer, since): the one peer a differing leaf is being pulled from, so a
        #: fresh instance resyncing with several peers moves each leaf once, not once per peer
        self._leaf_owner: dict[int, tuple[str, float]] = {}
        self.counters = Counters()
        self.largest_datagram = 0

    # ------------------------------------------------------------------ membership
    def set_peers(self, names: Iterable[str], now_ms: float) -> None:
        """The current peer set (alive gossipmgr instances, not including self)."""
        wanted = {n for n in names if n != self.name}
        for gone in set(self.peers) - wanted:
            del self.peers[gone]
            self._leaf_owner = {k: v for k, v in self._leaf_owner.items() if v[0] != gone}
        for n in wanted - set(self.peers):
            # Everything up to now reaches the new peer through a digest resync; deltas
            # from here on flow normally.
            self.peers[n] = PeerState(acked=self.seq, needs_resync=True, last_heard_ms=now_ms)
        self._prune()

    def heard_from(self, now_ms: float, within_ms: float) -> set[str]:
        """Peers that sent us an authenticated message in the last ``within_ms`` (never
        merely listed: a new peer starts as not heard from)."""
        return {
            n
            for n, ps in self.peers.items()
            if ps.incarnation != 0 and now_ms - ps.last_heard_ms < within_ms
        }

    # ------------------------------------------------------------------ local writes
    def local_write(self, delta: LWWMap, now_ms: float) -> Outcome:
        """Join a local delta (already timestamped by ``hlc``) and eagerly push it."""
        return self.push_local(self.state.apply(delta), now_ms)

    def push_local(self, novel: LWWMap, now_ms: float) -> Outcome:
        """Buffer and eagerly push the novel part of a local write already joined into
        ``state`` (the replica applies its own writes: ``Replica.on_local_write``)."""
        res = Outcome(novel=novel)
        if not len(novel):
            return res
        self._buffer(self.name, novel)
        wire: list[tuple[list[Any], int]] | None = None
        for peer, ps in self.peers.items():
            if not ps.needs_resync or ps.acked >= self.seq - 1:
                # Eager push of just this delta as the interval (c-1, c], in as many
                # messages as it takes (a POST /globals may hold many big values).
                if len(novel) == 1:  # one entry always fits a message (check_entry)
                    res.out += self._encode(
                        peer, DELTA, [self.seq - 1, self.seq, self._wire(novel)]
                    )
                else:
                    if wire is None:
                        wire = [
                            (w, len(msgpack.packb(w, use_bin_type=True))) for w in self._wire(novel)
                        ]
                    res.out += self._delta_messages(peer, self.seq - 1, self.seq, wire)
                ps.last_sent_ms = now_ms
        return res

    def _delta_messages(
        self, peer: str, lo: int, hi: int, wire: list[tuple[list[Any], int]]
    ) -> list[tuple[str, bytes]]:
        """DELTA messages for the interval (lo, hi] of these (entry, encoded size) pairs:
        every message but the last is sent as (lo, lo], which acknowledges nothing."""
        out: list[tuple[str, bytes]] = []
        batch: list[Any] = []
        size = 0
        for w, n in wire:
            if batch and size + n > self.cfg.max_payload - _HEADER_SLACK:
                out += self._encode(peer, DELTA, [lo, lo, batch])
                batch, size = [], 0
            batch.append(w)
            size += n
        return out + self._encode(peer, DELTA, [lo, hi, batch])

    def _buffer(self, origin: str, delta: LWWMap) -> None:
        self.seq += 1
        self.buffer.append((self.seq, origin, delta))
        if len(self.buffer) > self.cfg.max_buffer:
            dropped_seq, _, _ = self.buffer.popleft()
            self.counters.incr("buffer_overflow")
            for ps in self.peers.values():
                if ps.acked < dropped_seq:
                    ps.acked = self.seq
                    if not ps.needs_resync:
                        self.counters.incr("resync_overflow")
                    ps.needs_resync = True

    def _prune(self) -> None:
        floor = min((ps.acked for ps in self.peers.values()), default=self.seq)
        while self.buffer and self.buffer[0][0] <= floor:
            self.buffer.popleft()

    # ------------------------------------------------------------------ timer
    def tick(self, now_ms: float) -> list[tuple[str, bytes]]:
        """Retransmit unacknowledged intervals, drive resyncs and periodic repair."""
        out: list[tuple[str, bytes]] = []
        self._expire_partial(now_ms)
        silent_seen = False
        for peer, ps in self.peers.items():
            if now_ms - ps.last_heard_ms >= self.cfg.silent_after_ms:
                # Silent: stop retransmitting to it and stop holding deltas for it; a digest
                # probe now and then finds out when it is back, and the resync catches it up.
                if ps.acked < self.seq or not ps.needs_resync:
                    ps.acked, ps.needs_resync = self.seq, True
                    silent_seen = True
                self._release_leaves(peer, list(self._leaf_owner))
                ps.pending_leaves.clear()
                ps.queued_leaves.clear()
                ps.inflight.clear()
                if now_ms - ps.last_digest_ms >= self.cfg.silent_probe_ms:
                    out += self._digest(peer, ps, now_ms)
                continue
            if ps.acked < self.seq and now_ms - ps.last_sent_ms >= self.cfg.retransmit_ms:
                out += self._interval(peer, ps, now_ms)
            if ps.needs_resync and now_ms - ps.last_digest_ms >= self.cfg.sync_retry_ms:
                # One resync round at a time: after it drains, the next peer's digest mostly
                # matches (one SYNC_OK) instead of every peer sending leaf digests at once.
                if (
                    not ps.inflight
                    and not ps.pending_leaves
                    and not self._resync_busy(peer, now_ms)
                ):
                    out += self._digest(peer, ps, now_ms)
            for req, (leaves, sent) in list(ps.inflight.items()):
                if now_ms - sent >= self.cfg.pull_timeout_ms:
                    del ps.inflight[req]
                    ps.entries_seen.pop(req, None)
                    self._requeue(ps, leaves)
                    self.counters.incr("pull_timeout")
            out += self._pull_more(peer, ps, now_ms)
        if silent_seen:
            self._prune()
        if self.peers and now_ms - self._last_sync_ms >= self.cfg.sync_interval_ms:
            self._last_sync_ms = now_ms
            heard = [
                n
                for n, p in self.peers.items()
                if now_ms - p.last_heard_ms < self.cfg.silent_after_ms
            ]
            peer = self.rng.choice(sorted(heard or self.peers))
            ps = self.peers[peer]
            if not ps.inflight and not ps.pending_leaves:
                out += self._digest(peer, ps, now_ms)
        return out

    def _interval(self, peer: str, ps: PeerState, now_ms: float) -> list[tuple[str, bytes]]:
        """Send D(A[j], c] without j's own deltas (BP), as messages that fit a datagram."""
        ps.last_sent_ms = now_ms
        out: list[tuple[str, bytes]] = []
        lo = ps.acked
        batch: dict[Key, Entry] = {}
        size = 0
        hi = lo
        for seq, origin, delta in self.buffer:
            if seq <= lo:
                continue
            if origin != peer:
                for k, e in delta.items():
                    w = len(msgpack.packb(entry_to_wire(k, e), use_bin_type=True))
                    if batch and size + w > self.cfg.max_payload - _HEADER_SLACK and k not in batch:
                        out += self._encode(peer, DELTA, [lo, hi, self._wire_items(batch)])
                        lo, batch, size = hi, {}, 0
                    batch[k] = e
                    size += w
            hi = seq
        if hi > lo:
            out += self._encode(peer, DELTA, [lo, hi, self._wire_items(batch)])
        self.counters.incr("retransmits")
        return out

    # ------------------------------------------------------------------ resync
    def _digest(self, peer: str, ps: PeerState, now_ms: float) -> list[tuple[str, bytes]]:
        ps.last_digest_ms = now_ms
        self.counters.incr("digests_sent")
        return self._encode(peer, DIGEST, [self.seq, _pack64(self.state.map.super_digests())])

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

    def _requeue(self, ps: PeerState, leaves: Sequence[int]) -> None:
        for leaf in leaves:
            if leaf not in ps.queued_leaves:
                ps.queued_leaves.add(leaf)
                ps.pending_leaves.append(leaf)

    def _claim_leaves(self, peer: str, leaves: Sequence[int], now_ms: float) -> list[int]:
        """The leaves no other peer is already being pulled for (claimed for ``peer``).

        A leaf skipped here is compared again at the next digest round with ``peer``, after
        the other pull landed, and pulled from ``peer`` only if it still differs.
        """
        mine = []
        for leaf in leaves:
            owner = self._leaf_owner.get(leaf)
            # A claim lasts until its pull completes or its peer is dropped or goes silent
            # (both release it), however long the leaf waits in that peer's queue.
            if owner is not None and owner[0] != peer:
                self.counters.incr("resync_leaves_deduped")
                continue
            self._leaf_owner[leaf] = (peer, now_ms)
            mine.append(leaf)
        return mine

    def _release_leaves(self, peer: str, leaves: Sequence[int]) -> None:
        for leaf in leaves:
            if self._leaf_owner.get(leaf, ("",))[0] == peer:
                del self._leaf_owner[leaf]

    def _pull_more(self, peer: str, ps: PeerState, now_ms: float) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        # Keep a few windows in flight: enough to hide the RTT and the responder's packing
        # time, small enough (~400 KB at 100,000 records) to fit the 4 MiB socket buffers.
        while ps.pending_leaves and len(ps.inflight) < self.cfg.pull_windows_in_flight:
            leaves: list[int] = []
            while ps.pending_leaves and len(leaves) < self.cfg.pull_window_leaves:
                leaf = ps.pending_leaves.popleft()
                ps.queued_leaves.discard(leaf)
                leaves.append(leaf)
            req = self._next_req
            self._next_req += 1
            ps.inflight[req] = (leaves, now_ms)
            ps.entries_seen[req] = 0
            out += self._encode(peer, PULL, [req, leaves])
        return out

    # ------------------------------------------------------------------ receive
    def receive_untrusted(self, data: bytes, now_ms: float) -> Outcome:
        """Handle one decrypted datagram payload. Malformed input is dropped and counted."""
        try:
            return self._receive(data, now_ms)
        except BadPacket as exc:
            self.counters.incr(f"drop_{exc.reason}")
            return Outcome()
        except ClockError:
            self.counters.incr("drop_clock")
            return Outcome()

    def _receive(self, data: bytes, now_ms: float) -> Outcome:
        msg = unpack_untrusted(data, MAX_MESSAGE_BYTES)
        if not isinstance(msg, list) or len(msg) < 4:
            raise BadPacket("shape", "message must be a list")
        version, mtype, sender, inc = msg[:4]
        fields = msg[4:]
        if version != PROTO_VERSION:
            raise BadPacket("version", f"protocol version {version!r}")
        if type(mtype) is not int or mtype not in TYPE_NAMES:
            raise BadPacket("type", f"unknown message type {mtype!r}")
        if not isinstance(sender, str) or not 0 < len(sender) <= MAX_NAME:
            raise BadPacket("shape", "bad sender")
        if type(inc) is not int or inc < 0:
            raise BadPacket("shape", "bad incarnation")
        if sender == self.name:
            raise BadPacket("self", "message claims to come from this instance")
        self.counters.incr(f"recv_{TYPE_NAMES[mtype]}")
        if mtype == FRAG:
            whole = self._reassemble(sender, fields, now_ms)
            return self._receive(whole, now_ms) if whole is not None else Outcome()
        ps = self.peers.get(sender)
        if ps is not None:
            ps.last_heard_ms = now_ms
            if ps.incarnation != inc:
                if ps.incarnation != 0:
                    # The peer restarted: its sequence numbers start over and it may have
                    # lost volatile state: resync both ways.
                    self.counters.incr("peer_restarts")
                    ps.needs_resync = True
                    ps.acked = self.seq
                ps.received = 0
                ps.incarnation = inc
        handler = _HANDLERS[mtype]
        return handler(self, sender, ps, fields, now_ms)

    def _on_delta(self, sender: str, ps: PeerState | None, f: list[Any], now: float) -> Outcome:
        if len(f) != 3 or type(f[0]) is not int or type(f[1]) is not int or not f[0] <= f[1]:
            raise BadPacket("shape", "delta is [lo, hi, entries]")
        lo, hi, raw = f
        novel = self._apply_remote(entries_from_wire_untrusted(raw), now)
        if len(novel):
            self._buffer(sender, novel)
        res = Outcome(novel=novel)
        if ps is not None:
            if lo <= ps.received < hi:
                ps.received = hi
            res.out += self._encode(sender, ACK, [ps.received])
        return res

    def _on_ack(self, sender: str, ps: PeerState | None, f: list[Any], now: float) -> Outcome:
        if len(f) != 1 or type(f[0]) is not int:
            raise BadPacket("shape", "ack is [seq]")
        if ps is not None and f[0] <= self.seq:
            if f[0] > ps.acked:
                ps.acked = f[0]
                ps.last_ack_ms = now
                self._prune()
        return Outcome()

    def _on_digest(self, sender: str, ps: PeerState | None, f: list[Any], now: float) -> Outcome:
        if len(f) != 2 or type(f[0]) is not int:
            raise BadPacket("shape", "digest is [seq, supers]")
        theirs = _unpack64(f[1], FANOUT)
        mine = self.state.map.super_digests()
        differ = [i for i in range(FANOUT) if theirs[i] != mine[i]]
        res = Outcome()
        if not differ:
            res.out += self._encode(sender, SYNC_OK, [f[0], self.seq])
            if ps is not None:
                # Equal states: the peer holds everything in our buffer.
                self._acked_all(ps, now)
            return res
        if ps is not None:
            ps.needs_resync = True  # they have something we lack too, maybe: pull it
        for s in differ:
            res.out += self._encode(
                sender, LEAVES, [s, _pack64(self.state.map.leaf_range_digests(s))]
            )
        return res

    def _acked_all(self, ps: PeerState, now: float) -> None:
        ps.acked = max(ps.acked, self.seq)
        ps.needs_resync = False
        ps.last_ack_ms = now
        self._prune()

    def _on_sync_ok(self, sender: str, ps: PeerState | None, f: list[Any], now: float) -> Outcome:
        if len(f) != 2 or type(f[0]) is not int or type(f[1]) is not int:
            raise BadPacket("shape", "sync_ok is [seq, their_seq]")
        if ps is not None and f[0] <= self.seq:
            if f[0] > ps.acked:
                ps.acked = f[0]
            if ps.acked >= self.seq:
                ps.needs_resync = False
            ps.last_ack_ms = now
            self.counters.incr("syncs_equal")
            self._prune()
        return Outcome()

    def _on_leaves(self, sender: str, ps: PeerState | None, f: list[Any], now: float) -> Outcome:
        if len(f) != 2 or type(f[0]) is not int or not 0 <= f[0] < FANOUT:
            raise BadPacket("shape", "leaves is [super, digests]")
        theirs = _unpack64(f[1], FANOUT)
        mine = self.state.map.leaf_range_digests(f[0])
        if ps is None:
            return Outcome()
        base = f[0] * FANOUT
        differ = [base + i for i in range(FANOUT) if theirs[i] != mine[i]]
        self._requeue(ps, self._claim_leaves(sender, differ, now))
        self.counters.incr("resync_leaves", len(differ))
        return Outcome(out=self._pull_more(sender, ps, now))

    def _on_pull(self, sender: str, ps: PeerState | None, f: list[Any], now: float) -> Outcome:
        if (
            len(f) != 2
            or type(f[0]) is not int
            or not isinstance(f[1], list)
            or len(f[1]) > 4 * FANOUT
            or not all(type(x) is int and 0 <= x < FANOUT * FANOUT for x in f[1])
        ):
            raise BadPacket("shape", "pull is [req, leaves]")
        req, leaves = f
        res = Outcome()
        items: list[tuple[Key, Entry]] = []
        for leaf in leaves:
            items += self.state.map.leaf_entries(leaf)
        msgs = self._pack_entries(sender, ENTRIES, [req], items)
        res.out += msgs
        res.out += self._encode(sender, PULL_DONE, [req, len(msgs)])
        self.counters.incr("pulls_served")
        return res

    def _on_entries(self, sender: str, ps: PeerState | None, f: list[Any], now: float) -> Outcome:
        if len(f) != 2 or type(f[0]) is not int:
            raise BadPacket("shape", "entries is [req, entries]")
        novel = self._apply_remote(entries_from_wire_untrusted(f[1]), now)
        if ps is not None and f[0] in ps.entries_seen:
            ps.entries_seen[f[0]] += 1
        return Outcome(novel=novel)

    def _on_pull_done(self, sender: str, ps: PeerState | None, f: list[Any], now: float) -> Outcome:
        if len(f) != 2 or type(f[0]) is not int or type(f[1]) is not int:
            raise BadPacket("shape", "pull_done is [req, count]")
        if ps is None or f[0] not in ps.inflight:
            return Outcome()
        leaves, _ = ps.inflight.pop(f[0])
        seen = ps.entries_seen.pop(f[0], 0)
        if seen < f[1]:
            # Some ENTRIES datagrams were lost: pull those leaves again.
            self._requeue(ps, leaves)
            self.counters.incr("pull_incomplete")
        else:
            self._release_leaves(sender, leaves)
        out = self._pull_more(sender, ps, now)
        if not ps.inflight and not ps.pending_leaves:
            # Window drained: check again; SYNC_OK ends the resync.
            out += self._digest(sender, ps, now)
        return Outcome(out=out)

    def _apply_remote(self, items: list[tuple[Key, Entry]], now: float) -> LWWMap:
        if items:
            newest = max(e.ts for _, e in items)
            self.hlc.observe(newest, int(now))  # raises ClockError: drop the whole message
        return self.state.apply(items)

    # ------------------------------------------------------------------ encoding
    def _wire(self, delta: LWWMap) -> list[Any]:
        return [entry_to_wire(k, e) for k, e in delta.items()]

    @staticmethod
    def _wire_items(items: dict[Key, Entry]) -> list[Any]:
        return [entry_to_wire(k, e) for k, e in items.items()]

    def _pack_entries(
        self, peer: str, mtype: int, head: list[Any], items: list[tuple[Key, Entry]]
    ) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        batch: list[Any] = []
        size = 0
        for k, e in items:
            w = entry_to_wire(k, e)
            n = len(msgpack.packb(w, use_bin_type=True))
            if batch and size + n > self.cfg.max_payload - _HEADER_SLACK:
                out += self._encode(peer, mtype, [*head, batch])
                batch, size = [], 0
            batch.append(w)
            size += n
        if batch:
            out += self._encode(peer, mtype, [*head, batch])
        return out

    def _encode(self, peer: str, mtype: int, fields: list[Any]) -> list[tuple[str, bytes]]:
        """The datagram payloads of one message; none (logged, counted ``drop_unsendable``)
        for a message that cannot be encoded or is larger than ``MAX_MESSAGE_BYTES``.

        Local writes are refused before that can happen (``replica.check_writable``) and a
        restore leaves such entries out (``Replica._quarantine``); this is the last line, so
        one bad record never takes the gossip service down.
        """
        try:
            data = msgpack.packb(
                [PROTO_VERSION, mtype, self.name, self.incarnation, *fields], use_bin_type=True
            )
        except (ValueError, TypeError, OverflowError) as exc:
            return self._unsendable(peer, mtype, f"cannot be encoded: {exc}")
        self.counters.incr(f"sent_{TYPE_NAMES[mtype]}")
        if len(data) <= self.cfg.max_payload:
            self.largest_datagram = max(self.largest_datagram, len(data))
            return [(peer, data)]
        if len(data) > MAX_MESSAGE_BYTES:
            return self._unsendable(
                peer, mtype, f"{len(data)} bytes exceed the {MAX_MESSAGE_BYTES}-byte message limit"
            )
        return self._fragment(peer, data)

    def _unsendable(self, peer: str, mtype: int, why: str) -> list[tuple[str, bytes]]:
        self.counters.incr("drop_unsendable")
        log.error("%s: %s message to %s not sent: %s", self.name, TYPE_NAMES[mtype], peer, why)
        return []

    def _fragment(self, peer: str, data: bytes) -> list[tuple[str, bytes]]:
        # The fragment header holds the sender's name (up to MAX_NAME characters): measure
        # it (with the largest index/count and a bin32 length) instead of assuming it small.
        n_max = MAX_MESSAGE_BYTES // 512
        header = len(
            msgpack.packb(
                [
                    PROTO_VERSION,
                    FRAG,
                    self.name,
                    self.incarnation,
                    self._next_msg,
                    n_max,
                    n_max,
                    b"",
                ],
                use_bin_type=True,
            )
        )
        chunk = self.cfg.max_payload - header - 4
        pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        msg_id = self._next_msg
        self._next_msg += 1
        out = []
        for i, p in enumerate(pieces):
            d = msgpack.packb(
                [PROTO_VERSION, FRAG, self.name, self.incarnation, msg_id, i, len(pieces), p],
                use_bin_type=True,
            )
            self.largest_datagram = max(self.largest_datagram, len(d))
            out.append((peer, d))
        self.counters.incr("sent_frag", len(pieces))
        return out

    def _reassemble(self, sender: str, f: list[Any], now: float) -> bytes | None:
        if (
            len(f) != 4
            or not all(type(x) is int for x in f[:3])
            or not isinstance(f[3], bytes)
            or not 0 <= f[1] < f[2] <= MAX_MESSAGE_BYTES // 512
        ):
            raise BadPacket("shape", "frag is [id, index, total, bytes]")
        msg_id, idx, total, piece = f
        key = (sender, msg_id)
        if key not in self._partial:
            if len(self._partial) >= MAX_PARTIAL_MESSAGES:
                self._partial.popitem(last=False)
                self.counters.incr("drop_frag_evicted")
            self._partial[key] = (now, [None] * total)
        _, parts = self._partial[key]
        if len(parts) != total:
            raise BadPacket("shape", "fragment total changed")
        parts[idx] = piece
        if any(p is None for p in parts):
            return None
        del self._partial[key]
        whole = b"".join(p for p in parts if p is not None)
        if len(whole) > MAX_MESSAGE_BYTES:
            raise BadPacket("too_large", "reassembled message too large")
        return whole

    def _expire_partial(self, now: float) -> None:
        while self._partial:
            key, (born, _) = next(iter(self._partial.items()))
            if now - born < FRAG_TTL_MS:
                break
            del self._partial[key]
            self.counters.incr("drop_frag_expired")

    # ------------------------------------------------------------------ figures
    def stats(self, now_ms: float) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "buffer_depth": len(self.buffer),
            "largest_datagram": self.largest_datagram,
            "counters": dict(self.counters),
            "peers": {
                n: {
                    "lag": self.seq - ps.acked,
                    "resyncing": ps.needs_resync,
                    "last_heard_ms_ago": None
                    if ps.last_heard_ms < 0
                    else max(0.0, now_ms - ps.last_heard_ms),
                }
                for n, ps in self.peers.items()
            },
        }


def _pack64(values: Sequence[int]) -> bytes:
    return b"".join(v.to_bytes(8, "big") for v in values)


def _unpack64(raw: Any, n: int) -> list[int]:
    if not isinstance(raw, bytes) or len(raw) != 8 * n:
        raise BadPacket("shape", "digest block has the wrong size")
    return [int.from_bytes(raw[i : i + 8], "big") for i in range(0, 8 * n, 8)]


_HANDLERS = {
    DELTA: AntiEntropy._on_delta,
    ACK: AntiEntropy._on_ack,
    DIGEST: AntiEntropy._on_digest,
    SYNC_OK: AntiEntropy._on_sync_ok,
    LEAVES: AntiEntropy._on_leaves,
    PULL: AntiEntropy._on_pull,
    ENTRIES: AntiEntropy._on_entries,
    PULL_DONE: AntiEntropy._on_pull_done,
}

__all__ = ["AntiEntropy", "GossipConfig", "Outcome", "Timestamp"]
