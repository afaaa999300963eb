"""Delta-state last-writer-wins map: the one CRDT every instance replicates.

Model (Almeida, Shoker, Baquero, "Delta State Replicated Data Types", JPDC 2018): the state
is a join-semilattice; a mutator returns a *delta*, itself a tiny state, and applying it is a
separate step (``join``). Reads never mutate.

An :class:`LWWMap` maps keys (tuples of strings) to :class:`Entry` values. An entry is a
value or a tombstone stamped with a hybrid logical :class:`~gossipmgr.core.clock.Timestamp`;
the join keeps, per key, the entry that *wins*: the higher rank under the key namespace's
order (``gossipmgr.core.orders``: the larger timestamp, unless the namespace has its own
order, as the lease and the epoch-fenced records do). Equal orders with different content
(impossible with a correct clock, since timestamps carry the node id) are broken by the
encoded content, so the join stays deterministic, commutative, associative and idempotent in
every case.

Digests: keys hash into ``LEAVES`` buckets; each bucket keeps the XOR of the 64-bit hashes of
its ``(key, timestamp, deleted, value)`` entries, updated in O(1) per change. Two replicas hold the
same entries in a bucket iff (up to hash collisions) the bucket digests match; buckets are
grouped ``FANOUT`` to a super-bucket, so anti-entropy compares 64 super digests first and
descends only into those that differ (a two-level Merkle tree).

Tombstones and garbage collection: a removal writes a tombstone so that it beats older writes
arriving late. :meth:`LWWMap.gc` drops tombstones older than a horizon, and :meth:`join` refuses
tombstones older than that horizon. This is safe under one rule, enforced by the agent and
stated in docs/design.md: no instance may rejoin after being cut off for longer than the
tombstone TTL (default 7 days, far above any partition we plan for); such an instance's data
directory must be reset so it cannot resurrect deleted keys.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from operator import attrgetter
from typing import Any, NamedTuple

import msgpack

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.orders import rank

Key = tuple[str, ...]

#: Digest tree shape: 64 super-buckets of 64 leaves. 4,096 leaves keep a leaf at ~25 entries
#: with 100,000 records, so resyncing one differing leaf costs about one datagram or two.
FANOUT = 64
LEAVES = FANOUT * FANOUT


class Entry(NamedTuple):
    """One versioned value. ``value`` is JSON-like and ignored when ``deleted``.

    A named tuple like :class:`~gossipmgr.core.clock.Timestamp`, for the same reason: one
    per entry, made on every restore and decode (issue 17, start time)."""

    ts: Timestamp
    value: Any = None
    deleted: bool = False


_ts_of = attrgetter("ts")


#: Older than any timestamp of an origin (``LWWMap.newer_than``).
_NO_TS = Timestamp(-1, -1, "")


def _packed(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def wins(key: Key, new: Entry, old: Entry) -> bool:
    """True if ``new`` beats ``old`` under the key's order (strictly)."""
    rn, ro = rank(key, new), rank(key, old)
    if rn != ro:
        return rn > ro
    if new == old and _same(new.value, old.value):
        return False
    # Same rank, different content: only reachable with a broken clock. Decide by content so
    # every replica picks the same winner.
    return _packed([new.deleted, new.value]) > _packed([old.deleted, old.value])


def _same(a: Any, b: Any) -> bool:
    """Two values Python calls equal that also encode alike: ``1 == 1.0 == True`` and
    ``[0] == [False]`` in Python, not in msgpack, and a digest hashes the encoding."""
    return a is b or type(a) is str or _packed(a) == _packed(b)


def key_hash(key: Key) -> int:
    return int.from_bytes(hashlib.blake2b(_packed(list(key)), digest_size=8).digest(), "big")


def leaf_of(key: Key) -> int:
    return key_hash(key) % LEAVES


def entry_hash(key: Key, e: Entry) -> int:
    # The value is hashed too: (key, ts) identifies a write only while clocks are correct,
    # and digests must never call two different replicas equal.
    h = hashlib.blake2b(
        _packed([list(key), e.ts.ms, e.ts.logical, e.ts.node, e.deleted, e.value]), digest_size=8
    )
    return int.from_bytes(h.digest(), "big")


def hashed_entries(items: Iterable[tuple[Key, Entry]]) -> Iterator[tuple[Key, int, int]]:
    """``(key, leaf_of(key), entry_hash(key, e))`` of each entry, the key packed once: the
    msgpack of ``entry_hash``'s 6-element list is its header byte, the packed key, then the
    packed tail without the tail's own 5-element header (a third less CPU for a restored
    state's first digests: 30,000 entries, ~150 -> ~100 ms)."""
    pack = msgpack.Packer(use_bin_type=True).pack
    blake = hashlib.blake2b
    for k, e in items:
        kb = pack(list(k))
        ts = e.ts
        eb = b"\x96" + kb + pack([ts.ms, ts.logical, ts.node, e.deleted, e.value])[1:]
        yield (
            k,
            int.from_bytes(blake(kb, digest_size=8).digest(), "big") % LEAVES,
            int.from_bytes(blake(eb, digest_size=8).digest(), "big"),
        )


