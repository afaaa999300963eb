"""Delta anti-entropy between gossipmgr instances, sans-I/O.

This object takes bytes and time in and returns ``(peer, bytes)`` to send; it never awaits,
never reads a clock and never touches a socket (``h11`` style). ``gossipmgr.gossip.service``
moves the bytes over UDP; tests drive it in ``gossipmgr.testing.sim`` (pure, seeded).

The algorithm (docs/design.md, "Anti-entropy"): Almeida, Shoker and Baquero's delta-interval
anti-entropy with per-peer acknowledgements, eager push of local writes, retransmits on
``tick``, Enes et al.'s BP (no delta back to its origin) and RR (buffer only what changed the
state), a bounded buffer, silent peers probed by digest, and digest resync (64 super-bucket
digests, then the differing leaves, pulled a window at a time) for new, restarted and lagging
peers and a periodic repair round, and catch-up at once with every peer that is new or
comes back (``gossipmgr.gossip.catchup``); confirm rounds (``gossipmgr.gossip.confirm``).
Every message fits one datagram payload; a larger one travels as ``FRAG`` pieces.

The messages and their one decoder are in ``gossipmgr.gossip.messages``, the encoding of
outgoing ones in ``gossipmgr.gossip.encoder``, per-peer state and knobs in ``peers``.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import FANOUT, Entry, Key, LWWMap
from gossipmgr.core.state import ClusterState
from gossipmgr.errors import BadPacket, ClockError
from gossipmgr.gossip.catchup import CatchUp, CatchUpPeers
from gossipmgr.gossip.confirm import ConfirmRound, ConfirmRounds
from gossipmgr.gossip.datagram import Counters
from gossipmgr.gossip.encoder import MessageEncoder, Payloads
from gossipmgr.gossip.messages import (
    DELTA,
    DIGEST,
    ENTRIES,
    LEAVES,
    MAX_MESSAGE_BYTES,
    MAX_NAME,
    PULL,
    PULL_DONE,
    SYNC_OK,
    TYPE_NAMES,
    Ack,
    Body,
    Delta,
    Digest,
    Entries,
    Frag,
    Leaves,
    Ping,
    Pong,
    Pull,
    PullDone,
    Reassembler,
    Since,
    SyncOk,
    decode_untrusted,
    pack64,
)
from gossipmgr.gossip.peers import GossipConfig, LeafClaims, PeerState
from gossipmgr.gossip.relay import Relays

log = logging.getLogger("gossipmgr.gossip")


@dataclass
class Outcome:
    """What one input produced: datagram payloads to send and the novel delta to persist."""

    out: list[tuple[str, bytes]] = field(default_factory=list)
    novel: LWWMap | None = None


class AntiEntropy(CatchUpPeers, ConfirmRounds, Relays):
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
        self._last_sync_ms = -1e18
        self.counters = Counters()
        self._claims = LeafClaims(self.counters)
        self._frags = Reassembler(self.counters)
        self.enc = MessageEncoder(name, incarnation, self.cfg.max_payload, self.counters)
        #: the latest catch-up (``catch_up``), None before the first
        self.catchup: CatchUp | None = None
        self._alive: dict[str, str] | None = None  # peer -> boot id, as last listed alive
        self._strangers: dict[str, float] = {}  # not yet peers -> when they resynced with us
        self._since_served: dict[str, float] = {}  # SINCE senders -> when answered last
        self.rounds: dict[int, ConfirmRound] = {}  # open confirm rounds (``gossip.confirm``)

    # ------------------------------------------------------------------ local writes
    def local_write(self, delta: LWWMap, now_ms: float) -> Outcome:
        """Join a local delta (already timestamped by ``hlc``) and eagerly push it."""
        return self.push_local(self.state.apply(delta), now_ms)

    def push_local(self, novel: LWWMap, now_ms: float) -> Outcome:
        """Buffer and push the novel part of a local write already joined into ``state``
        to every peer heard from lately, even one marked for a resync (docs/design.md)."""
        res = Outcome(novel=novel)
        if not len(novel):
            return res
        self._buffer(self.name, novel)
        wire: list[tuple[list[Any], int]] | None = None
        for peer, ps in self.peers.items():
            heard = now_ms - ps.last_heard_ms < self.cfg.silent_after_ms
            if heard or not ps.needs_resync or ps.acked >= self.seq - 1:
                # Eager push of just this delta as the interval (c-1, c], in as many
                # messages as it takes (a POST /globals may hold many big values).
                if len(novel) == 1:  # one entry always fits a message (check_entry)
                    res.out += self.enc.encode(
                        peer, DELTA, [self.seq - 1, self.seq, self.enc.wire(novel)]
                    )
                else:
                    if wire is None:
                        wire = [
                            (w, len(msgpack.packb(w, use_bin_type=True)))
                            for w in self.enc.wire(novel)
                        ]
                    res.out += self.enc.push_messages(peer, self.seq - 1, self.seq, wire)
                ps.last_sent_ms = now_ms
        return res

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
        self._frags.expire(now_ms)
        silent_seen = False
        for peer, ps in self.peers.items():
            if now_ms - ps.last_heard_ms >= self.cfg.silent_after_ms and self._owes(peer, ps):
                # Silent: stop retransmitting to it and stop holding deltas for it; a digest
                # probe now and then finds out when it is back, and the resync catches it up.
                out += self._relay(peer, ps, now_ms, silent=True)  # a one-way cut, maybe
                if ps.acked < self.seq or not ps.needs_resync:
                    ps.acked, ps.needs_resync = self.seq, True
                    silent_seen = True
                self._claims.release_all(peer)
                self._end_catchup(peer, ps, now_ms, lost=True)
                ps.pending_leaves.clear()
                ps.queued_leaves.clear()
                ps.inflight.clear()
                if now_ms - ps.last_digest_ms >= self.cfg.silent_probe_ms:
                    out += self._digest(peer, ps, now_ms)
                continue
            out += self._heartbeat(peer, ps, now_ms)
            if self._resend_due(ps, now_ms):
                out += self._interval(peer, ps, now_ms)
            out += self._relay(peer, ps, now_ms)
            if ps.needs_resync and self._may_digest(ps, now_ms):
                # One resync round at a time: after it drains, the next peer's digest mostly
                # matches (one SYNC_OK) instead of every peer sending leaf digests at once.
                # A catch-up's peers resync in parallel.
                if (
                    not ps.inflight
                    and not ps.pending_leaves
                    and (ps.catchup or not self._resync_busy(peer, now_ms))
                ):
                    out += self._digest(peer, ps, now_ms)
            for req, (leaves, sent) in list(ps.inflight.items()):
                if now_ms - sent >= self.cfg.pull_timeout_ms:
                    del ps.inflight[req]
                    ps.entries_seen.pop(req, None)
                    ps.pulled.pop(req, None)
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
            if not ps.inflight and not ps.pending_leaves and self._may_digest(ps, now_ms):
                out += self._digest(peer, ps, now_ms)
        return out

    def _interval(self, peer: str, ps: PeerState, now_ms: float) -> Payloads:
        """Send D(A[j], c] without j's own deltas (BP), as messages that fit a datagram."""
        ps.last_sent_ms = ps.last_resent_ms = now_ms
        self.counters.incr("retransmits")
        return self.enc.interval_messages(peer, ps.acked, self.buffer)

    # ------------------------------------------------------------------ resync
    def _digest(self, peer: str, ps: PeerState, now_ms: float) -> list[tuple[str, bytes]]:
        ps.last_digest_ms = now_ms
        ps.digest_unanswered = True
        self.counters.incr("digests_sent")
        return self.enc.encode(peer, DIGEST, [self.seq, pack64(self.state.map.super_digests())])

    def _requeue(self, ps: PeerState, leaves: Sequence[int]) -> None:
        for leaf in leaves:
            if leaf not in ps.queued_leaves:
                ps.queued_leaves.add(leaf)
                ps.pending_leaves.append(leaf)

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
            ps.pulled[req] = {}
            out += self.enc.encode(peer, PULL, [req, leaves])
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

    def _receive(self, data: bytes, now_ms: float, *, reassembled: bool = False) -> Outcome:
        msg = decode_untrusted(data)
        sender = msg.sender
        if sender == self.name:
            raise BadPacket("self", "message claims to come from this instance")
        self.counters.incr(f"recv_{TYPE_NAMES[msg.type]}")
        if isinstance(msg.body, Frag):
            if reassembled:
                # Senders fragment whole messages only. Following a nesting would recurse
                # once per level: a ~20 KB message nested deep enough raised RecursionError.
                raise BadPacket("shape", "a fragment inside a fragment")
            whole = self._frags.add_untrusted(sender, msg.body, now_ms)
            if whole is None:
                return Outcome()
            return self._receive(whole, now_ms, reassembled=True)
        ps = self.peers.get(sender)
        if ps is not None:
            ps.unsynced_gap_ms = max(ps.unsynced_gap_ms, now_ms - ps.last_heard_ms)
            ps.last_heard_ms = now_ms
            if ps.incarnation != msg.incarnation:
                if ps.incarnation != 0:
                    # The peer restarted: its sequence numbers start over and it may have
                    # lost volatile state: resync both ways.
                    self.counters.incr("peer_restarts")
                    ps.needs_resync = True
                    ps.acked, ps.unsynced_gap_ms = self.seq, 1e18  # behind it too
                ps.received = 0
                ps.incarnation = msg.incarnation
        res = self._dispatch(sender, ps, msg.body, now_ms)
        if ps is not None and ps.catchup and ps.digest_unanswered:
            res.out += self._unanswered(sender, ps, msg.body, now_ms)
        return res

    def _dispatch(self, sender: str, ps: PeerState | None, body: Body, now: float) -> Outcome:
        match body:
            case Delta():
                return self._on_delta(sender, ps, body, now)
            case Ack():
                return self._on_ack(ps, body, now)
            case Digest():
                return self._on_digest(sender, ps, body, now)
            case SyncOk():
                return self._on_sync_ok(sender, ps, body, now)
            case Leaves():
                return self._on_leaves(sender, ps, body, now)
            case Pull():
                return self._on_pull(sender, body, now)
            case Entries():
                return self._on_entries(sender, ps, body, now)
            case PullDone():
                return self._on_pull_done(sender, ps, body, now)
            case Ping() | Pong():
                return Outcome(out=self._on_confirm(sender, body))
            case Since():
                return Outcome(out=self._on_since(sender, body, now))
        # Frag: reassembled in _receive, which refuses a fragment of fragments.
        raise BadPacket("shape", "a fragment inside a fragment")

    def _on_delta(self, sender: str, ps: PeerState | None, m: Delta, now: float) -> Outcome:
        novel = self._apply_remote(m.entries, now)
        forward = self._forwards(sender, m, novel)
        if forward is not None:
            self._buffer(sender, forward)
        res = Outcome(novel=novel)
        if ps is not None:
            if m.lo <= ps.received < m.hi:
                ps.received = m.hi
            res.out += self._ack_received(sender, ps, now)
        return res

    def _on_ack(self, ps: PeerState | None, m: Ack, now: float) -> Outcome:
        if ps is not None and m.seq <= self.seq:
            if m.seq > ps.acked:
                ps.acked = m.seq
                ps.last_ack_ms = now
                self._prune()
        return Outcome()

    def _on_digest(self, sender: str, ps: PeerState | None, m: Digest, now: float) -> Outcome:
        self._resyncing_with_us(sender, now)
        mine = self.state.map.super_digests()
        differ = [i for i in range(FANOUT) if m.supers[i] != mine[i]]
        res = Outcome()
        if not differ:
            res.out += self.enc.encode(sender, SYNC_OK, [m.seq, self.seq])
            if ps is not None:
                # Equal: it holds all in our buffer; we, all it held (caught up), its deltas
                # up to the digest's seq among them (its next interval starts there).
                ps.unsynced_gap_ms = 0.0
                ps.received = max(ps.received, m.seq)
                self._acked_all(ps, now)
                self._end_catchup(sender, ps, now)
            return res
        if ps is not None:
            ps.needs_resync = True  # they have something we lack too, maybe: pull it
        for s in differ:
            res.out += self.enc.encode(
                sender, LEAVES, [s, pack64(self.state.map.leaf_range_digests(s))]
            )
        return res

    def _acked_all(self, ps: PeerState, now: float) -> None:
        ps.acked = max(ps.acked, self.seq)
        ps.needs_resync = False
        ps.last_ack_ms = now
        self._prune()

    def _on_sync_ok(self, sender: str, ps: PeerState | None, m: SyncOk, now: float) -> Outcome:
        if ps is not None:
            ps.unsynced_gap_ms = 0.0  # it held what we held: we are caught up with it
            # and hold its deltas up to its seq then, where its next interval starts
            # (``_on_digest``; a ``received`` left behind fitted none: all were resent)
            ps.received = max(ps.received, m.their_seq)
            self._answered(ps, now)
            self._end_catchup(sender, ps, now)
        if ps is not None and m.seq <= self.seq:
            if m.seq > ps.acked:
                ps.acked = m.seq
            if ps.acked >= self.seq:
                ps.needs_resync = False
            ps.last_ack_ms = now
            self.counters.incr("syncs_equal")
            self._prune()
        return Outcome()

    def _on_leaves(self, sender: str, ps: PeerState | None, m: Leaves, now: float) -> Outcome:
        mine = self.state.map.leaf_range_digests(m.super_index)
        if ps is None:
            return Outcome()
        self._answered(ps, now)
        base = m.super_index * FANOUT
        differ = [base + i for i in range(FANOUT) if m.digests[i] != mine[i]]
        if ps.inflight:  # an answer to a repeated digest: what is being pulled stays out
            pulling = {leaf for leaves, _ in ps.inflight.values() for leaf in leaves}
            differ = [leaf for leaf in differ if leaf not in pulling]
        self._requeue(ps, self._claims.claim(sender, differ, now))
        self.counters.incr("resync_leaves", len(differ))
        return Outcome(out=self._pull_more(sender, ps, now))

    def _on_pull(self, sender: str, m: Pull, now: float) -> Outcome:
        self._resyncing_with_us(sender, now)
        res = Outcome()
        items: list[tuple[Key, Entry]] = []
        for leaf in m.leaves:
            items += self.state.map.leaf_entries(leaf)
        msgs = self.enc.pack_entries(sender, ENTRIES, [m.req], items)
        res.out += msgs
        res.out += self.enc.encode(sender, PULL_DONE, [m.req, len(msgs)])
        self.counters.incr("pulls_served")
        return res

    def _on_entries(self, sender: str, ps: PeerState | None, m: Entries, now: float) -> Outcome:
        novel = self._apply_remote(m.entries, now)
        if ps is not None and m.req in ps.entries_seen:
            ps.entries_seen[m.req] += 1
            ps.pulled[m.req].update(m.entries)
        elif ps is not None:
            return Outcome(out=self._since_entries(sender, ps, m.req, now), novel=novel)
        return Outcome(novel=novel)

    def _on_pull_done(self, sender: str, ps: PeerState | None, m: PullDone, now: float) -> Outcome:
        if ps is not None and m.req and m.req == ps.since_req:
            return Outcome(out=self._since_done(sender, ps, m, now))
        if ps is None or m.req not in ps.inflight:
            return Outcome()
        leaves, _ = ps.inflight.pop(m.req)
        seen = ps.entries_seen.pop(m.req, 0)
        theirs = ps.pulled.pop(m.req, {})
        out: Payloads = []
        if seen < m.count:
            # Some ENTRIES datagrams were lost: pull those leaves again.
            self._requeue(ps, leaves)
            self.counters.incr("pull_incomplete")
        else:
            self._claims.release(sender, leaves)
            # Push-pull: we know its whole content of these leaves now; send it what it
            # lacks or holds older, so one round makes both sides equal there.
            mine = [(k, e) for leaf in leaves for k, e in self.state.map.leaf_entries(leaf)]
            push = [(k, e) for k, e in mine if theirs.get(k) != e]
            if push:
                self.counters.incr("pushed_back", len(push))
                out += self.enc.pack_entries(sender, ENTRIES, [0], push)
        out += self._pull_more(sender, ps, now)
        if not ps.inflight and not ps.pending_leaves:
            # Window drained: check again; SYNC_OK ends the resync.
            out += self._digest(sender, ps, now)
            if ps.catchup:
                out += self._recheck_catchup(now)
        return Outcome(out=out)

    def _apply_remote(self, items: list[tuple[Key, Entry]], now: float) -> LWWMap:
        if items:
            newest = max(e.ts for _, e in items)
            self.hlc.observe(newest, int(now))  # raises ClockError: drop the whole message
        novel = self.state.apply(items)
        if self.catchup is not None:
            self.catchup.joined(len(novel), now)
        return novel

    # ------------------------------------------------------------------ figures
    @property
    def largest_datagram(self) -> int:
        return self.enc.largest_datagram

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


__all__ = ["MAX_MESSAGE_BYTES", "TYPE_NAMES", "AntiEntropy", "GossipConfig", "Outcome", "Timestamp"]
