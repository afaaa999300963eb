"""The files of a data directory: log segments, snapshots, their names and checksums.

The byte layout and the crash-safety argument are in docs/storage-format.md; the
``gossipmgr.runtime.store.Store`` docstring says why each rule is what it is. This module
holds what reads and writes the files without any state of its own: format constants,
encoders of frames, headers and commit slots, the readers that verify a snapshot or parse a
segment (``read_snapshot``, ``read_segment``), the atomic file write, and the test-only
crash points. Everything here is synchronous (the Store runs it in worker threads).

Files in a data directory::

    log.<seq>         append-only segment: header | 2 commit slots | batch | batch | ...,
                      a batch being frames then a commit record (version 3)
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

Errors: readers raise ``CorruptFile`` naming the file and the problem, or
``VersionError`` for a well-formed header of a version this release does not know.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gossipmgr.errors import CorruptFile

log = logging.getLogger("gossipmgr.store")  # the Store's logger (runtime/store.py)

# --- format constants (docs/storage-format.md) -------------------------------------------
# Versioning: each kind of file carries its layout version; a reader refuses any version it
# does not know. WARNING: only ever bump a version for a new layout; never reuse a number.
# Log segments: version 2 adds the commit slots; version 3 ends every batch with a commit
# record and moves the commit slot one batch behind, so that a group commit needs one
# fdatasync (older versions are still read, each with its own rule, and never appended to).
# Snapshots: version 1.
FORMAT_VERSION = 3  # of the log segments this release writes
LOG_VERSIONS = (1, 2, 3)
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
# Version 3: a batch's frames are followed by one commit record, a frame whose length field
# has COMMIT_FLAG set and whose 12-byte payload is u64 offset where the batch starts | u32
# crc32 of the batch's bytes (its frames, from that offset to the commit record).
COMMIT_FLAG = 0x8000_0000
_COMMIT = struct.Struct("<QI")
COMMIT_SIZE = FRAME_OVERHEAD + _COMMIT.size  # 20
_COMMIT_LEN = (COMMIT_FLAG | _COMMIT.size).to_bytes(4, "little")
_COMMIT_LEN_CRC = zlib.crc32(_COMMIT_LEN)
U64 = struct.Struct("<Q")
SNAP_DIGEST_SIZE = 32  # blake2b-256

# Named size limits. A record is one CRDT delta; 16 MiB is far above any sane delta and
# keeps a corrupt length field from making us allocate gigabytes. A snapshot is the whole
# state held in memory by the caller; 1 GiB is where a single-file snapshot stops making sense.
MAX_RECORD = 16 * 1024 * 1024
MAX_SNAPSHOT = 1024 * 1024 * 1024
MAX_SEQ = 10**20 - 1  # the file names carry 20 decimal digits

FIRST_SEQ = 1  # log.1 is the first segment ever; with no snapshot, restore starts there

NAME_RE = re.compile(r"^(log|snapshot)\.(\d{20})$")


def log_name(seq: int) -> str:
    return f"log.{seq:020d}"


def snap_name(seq: int) -> str:
    return f"snapshot.{seq:020d}"


def frame(record: bytes) -> bytes:
    n = len(record)
    lb = n.to_bytes(4, "little")
    return _FRAME.pack(n, zlib.crc32(record, zlib.crc32(lb))) + record


def commit_record(start: int, batch: bytes) -> bytes:
    """The version 3 commit record of ``batch``, written at offset ``start``."""
    body = _COMMIT.pack(start, zlib.crc32(batch))
    return _COMMIT_LEN + zlib.crc32(body, _COMMIT_LEN_CRC).to_bytes(4, "little") + body


def header(magic: bytes, seq: int) -> bytes:
    version = FORMAT_VERSION if magic == LOG_MAGIC else SNAP_VERSION
    head = struct.pack("<8sIQ", magic, version, seq)
    return head + zlib.crc32(head).to_bytes(4, "little")


def slot(end: int, gen: int) -> bytes:
    body = struct.pack("<QI", end, gen)
    return body + zlib.crc32(body).to_bytes(4, "little")


def slot_offset(gen: int) -> int:
    return HEADER_SIZE + (gen % 2) * SLOT_SIZE


def new_segment(seq: int) -> bytes:
    """A segment (version 2 and 3 layout) with no records: its commit point is the start of
    the frames."""
    return header(LOG_MAGIC, seq) + b"\0" * SLOT_SIZE + slot(LOG_DATA_START, 1)


def read_slots(data: bytes | memoryview) -> tuple[int, int] | None:
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
    "flush.after-fsync",  # the batch and its commit record are durable, nobody told yet
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


def crash_point(point: str) -> None:
    n = _crash_at.get(point)
    if n is None:
        return
    if n <= 1:
        log.warning("GOSSIPMGR_TEST_CRASH_AT: SIGKILL at %s", point)
        os.kill(os.getpid(), signal.SIGKILL)
    _crash_at[point] = n - 1


class VersionError(Exception):
    """Internal: a well-formed header with a version we do not know (never set aside)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def check_header(path: Path, data: bytes | memoryview, magic: bytes, seq: int) -> int:
    """Validate a file header; returns its version. Raises CorruptFile, or VersionError
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
        raise VersionError(
            f"format version {version} is not supported (this gossipmgr reads "
            f"version {' and '.join(map(str, known))}); was it written by a newer release?"
        )
    if got_seq != seq:
        raise CorruptFile(str(path), f"header says sequence {got_seq}, file name says {seq}")
    return int(version)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that creates, renames and unlinks in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(directory: Path, name: str, data: bytes, fsync: bool) -> None:
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
        fsync_dir(directory)


def _all_zero(data: memoryview) -> bool:
    return data.tobytes().count(0) == len(data)


@dataclass(eq=False)
class Segment:
    """What :meth:`Store._read_segment` found in one segment."""

    version: int
    data_start: int
    good_end: int  # end of the last intact record
    records: list[bytes] = field(default_factory=list)
    acked: int = 0  # commit point (version 2)
    gen: int = 0  # its slot generation
    torn_why: str | None = None  # a torn write after the commit point was found at good_end
    damage: str | None = None  # accepted damage to acknowledged records (accept_damage)


def chain_ok(logs: dict[int, Path], base: int) -> bool:
    later = sorted(s for s in logs if s >= base)
    return bool(later) and later[0] == base and later[-1] - base + 1 == len(later)


def chain_gap(logs: dict[int, Path], base: int) -> str:
    later = set(s for s in logs if s >= base)
    top = max(later | {base})
    missing = [log_name(s) for s in range(base, top + 1) if s not in later]
    return "missing " + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")


def read_snapshot(path: Path, seq: int) -> bytes:
    """Read and verify one snapshot. Raises CorruptFile / VersionError / StoreError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptFile(str(path), f"unreadable: {e.strerror or e}")
    check_header(path, data, SNAP_MAGIC, seq)
    if len(data) < HEADER_SIZE + 8 + SNAP_DIGEST_SIZE:
        raise CorruptFile(str(path), f"truncated: {len(data)} bytes")
    (n,) = U64.unpack_from(data, HEADER_SIZE)
    if n > MAX_SNAPSHOT:
        raise CorruptFile(str(path), f"length field {n} exceeds MAX_SNAPSHOT")
    want = HEADER_SIZE + 8 + n + SNAP_DIGEST_SIZE
    if len(data) != want:
        raise CorruptFile(str(path), f"length field says {want} bytes in all, file has {len(data)}")
    body = memoryview(data)[: want - SNAP_DIGEST_SIZE]
    if hashlib.blake2b(body, digest_size=SNAP_DIGEST_SIZE).digest() != data[-32:]:
        raise CorruptFile(str(path), "blake2b checksum mismatch")
    return data[HEADER_SIZE + 8 : HEADER_SIZE + 8 + n]


