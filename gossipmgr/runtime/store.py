"""Durable storage: numbered log segments plus snapshots, with group commit.

Promise: **nothing acknowledged is ever lost across restarts and crashes.** A record is
acknowledged when :meth:`Store.append` returns; by then it has been written and fsync'd
(``fdatasync`` where the OS has it). The store is generic over opaque byte records: the
caller (the CRDT layer) encodes deltas/states to bytes; this module never looks inside.

Files in the data directory (``docs/storage-format.md`` has the byte layout and the
crash-safety argument step by step)::

    log.<seq>         append-only segment: header | 2 commit slots | frame | frame | ...
    snapshot.<seq>    header | u64 length | payload | blake2b-256(everything before)
    *.tmp             a file being created; never read, removed at open()
    *.corrupt         a snapshot refused at open() and set aside, or a copy of a damaged
                      segment whose loss was accepted; kept for inspection, never read
    LOCK              flock()ed while a Store is open (one process per directory)

``snapshot.N`` covers every record in segments ``< N``; restore is the newest good snapshot
plus segments ``N, N+1, ...``, which must be contiguous. Segment ``log.N`` is created (and
made durable) *before* ``snapshot.N`` is written, and no file is deleted until a newer
snapshot is durable, so each crash point leaves a readable chain (prior art: LevelDB's
log + table files and CURRENT rename; etcd's WAL + snap directories).

Decisions and why:

- Checksums: records use ``zlib.crc32`` (C speed on many small frames, catches every burst
  up to 32 bits; CRC32C would be nicer but is not in the stdlib). Snapshots use
  ``hashlib.blake2b`` (256-bit): one large, rarely read file where a 2**-32 miss chance is
  not worth saving a few ms, and blake2b is as fast as sha1 in CPython.
- Torn write vs damage: every segment (format version 2) holds a *commit point* in one
  of two commit slots after its header. A commit writes and fsyncs the batch, then writes
  the commit point past it and fsyncs again; only then does append() return. So every
  byte before the commit point was acknowledged and a crash can only tear bytes after it.
  Restore refuses (:class:`CorruptFile`, file and offset named) any bad or missing byte
  before the commit point, unless the operator accepts the loss (``accept_damage``: the
  intact records are kept, the segment is copied to ``log.N.corrupt`` and cut); in the
  last segment a bad frame after the commit point is a torn write, cut off and reported.
  Version 1 segments (no commit point) keep the old heuristic: a short frame, a bad
  checksum on the frame ending at EOF, or a bad frame followed only by zeros at the end of
  the last segment is torn. PostgreSQL and etcd also stop rather than skip damage.
- A corrupt newest snapshot (bad magic/checksum/length): it is **refused**, renamed to
  ``snapshot.N.corrupt`` (kept for inspection, never deleted by us) and restore uses the
  previous good snapshot plus *all* segments after it, which retention keeps for exactly
  this purpose. That restore is complete, not partial, because ``snapshot.N`` only summed
  up records still present in those segments. The refusal is in ``Restored.notes`` and
  logged at WARNING. If no older snapshot with an unbroken chain exists, open() raises
  :class:`CorruptFile` naming the file. A snapshot with an unknown *format version* is never
  set aside: it was probably written by a newer gossipmgr, so open() raises instead.
- Replay must be idempotent: a record appended while compact() runs may be covered by the
  snapshot and also replayed after it (CRDT joins are idempotent).
- Group commit without a background task: appenders queue frames in the open batch; the
  one holding ``_flush_lock`` takes the whole batch, writes it with one ``pwrite`` and one
  fsync in a worker thread, then every appender of that batch returns (or raises). Each
  appender's task owns its wait; nobody owns a flusher task (prior art: PostgreSQL's
  commit_delay/group commit, MySQL binlog group commit).
- Failed write or fsync (ENOSPC, EIO): the whole batch fails with :class:`StoreError`, the
  commit slot being written is set back to the last good offset, and the segment is
  truncated back to it and fsync'd (after a failed fsync the
  page cache state is unknown, see PostgreSQL "fsyncgate" 2018, so the bytes are cut off,
  never retried). If even that truncate fails the store refuses every later append until
  reopened: garbage could otherwise sit in the middle of the log.

Threads: all blocking I/O in async methods runs in ``trio.to_thread.run_sync``; ``open()``
is synchronous (call it once at start, from a thread if you like).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import re
import signal
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from gossipmgr.errors import CorruptFile, StoreError

__all__ = [
    "FORMAT_VERSION",
    "MAX_RECORD",
    "MAX_SNAPSHOT",
    "Restored",
    "Store",
    "StoreStats",
]

log = logging.getLogger(__name__)

# --- format constants (docs/storage-format.md) -------------------------------------------
# Versioning: each kind of file carries its layout version; a reader refuses any version it
# does not know. WARNING: only ever bump a version for a new layout; never reuse a number.
# Log segments: version 2 adds the commit slots (version 1 segments are still read, with the
# version 1 torn-tail rule, and never appended to). Snapshots: version 1.
FORMAT_VERSION = 2  # of the log segments this release writes
LOG_VERSIONS = (1, 2)
SNAP_VERSION = 1
LOG_MAGIC = b"gmgr-log"
SNAP_MAGIC = b"gmgr-snp"
# magic(8) | u32 version | u64 seq | u32 crc32(of the previous 20 bytes), little-endian.
_HEADER = struct.Struct("<8sIQI")
HEADER_SIZE = _HEADER.size  # 24
# Version 2 segments: two commit slots follow the header, then the frames. A slot is
# u64 acknowledged end offset | u32 generation | u32 crc32(of the previous 12 bytes).
_SLOT = struct.Struct("<QII")
SLOT_SIZE = _SLOT.size  # 16
LOG_DATA_START = HEADER_SIZE + 2 * SLOT_SIZE  # 56: where frames start in a version 2 segment
# A log frame: u32 payload length | u32 crc32(length bytes + payload) | payload.
_FRAME = struct.Struct("<II")
FRAME_OVERHEAD = _FRAME.size  # 8
_U64 = struct.Struct("<Q")
SNAP_DIGEST_SIZE = 32  # blake2b-256

# Named size limits. A record is one CRDT delta; 16 MiB is far above any sane delta and
# keeps a corrupt length field from making us allocate gigabytes. A snapshot is the whole
# state held in memory by the caller; 1 GiB is where a single-file snapshot stops making sense.
MAX_RECORD = 16 * 1024 * 1024
MAX_SNAPSHOT = 1024 * 1024 * 1024
MAX_SEQ = 10**20 - 1  # the file names carry 20 decimal digits

FIRST_SEQ = 1  # log.1 is the first segment ever; with no snapshot, restore starts there

_NAME_RE = re.compile(r"^(log|snapshot)\.(\d{20})$")

# Test seam: the low-level calls the append path uses. Tests monkeypatch these (never the
# os module itself, which trio uses for its own wake-up fd) to simulate ENOSPC/EIO.
_sys_pwrite = os.pwrite
_sys_fsync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)


def _log_name(seq: int) -> str:
    return f"log.{seq:020d}"


def _snap_name(seq: int) -> str:
    return f"snapshot.{seq:020d}"


def _frame(record: bytes) -> bytes:
    n = len(record)
    lb = n.to_bytes(4, "little")
    return _FRAME.pack(n, zlib.crc32(record, zlib.crc32(lb))) + record


def _header(magic: bytes, seq: int) -> bytes:
    version = FORMAT_VERSION if magic == LOG_MAGIC else SNAP_VERSION
    head = struct.pack("<8sIQ", magic, version, seq)
    return head + zlib.crc32(head).to_bytes(4, "little")


def _slot(end: int, gen: int) -> bytes:
    body = struct.pack("<QI", end, gen)
    return body + zlib.crc32(body).to_bytes(4, "little")


def _slot_offset(gen: int) -> int:
    return HEADER_SIZE + (gen % 2) * SLOT_SIZE


def _new_segment(seq: int) -> bytes:
    """A version 2 segment with no records: its commit point is the start of the frames."""
    return _header(LOG_MAGIC, seq) + b"\0" * SLOT_SIZE + _slot(LOG_DATA_START, 1)


def _read_slots(data: bytes | memoryview) -> tuple[int, int] | None:
    """The valid commit slot with the highest generation: (end, gen), or None."""
    best: tuple[int, int] | None = None
    for i in range(2):
        off = HEADER_SIZE + i * SLOT_SIZE
        if len(data) < off + SLOT_SIZE:
            continue
        end, gen, crc = _SLOT.unpack_from(data, off)
        if zlib.crc32(bytes(data[off : off + 12])) != crc or gen % 2 != i:
            continue
        if best is None or gen > best[1]:
            best = (end, gen)
    return best


# --- test-only crash points (docs/testing.md) --------------------------------------------
# GOSSIPMGR_TEST_CRASH_AT=<point>:<n> makes the process SIGKILL itself the n-th time it
# passes <point> (n counts from 1). Read once at import; unset in production, where the
# hook is a dict lookup on an empty dict. Used by tests/test_crash_agent.py and
# bench/crash.py to kill an agent inside a compaction or between the two fsyncs of a commit.
CRASH_POINTS = (
    "flush.after-write",  # a batch is written, not yet fsync'd
    "flush.after-data-fsync",  # the batch is durable, its commit slot not yet written
    "compact.after-rotate",  # log.N exists, snapshot.N does not
    "compact.after-snapshot",  # snapshot.N is durable, nothing deleted yet
    "compact.mid-delete",  # one superseded file deleted, maybe more to go
)
_crash_at: dict[str, int] = {}
if _spec := os.environ.get("GOSSIPMGR_TEST_CRASH_AT", ""):
    _point, _, _n = _spec.rpartition(":")
    if _point not in CRASH_POINTS or not _n.isdigit() or int(_n) < 1:
        raise SystemExit(
            f"GOSSIPMGR_TEST_CRASH_AT={_spec!r}: want <point>:<n>, <point> in {CRASH_POINTS}"
        )
    _crash_at[_point] = int(_n)


def _crash_point(point: str) -> None:
    n = _crash_at.get(point)
    if n is None:
        return
    if n <= 1:
        log.warning("GOSSIPMGR_TEST_CRASH_AT: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
    _crash_at[point] = n - 1


class _VersionError(Exception):
    """Internal: a well-formed header with a version we do not know (never set aside)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def _check_header(path: Path, data: bytes | memoryview, magic: bytes, seq: int) -> int:
    """Validate a file header; returns its version. Raises CorruptFile, or _VersionError
    for an unknown version."""
    if len(data) < HEADER_SIZE:
        raise CorruptFile(str(path), f"file is {len(data)} bytes, shorter than its header")
    got_magic, version, got_seq, crc = _HEADER.unpack_from(data, 0)
    if got_magic != magic:
        raise CorruptFile(str(path), f"bad magic {got_magic!r}, expected {magic!r}")
    if zlib.crc32(bytes(data[: HEADER_SIZE - 4])) != crc:
        raise CorruptFile(str(path), "header checksum mismatch")
    known = LOG_VERSIONS if magic == LOG_MAGIC else (SNAP_VERSION,)
    if version not in known:
        raise _VersionError(
            f"format version {version} is not supported (this gossipmgr reads "
            f"version {' and '.join(map(str, known))}); was it written by a newer release?"
        )
    if got_seq != seq:
        raise CorruptFile(str(path), f"header says sequence {got_seq}, file name says {seq}")
    return int(version)


