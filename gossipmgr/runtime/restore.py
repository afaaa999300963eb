"""Restore of a data directory: pick the snapshot, replay the segments after it, and leave
the directory ready for appends (``gossipmgr.runtime.store.Store.open`` calls ``restore``).

The rules (which snapshot is used, what a torn write is, when damage is refused or accepted,
what is set aside) are the Store's, stated in its module docstring and step by step in
docs/storage-format.md. Synchronous: it runs once, at start, before anything is appended.

Errors: ``CorruptFile`` naming the file when acknowledged data cannot be restored
completely; ``StoreError`` for I/O errors (a leftover that cannot be removed, a file that
cannot be set aside, cut or opened).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from gossipmgr.errors import CorruptFile, StoreError
from gossipmgr.runtime.segments import (
    FIRST_SEQ,
    FORMAT_VERSION,
    LOG_DATA_START,
    NAME_RE,
    Segment,
    VersionError,
    chain_gap,
    chain_ok,
    crash_point,
    fsync_dir,
    log_name,
    new_segment,
    read_segment,
    read_snapshot,
    slot,
    slot_offset,
    write_file_atomic,
)

log = logging.getLogger("gossipmgr.store")  # the Store's logger (runtime/store.py)


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


@dataclass(eq=False)
class AppendPoint:
    """Where appends go on after a restore; the Store takes ownership of ``fd``."""

    fd: int
    seq: int  # the segment ``fd`` is open on
    offset: int  # end of its last good frame
    slot_gen: int  # generation of its newest commit slot
    segment_bytes: dict[int, int] = field(default_factory=dict)  # framed bytes per segment
    durable_snap_seq: int = 0  # the snapshot restored from (0: none)
    fallback_seq: int = FIRST_SEQ  # the base kept as a fallback by the next compaction


def restore(
    d: Path, notes: list[str], *, fsync: bool, accept_damage: bool
) -> tuple[Restored, AppendPoint]:
    """Restore the (locked) data directory ``d``; ``notes`` gets what is worth logging."""
    logs, snaps = _scan(d, notes)
    snapshot, snap_path, base, refused = _pick_base(logs, snaps)
    _set_aside_refused(d, refused, base, snap_path, notes)
    chain = sorted(s for s in logs if s >= base) if base else []
    records, torn, seg, segment_bytes = _replay(d, logs, chain, notes, fsync, accept_damage)
    point = _append_point(d, logs, chain, seg, notes, fsync)
    point.segment_bytes = {**point.segment_bytes, **segment_bytes}
    point.durable_snap_seq = base if snap_path is not None else 0
    point.fallback_seq = base or FIRST_SEQ
    if fsync and (refused or notes):
        try:
            fsync_dir(d)
        except OSError as e:
            os.close(point.fd)
            raise StoreError(f"cannot fsync data directory {d}: {e.strerror or e}")
    return Restored(snapshot, records, torn, notes, snap_path), point


def _scan(d: Path, notes: list[str]) -> tuple[dict[int, Path], dict[int, Path]]:
    """The segments and snapshots in ``d`` by sequence; leftover ``*.tmp`` files removed."""
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
        m = NAME_RE.match(p.name)
        if m:
            (logs if m.group(1) == "log" else snaps)[int(m.group(2))] = p
    return logs, snaps


def _pick_base(
    logs: dict[int, Path], snaps: dict[int, Path]
) -> tuple[bytes | None, Path | None, int, list[tuple[Path, str]]]:
    """The newest good snapshot with a complete chain after it (payload, path, seq), or the
    start of the log (seq FIRST_SEQ), or nothing (0); plus the snapshots refused on the way."""
    refused: list[tuple[Path, str]] = []
    for seq in sorted(snaps, reverse=True):
        p = snaps[seq]
        try:
            payload = read_snapshot(p, seq)
        except VersionError as e:
            raise CorruptFile(str(p), e.why)
        except CorruptFile as e:
            refused.append((p, e.why))
            continue
        if not chain_ok(logs, seq):
            # A good snapshot without its segments cannot be restored completely.
            raise CorruptFile(str(p), f"log segments after it are missing ({chain_gap(logs, seq)})")
        return payload, p, seq, refused
    if FIRST_SEQ in logs and chain_ok(logs, FIRST_SEQ):
        return None, None, FIRST_SEQ, refused
    if refused:
        p, why = refused[0]
        raise CorruptFile(
            str(p),
            f"{why}; no older good snapshot with complete log segments to fall back "
            "on (file left in place)",
        )
    if logs:
        raise CorruptFile(
            str(logs[min(logs)]),
            f"no snapshot and the log does not start at {log_name(FIRST_SEQ)} "
            "(earlier segments missing)",
        )
    return None, None, 0, refused


def _set_aside_refused(
    d: Path, refused: list[tuple[Path, str]], base: int, used: Path | None, notes: list[str]
) -> None:
    """Rename the refused snapshots restore fell back past, so none is mistaken again."""
    if not base:
        return
    for p, why in refused:
        dest = p.with_name(p.name + ".corrupt")
        try:
            os.replace(p, dest)
        except OSError as e:
            raise StoreError(f"cannot set aside corrupt {p}: {e.strerror or e}")
        msg = (
            f"refused corrupt snapshot {p}: {why}; renamed to {dest.name}; restored "
            f"from {used or 'the start of the log'} and every segment after it"
        )
        log.warning("store %s: %s", d, msg)
        notes.append(msg)


def _replay(
    d: Path,
    logs: dict[int, Path],
    chain: list[int],
    notes: list[str],
    fsync: bool,
    accept_damage: bool,
) -> tuple[list[bytes], bool, Segment | None, dict[int, int]]:
    """The records of the segments in ``chain``; a torn tail is cut, accepted damage set
    aside and cut. Returns (records, torn, the last segment, framed bytes per segment)."""
    records: list[bytes] = []
    segment_bytes: dict[int, int] = {}
    torn = False
    seg: Segment | None = None
    for seq in chain:
        last = seq == chain[-1]
        p = logs[seq]
        seg = read_segment(p, seq, last=last, accept_damage=accept_damage)
        records.extend(seg.records)
        segment_bytes[seq] = seg.good_end - seg.data_start
        if seg.damage is not None:
            _accept_loss(d, p, seg, notes, fsync)
        elif seg.torn_why is not None:
            torn = True
            _cut_torn(d, p, seg, notes, fsync)
        if last and seg.version >= 2 and seg.acked != seg.good_end:
            # Whole records written after the last commit point: restored, so from now
            # on they count as acknowledged (a later loss of them is damage).
            seg.gen += 1
            _cut(p, seg.good_end, seg.gen, fsync)
    return records, torn, seg, segment_bytes


def _accept_loss(d: Path, p: Path, seg: Segment, notes: list[str], fsync: bool) -> None:
    dest = p.with_name(p.name + ".corrupt")
    try:
        write_file_atomic(p.parent, dest.name, p.read_bytes(), True)
    except OSError as e:
        raise StoreError(f"cannot copy damaged {p} to {dest}: {e.strerror or e}")
    _cut(p, seg.good_end, seg.gen + 1 if seg.version >= 2 else None, fsync)
    seg.gen += 1
    seg.acked = seg.good_end
    notes.append(
        f"ACCEPTED LOSS of acknowledged records: {p}: {seg.damage}; kept the "
        f"{len(seg.records)} records before offset {seg.good_end} and dropped the "
        f"rest of the segment (original copied to {dest.name})"
    )
    log.warning("store %s: %s", d, notes[-1])


def _cut_torn(d: Path, p: Path, seg: Segment, notes: list[str], fsync: bool) -> None:
    _cut(p, seg.good_end, None, fsync)
    if seg.version >= 3:
        why = "no whole commit record covers it, so it was never acknowledged"
    elif seg.version == 2:
        why = f"it starts after the commit point (offset {seg.acked}), so it was never acknowledged"
    else:
        why = "it was never acknowledged (a version 1 segment: no commit point)"
    notes.append(
        f"discarded a torn write at the end of {p} (offset {seg.good_end}: "
        f"{seg.torn_why}); truncated to {seg.good_end} bytes; {why}"
    )
    log.warning("store %s: %s", d, notes[-1])


def _cut(path: Path, good_end: int, gen: int | None, fsync: bool) -> None:
    """Truncate ``path`` to ``good_end``; with ``gen``, also commit ``good_end`` there."""
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            if gen is not None:
                os.pwrite(fd, slot(good_end, gen), slot_offset(gen))
                if fsync:
                    os.fsync(fd)
            os.ftruncate(fd, good_end)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StoreError(f"cannot truncate {path} to {good_end}: {e.strerror or e}")


def _append_point(
    d: Path,
    logs: dict[int, Path],
    chain: list[int],
    seg: Segment | None,
    notes: list[str],
    fsync: bool,
) -> AppendPoint:
    """Append to the last segment of the chain, or create the first one. A segment of an
    older version is never appended to (its batches have no commit records): the next one
    is started."""
    if chain and seg is not None and seg.version == FORMAT_VERSION:
        seq = chain[-1]
        try:
            fd = os.open(logs[seq], os.O_RDWR)
        except OSError as e:
            raise StoreError(f"cannot open {logs[seq]} for append: {e.strerror or e}")
        return AppendPoint(fd, seq, seg.good_end, seg.gen)
    seq = chain[-1] + 1 if chain else FIRST_SEQ
    try:
        point = create_segment(d, seq, fsync)
    except OSError as e:
        raise StoreError(f"cannot create log segment {seq} in {d}: {e}")
    if chain:
        notes.append(
            f"started {log_name(seq)} in format version {FORMAT_VERSION} after "
            f"version {seg.version if seg else '?'} segment {log_name(chain[-1])}"
        )
    return point


def create_segment(d: Path, seq: int, fsync: bool) -> AppendPoint:
    """Create segment ``seq`` durably (empty, FORMAT_VERSION) and open it. Raises OSError."""
    name = log_name(seq)
    write_file_atomic(d, name, new_segment(seq), fsync)
    fd = os.open(d / name, os.O_RDWR)
    return AppendPoint(fd, seq, LOG_DATA_START, 1, {seq: 0})


def delete_superseded(d: Path, newest: int, keep: int, fsync: bool) -> None:
    """After snapshot ``newest`` is durable (``Store.compact``): delete snapshots other than
    ``newest``/``keep`` and segments before ``keep``.

    Best effort: a file that cannot be deleted is logged and left (it is harmless).
    """
    removed = False
    try:
        names = sorted(os.listdir(d))
    except OSError as e:
        log.warning("store %s: cannot list for cleanup: %s", d, e)
        return
    # Snapshots first, then segments, oldest first: any prefix of this is a valid state.
    victims = []
    for kind in ("snapshot", "log"):
        for name in names:
            m = NAME_RE.match(name)
            if not m or m.group(1) != kind:
                continue
            s = int(m.group(2))
            if kind == "snapshot" and s < newest and s != keep:
                victims.append(name)
            elif kind == "log" and s < keep:
                victims.append(name)
    for name in victims:
        try:
            os.unlink(d / name)
            removed = True
            crash_point("compact.mid-delete")
        except OSError as e:
            log.warning("store %s: cannot delete %s: %s", d, name, e)
    if removed and fsync:
        try:
            fsync_dir(d)
        except OSError as e:
            log.warning("store %s: cannot fsync after cleanup: %s", d, e)


def lock_data_dir(d: Path, notes: list[str], *, fsync: bool) -> int:
    """Create ``d`` (and parents) if missing, with a note, and take its ``LOCK``; returns
    the locked fd. Raises StoreError if it cannot be created or is locked by another
    process."""
    try:
        if not d.is_dir():
            if d.exists():
                raise StoreError(f"data directory {d} exists and is not a directory")
            d.mkdir(parents=True, exist_ok=True)
            if fsync:
                fsync_dir(d.parent)
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
    return lock_fd