def _damaged(path: Path, seg: Segment, why: str, accept_damage: bool) -> Segment:
    """``seg`` marked damaged by ``why``; raises CorruptFile unless ``accept_damage``."""
    if not accept_damage:
        raise CorruptFile(
            str(path),
            f"{why}: acknowledged records are damaged, refusing to start (to accept "
            "the loss, see --accept-log-damage in docs/operations.md)",
        )
    seg.damage = why
    return seg


def _check_frame(view: memoryview, off: int, acked: int | None) -> tuple[int, str | None, bool]:
    """The frame at ``off``: ``(end, None, False)`` when intact, else ``(end, why, torn)``
    where ``torn`` says it looks like the torn end of a write (before the commit point
    rule, which the caller applies)."""
    size = len(view)
    rest = size - off
    if rest < FRAME_OVERHEAD:
        return size, f"{rest}-byte partial frame header", True
    n, crc = _FRAME.unpack_from(view, off)
    end = off + FRAME_OVERHEAD + n
    if n > MAX_RECORD:
        return end, f"length field {n} exceeds MAX_RECORD", _all_zero(view[off:])
    if end > size:
        return end, f"frame of {n} bytes cut short at {rest - FRAME_OVERHEAD}", True
    if zlib.crc32(view[off + FRAME_OVERHEAD : end], zlib.crc32(view[off : off + 4])) != crc:
        return end, "record checksum mismatch", end == size or _all_zero(view[off:])
    if acked is not None and off < acked < end:
        return end, f"record crosses the commit point {acked}", False
    return end, None, False


