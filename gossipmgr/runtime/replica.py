"""One instance's replica: the write path, restore, and the change feed.

The write path of every mutation made on this instance (API writes, lease renewals, job
updates, health events)::

    make(state, ts) -> delta        pure; ts from the hybrid logical clock
    await store.append(delta)       durable: written and fsync'd (group commit); once the
      on_local_send listeners       store's thread has it, the gossip service pushes it
    state.apply(delta)              visible to local reads
    on_local_write listeners        the change feed, webhooks

So a write is acknowledged (``commit`` returns) and visible to this instance's reads only
once it is on disk, but its delta leaves for the peers while the fsync runs: the fsync is
off the write -> visible path (docs/design.md, "Durability"). A write whose append fails
raises StoreError and is not applied here; its peers may hold it already (its outcome is
unknown, as when an answer is lost). A peer's copy
can come back while the writer's fsync runs (a digest resync): that entry is reported once,
as this write's, never as a remote change (``remote_applied``). Remote deltas are applied by
the protocol first and persisted after (``persist``: the gossip service, one append per
100 ms window); a crash in between loses none: peers hold them, the next start's resync
brings them back.

Restore (``open``): the newest good snapshot, then the log after it; the clock moves past
the largest timestamp found (never backwards across a restart). A snapshot or log failing
its checks is refused, naming the file (``CorruptFile``); nothing is half-loaded.

Compaction: once the log since the last snapshot exceeds ``compact_bytes``, the next write
snapshots the whole state (``Store.compact``), which drops the superseded log. The snapshot
must cover every record whose append was called before its instant, but a commit applies
its delta only after its append returned. So a compaction closes a gate: new commits wait
at it (before they take a timestamp), commits past it finish, and only when none is between
append and apply is the snapshot taken and the log rotated; the gate reopens then (writers
wait at most one group commit, never the snapshot's write). Remote deltas need no gate:
they are applied before they are persisted.

Ownership: the Replica owns its Store (opened in ``open``, closed in ``aclose``). It starts
no tasks and knows nothing of gossip: ``gossipmgr.gossip.service.GossipService`` owns the
anti-entropy protocol, which joins remote deltas into ``state`` and reports them here
(``remote_applied``, ``persist``), and registers with ``on_local_write`` for local ones.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import trio

from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.codec import check_entry, decode_map_trusted, encode_map, encode_packed
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.lease import Lease, LeaseConfig, bounded, is_holder
from gossipmgr.core.quorum import ALONE, Quorum
from gossipmgr.core.state import LEASE_KEY, ClusterState
from gossipmgr.errors import BadPacket, CorruptFile, StoreError, ValueRefused, ValueTooLarge

log = logging.getLogger("gossipmgr.replica")

SNAPSHOT_VERSION = 1
#: Snapshot once this much log has accumulated: bounded restore time (8 MiB of small
#: deltas replay in well under a second) and disk use.
DEFAULT_COMPACT_BYTES = 8 * 1024 * 1024
Make = Callable[[ClusterState, Timestamp], LWWMap]
#: Told the novel part of every local write, once it is durable and applied.
LocalWriteListener = Callable[[LWWMap], None]


def check_writable(delta: LWWMap, max_bytes: int | None = None) -> list[bytes]:
    """Refuse a local delta that gossip could not carry to every peer (``codec.check_entry``:
    the same rule a peer's decoder applies, plus the encoded size of one message). What a
    commit accepts therefore replicates. Raises ValueTooLarge (413) or ValueRefused (422);
    the text names the key and the limit. ``max_bytes``: also refuse (413) a delta whose
    encoded entries add up to more (a batch that must travel in one gossip message).

    Returns the encoded entries (the record is built from them: ``codec.encode_packed``)."""
    packed: list[bytes] = []
    for key, e in delta.items():
        try:
            b = check_entry(key, e)
        except BadPacket as exc:
            where = "/".join(key)[:80]
            cls = ValueTooLarge if exc.reason == "too_large" else ValueRefused
            raise cls(f"{where}: {exc.detail}") from None
        assert b is not None  # check_entry encodes every entry not read from disk
        packed.append(b)
    if max_bytes is not None:
        size = sum(map(len, packed))
        if size > max_bytes:
            raise ValueTooLarge(
                f"the batch is {size} bytes encoded, more than one gossip message carries "
                f"(limit {max_bytes} bytes): split it into smaller batches"
            )
    return packed


def default_compact_bytes() -> int:
    """DEFAULT_COMPACT_BYTES, or the test-only ``GOSSIPMGR_TEST_COMPACT_BYTES`` (crash tests
    use it to make real agents compact every few writes; docs/testing.md)."""
    raw = os.environ.get("GOSSIPMGR_TEST_COMPACT_BYTES", "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else DEFAULT_COMPACT_BYTES


def encode_snapshot(state: ClusterState, hlc_last: Timestamp) -> bytes:
    body = [SNAPSHOT_VERSION, hlc_last.ms, hlc_last.logical, encode_map(state.map)]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def decode_snapshot(data: bytes, where: str) -> tuple[LWWMap, int, int]:
    """Raises CorruptFile naming ``where`` on any malformed content."""
    try:
        obj = msgpack.unpackb(data, raw=False)
    except Exception as exc:
        raise CorruptFile(where, f"snapshot does not decode ({type(exc).__name__})") from None
    if not isinstance(obj, list) or len(obj) != 4 or obj[0] != SNAPSHOT_VERSION:
        raise CorruptFile(where, "unknown snapshot layout or version")
    _, ms, logical, body = obj
    if type(ms) is not int or type(logical) is not int or not isinstance(body, bytes):
        raise CorruptFile(where, "snapshot header fields have the wrong types")
    try:
        return decode_map_trusted(body), ms, logical
    except BadPacket as exc:
        raise CorruptFile(where, f"snapshot state is malformed: {exc}") from None


class Replica:
    def __init__(
        self,
        name: str,
        *,
        data_dir: Path | None,
        incarnation: int | None = None,
        lease: LeaseConfig | None = None,
        max_offset_ms: int = 500,
        fsync: bool = True,
        compact_bytes: int | None = None,
        accept_damage: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.data_dir = data_dir
        self.clock = clock
        self.incarnation = incarnation if incarnation is not None else int(clock() * 1000)
        self.state = ClusterState()
        self.hlc = HLC(name, max_offset_ms=max_offset_ms)
        self.lease_cfg = lease or LeaseConfig()
        self._lease_seen: tuple[Entry, LeaseConfig, Lease | None] | None = None
        #: alive gossipmgr instances (Serf's view, set by the agent); alone: just us
        self.candidates: list[str] = [name]
        #: the majority as our Serf view shows it (set by the lease loop); alone: one of one
        self.quorum: Quorum = ALONE
        self.compact_bytes = compact_bytes if compact_bytes is not None else default_compact_bytes()
        self._accept_damage = accept_damage
        self._store: Any = None
        self._fsync = fsync
        self._compacting = False
        self._compact_lock = trio.Lock()
        #: commits between taking their timestamp and applying their delta
        self._in_flight = 0
        self._drained = trio.Event()  # set when _in_flight drops to 0 while the gate is shut
        self._gate_open = trio.Event()
        self._gate_open.set()
        self._listeners: list[LocalWriteListener] = []
        self._send_listeners: list[LocalWriteListener] = []
        #: keys of local writes sent but not yet applied -> the timestamp each was written at
        self._unapplied: dict[tuple[str, ...], Timestamp] = {}
        #: of those, entries a peer's copy brought back before the local apply
        self._echoed: dict[tuple[str, ...], Entry] = {}
        self._remote_listeners: list[LocalWriteListener] = []
        self._changed = trio.Event()
        self.counters: dict[str, int] = {
            "writes": 0,
            "write_errors": 0,
            # Counted by the gossip service (its send queue is full); kept here so the
            # metric (gossipmgr_replica_outbox_dropped_total) exists from the start.
            "outbox_dropped": 0,
            "quarantined": 0,
        }
        self.restore_notes: list[str] = []
        self.restore_seconds = 0.0

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> list[str]:
        """Restore from ``data_dir`` (if any). Raises CorruptFile / StoreError.

        The cyclic GC is off while restoring (each allocation burst of the restore, which
        makes no cyclic garbage, walked every object: 0.14 s of 0.37 s for 10,000 nodes),
        and what was restored is frozen (``gc.freeze``): later collections skip it."""
        t0 = time.perf_counter()
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            notes = self._restore()
        finally:
            if was_enabled:
                gc.enable()
        gc.freeze()
        self.restore_seconds = time.perf_counter() - t0
        self.restore_notes = notes
        return notes

    def _restore(self) -> list[str]:
        from gossipmgr.runtime.store import (
            Store,  # local: the store pulls in fcntl; pure users skip it
        )

        notes: list[str] = []
        if self.data_dir is not None:
            store = Store(self.data_dir, fsync=self._fsync, accept_damage=self._accept_damage)
            restored = store.open()
            try:
                notes += restored.notes
                if restored.snapshot is not None:
                    where = str(restored.snapshot_path)
                    m, ms, logical = decode_snapshot(restored.snapshot, where)
                    self.state.adopt(self._quarantine(m, where))
                    self.hlc.advance_to(Timestamp(ms, logical, self.name))
                for i, rec in enumerate(restored.records):
                    try:
                        rec_map = decode_map_trusted(rec)
                    except BadPacket as exc:
                        raise CorruptFile(
                            str(self.data_dir), f"log record {i} after the snapshot: {exc}"
                        ) from None
                    self.state.apply(self._quarantine(rec_map, f"log record {i}"))
            except BaseException:
                store.close()
                raise
            self._store = store
            newest = self.state.max_timestamp()
            if newest is not None:
                self.hlc.advance_to(newest)
            notes.append(
                f"restored {len(self.state)} entries ({len(restored.records)} log records)"
            )
            if self.counters["quarantined"]:
                notes.append(
                    f"left out {self.counters['quarantined']} entries gossip cannot carry "
                    "(written before the value limits; each is logged with its key)"
                )
        return notes

    def _quarantine(self, m: LWWMap, where: str) -> LWWMap:
        """``m`` without the entries gossip cannot carry (``codec.check_entry``).

        Such an entry can only come from a data directory written before the rule existed:
        commits apply the whole rule, the decoder all of it but the size (which the message
        limit bounds). Kept, it could never reach a peer: each
        anti-entropy round would find the digests differ and try again, forever. So it is
        left out of the state, logged with its key and counted (``quarantined``); it stays
        in the data directory until the next compaction.
        """
        bad: set[tuple[str, ...]] = set()
        for k, e in m.items():
            try:
                check_entry(k, e, from_disk=True)
            except BadPacket as exc:
                bad.add(k)
                log.warning(
                    "%s: %s: entry %s cannot be gossiped (%s); left out of the state",
                    self.name,
                    where,
                    "/".join(map(str, k))[:120],
                    exc,
                )
        if not bad:
            return m
        self.counters["quarantined"] += len(bad)
        good = LWWMap.lazy()
        good.gc_horizon = m.gc_horizon
        good.merge((k, e) for k, e in m.items() if k not in bad)
        return good

    async def aclose(self) -> None:
        if self._store is not None:
            await self._store.aclose()
            self._store = None

    @property
    def store(self) -> Any:
        return self._store

    # ------------------------------------------------------------------ time
    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    # ------------------------------------------------------------------ writes
    async def commit(self, make: Make, *, max_bytes: int | None = None) -> LWWMap:
        """Make a delta, make it durable, apply it, push it. Returns the novel part.

        Raises StoreError (nothing applied; the peers may have it) when the data directory
        refuses the write, and whatever ``make`` raises (validation errors) before anything;
        ValueTooLarge / ValueRefused (nothing applied) for a delta gossip could not carry,
        or whose encoded entries exceed ``max_bytes`` (``check_writable``).
        """
        while not self._gate_open.is_set():  # a compaction is taking its snapshot
            await self._gate_open.wait()
        self._in_flight += 1
        try:
            ts = self.hlc.now(self.now_ms())
            delta = make(self.state, ts)
            if not len(delta):
                return delta
            packed = check_writable(delta, max_bytes)
            if self._store is not None:
                novel = await self._append_then_apply(delta, packed)
            else:
                self._send(delta, [False])
                novel = self.state.apply(delta)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._drained.set()
        self.counters["writes"] += 1
        if len(novel):
            for listener in self._listeners:
                listener(novel)
        self._notify()
        await self._maybe_compact()
        return novel

    async def _append_then_apply(self, delta: LWWMap, packed: list[bytes]) -> LWWMap:
        """Make ``delta`` durable (pushed once the store's thread has it), then apply it;
        the novel part, with entries a peer's copy brought back meanwhile. Raises
        StoreError (nothing applied; entries a peer brought back are reported as remote)."""
        pending = self._unapplied
        for k, e in delta.items():
            pending[k] = e.ts
        ok, sent, record = False, [False], encode_packed(packed, delta.gc_horizon)
        self._store.when_queued(partial(self._send, delta, sent))  # overlaps the fsync
        try:
            await self._store.append(record)
            ok = True
        except StoreError:
            self.counters["write_errors"] += 1
            raise
        finally:
            self._send(delta, sent)  # refused before the flush thread had it: sent anyway
            for k, e in delta.items():
                if pending.get(k) == e.ts:
                    del pending[k]
            back = self._take_echoes(delta)
            if back and not ok:
                self.remote_applied(back)
        novel = self.state.apply(delta)
        if back:
            novel.merge(back.items())
        return novel

    def _send(self, delta: LWWMap, sent: list[bool]) -> None:
        if not sent[0]:  # once per delta
            sent[0] = True
            for listener in self._send_listeners:
                listener(delta)

    def _take_echoes(self, delta: LWWMap) -> LWWMap | None:
        """The entries of ``delta`` a peer's copy brought back before its apply (taken out
        of ``_echoed``); None when there are none."""
        echoed = self._echoed
        if not echoed:
            return None
        back = []
        for k, e in delta.items():
            x = echoed.get(k)
            if x is not None and x.ts == e.ts:
                back.append((k, echoed.pop(k)))
        if not back:
            return None
        out = LWWMap.lazy()
        out.merge(back)
        return out

    async def persist(self, novel: LWWMap) -> None:
        """Persist a remote delta that the protocol already applied (best effort)."""
        if self._store is not None and len(novel):
            try:
                await self._store.append(encode_map(novel))
            except StoreError as exc:
                self.counters["write_errors"] += 1
                log.error(
                    "%s: could not persist a remote delta (%s); peers still hold it", self.name, exc
                )
                return
            await self._maybe_compact()

    async def _maybe_compact(self) -> None:
        store = self._store
        if store is None or self._compacting or store.log_bytes < self.compact_bytes:
            return
        self._compacting = True
        try:
            await self._compact()
        except StoreError as exc:
            log.error("%s: compaction failed: %s", self.name, exc)
        finally:
            self._compacting = False

    async def snapshot_now(self) -> None:
        if self._store is not None:
            await self._compact()

    async def _compact(self) -> None:
        """Snapshot at an instant when no commit is between its append and its apply.

        See the module docstring. Raises what ``Store.compact`` raises.
        """
        store = self._store
        async with self._compact_lock:  # one at a time: the gate has one owner
            self._gate_open = trio.Event()  # shut: new commits wait
            try:
                while self._in_flight:
                    self._drained = trio.Event()
                    await self._drained.wait()

                def make_snapshot() -> bytes:
                    # Store.compact calls this at its instant (rotation follows with no
                    # checkpoint), so reopening here lets commits go on into the new segment.
                    self._gate_open.set()
                    return encode_snapshot(self.state, self.hlc.last)

                await store.compact(make_snapshot)
            finally:
                self._gate_open.set()

    # ------------------------------------------------------------------ replication
    def on_local_send(self, listener: LocalWriteListener) -> None:
        """Call ``listener(delta)`` for every local write once its delta is checked and in
        the store's thread (``Store.when_queued``), before it is durable or applied here (the
        gossip service pushes it to the peers). It must not block or raise."""
        self._send_listeners.append(listener)

    def on_local_write(self, listener: LocalWriteListener) -> None:
        """Call ``listener(novel)`` after every local write that changed the state, once it
        is durable and applied (the change feed, webhooks). It must not block or raise."""
        self._listeners.append(listener)

    def on_remote_write(self, listener: LocalWriteListener) -> None:
        """Call ``listener(novel)`` after every remote delta joined into ``state`` that changed
        it (the change feed records it). It must not block or raise."""
        self._remote_listeners.append(listener)

    def remote_applied(self, novel: LWWMap) -> None:
        """A remote delta was joined into ``state`` (by the protocol): tell the remote-write
        listeners, wake change waiters. Persisting it is a separate step (``persist``).

        Entries of a local write still waiting for its fsync (a peer's copy of it, back
        early) are left to that write to report (``_append_then_apply``)."""
        if self._unapplied and len(novel):
            novel = self._keep_echoes(novel)
        if len(novel):
            for listener in self._remote_listeners:
                listener(novel)
            self._notify()

    def _keep_echoes(self, novel: LWWMap) -> LWWMap:
        """``novel`` without this instance's own writes still between send and apply
        (kept in ``_echoed`` for them)."""
        pending = self._unapplied
        mine = [(k, e) for k, e in novel.items() if pending.get(k) == e.ts]
        if not mine:
            return novel
        self._echoed.update(mine)
        rest = LWWMap.lazy()
        rest.merge((k, e) for k, e in novel.items() if pending.get(k) != e.ts)
        return rest

    # ------------------------------------------------------------------ change feed
    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_change(self) -> None:
        """Return after the next change to the replica (local or remote)."""
        await self._changed.wait()

    # ------------------------------------------------------------------ lease view
    def lease(self) -> Lease | None:
        """The lease as every replica reads it: expiry bounded by when it was written."""
        e = self.state.map.entry(LEASE_KEY)
        if e is None or e.deleted:
            return None
        seen = self._lease_seen  # every commit wakes readers of this: decode once per entry
        if seen is not None and seen[0] is e and seen[1] is self.lease_cfg:
            return seen[2]
        lease = Lease.from_value(e.value)
        lease = None if lease is None else bounded(lease, e.ts.ms, self.lease_cfg)
        self._lease_seen = (e, self.lease_cfg, lease)
        return lease

    def is_holder(self) -> bool:
        return is_holder(
            self.name, self.lease(), self.candidates, self.now_ms(), self.quorum.may_hold
        )