class LWWMap:
    """A last-writer-wins map with tombstones and incremental bucket digests.

    Deltas are ``LWWMap`` instances too (usually of one or a few entries).
    """

    __slots__ = ("_entries", "_hashed", "_leaf_digest", "_leaf_keys", "fenced", "gc_horizon")

    def __init__(self, entries: Mapping[Key, Entry] | Iterable[tuple[Key, Entry]] = ()) -> None:
        self._entries: dict[Key, Entry] = {}
        # Sparse: deltas are LWWMaps too and usually hold one entry.
        self._leaf_digest: dict[int, int] = {}
        self._leaf_keys: dict[int, set[Key]] = {}
        # False while digests are not maintained (deltas, bulk loads: see ``lazy``); the
        # first digest read computes them all, and from then on they are kept incrementally.
        # A map built empty (a replica's state) keeps them from the start; one built from
        # entries is almost always a delta, which is encoded and joined, never digested.
        self._hashed = not entries
        #: tombstones with ts.ms below this are dropped and refused (see module docstring)
        self.gc_horizon = 0
        #: entries refused because a newer timestamp carried an older lease epoch (fencing)
        self.fenced = 0
        items = entries.items() if isinstance(entries, Mapping) else entries
        for k, e in items:
            self._put(k, e)

    @classmethod
    def lazy(cls) -> LWWMap:
        """An empty map that defers digest upkeep until a digest is first read.

        Restoring 30,000 entries costs ~0.1 s this way instead of ~1 s of hashing before the
        instance can serve; the hashing happens once, at the first anti-entropy round.
        """
        m = cls()
        m._hashed = False
        return m

    @classmethod
    def lazy_of(cls, entries: dict[Key, Entry], gc_horizon: int = 0) -> LWWMap:
        """A lazy map (:meth:`lazy`) holding ``entries`` as they are, with no join: for one
        decoded state, whose keys are unique, so the join of its entries into an empty map
        would keep every one. Tombstones older than ``gc_horizon`` are left out, as the
        join leaves them out. Takes ownership of ``entries``."""
        m = cls.lazy()
        m.gc_horizon = gc_horizon
        if gc_horizon > 0:
            entries = {k: e for k, e in entries.items() if not e.deleted or e.ts.ms >= gc_horizon}
        m._entries = entries
        return m

    def _ensure_hashed(self) -> None:
        if self._hashed:
            return
        digests: dict[int, int] = {}
        leaves: dict[int, set[Key]] = {}
        for k, leaf, h in hashed_entries(self._entries.items()):
            leaves.setdefault(leaf, set()).add(k)
            digests[leaf] = digests.get(leaf, 0) ^ h
        self._leaf_digest, self._leaf_keys, self._hashed = digests, leaves, True

    # -- reads (never mutate) ------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        e = self._entries.get(key)  # type: ignore[call-overload]
        return e is not None and not e.deleted

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LWWMap) and self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWMap({len(self._entries)} entries)"

    def entry(self, key: Key) -> Entry | None:
        """The entry for ``key``, tombstone included, or None."""
        return self._entries.get(key)

    def get(self, key: Key, default: Any = None) -> Any:
        e = self._entries.get(key)
        return default if e is None or e.deleted else e.value

    def items(self) -> Iterator[tuple[Key, Entry]]:
        """All entries, tombstones included."""
        return iter(self._entries.items())

    def live(self) -> Iterator[tuple[Key, Any]]:
        for k, e in self._entries.items():
            if not e.deleted:
                yield k, e.value

    def max_timestamp(self) -> Timestamp | None:
        return max(map(_ts_of, self._entries.values()), default=None)

    def newest_per_origin(self) -> dict[str, Timestamp]:
        """The newest timestamp of each origin (``Timestamp.node``) among the entries: the
        summary a restarted instance sends in its first catch-up datagram (``SINCE``)."""
        newest: dict[str, Timestamp] = {}
        get = newest.get
        for e in self._entries.values():
            ts = e.ts
            old = get(ts.node)
            if old is None or ts > old:
                newest[ts.node] = ts
        return newest

    def newer_than(
        self, summary: Mapping[str, Timestamp], share: int = 0, shares: int = 1
    ) -> Iterator[tuple[Key, Entry]]:
        """The entries stamped after ``summary``'s newest timestamp of their origin (all of
        an origin it does not name), in leaves ``leaf % shares == share``: what an instance
        that holds ``summary`` missed of its origins' later writes. Not everything it may
        lack (an older write it never got is not newer than its origin's newest), so a
        digest comparison follows (``gossip/catchup.py``). One pass over the map; the leaf
        is hashed only for the entries that are newer."""
        none = _NO_TS
        for k, e in self._entries.items():
            ts = e.ts
            if ts > summary.get(ts.node, none) and (shares == 1 or leaf_of(k) % shares == share):
                yield k, e

    def leaf_digests(self) -> list[int]:
        self._ensure_hashed()
        d = self._leaf_digest
        return [d.get(i, 0) for i in range(LEAVES)]

    def super_digests(self) -> list[int]:
        """XOR of each super-bucket's leaves (``FANOUT`` values)."""
        self._ensure_hashed()
        out = [0] * FANOUT
        for leaf, d in self._leaf_digest.items():
            out[leaf // FANOUT] ^= d
        return out

    def leaf_range_digests(self, super_index: int) -> list[int]:
        self._ensure_hashed()
        d = self._leaf_digest
        base = super_index * FANOUT
        return [d.get(base + i, 0) for i in range(FANOUT)]

    def leaf_entries(self, leaf: int) -> list[tuple[Key, Entry]]:
        self._ensure_hashed()
        return [(k, self._entries[k]) for k in self._leaf_keys.get(leaf, ())]

    # -- mutators: return a delta, never change self ---------------------------------------
    def set_delta(self, key: Key, value: Any, ts: Timestamp) -> LWWMap:
        return LWWMap({key: Entry(ts, value)})

    def remove_delta(self, key: Key, ts: Timestamp) -> LWWMap:
        return LWWMap({key: Entry(ts, None, True)})

    # -- join -----------------------------------------------------------------------------
    def join(self, other: LWWMap | Iterable[tuple[Key, Entry]]) -> LWWMap:
        """Join ``other`` into self in place; return the *novel* part as a delta.

        The returned map holds exactly the entries that changed this replica (Enes et al.'s
        "remove redundancy": what the receiver already had is stripped), so it can be
        buffered and forwarded without re-sending old news.
        """
        novel = LWWMap.lazy()  # a delta: never digested, so never hashed
        items = other.items() if isinstance(other, LWWMap) else other
        for k, e in items:
            if self._accept(k, e):
                self._put(k, e)
                novel._put(k, e)
        return novel

    def _accept(self, k: Key, e: Entry) -> bool:
        if e.deleted and e.ts.ms < self.gc_horizon:
            return False
        old = self._entries.get(k)
        if old is None or wins(k, e, old):
            return True
        if e.ts > old.ts:
            self.fenced += 1  # a later write lost on its epoch: a stale actor was fenced
        return False

    def merge(self, items: Iterable[tuple[Key, Entry]]) -> None:
        """Join in place without building the novel part (bulk loads, restore)."""
        for k, e in items:
            if self._accept(k, e):
                self._put(k, e)

    def _put(self, k: Key, e: Entry) -> None:
        if not self._hashed:
            self._entries[k] = e
            return
        leaf = leaf_of(k)
        old = self._entries.get(k)
        acc = self._leaf_digest.get(leaf, 0)
        if old is not None:
            acc ^= entry_hash(k, old)
        else:
            self._leaf_keys.setdefault(leaf, set()).add(k)
        self._entries[k] = e
        self._leaf_digest[leaf] = acc ^ entry_hash(k, e)

    def gc(self, horizon_ms: int) -> int:
        """Drop tombstones older than ``horizon_ms`` and refuse such tombstones later.

        Returns how many were dropped."""
        self.gc_horizon = max(self.gc_horizon, horizon_ms)
        self._ensure_hashed()
        dead = [k for k, e in self._entries.items() if e.deleted and e.ts.ms < self.gc_horizon]
        for k in dead:
            leaf = leaf_of(k)
            self._leaf_digest[leaf] ^= entry_hash(k, self._entries.pop(k))
            self._leaf_keys[leaf].discard(k)
            if not self._leaf_keys[leaf]:
                del self._leaf_keys[leaf], self._leaf_digest[leaf]
        return len(dead)

    def copy(self) -> LWWMap:
        m = LWWMap()
        m._entries = dict(self._entries)
        m._hashed = self._hashed
        m._leaf_digest = dict(self._leaf_digest)
        m._leaf_keys = {leaf: set(ks) for leaf, ks in self._leaf_keys.items()}
        m.gc_horizon = self.gc_horizon
        return m


def join(a: LWWMap, b: LWWMap) -> LWWMap:
    """Value-semantics join: a new map, neither argument changed."""
    out = a.copy()
    out.join(b)
    return out
