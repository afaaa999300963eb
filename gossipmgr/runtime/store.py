"""Durable storage: numbered log segments plus snapshots, with group commit.

Promise: **nothing acknowledged is ever lost across restarts and crashes.** A record is
acknowledged when :meth:`Store.append` returns; by then it has been written and fsync'd
(``fdatasync`` where the OS has it). The store is generic over opaque byte records: the
caller (the CRDT layer) encodes deltas/states to bytes; this module never looks inside.

The files of a data directory: ``runtime.segments`` and ``runtime.restore``;
docs/storage-format.md has the byte layout and the crash-safety argument step by step.

The decisions and why (crc32 for records, blake2b for snapshots; one fdatasync per group
commit, a commit record ending each batch and a commit slot one batch behind; a corrupt
newest snapshot set aside for the previous one; idempotent replay; a failed write or fsync
cut off, never retried) are in docs/storage-format.md, each with its prior art.

Threads: blocking I/O in async methods runs off the trio thread: group commits in the
store's flush thread (``runtime.flusher``, cheaper than trio's thread cache per batch), the
rest in ``trio.to_thread.run_sync``; ``open()`` is synchronous (call it once, at start).
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gossipmgr.errors import StoreError
from gossipmgr.runtime.flusher import FlushThread
from gossipmgr.runtime.restore import (
    AppendPoint,
    Restored,
    create_segment,
    delete_superseded,
    lock_data_dir,
    restore,
)
from gossipmgr.runtime.segments import (
    COMMIT_SIZE,
    CRASH_POINTS,
    FORMAT_VERSION,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    LOG_DATA_START,
    MAX_RECORD,
    MAX_SEQ,
    MAX_SNAPSHOT,
    SLOT_SIZE,
    SNAP_DIGEST_SIZE,
    SNAP_MAGIC,
    U64,
    commit_record,
    crash_point,
    frame,
    header,
    log_name,
    slot,
    slot_offset,
    snap_name,
    write_file_atomic,
)

# The format names callers and tests use are re-exported from here (``segments`` has them).
__all__ = [
    "COMMIT_SIZE",
    "CRASH_POINTS",
    "FORMAT_VERSION",
    "FRAME_OVERHEAD",
    "HEADER_SIZE",
    "LOG_DATA_START",
    "MAX_RECORD",
    "MAX_SNAPSHOT",
    "SLOT_SIZE",
    "Restored",
    "Store",
    "StoreStats",
    "frame",
]


log = logging.getLogger("gossipmgr.store")  # its name before the move to runtime/
#: after this long with no commit, the flush thread moves the commit slot up to the end of
#: the log (one fdatasync), so that damage to the last batch is refused, not read as torn
IDLE_CHECKPOINT_S = 1.0

# Test seam: the low-level calls the append path uses. Tests monkeypatch these (never the
# os module itself, which trio uses for its own wake-up fd) to simulate ENOSPC/EIO.
_sys_pwrite = os.pwrite
_sys_fsync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


@dataclass(frozen=True)
class StoreStats:
    """Counters for /metrics. ``fsyncs`` counts group commits made durable (one fdatasync
    each: the batch, its commit record and, when it lags, the commit slot); ``fsync_*_s``
    time it."""

    appends: int
    batches: int
    fsyncs: int
    bytes: int
    fsync_last_s: float
    fsync_max_s: float
    compactions: int
    errors: int
    log_bytes: int


@dataclass(eq=False)
class _Batch:
    frames: list[bytes] = field(default_factory=list)
    records: int = 0
    done: bool = False
    error: OSError | StoreError | None = None


class Store:
    """A data directory of log segments and snapshots. See the module docstring.

    Ownership: the Store owns its open segment file descriptor and the directory lock from
    :meth:`open` until :meth:`close`/:meth:`aclose`, and its flush thread from the first
    append until then. It starts no tasks; every async method does its own work in the
    caller's task (and threads it waits for).

    ``fsync=False`` skips fsync: acknowledged records then survive a process crash (they
    are in the OS page cache) but not power loss. For tests and benchmarks.
    """

    def __init__(self, data_dir: Path, *, fsync: bool = True, accept_damage: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.fsync = fsync
        #: restore what is left of a log segment whose acknowledged records are damaged
        #: (copy set aside as log.N.corrupt) instead of raising CorruptFile
        self.accept_damage = accept_damage
        self._slot_gen = 0  # generation of the newest commit slot of the open segment
        self._slot_end = 0  # the offset it holds (the durable commit point; may lag _offset)
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._fd_seq = 0  # segment the fd is open on
        self._target_seq = 0  # segment new batches must go to (ahead of _fd_seq after rotate)
        self._offset = 0  # end of the last good frame in the _fd_seq segment
        self._segment_bytes: dict[int, int] = {}  # framed record bytes per live segment
        self._durable_snap_seq = 0  # newest durable snapshot (0: none)
        self._fallback_seq = 0  # base kept as a fallback: a snapshot seq, or FIRST_SEQ
        self._broken: str | None = None
        self._open_batch: _Batch | None = None
        self._flush_lock = trio.Lock()
        self._flusher = FlushThread(
            f"gossipmgr store flush {self.data_dir.name}",
            on_idle=self._checkpoint_quietly,
            idle_s=IDLE_CHECKPOINT_S,
        )
        self.when_queued = self._flusher.when_queued  # fn() once an append is in its hands
        # Held by whatever uses the open segment's fd in a thread (a commit, the idle
        # commit of the log's end, a rotation) and by close(): these may overlap.
        self._io_lock = threading.RLock()
        self._compact_lock = trio.Lock()
        self._closed = False
        # counters
        self._appends = self._batches = self._fsyncs = self._bytes = 0
        self._fsync_last = self._fsync_max = 0.0
        self._compactions = self._errors = 0

    # --- open / restore ------------------------------------------------------------------

    def open(self) -> Restored:
        """Lock the directory, restore its contents and get ready to append.

        Creates a missing data directory (and parents). Truncates a torn tail off the last
        segment. Removes leftover ``*.tmp`` files. Sets a corrupt newest snapshot aside
        when a complete older chain exists (see the module docstring).

        Raises StoreError if the directory cannot be created or locked (another process has
        it) or on an I/O error; CorruptFile naming the file and the problem if acknowledged
        data cannot be restored completely."""
        if self._lock_fd is not None or self._closed:
            raise StoreError(f"{self.data_dir}: Store.open() may be called once")
        notes: list[str] = []
        self._lock_fd = lock_data_dir(self.data_dir, notes, fsync=self.fsync)
        try:
            return self._restore(notes)
        except BaseException:
            self._release()
            raise

    def load(self) -> Restored:
        return self.open()  # an alias

    def _restore(self, notes: list[str]) -> Restored:
        restored, point = restore(
            self.data_dir, notes, fsync=self.fsync, accept_damage=self.accept_damage
        )
        self._take(point)
        self._target_seq, self._segment_bytes = point.seq, point.segment_bytes
        self._durable_snap_seq, self._fallback_seq = point.durable_snap_seq, point.fallback_seq
        return restored

    def _take(self, point: AppendPoint) -> None:
        """Make ``point``'s segment the open one (closing the previous fd)."""
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._fd_seq = point.fd, point.seq
        self._offset, self._slot_gen = point.offset, point.slot_gen
        self._slot_end = point.offset  # restore and create_segment commit up to the end

    # --- segment management (worker thread, under _flush_lock) ---------------------------

    def _ensure_segment_sync(self, seq: int) -> None:
        """Make segment ``seq`` the open one, creating it durably. Raises OSError."""
        if self._fd is not None and self._fd_seq == seq:
            return
        # A segment left behind has its commit point at its end, like every segment but
        # the last one (restore refuses a bad batch after it in any other segment).
        self._checkpoint_sync()
        self._take(create_segment(self.data_dir, seq, self.fsync))
        self._segment_bytes.setdefault(seq, 0)

    def _checkpoint_sync(self) -> None:
        """Move the open segment's commit point up to its end, durably, if it lags (a
        segment rotated away from, a store closing). Raises OSError."""
        fd = self._fd
        if fd is None or self._slot_end == self._offset or self._broken is not None:
            return
        gen = self._slot_gen + 1
        if _sys_pwrite(fd, slot(self._offset, gen), slot_offset(gen)) != SLOT_SIZE:
            raise OSError(errno.EIO, "short write of a commit slot")
        if self.fsync:
            _sys_fsync(fd)
        self._slot_gen, self._slot_end = gen, self._offset

    def _rotate_sync(self, seq: int) -> None:
        with self._io_lock:
            self._ensure_segment_sync(seq)

    def _flush_sync(self, data: bytes, seq: int) -> None:
        with self._io_lock:
            self._flush_locked(data, seq)

    def _flush_locked(self, data: bytes, seq: int) -> None:
        """Write one batch and its commit record to segment ``seq`` and fdatasync them once;
        on error cut the segment back (docs/storage-format.md, "Appends and group commit").

        Raises OSError."""
        self._ensure_segment_sync(seq)
        fd = self._fd
        assert fd is not None
        start = self._offset
        gen = self._slot_gen + 1
        lags = self._slot_end != start
        buf = data + commit_record(start, data)
        try:
            if lags and _sys_pwrite(fd, slot(start, gen), slot_offset(gen)) != SLOT_SIZE:
                # The commit point moves up to this batch's start: the batches before it
                # are durable (their fdatasync returned), so it never covers a torn byte.
                raise OSError(errno.EIO, "short write of a commit slot")
            view = memoryview(buf)
            off = 0
            while off < len(view):
                off += _sys_pwrite(fd, view[off:], start + off)
            crash_point("flush.after-write")
            if self.fsync:
                t0 = time.perf_counter()
                _sys_fsync(fd)
                dt = time.perf_counter() - t0
                self._fsyncs += 1
                self._fsync_last = dt
                self._fsync_max = max(self._fsync_max, dt)
            crash_point("flush.after-fsync")
            if lags:
                self._slot_gen, self._slot_end = gen, start
        except OSError:
            try:
                # The commit slot first (it may already be written), then the bytes.
                os.pwrite(fd, slot(start, gen), slot_offset(gen))
                os.fsync(fd)
                self._slot_gen, self._slot_end = gen, start
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError as e2:
                self._broken = (
                    f"could not cut {self.data_dir / log_name(self._fd_seq)} back to offset "
                    f"{start} after a failed write ({e2.strerror or e2}); reopen the store"
                )
                log.error("store %s: %s", self.data_dir, self._broken)
            raise
        self._offset = start + len(buf)
        self._segment_bytes[self._fd_seq] = self._segment_bytes.get(self._fd_seq, 0) + len(buf)

    # --- appending -----------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.data_dir} is closed")
        if self._lock_fd is None:
            raise StoreError(f"store {self.data_dir} is not open; call open() first")
        if self._broken is not None:
            raise StoreError(f"store {self.data_dir} is unusable: {self._broken}")

    async def append(self, record: bytes) -> None:
        """Append one record; return once it is written and fsync'd (acknowledged).

        Raises TypeError/ValueError for a non-bytes or oversized record (more than
        MAX_RECORD), StoreError if it could not be made durable: then it is NOT
        acknowledged (and the segment was cut back so that it will not be restored). If
        the call is cancelled the record is not acknowledged; it may still be restored."""
        await self.append_many((record,))

    async def append_many(self, records: Iterable[bytes]) -> None:
        """Append several records in one batch; all are acknowledged together or none is.

        Raises like :meth:`append`.
        """
        frames = []
        for r in records:
            if not isinstance(r, bytes | bytearray | memoryview):
                raise TypeError(f"a record must be bytes, not {type(r).__name__}")
            if len(r) > MAX_RECORD:
                raise ValueError(f"record of {len(r)} bytes exceeds MAX_RECORD ({MAX_RECORD})")
            frames.append(frame(bytes(r)))
        if not frames:
            return
        self._check_usable()
        batch = self._open_batch
        if batch is None:
            batch = self._open_batch = _Batch()
        batch.frames.extend(frames)
        batch.records += len(frames)
        # Whoever gets the lock first flushes everything queued so far; the others find
        # their batch done when they get the lock (a fair FIFO lock: cheap hand-offs). A
        # free lock is taken without a scheduler round: the flush's wait is one already.
        lock = self._flush_lock
        try:
            lock.acquire_nowait()
        except trio.WouldBlock:
            self._flusher.run_queued()  # a flush is under way: this batch is next
            await lock.acquire()
        try:
            if not batch.done:
                assert batch is self._open_batch
                await self._flush(batch)
        finally:
            lock.release()
        if batch.error is not None:
            raise StoreError(
                f"append to {self.data_dir} not acknowledged: {batch.error}"
            ) from batch.error

    async def _flush(self, batch: _Batch) -> None:
        """Write and fsync ``batch`` (caller holds _flush_lock). Never raises; sets result."""
        # Taking the batch and reading the target segment happen together, on the trio
        # thread: a batch taken after compact()'s rotation instant goes to the new segment.
        self._open_batch = None
        seq = self._target_seq
        data = b"".join(batch.frames)
        try:
            if self._closed or self._fd is None:  # aclose() ran while we queued
                raise StoreError(f"store {self.data_dir} is closed")
            if self._broken is not None:
                raise StoreError(self._broken)
            # Not cancellable (FlushThread.run never is): once taken, a batch must be
            # finished for every appender in it.
            await self._flusher.run(self._flush_sync, data, seq)
        except (OSError, StoreError) as e:
            self._errors += 1
            batch.error = e
            log.warning("store %s: batch of %d records failed: %s", self.data_dir, batch.records, e)
        else:
            self._batches += 1
            self._appends += batch.records
            self._bytes += len(data)
        batch.done = True

    # --- compaction ----------------------------------------------------------------------

    async def compact(self, make_snapshot: Callable[[], bytes]) -> None:
        """Write a snapshot of the caller's state and drop what it supersedes.

        ``make_snapshot()`` is called synchronously at the same instant as appends are
        rotated to a new segment; it must return the caller's state covering every record
        whose append() was *called* so far. Appends continue meanwhile. After the snapshot
        is durable, older files are deleted except one previous good snapshot (or the
        start of the log) and the segments after it, as a fallback.

        Concurrent calls run one after another. Raises whatever make_snapshot raises
        (nothing changed then), TypeError/ValueError for a non-bytes or oversized state,
        StoreError if writing failed (the previous snapshot and all segments are kept).
        """
        self._check_usable()
        async with self._compact_lock:
            self._check_usable()
            state = make_snapshot()
            if not isinstance(state, bytes | bytearray | memoryview):
                raise TypeError(f"make_snapshot() must return bytes, not {type(state).__name__}")
            if len(state) > MAX_SNAPSHOT:
                raise ValueError(f"snapshot of {len(state)} bytes exceeds MAX_SNAPSHOT")
            # Same instant (no checkpoint since make_snapshot): later batches go to seq.
            seq = self._target_seq + 1
            if seq > MAX_SEQ:
                raise StoreError(f"{self.data_dir}: segment sequence numbers exhausted")
            self._target_seq = seq
            try:
                # log.N must exist before snapshot.N (restore requires the chain to start
                # at log.N, so an absent segment is detectable as loss, never ambiguous).
                async with self._flush_lock:
                    self._check_usable()
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(self._rotate_sync, seq)
                crash_point("compact.after-rotate")
                body = header(SNAP_MAGIC, seq) + U64.pack(len(state)) + bytes(state)
                blob = body + hashlib.blake2b(body, digest_size=SNAP_DIGEST_SIZE).digest()
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        write_file_atomic, self.data_dir, snap_name(seq), blob, self.fsync
                    )
                crash_point("compact.after-snapshot")
            except (OSError, StoreError) as e:
                self._errors += 1
                raise StoreError(f"compaction of {self.data_dir} failed: {e}") from e
            keep = self._durable_snap_seq or self._fallback_seq
            self._fallback_seq = keep
            self._durable_snap_seq = seq
            self._compactions += 1
            for s in [s for s in list(self._segment_bytes) if s < seq]:
                # Bytes before the snapshot no longer count towards log_bytes.
                self._segment_bytes.pop(s)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(
                    delete_superseded, self.data_dir, seq, keep, self.fsync
                )

    # --- introspection / close -----------------------------------------------------------

    @property
    def log_bytes(self) -> int:
        """Framed record bytes in segments after the newest durable snapshot: what a
        restore would replay. Use it to decide when to compact."""
        return sum(list(self._segment_bytes.values()))

    @property
    def stats(self) -> StoreStats:
        return StoreStats(
            appends=self._appends,
            batches=self._batches,
            fsyncs=self._fsyncs,
            bytes=self._bytes,
            fsync_last_s=self._fsync_last,
            fsync_max_s=self._fsync_max,
            compactions=self._compactions,
            errors=self._errors,
            log_bytes=self.log_bytes,
        )

    def close(self) -> None:
        """Commit the log's end in its commit slot (if it lags: one fdatasync, in the
        caller's thread), release the segment fd and the directory lock. Idempotent.

        Call it when no append/compact is running (use :meth:`aclose` otherwise); raises
        StoreError if a flush is in progress. Queued, unacknowledged records are dropped.
        """
        if self._flush_lock.locked() or self._compact_lock.locked():
            raise StoreError(f"store {self.data_dir}: close() while a write is in progress")
        if not self._closed:
            self._checkpoint_quietly()
        self._closed = True
        self._release()

    def _checkpoint_quietly(self) -> None:
        """:meth:`_checkpoint_sync`, an error logged (a restore commits the end too)."""
        try:
            with self._io_lock:
                self._checkpoint_sync()
        except OSError as e:
            log.warning("store %s: cannot commit the log's end: %s", self.data_dir, e)

    async def aclose(self) -> None:
        """Wait for running writes to finish, commit the last batch's end in the commit
        slot (best effort: a restore does that too), then :meth:`close`."""
        async with self._compact_lock, self._flush_lock:
            if not self._closed:
                with trio.CancelScope(shield=True):
                    await self._flusher.run(self._checkpoint_quietly)
            self._closed = True
            self._release()

    def _release(self) -> None:
        self._flusher.stop()
        with self._io_lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the fd drops the flock
            self._lock_fd = None
