"""Tests for gossipmgr.runtime.store: restore, torn tails, corruption, ENOSPC,
group commit, compaction.

All on a real file system (pytest's tmp_path); the only thing faked is the failing syscall
(through the store's ``_sys_pwrite``/``_sys_fsync`` seam) to simulate a full or failing disk.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import struct
import threading
import zlib
from pathlib import Path

import pytest
import trio
import trio.testing

import gossipmgr.runtime.store as store_mod
from gossipmgr.errors import CorruptFile, StoreError
from gossipmgr.runtime.store import (
    COMMIT_SIZE,
    FRAME_OVERHEAD,
    HEADER_SIZE,
    LOG_DATA_START,
    MAX_RECORD,
    Restored,
    Store,
)
from gossipmgr.testing.wait import until


def opened(d: Path, **kw: bool) -> tuple[Store, Restored]:
    s = Store(d, **kw)
    return s, s.open()


def restore(d: Path) -> Restored:
    s = Store(d)
    try:
        return s.open()
    finally:
        s.close()


def files(d: Path, prefix: str) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith(prefix))


def state_of(r: Restored) -> set[bytes]:
    """The test's 'CRDT': a grow-only set of ids; a snapshot is the ids, newline-joined."""
    base = set(r.snapshot.split(b"\n")) - {b""} if r.snapshot else set()
    return base | set(r.records)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


async def test_round_trip_records_then_snapshot_plus_following_records(tmp_path: Path) -> None:
    s, r = opened(tmp_path)
    assert r == Restored(None, [], False, [], None)
    recs = [b"", b"a", b"\x00" * 1000, bytes(range(256))]
    for rec in recs:
        await s.append(rec)
    await s.append_many([b"m1", b"m2"])
    s.close()
    r = restore(tmp_path)
    assert r.snapshot is None and r.records == [*recs, b"m1", b"m2"] and not r.torn_tail

    s, _ = opened(tmp_path)
    await s.compact(lambda: b"STATE-1")
    await s.append(b"after-1")
    await s.append(b"after-2")
    s.close()
    r = restore(tmp_path)
    assert r.snapshot == b"STATE-1"
    assert r.records == [b"after-1", b"after-2"]
    assert r.snapshot_path is not None and r.snapshot_path.name.startswith("snapshot.")


async def test_log_bytes_counts_since_last_snapshot_and_stats(tmp_path: Path) -> None:
    s, _ = opened(tmp_path)
    await s.append(b"x" * 100)
    assert s.log_bytes == 100 + FRAME_OVERHEAD + COMMIT_SIZE
    await s.compact(lambda: b"S")
    assert s.log_bytes == 0
    await s.append(b"y" * 10)
    st = s.stats
    assert (st.appends, st.batches, st.fsyncs, st.compactions, st.errors) == (2, 2, 2, 1, 0)
    assert st.bytes == 100 + 10 + 2 * FRAME_OVERHEAD
    assert st.log_bytes == 10 + FRAME_OVERHEAD + COMMIT_SIZE
    assert 0 < st.fsync_last_s <= st.fsync_max_s
    s.close()
    # After a restart log_bytes is what a restore replays.
    s, _ = opened(tmp_path)
    assert s.log_bytes == 10 + FRAME_OVERHEAD + COMMIT_SIZE
    s.close()


def torn_write(seg: Path, *records: bytes) -> bytes:
    """Append frames the way a batch that never reached its commit is left: written past
    the commit point, commit slot untouched. Returns the bytes added."""
    raw = b"".join(store_mod.frame(r) for r in records)
    with seg.open("ab") as f:
        f.write(raw)
    return raw


async def disk_during_fsync(
    d: Path, monkeypatch: pytest.MonkeyPatch, earlier: list[bytes], batch: list[bytes]
) -> tuple[Path, int, bytes]:
    """Append ``earlier`` one by one and close; reopen and append ``batch`` in one group
    commit, keeping a copy of the segment as it is when that commit's (first) fdatasync
    starts: what a power loss during it may leave on disk, if every page was persisted.
    Returns the segment, its size before the batch and that copy."""
    s, _ = opened(d, fsync=False)
    for rec in earlier:
        await s.append(rec)
    s.close()
    (seg,) = files(d, "log.")
    acked_end = seg.stat().st_size
    seen: list[bytes] = []

    def fsync(fd: int) -> None:
        if not seen:
            seen.append(seg.read_bytes())

    s, _ = opened(d)
    monkeypatch.setattr(store_mod, "_sys_fsync", fsync)
    await s.append_many(batch)
    s.close()
    monkeypatch.undo()
    return seg, acked_end, seen[0]