def _fsync_dir(path: Path) -> None:
    """fsync a directory so that creates, renames and unlinks in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file_atomic(directory: Path, name: str, data: bytes, fsync: bool) -> None:
    """Create ``directory/name`` with ``data`` so that it exists complete or not at all.

    tmp file, write, fsync, rename over, fsync the directory (the ext4/XFS-safe recipe;
    see also LevelDB's SetCurrentFile). Raises OSError; the tmp file is removed on error.
    """
    tmp = directory / (name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        try:
            view = memoryview(data)
            off = 0
            while off < len(view):
                off += os.write(fd, view[off:])
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, directory / name)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if fsync:
        _fsync_dir(directory)


def _all_zero(data: memoryview) -> bool:
    return data.tobytes().count(0) == len(data)


@dataclass(frozen=True)
class Restored:
    """What :meth:`Store.open` found on disk.

    ``snapshot`` is the payload of the snapshot restore starts from (None if there is none);
    ``records`` are the log records after it, in append order; apply them on top of the
    snapshot (idempotently). ``torn_tail`` says an unacknowledged partial record was cut
    off the end of the log. ``notes`` are human-readable lines worth logging (directory
    created, torn tail discarded, a corrupt snapshot refused and set aside, leftovers
    removed). ``snapshot_path`` names the snapshot used.
    """

    snapshot: bytes | None
    records: list[bytes]
    torn_tail: bool
    notes: list[str]
    snapshot_path: Path | None


@dataclass(frozen=True)
class StoreStats:
    """Counters for /metrics. ``fsyncs`` counts group commits made durable (each is two
    fdatasync calls: the batch, then its commit slot); ``fsync_*_s`` time both together."""

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
class _Segment:
    """What :meth:`Store._read_segment` found in one segment."""

    version: int
    data_start: int
    good_end: int  # end of the last intact record
    records: list[bytes] = field(default_factory=list)
    acked: int = 0  # commit point (version 2)
    gen: int = 0  # its slot generation
    torn_why: str | None = None  # a torn write after the commit point was found at good_end
    damage: str | None = None  # accepted damage to acknowledged records (accept_damage)


@dataclass(eq=False)
class _Batch:
    frames: list[bytes] = field(default_factory=list)
    records: int = 0
    done: bool = False
    error: OSError | StoreError | None = None


class Store:
    """A data directory of log segments and snapshots. See the module docstring.

    Ownership: the Store owns its open segment file descriptor and the directory lock from
    :meth:`open` until :meth:`close`/:meth:`aclose`. It starts no tasks; every async method
    does its own work in the caller's task (and worker threads it waits for).

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
        self._compact_lock = trio.Lock()
        self._closed = False
        # counters
        self._appends = 0
        self._batches = 0
        self._fsyncs = 0
        self._bytes = 0
        self._fsync_last = 0.0
        self._fsync_max = 0.0
        self._compactions = 0
        self._errors = 0

    # --- open / restore ------------------------------------------------------------------

    def open(self) -> Restored:
        """Lock the directory, restore its contents and get ready to append.

        Creates a missing data directory (and parents). Truncates a torn tail off the last
        segment. Removes leftover ``*.tmp`` files. Sets a corrupt newest snapshot aside
        when a complete older chain exists (see the module docstring).

        Raises StoreError if the directory cannot be created or locked (another process
        has it) or on an I/O error; CorruptFile naming the file and the problem if acknowledged
        data cannot be restored completely.
        """
        if self._lock_fd is not None or self._closed:
            raise StoreError(f"{self.data_dir}: Store.open() may be called once")
        notes: list[str] = []
        d = self.data_dir
        try:
            if not d.is_dir():
                if d.exists():
                    raise StoreError(f"data directory {d} exists and is not a directory")
                d.mkdir(parents=True, exist_ok=True)
                if self.fsync:
                    _fsync_dir(d.parent)
                notes.append(f"created data directory {d}")
            lock_fd = os.open(d / "LOCK", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise StoreError(f"cannot create or open data directory {d}: {e.strerror or e}")
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(lock_fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreError(f"data directory {d} is in use by another process (LOCK held)")
            raise StoreError(f"cannot lock {d / 'LOCK'}: {e.strerror or e}")
        self._lock_fd = lock_fd
        try:
            return self._restore(notes)
        except BaseException:
            self._release()
            raise

    def load(self) -> Restored:
        """Alias of :meth:`open`."""
        return self.open()

    def _restore(self, notes: list[str]) -> Restored:
        d = self.data_dir
        logs: dict[int, Path] = {}
        snaps: dict[int, Path] = {}
        try:
            entries = sorted(d.iterdir())
        except OSError as e:
            raise StoreError(f"cannot list data directory {d}: {e.strerror or e}")
        for p in entries:
            if p.name.endswith(".tmp"):
                # A crash during compaction or segment creation: never renamed into place,
                # so never part of the restorable state.
                try:
                    p.unlink()
                except OSError as e:
                    raise StoreError(f"cannot remove leftover {p}: {e.strerror or e}")
                notes.append(f"removed leftover temporary file {p} (interrupted write)")
                continue
            m = _NAME_RE.match(p.name)
            if m:
                (logs if m.group(1) == "log" else snaps)[int(m.group(2))] = p

        snapshot: bytes | None = None
        snap_path: Path | None = None
        base = 0
        refused: list[tuple[Path, str]] = []
        for seq in sorted(snaps, reverse=True):
            p = snaps[seq]
            try:
                payload = self._read_snapshot(p, seq)
            except _VersionError as e:
                raise CorruptFile(str(p), e.why)
            except CorruptFile as e:
                refused.append((p, e.why))
                continue
            if not self._chain_ok(logs, seq):
                # A good snapshot without its segments cannot be restored completely.
                raise CorruptFile(
                    str(p), f"log segments after it are missing ({self._chain_gap(logs, seq)})"
                )
            snapshot, snap_path, base = payload, p, seq
            break
        if base == 0:
            if FIRST_SEQ in logs and self._chain_ok(logs, FIRST_SEQ):
                base = FIRST_SEQ
            elif refused:
                p, why = refused[0]
                raise CorruptFile(
                    str(p),
                    f"{why}; no older good snapshot with complete log segments to fall back "
                    "on (file left in place)",
                )
            elif logs:
                raise CorruptFile(
                    str(logs[min(logs)]),
                    f"no snapshot and the log does not start at {_log_name(FIRST_SEQ)} "
                    "(earlier segments missing)",
                )
        for p, why in refused:
            if base:  # we fell back past it: set it aside so it is never mistaken again
                dest = p.with_name(p.name + ".corrupt")
                try:
                    os.replace(p, dest)
                except OSError as e:
                    raise StoreError(f"cannot set aside corrupt {p}: {e.strerror or e}")
                msg = (
                    f"refused corrupt snapshot {p}: {why}; renamed to {dest.name}; restored "
                    f"from {snap_path or 'the start of the log'} and every segment after it"
                )
                log.warning("store %s: %s", d, msg)
                notes.append(msg)

        records: list[bytes] = []
        torn = False
        chain = sorted(s for s in logs if s >= base) if base else []
        seg: _Segment | None = None
        for seq in chain:
            last = seq == chain[-1]
            p = logs[seq]
            seg = self._read_segment(p, seq, last=last, accept_damage=self.accept_damage)
            records.extend(seg.records)
            self._segment_bytes[seq] = seg.good_end - seg.data_start
            if seg.damage is not None:
                dest = p.with_name(p.name + ".corrupt")
                self._set_aside_copy(p, dest)
                self._cut_sync(p, seg.good_end, seg.gen + 1 if seg.version >= 2 else None)
                seg.gen += 1
                seg.acked = seg.good_end
                notes.append(
                    f"ACCEPTED LOSS of acknowledged records: {p}: {seg.damage}; kept the "
                    f"{len(seg.records)} records before offset {seg.good_end} and dropped the "
                    f"rest of the segment (original copied to {dest.name})"
                )
                log.warning("store %s: %s", d, notes[-1])
            elif seg.torn_why is not None:
                torn = True
                self._cut_sync(p, seg.good_end, None)
                why = (
                    f"it starts after the commit point (offset {seg.acked}), so it was never "
                    "acknowledged"
                    if seg.version >= 2
                    else "it was never acknowledged (a version 1 segment: no commit point)"
                )
                notes.append(
                    f"discarded a torn write at the end of {p} (offset {seg.good_end}: "
                    f"{seg.torn_why}); truncated to {seg.good_end} bytes; {why}"
                )
                log.warning("store %s: %s", d, notes[-1])
            if last and seg.version >= 2 and seg.acked != seg.good_end:
                # Whole records written after the last commit point: restored, so from now
                # on they count as acknowledged (a later loss of them is damage).
                seg.gen += 1
                self._cut_sync(p, seg.good_end, seg.gen)

        self._durable_snap_seq = base if snap_path is not None else 0
        self._fallback_seq = base or FIRST_SEQ
        # Append to the last segment of the chain, or create the first one. A version 1
        # segment is never appended to (it has no commit slots): the next one is started.
        if chain and seg is not None and seg.version >= 2:
            seq = chain[-1]
            try:
                self._fd = os.open(logs[seq], os.O_RDWR)
            except OSError as e:
                raise StoreError(f"cannot open {logs[seq]} for append: {e.strerror or e}")
            self._fd_seq = self._target_seq = seq
            self._offset = seg.good_end
            self._slot_gen = seg.gen
        else:
            seq = chain[-1] + 1 if chain else FIRST_SEQ
            self._target_seq = seq
            try:
                self._ensure_segment_sync(seq)
            except OSError as e:
                raise StoreError(f"cannot create log segment {seq} in {d}: {e}")
            if chain:
                notes.append(
                    f"started {_log_name(seq)} in format version {FORMAT_VERSION} after "
                    f"version 1 segment {_log_name(chain[-1])}"
                )
        if self.fsync and (refused or notes):
            try:
                _fsync_dir(d)
            except OSError as e:
                raise StoreError(f"cannot fsync data directory {d}: {e.strerror or e}")
        return Restored(snapshot, records, torn, notes, snap_path)

    @staticmethod
    def _chain_ok(logs: dict[int, Path], base: int) -> bool:
        later = sorted(s for s in logs if s >= base)
        return bool(later) and later[0] == base and later[-1] - base + 1 == len(later)

    @staticmethod
    def _chain_gap(logs: dict[int, Path], base: int) -> str:
        later = set(s for s in logs if s >= base)
        top = max(later | {base})
        missing = [_log_name(s) for s in range(base, top + 1) if s not in later]
        return "missing " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")

    @staticmethod
    def _read_snapshot(path: Path, seq: int) -> bytes:
        """Read and verify one snapshot. Raises CorruptFile / _VersionError / StoreError."""
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CorruptFile(str(path), f"unreadable: {e.strerror or e}")
        _check_header(path, data, SNAP_MAGIC, seq)
        if len(data) < HEADER_SIZE + 8 + SNAP_DIGEST_SIZE:
            raise CorruptFile(str(path), f"truncated: {len(data)} bytes")
        (n,) = _U64.unpack_from(data, HEADER_SIZE)
        if n > MAX_SNAPSHOT:
            raise CorruptFile(str(path), f"length field {n} exceeds MAX_SNAPSHOT")
        want = HEADER_SIZE + 8 + n + SNAP_DIGEST_SIZE
        if len(data) != want:
            raise CorruptFile(
                str(path), f"length field says {want} bytes in all, file has {len(data)}"
            )
        body = memoryview(data)[: want - SNAP_DIGEST_SIZE]
        if hashlib.blake2b(body, digest_size=SNAP_DIGEST_SIZE).digest() != data[-32:]:
            raise CorruptFile(str(path), "blake2b checksum mismatch")
        return data[HEADER_SIZE + 8 : HEADER_SIZE + 8 + n]

    @staticmethod
    def _read_segment(path: Path, seq: int, *, last: bool, accept_damage: bool) -> _Segment:
        """Parse a segment (the rule is in docs/storage-format.md, "Torn write or damage").

        Raises CorruptFile for damage to acknowledged records (unless ``accept_damage``:
        then ``damage`` says what and ``good_end`` where the intact records end) and for a
        bad frame that is not a torn write of the last segment.
        """
        try:
            data = path.read_bytes()
        except OSError as e:
            raise CorruptFile(str(path), f"unreadable: {e.strerror or e}")
        try:
            version = _check_header(path, data, LOG_MAGIC, seq)
        except _VersionError as e:
            raise CorruptFile(str(path), e.why)
        view = memoryview(data)
        size = len(data)
        start = HEADER_SIZE if version == 1 else LOG_DATA_START
        seg = _Segment(version=version, data_start=start, good_end=start)
        damage: str | None = None

        def damaged(why: str) -> _Segment:
            if not accept_damage:
                raise CorruptFile(
                    str(path),
                    f"{why}: acknowledged records are damaged, refusing to start (to accept "
                    "the loss, see --accept-log-damage in docs/operations.md)",
                )
            seg.damage = why
            return seg

        acked: int | None = None  # version 1: unknown
        if version >= 2:
            slot = _read_slots(view) if size >= start else None
            if slot is None:
                damage = (
                    f"file is {size} bytes, shorter than its header and commit slots"
                    if size < start
                    else "both commit slots are damaged"
                )
                if not accept_damage:
                    return damaged(damage)
                seg.damage, acked = damage, start
            else:
                acked, seg.gen = slot
                if acked < start:
                    return damaged(f"commit slot says offset {acked}, before the first record")
            seg.acked = acked
        off = start
        unpack, crc32 = _FRAME.unpack_from, zlib.crc32
        while off < size:
            rest = size - off
            why: str | None = None
            torn = False
            if rest < FRAME_OVERHEAD:
                why, torn = f"{rest}-byte partial frame header", True
            else:
                n, crc = unpack(view, off)
                end = off + FRAME_OVERHEAD + n
                if n > MAX_RECORD:
                    why = f"length field {n} exceeds MAX_RECORD"
                    torn = _all_zero(view[off:])
                elif end > size:
                    why, torn = f"frame of {n} bytes cut short at {rest - FRAME_OVERHEAD}", True
                elif crc32(view[off + FRAME_OVERHEAD : end], crc32(view[off : off + 4])) != crc:
                    why = "record checksum mismatch"
                    torn = end == size or _all_zero(view[off:])
                elif acked is not None and off < acked < end:
                    why = f"record crosses the commit point {acked}"
                else:
                    seg.records.append(bytes(view[off + FRAME_OVERHEAD : end]))
                    off = seg.good_end = end
                    continue
            if acked is not None:
                if off < acked:
                    return damaged(
                        f"bad record at offset {off} ({why}), before the commit point {acked}"
                    )
                # After the commit point nothing was acknowledged: any bad frame there is
                # the torn end of a write that was cut by a crash.
                torn = True
            if torn and last:
                seg.torn_why = why
                return seg
            where = "" if last else " (not the last segment, so not a torn write)"
            raise CorruptFile(str(path), f"bad record at offset {off}: {why}{where}")
        if acked is not None and off < acked:
            return damaged(
                f"file ends at offset {size} but records up to {acked} were acknowledged"
            )
        if damage is not None:
            seg.damage = damage
        return seg

    @staticmethod
    def _set_aside_copy(path: Path, dest: Path) -> None:
        try:
            _write_file_atomic(path.parent, dest.name, path.read_bytes(), True)
        except OSError as e:
            raise StoreError(f"cannot copy damaged {path} to {dest}: {e.strerror or e}")

    def _cut_sync(self, path: Path, good_end: int, gen: int | None) -> None:
        """Truncate ``path`` to ``good_end``; with ``gen``, also commit ``good_end`` there."""
        try:
            fd = os.open(path, os.O_RDWR)
            try:
                if gen is not None:
                    os.pwrite(fd, _slot(good_end, gen), _slot_offset(gen))
                    if self.fsync:
                        os.fsync(fd)
                os.ftruncate(fd, good_end)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise StoreError(f"cannot truncate {path} to {good_end}: {e.strerror or e}")

    # --- segment management (worker thread, under _flush_lock) ---------------------------

    def _ensure_segment_sync(self, seq: int) -> None:
        """Make segment ``seq`` the open one, creating it durably. Raises OSError."""
        if self._fd is not None and self._fd_seq == seq:
            return
        name = _log_name(seq)
        _write_file_atomic(self.data_dir, name, _new_segment(seq), self.fsync)
        fd = os.open(self.data_dir / name, os.O_RDWR)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._fd_seq, self._offset, self._slot_gen = fd, seq, LOG_DATA_START, 1
        self._segment_bytes.setdefault(seq, 0)

    def _flush_sync(self, data: bytes, seq: int) -> None:
        """Write one batch to segment ``seq``, fsync it, then commit its end in the next
        commit slot and fsync that; on error cut the segment back.

        Raises OSError."""
        self._ensure_segment_sync(seq)
        fd = self._fd
        assert fd is not None
        start = self._offset
        gen = self._slot_gen + 1
        try:
            view = memoryview(data)
            off = 0
            while off < len(view):
                off += _sys_pwrite(fd, view[off:], start + off)
            _crash_point("flush.after-write")
            t0 = time.perf_counter()
            if self.fsync:
                _sys_fsync(fd)
            _crash_point("flush.after-data-fsync")
            # Only now, with the batch durable, may the commit point move past it: a torn
            # write can never sit before a durable commit point (docs/storage-format.md).
            if _sys_pwrite(fd, _slot(start + len(data), gen), _slot_offset(gen)) != SLOT_SIZE:
                raise OSError(errno.EIO, "short write of a commit slot")
            if self.fsync:
                _sys_fsync(fd)
                dt = time.perf_counter() - t0
                self._fsyncs += 1
                self._fsync_last = dt
                self._fsync_max = max(self._fsync_max, dt)
            self._slot_gen = gen
        except OSError:
            try:
                # The commit slot first (it may already say start + len), then the bytes.
                os.pwrite(fd, _slot(start, gen), _slot_offset(gen))
                os.fsync(fd)
                self._slot_gen = gen
                os.ftruncate(fd, start)
                os.fsync(fd)
            except OSError as e2:
                self._broken = (
                    f"could not cut {self.data_dir / _log_name(self._fd_seq)} back to offset "
                    f"{start} after a failed write ({e2.strerror or e2}); reopen the store"
                )
                log.error("store %s: %s", self.data_dir, self._broken)
            raise
        self._offset = start + len(data)
        self._segment_bytes[self._fd_seq] = self._segment_bytes.get(self._fd_seq, 0) + len(data)

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
        acknowledged (and the segment was cut back so that it will not be restored).
        If the call is cancelled the record is not acknowledged; it may still be restored.
        """
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
            frames.append(_frame(bytes(r)))
        if not frames:
            return
        self._check_usable()
        batch = self._open_batch
        if batch is None:
            batch = self._open_batch = _Batch()
        batch.frames.extend(frames)
        batch.records += len(frames)
        # Whoever gets the lock first flushes everything queued so far; the others find
        # their batch done when they get the lock (a fair FIFO lock: cheap hand-offs).
        async with self._flush_lock:
            if not batch.done:
                assert batch is self._open_batch
                await self._flush(batch)
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
            # Shielded: once taken, a batch must be finished for every appender in it.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._flush_sync, data, seq)
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
                        await trio.to_thread.run_sync(self._ensure_segment_sync, seq)
                _crash_point("compact.after-rotate")
                body = _header(SNAP_MAGIC, seq) + _U64.pack(len(state)) + bytes(state)
                blob = body + hashlib.blake2b(body, digest_size=SNAP_DIGEST_SIZE).digest()
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(
                        _write_file_atomic, self.data_dir, _snap_name(seq), blob, self.fsync
                    )
                _crash_point("compact.after-snapshot")
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
                await trio.to_thread.run_sync(self._delete_superseded_sync, seq, keep)

    def _delete_superseded_sync(self, newest: int, keep: int) -> None:
        """Delete snapshots other than ``newest``/``keep`` and segments before ``keep``.

        Best effort: a file that cannot be deleted is logged and left (it is harmless).
        """
        removed = False
        try:
            names = sorted(os.listdir(self.data_dir))
        except OSError as e:
            log.warning("store %s: cannot list for cleanup: %s", self.data_dir, e)
            return
        # Snapshots first, then segments, oldest first: any prefix of this is a valid state.
        victims = []
        for kind in ("snapshot", "log"):
            for name in names:
                m = _NAME_RE.match(name)
                if not m or m.group(1) != kind:
                    continue
                s = int(m.group(2))
                if kind == "snapshot" and s < newest and s != keep:
                    victims.append(name)
                elif kind == "log" and s < keep:
                    victims.append(name)
        for name in victims:
            try:
                os.unlink(self.data_dir / name)
                removed = True
                _crash_point("compact.mid-delete")
            except OSError as e:
                log.warning("store %s: cannot delete %s: %s", self.data_dir, name, e)
        if removed and self.fsync:
            try:
                _fsync_dir(self.data_dir)
            except OSError as e:
                log.warning("store %s: cannot fsync after cleanup: %s", self.data_dir, e)

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
        """Release the segment fd and the directory lock. Idempotent.

        Call it when no append/compact is running (use :meth:`aclose` otherwise); raises
        StoreError if a flush is in progress. Queued, unacknowledged records are dropped.
        """
        if self._flush_lock.locked() or self._compact_lock.locked():
            raise StoreError(f"store {self.data_dir}: close() while a write is in progress")
        self._closed = True
        self._release()

    async def aclose(self) -> None:
        """Wait for running writes to finish, then :meth:`close`."""
        async with self._compact_lock, self._flush_lock:
            self._closed = True
            self._release()

    def _release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the fd drops the flock
            self._lock_fd = None
