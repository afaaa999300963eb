"""Messages out: one anti-entropy message as the datagram payloads that carry it.

PURE. ``MessageEncoder`` packs fields into messages (``gossipmgr.gossip.messages``), splits
batches of entries into as many messages as the payload budget needs, fragments a message
larger than one datagram, and drops (logged, counted ``drop_unsendable``) one that cannot be
encoded or exceeds ``MAX_MESSAGE_BYTES``. Counts go into the protocol's ``counters``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import msgpack

from gossipmgr.core.codec import MAX_BATCH_BYTES, entry_to_wire
from gossipmgr.core.crdt import Entry, Key, LWWMap, wins
from gossipmgr.gossip.datagram import Counters
from gossipmgr.gossip.messages import DELTA, MAX_MESSAGE_BYTES, TYPE_NAMES, fragment, pack

log = logging.getLogger("gossipmgr.gossip")

__all__ = ["HEADER_SLACK", "MessageEncoder", "Payloads"]

#: Fixed cost of a message header, a conservative bound used when packing entries.
HEADER_SLACK = 64

Payloads = list[tuple[str, bytes]]
"""(peer, datagram payload) pairs to send."""


class MessageEncoder:
    """The sending side of one instance's messages. Not thread-safe (one owner)."""

    def __init__(self, name: str, incarnation: int, max_payload: int, counters: Counters):
        self.name = name
        self.incarnation = incarnation
        self.max_payload = max_payload
        self.counters = counters
        self.largest_datagram = 0
        self._next_msg = 1

    def delta_messages(
        self, peer: str, lo: int, hi: int, wire: list[tuple[list[Any], int]]
    ) -> Payloads:
        """DELTA messages for the interval (lo, hi] of these (entry, encoded size) pairs:
        every message but the last is sent as (lo, lo], which acknowledges nothing."""
        out: Payloads = []
        batch: list[Any] = []
        size = 0
        for w, n in wire:
            if batch and size + n > self.max_payload - HEADER_SLACK:
                out += self.encode(peer, DELTA, [lo, lo, batch])
                batch, size = [], 0
            batch.append(w)
            size += n
        return out + self.encode(peer, DELTA, [lo, hi, batch])

    def push_messages(
        self, peer: str, lo: int, hi: int, wire: list[tuple[list[Any], int]]
    ) -> Payloads:
        """A local write of several entries as (lo, hi]: ONE message (fragmented) when it
        fits, so the peer joins a batch at once (all visible or none); else as many as it
        takes (:meth:`delta_messages`)."""
        if sum(n for _, n in wire) <= MAX_BATCH_BYTES:
            return self.encode(peer, DELTA, [lo, hi, [w for w, _ in wire]])
        return self.delta_messages(peer, lo, hi, wire)

    def interval_messages(
        self, peer: str, lo: int, buffer: Iterable[tuple[int, str, LWWMap]]
    ) -> Payloads:
        """DELTA messages for the buffered interval ``(lo, newest]`` without ``peer``'s own
        deltas (BP), each filling a datagram: every message acknowledges up to its last seq.

        An entry a later delta of the interval supersedes (same key, an entry that it does
        not beat) is left out: the later one is sent after it, or is the peer's own, and
        an ACK up to the earlier seq leaves the later one unacknowledged, so it is resent
        until it arrives. Without this a key rewritten often (a job's open log chunk, every
        flush) was resent once per version at every retransmit: the partition suite saw a
        holder send ~1.9 GB of fragments and its peers' outboxes overflow."""
        pending = [(seq, origin, delta) for seq, origin, delta in buffer if seq > lo]
        newest: dict[Key, Entry] = {}
        skip: set[tuple[int, Key]] = set()
        for seq, _, delta in reversed(pending):
            for k, e in delta.items():
                later = newest.get(k)
                if later is None or wins(k, e, later):
                    newest[k] = e
                else:
                    skip.add((seq, k))
        out: Payloads = []
        batch: dict[Key, Entry] = {}
        size = 0
        hi = lo
        for seq, origin, delta in pending:
            if origin != peer:
                for k, e in delta.items():
                    if (seq, k) in skip:
                        continue
                    w = len(msgpack.packb(entry_to_wire(k, e), use_bin_type=True))
                    if batch and size + w > self.max_payload - HEADER_SLACK and k not in batch:
                        out += self.encode(peer, DELTA, [lo, hi, self.wire_items(batch)])
                        lo, batch, size = hi, {}, 0
                    old = batch.get(k)
                    if old is None or wins(k, e, old):  # never a loser over the winner
                        batch[k] = e
                    size += w
            hi = seq
        if hi > lo:
            out += self.encode(peer, DELTA, [lo, hi, self.wire_items(batch)])
        return out

    def wire(self, delta: LWWMap) -> list[Any]:
        return [entry_to_wire(k, e) for k, e in delta.items()]

    @staticmethod
    def wire_items(items: dict[Key, Entry]) -> list[Any]:
        return [entry_to_wire(k, e) for k, e in items.items()]

    def pack_entries(
        self,
        peer: str,
        mtype: int,
        head: list[Any],
        items: list[tuple[Key, Entry]],
        budget: int | None = None,
    ) -> Payloads:
        """``items`` in as many messages as they take; with a ``budget``, only the first
        items whose encoded sizes fit in it."""
        out: Payloads = []
        batch: list[Any] = []
        size = 0
        for k, e in items:
            w = entry_to_wire(k, e)
            n = len(msgpack.packb(w, use_bin_type=True))
            if budget is not None:
                budget -= n
                if budget < 0:
                    break
            if batch and size + n > self.max_payload - HEADER_SLACK:
                out += self.encode(peer, mtype, [*head, batch])
                batch, size = [], 0
            batch.append(w)
            size += n
        if batch:
            out += self.encode(peer, mtype, [*head, batch])
        return out

    def encode(self, peer: str, mtype: int, fields: list[Any]) -> Payloads:
        """The datagram payloads of one message; none (logged, counted ``drop_unsendable``)
        for a message that cannot be encoded or is larger than ``MAX_MESSAGE_BYTES``.

        Local writes are refused before that can happen (``replica.check_writable``) and a
        restore leaves such entries out (``Replica._quarantine``); this is the last line, so
        one bad record never takes the gossip service down.
        """
        try:
            data = pack(mtype, self.name, self.incarnation, fields)
        except (ValueError, TypeError, OverflowError) as exc:
            return self.unsendable(peer, mtype, f"cannot be encoded: {exc}")
        self.counters.incr(f"sent_{TYPE_NAMES[mtype]}")
        if len(data) <= self.max_payload:
            self.largest_datagram = max(self.largest_datagram, len(data))
            return [(peer, data)]
        if len(data) > MAX_MESSAGE_BYTES:
            return self.unsendable(
                peer, mtype, f"{len(data)} bytes exceed the {MAX_MESSAGE_BYTES}-byte message limit"
            )
        return self.fragment(peer, data)

    def unsendable(self, peer: str, mtype: int, why: str) -> Payloads:
        self.counters.incr("drop_unsendable")
        log.error("%s: %s message to %s not sent: %s", self.name, TYPE_NAMES[mtype], peer, why)
        return []

    def fragment(self, peer: str, data: bytes) -> Payloads:
        msg_id = self._next_msg
        self._next_msg += 1
        pieces = fragment(data, self.name, self.incarnation, msg_id, self.max_payload)
        self.largest_datagram = max(self.largest_datagram, *map(len, pieces))
        self.counters.incr("sent_frag", len(pieces))
        return [(peer, d) for d in pieces]