async def test_a_torn_batch_is_never_half_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss during a group commit's fdatasync may persist any prefix of the batch
    (cut at every offset here) or its pages out of order (one byte bad at every offset):
    restore gives the records before it, or those and the whole batch, never part of it."""
    earlier = [b"first", b"second" * 10, b"third"]
    batch = [b"L" * 37, b"M" * 5, b"N" * 3]
    seg, acked_end, full = await disk_during_fsync(tmp_path, monkeypatch, earlier, batch)
    assert len(full) > acked_end
    cases = [full[:cut] for cut in range(acked_end, len(full) + 1)]
    for off in range(acked_end, len(full)):
        damaged = bytearray(full)
        damaged[off] ^= 0x40
        cases.append(bytes(damaged))
    for data in cases:
        seg.write_bytes(data)
        r = restore(tmp_path)
        assert r.records in (earlier, earlier + batch), (len(data), r.records)
        whole = data == full
        assert r.records == (earlier + batch if whole else earlier), len(data)
        assert r.torn_tail == (not whole and len(data) > acked_end), len(data)
        if r.torn_tail:
            assert any("torn" in n and str(seg) in n and "never" in n for n in r.notes), r.notes
            assert seg.stat().st_size == acked_end
    # Restored whole, the batch is committed from then on: losing a byte of it is damage.
    seg.write_bytes(full)
    assert restore(tmp_path).records == earlier + batch
    truncate = seg.read_bytes()[:-1]
    seg.write_bytes(truncate)
    with pytest.raises(CorruptFile, match="acknowledged"):
        restore(tmp_path)


async def test_bad_checksum_or_zero_tail_after_the_commit_point_is_a_torn_write(
    tmp_path: Path,
) -> None:
    s, _ = opened(tmp_path)
    await s.append(b"keep")
    s.close()
    (seg,) = files(tmp_path, "log.")
    torn_write(seg, b"never committed", b"nor this")
    # A bad frame after the commit point is torn even when valid frames follow it (power
    # loss may persist a later page of an unacknowledged batch but not an earlier one).
    flip(seg, seg.stat().st_size - len(b"nor this") - FRAME_OVERHEAD - 3)
    r = restore(tmp_path)
    assert r.records == [b"keep"] and r.torn_tail
    # Blocks allocated but never written before power loss read back as zeros.
    with seg.open("ab") as f:
        f.write(b"\x00" * 300)
    r = restore(tmp_path)
    assert r.records == [b"keep"] and r.torn_tail
    s, _ = opened(tmp_path)
    await s.append(b"next")  # appends continue right after the last good record
    s.close()
    assert restore(tmp_path).records == [b"keep", b"next"]


async def test_flipped_byte_in_middle_record_is_corrupt_file(tmp_path: Path) -> None:
    s, _ = opened(tmp_path)
    for i in range(5):
        await s.append(b"record-%d" % i)
    s.close()
    (seg,) = files(tmp_path, "log.")
    second = LOG_DATA_START + FRAME_OVERHEAD + len(b"record-0") + COMMIT_SIZE
    flip(seg, second + FRAME_OVERHEAD + 2)
    size = seg.stat().st_size
    with pytest.raises(CorruptFile) as ei:
        restore(tmp_path)
    assert ei.value.path == str(seg)
    assert f"offset {second}" in str(ei.value) and "checksum" in str(ei.value)
    assert seg.stat().st_size == size  # nothing was truncated or "repaired"


async def test_bad_tail_of_a_non_last_segment_is_corrupt_not_torn(tmp_path: Path) -> None:
    s, _ = opened(tmp_path)
    await s.append(b"a")
    await s.append(b"b")
    await s.compact(lambda: b"a\nb")  # log.2 starts; log.1 kept as the fallback chain
    await s.append(b"c")
    s.close()
    first = files(tmp_path, "log.")[0]
    first.write_bytes(first.read_bytes()[:-1])
    # The newest snapshot is fine, so restore never reads log.1 ...
    assert state_of(restore(tmp_path)) == {b"a", b"b", b"c"}
    # ... but if it must fall back, a short non-last segment is refused, not "repaired".
    flip(files(tmp_path, "snapshot.")[-1], HEADER_SIZE + 8)
    with pytest.raises(CorruptFile) as ei:
        restore(tmp_path)
    assert ei.value.path == str(first) and "acknowledged records are damaged" in str(ei.value)


async def test_corrupt_newest_snapshot_is_refused_and_previous_good_one_used(
    tmp_path: Path,
) -> None:
    s, _ = opened(tmp_path)
    acked: set[bytes] = set()
    for rnd in range(3):
        for i in range(4):
            rec = b"%d-%d" % (rnd, i)
            acked.add(rec)
            await s.append(rec)
        await s.compact(lambda: b"\n".join(sorted(acked)))
    await s.append(b"tail")
    acked.add(b"tail")
    s.close()
    snaps = files(tmp_path, "snapshot.")
    assert len(snaps) == 2  # the newest and one previous good snapshot are kept
    prev, newest = snaps
    flip(newest, newest.stat().st_size - 40)  # inside the payload
    r = restore(tmp_path)
    assert r.snapshot_path == prev
    assert state_of(r) == acked  # complete: previous snapshot + every segment after it
    note = " ".join(r.notes)
    assert str(newest) in note and "blake2b checksum mismatch" in note
    assert not newest.exists() and newest.with_name(newest.name + ".corrupt").exists()
    assert prev.exists()
    # The next compaction supersedes it normally; the set-aside file is left alone.
    s, _ = opened(tmp_path)
    await s.compact(lambda: b"\n".join(sorted(acked)))
    s.close()
    r = restore(tmp_path)
    assert state_of(r) == acked and not r.notes
    assert newest.with_name(newest.name + ".corrupt").exists()


async def test_corrupt_snapshot_without_fallback_raises_and_keeps_files(tmp_path: Path) -> None:
    s, _ = opened(tmp_path)
    await s.append(b"a")
    await s.compact(lambda: b"a")
    await s.append(b"b")
    await s.compact(lambda: b"a\nb")  # deletes log.1: the only fallback is snapshot 2
    s.close()
    older, newest = files(tmp_path, "snapshot.")
    flip(newest, HEADER_SIZE + 8)  # payload byte of the newest
    older.write_bytes(older.read_bytes()[:10])  # and the previous one is truncated
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(CorruptFile) as ei:
        restore(tmp_path)
    assert ei.value.path == str(newest)
    assert "checksum" in str(ei.value) and "no older good snapshot" in str(ei.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing touched


def _rewrite_snapshot_version(path: Path, version: int) -> None:
    data = path.read_bytes()
    magic, _v, seq, _crc = struct.unpack_from("<8sIQI", data)
    head = struct.pack("<8sIQ", magic, version, seq)
    body = head + zlib.crc32(head).to_bytes(4, "little") + data[HEADER_SIZE:-32]
    path.write_bytes(body + hashlib.blake2b(body, digest_size=32).digest())


async def test_snapshot_from_a_newer_version_is_refused_even_with_fallback(
    tmp_path: Path,
) -> None:
    s, _ = opened(tmp_path)
    await s.append(b"a")
    await s.compact(lambda: b"a")
    s.close()
    (snap,) = files(tmp_path, "snapshot.")
    _rewrite_snapshot_version(snap, 2)
    with pytest.raises(CorruptFile) as ei:
        restore(tmp_path)  # log.1 would allow a fallback, but this file is not damaged
    assert ei.value.path == str(snap) and "format version 2" in str(ei.value)
    assert snap.exists()
    _rewrite_snapshot_version(snap, 1)  # sanity: the rewrite itself is sound
    assert restore(tmp_path).snapshot == b"a"


async def test_bad_magic_and_missing_segment_are_named(tmp_path: Path) -> None:
    s, _ = opened(tmp_path)
    await s.append(b"a")
    await s.compact(lambda: b"a")
    await s.compact(lambda: b"a")
    await s.append(b"b")
    s.close()
    segs = files(tmp_path, "log.")
    assert len(segs) == 2  # log.2 and log.3 (log.1 is older than the kept fallback)
    segs[-1].unlink()  # snapshot.3 needs log.3, which compaction creates before it
    with pytest.raises(CorruptFile) as ei:
        restore(tmp_path)
    assert ei.value.path == str(files(tmp_path, "snapshot.")[-1])
    assert "missing " + segs[-1].name in str(ei.value)
    (tmp_path / "x").mkdir()
    other = tmp_path / "x"
    s, _ = opened(other)
    await s.append(b"a")
    s.close()
    (seg,) = files(other, "log.")
    flip(seg, 0)
    with pytest.raises(CorruptFile) as ei:
        restore(other)
    assert ei.value.path == str(seg) and "bad magic" in str(ei.value)


def test_missing_directory_is_created_and_uncreatable_one_is_store_error(
    tmp_path: Path,
) -> None:
    d = tmp_path / "a" / "b" / "data"
    s, r = opened(d)
    s.close()
    assert d.is_dir() and r.notes == [f"created data directory {d}"]
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(StoreError) as ei:
        Store(blocker / "data").open()
    assert str(blocker / "data") in str(ei.value)
    with pytest.raises(StoreError, match="not a directory"):
        Store(blocker).open()


def test_second_store_on_same_directory_is_refused(tmp_path: Path) -> None:
    s, _ = opened(tmp_path)
    try:
        with pytest.raises(StoreError, match="in use by another process"):
            Store(tmp_path).open()
    finally:
        s.close()
    restore(tmp_path)  # the lock is released by close()


async def test_bad_input_and_misuse(tmp_path: Path) -> None:
    s = Store(tmp_path)
    with pytest.raises(StoreError, match="not open"):
        await s.append(b"x")
    s.open()
    with pytest.raises(TypeError, match="must be bytes"):
        await s.append("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="MAX_RECORD"):
        await s.append(b"\0" * (MAX_RECORD + 1))
    with pytest.raises(TypeError, match="make_snapshot"):
        await s.compact(lambda: "text")  # type: ignore[arg-type,return-value]
    s.close()
    with pytest.raises(StoreError, match="closed"):
        await s.append(b"x")
    assert restore(tmp_path).records == []


@pytest.mark.parametrize("fail", ["write", "fsync"])
async def test_disk_full_fails_whole_batch_then_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail: str
) -> None:
    s, _ = opened(tmp_path)
    await s.append(b"before")
    real_pwrite, real_fsync = store_mod._sys_pwrite, store_mod._sys_fsync
    full = True

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if full:
            # Half the batch reaches the file, then the disk is full: garbage to cut off.
            real_pwrite(fd, data[: len(data) // 2], offset)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_pwrite(fd, data, offset)

    def fsync(fd: int) -> None:
        if full:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    if fail == "write":
        monkeypatch.setattr(store_mod, "_sys_pwrite", pwrite)
    else:
        monkeypatch.setattr(store_mod, "_sys_fsync", fsync)

    outcomes: dict[int, str] = {}

    async def one(i: int) -> None:
        try:
            await s.append(b"lost-%d" % i)
            outcomes[i] = "acked"
        except StoreError as e:
            outcomes[i] = str(e)

    async with trio.open_nursery() as n:
        for i in range(10):
            n.start_soon(one, i)
    assert len(outcomes) == 10 and "acked" not in outcomes.values()
    want = "No space left" if fail == "write" else "Input/output error"
    assert all(want in v and "not acknowledged" in v for v in outcomes.values())
    assert s.stats.errors >= 1
    full = False
    await s.append(b"after")
    s.close()
    r = restore(tmp_path)
    assert r.records == [b"before", b"after"] and not r.torn_tail


async def test_failed_rollback_makes_store_refuse_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _ = opened(tmp_path)

    def enospc(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def eio(fd: int, length: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_mod, "_sys_pwrite", enospc)
    monkeypatch.setattr(os, "ftruncate", eio)
    with pytest.raises(StoreError):
        await s.append(b"x")
    monkeypatch.undo()
    with pytest.raises(StoreError, match=r"unusable.*reopen"):
        await s.append(b"y")
    s.close()
    assert restore(tmp_path).records == []


async def test_group_commit_200_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    s, _ = opened(tmp_path)
    async with trio.open_nursery() as n:
        for i in range(200):
            n.start_soon(s.append, b"rec-%03d" % i)
    st = s.stats
    assert st.appends == 200
    assert st.fsyncs < 200 / 4, st
    assert st.batches == st.fsyncs
    s.close()
    assert sorted(restore(tmp_path).records) == [b"rec-%03d" % i for i in range(200)]


async def test_compaction_with_concurrent_appends_loses_nothing(tmp_path: Path) -> None:
    s, _ = opened(tmp_path)
    called: set[bytes] = set()  # the caller's in-memory state: every append *called*
    acked: set[bytes] = set()

    async def writer(w: int) -> None:
        for i in range(150):
            rec = b"w%d-%d" % (w, i)
            called.add(rec)
            await s.append(rec)
            acked.add(rec)

    async def compactor() -> None:
        for _ in range(6):
            await s.compact(lambda: b"\n".join(sorted(called)))
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as n:
        for w in range(8):
            n.start_soon(writer, w)
        n.start_soon(compactor)
    assert s.stats.compactions == 6
    s.close()
    assert len(acked) == 8 * 150
    assert state_of(restore(tmp_path)) == acked
    assert len(files(tmp_path, "snapshot.")) == 2


async def _session_with_two_snapshots(d: Path) -> set[bytes]:
    s, _ = opened(d)
    acked: set[bytes] = set()
    for rnd in range(3):
        for i in range(5):
            rec = b"%d-%d" % (rnd, i)
            await s.append(rec)
            acked.add(rec)
        await s.compact(lambda: b"\n".join(sorted(acked)))
    s.close()
    return acked


@pytest.mark.parametrize("tmp_state", ["complete", "partial", "empty"])
async def test_crash_before_snapshot_rename_restores_from_previous(
    tmp_path: Path, tmp_state: str
) -> None:
    acked = await _session_with_two_snapshots(tmp_path)
    newest = files(tmp_path, "snapshot.")[-1]
    # Undo the rename: the crash hit after writing the tmp file (fully, partly, or not
    # at all) but before os.replace(); the previous snapshot and segments are all there.
    tmp = newest.with_name(newest.name + ".tmp")
    data = newest.read_bytes()
    newest.rename(tmp)
    tmp.write_bytes({"complete": data, "partial": data[: len(data) // 2], "empty": b""}[tmp_state])
    r = restore(tmp_path)
    assert state_of(r) == acked
    assert r.snapshot_path is not None and r.snapshot_path < newest
    assert not tmp.exists() and any("leftover" in n and str(tmp) in n for n in r.notes)
    s, _ = opened(tmp_path)
    await s.append(b"later")
    s.close()
    assert state_of(restore(tmp_path)) == acked | {b"later"}


async def test_crash_after_rename_before_cleanup_restores_newest(tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    d = tmp_path / "d"
    acked = await _session_with_two_snapshots(d)
    shutil.copytree(d, backup)
    s, _ = opened(d)
    await s.compact(lambda: b"\n".join(sorted(acked)))
    s.close()
    # Put back every file the cleanup deleted: the crash came before any unlink.
    for p in backup.iterdir():
        if not (d / p.name).exists():
            shutil.copy2(p, d / p.name)
    r = restore(d)
    assert state_of(r) == acked and r.snapshot_path == files(d, "snapshot.")[-1]
    assert len(files(d, "snapshot.")) == 3
    s, _ = opened(d)
    await s.compact(lambda: b"\n".join(sorted(acked)))  # the next compaction cleans up
    s.close()
    assert len(files(d, "snapshot.")) == 2 and state_of(restore(d)) == acked


async def test_appends_after_the_compaction_instant_go_to_the_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deterministic version of the race: a record appended after make_snapshot() ran must
    be replayed after that snapshot, even if a flush queued before compact() writes it."""
    s, _ = opened(tmp_path)
    release = threading.Event()
    real_fsync = store_mod._sys_fsync

    def slow_fsync(fd: int) -> None:
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(store_mod, "_sys_fsync", slow_fsync)
    called: list[bytes] = []

    async def app(rec: bytes) -> None:
        called.append(rec)
        await s.append(rec)

    async with trio.open_nursery() as n:
        n.start_soon(app, b"a")  # becomes the flusher and blocks in fsync
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(app, b"b")  # queued behind it
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(s.compact, lambda: b"\n".join(called))  # the instant: state = {a, b}
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(app, b"c")  # after the instant: joins b's batch, not in the snapshot
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    s.close()
    r = restore(tmp_path)
    assert r.snapshot == b"a\nb"
    assert b"c" in r.records and state_of(r) == {b"a", b"b", b"c"}