def read_segment(path: Path, seq: int, *, last: bool, accept_damage: bool) -> Segment:
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
        version = check_header(path, data, LOG_MAGIC, seq)
    except VersionError as e:
        raise CorruptFile(str(path), e.why)
    view = memoryview(data)
    size = len(data)
    start = HEADER_SIZE if version == 1 else LOG_DATA_START
    seg = Segment(version=version, data_start=start, good_end=start)
    damage: str | None = None

    def damaged(why: str) -> Segment:
        return _damaged(path, seg, why, accept_damage)

    acked: int | None = None  # version 1: unknown
    if version >= 2:
        slot = read_slots(view) if size >= start else None
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
    if version >= 3:
        assert acked is not None
        return _read_batches(path, view, seg, acked, last, damaged)
    off = start
    while off < size:
        end, why, torn = _check_frame(view, off, acked)
        if why is None:
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
        return damaged(f"file ends at offset {size} but records up to {acked} were acknowledged")
    if damage is not None:
        seg.damage = damage
    return seg


def _frame3(view: memoryview, off: int) -> tuple[int, str | None, bool]:
    """The version 3 frame at ``off``: ``(end, None, is_commit_record)`` when intact, else
    ``(off, why, False)``."""
    rest = len(view) - off
    if rest < FRAME_OVERHEAD:
        return off, f"{rest}-byte partial frame header", False
    n, crc = _FRAME.unpack_from(view, off)
    commit = bool(n & COMMIT_FLAG)
    n &= ~COMMIT_FLAG
    if commit and n != _COMMIT.size:
        return off, f"commit record with a length field of {n}", False
    if n > MAX_RECORD:
        return off, f"length field {n} exceeds MAX_RECORD", False
    end = off + FRAME_OVERHEAD + n
    if end > len(view):
        return off, f"frame of {n} bytes cut short at {rest - FRAME_OVERHEAD}", False
    if zlib.crc32(view[off + FRAME_OVERHEAD : end], zlib.crc32(view[off : off + 4])) != crc:
        return off, "record checksum mismatch", False
    return end, None, commit


def _read_batches(
    path: Path,
    view: memoryview,
    seg: Segment,
    acked: int,
    last: bool,
    damaged: Callable[[str], Segment],
) -> Segment:
    """Version 3 (docs/storage-format.md): whole batches, each ended by a commit record that
    matches it. Everything before the commit slot's offset must be such batches (else
    damage); after it, the first bad or uncommitted batch is a torn write (last segment)."""
    off = batch = seg.data_start
    pending: list[bytes] = []
    why: str | None = None
    while off < len(view):
        end, why, commit = _frame3(view, off)
        if why is None and commit:
            bstart, bcrc = _COMMIT.unpack_from(view, off + FRAME_OVERHEAD)
            if bstart != batch or zlib.crc32(view[batch:off]) != bcrc:
                why = f"commit record does not match the batch at offset {batch}"
        if why is not None:
            break
        if not commit:
            pending.append(bytes(view[off + FRAME_OVERHEAD : end]))
            off = end
            continue
        if batch < acked < end:
            return damaged(f"the commit point {acked} falls inside the batch at offset {batch}")
        seg.records.extend(pending)
        pending.clear()
        off = batch = seg.good_end = end
    else:
        if pending:
            why = f"the batch at offset {batch} has no commit record"
    if seg.good_end < acked:
        if why is None:
            why = f"file ends at offset {len(view)}"
        return damaged(f"bad record at offset {off} ({why}), before the commit point {acked}")
    if why is None:
        return seg
    if last:
        seg.torn_why = f"{why}, at offset {off}" if off != batch else why
        return seg
    raise CorruptFile(
        str(path), f"bad record at offset {off}: {why} (not the last segment, so not a torn write)"
    )