async def test_aclose_waits_for_the_running_flush_and_fails_queued_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, _ = opened(tmp_path)
    release = threading.Event()
    real_fsync = store_mod._sys_fsync

    def slow_fsync(fd: int) -> None:
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(store_mod, "_sys_fsync", slow_fsync)
    results: dict[bytes, str] = {}

    async def app(rec: bytes) -> None:
        try:
            await s.append(rec)
            results[rec] = "acked"
        except StoreError as e:
            results[rec] = str(e)

    async with trio.open_nursery() as n:
        n.start_soon(app, b"in-flight")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(StoreError, match="in progress"):
            s.close()
        n.start_soon(s.aclose)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(app, b"queued")
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert results[b"in-flight"] == "acked" and "closed" in results[b"queued"]
    assert restore(tmp_path).records == [b"in-flight"]


async def test_store_logs_under_its_name_of_before_the_move(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store's warnings (restore's notes and failed batches alike) carry the logger name
    ``gossipmgr.store`` that the agent's log lines showed before the code moved to
    runtime/ (store, segments, restore): operators filter on it."""
    s, _ = opened(tmp_path)
    await s.append(b"keep")
    s.close()
    (seg,) = files(tmp_path, "log.")
    torn_write(seg, b"never committed")
    seg.write_bytes(seg.read_bytes()[:-3])
    with caplog.at_level("WARNING"):
        r = restore(tmp_path)
    assert r.torn_tail
    names = {rec.name for rec in caplog.records if "torn write" in rec.getMessage()}
    assert names == {"gossipmgr.store"}


async def test_a_cancelled_appender_still_finishes_its_batch_in_the_flush_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commits run in the store's own thread (runtime.flusher), one after another; an
    appender cancelled while its batch is in the fsync does not abandon it: the batch is
    written and made durable for everyone in it, and the next batch follows."""
    monkeypatch.setattr(store_mod, "IDLE_CHECKPOINT_S", 3600.0)  # only the commits' fsyncs
    s, _ = opened(tmp_path)
    release = threading.Event()
    threads: list[str] = []
    real_fsync = store_mod._sys_fsync

    def slow_fsync(fd: int) -> None:
        threads.append(threading.current_thread().name)
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(store_mod, "_sys_fsync", slow_fsync)
    acked: list[bytes] = []
    cancel = trio.CancelScope()

    async def first() -> None:
        with cancel:
            await s.append(b"first")

    async def second() -> None:
        await s.append(b"second")
        acked.append(b"second")

    async with trio.open_nursery() as n:
        n.start_soon(first)  # takes the batch and blocks in its fsync
        await until(lambda: threads, 10, "the first batch in its fsync")
        n.start_soon(second)  # queued for the next batch
        await trio.testing.wait_all_tasks_blocked()
        cancel.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert len(threads) == 1 and acked == []  # still in the first batch's fsync
        release.set()
    assert acked == [b"second"]
    flushes = list(threads)
    s.close()
    assert restore(tmp_path).records == [b"first", b"second"]
    # two batches, one fdatasync each, both in the store's one flush thread
    assert len(flushes) == 2 and {
        t.split(" ")[:3] == ["gossipmgr", "store", "flush"] for t in flushes
    } == {True}
