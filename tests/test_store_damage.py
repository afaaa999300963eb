"""A torn write is told apart from damage to acknowledged records (issue 14).

The rule (docs/storage-format.md, "Torn write or damage"): every version 2 segment carries a
commit point, moved past a batch only after the batch is fsync'd and made durable itself
before the batch is acknowledged. Bytes after it were never acknowledged (a torn write is
cut off); a bad or missing byte before it is damage to acknowledged data: restore refuses
with the file named, unless the operator accepts the loss (``accept_damage``, the agent's
``--accept-log-damage``). Version 1 segments (older data directories) are still read.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from pathlib import Path

import pytest

import gossipmgr.runtime.store as store_mod
from gossipmgr.errors import CorruptFile, StoreError
from gossipmgr.runtime.segments import read_slots
from gossipmgr.runtime.store import FORMAT_VERSION, Store
from gossipmgr.testing.wait import until


def segments(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.name.startswith("log.") and p.name[4:].isdigit())


async def acked_records(d: Path, n: int) -> list[bytes]:
    s = Store(d)
    s.open()
    recs = [b"acked-%03d-" % i + b"x" * (i % 7) for i in range(n)]
    for r in recs:
        await s.append(r)
    s.close()
    return recs


def truncate(p: Path, n: int) -> None:
    p.write_bytes(p.read_bytes()[:-n])


def flip(p: Path, offset: int) -> None:
    data = bytearray(p.read_bytes())
    data[offset] ^= 0x01
    p.write_bytes(bytes(data))


DAMAGE = {
    "truncated by 10 bytes": lambda p: truncate(p, 10),
    "truncated by 1 byte": lambda p: truncate(p, 1),
    "truncated by half": lambda p: truncate(p, p.stat().st_size // 2),
    "last byte flipped": lambda p: flip(p, p.stat().st_size - 1),
    "a middle byte flipped": lambda p: flip(p, p.stat().st_size // 2),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
async def test_damage_to_acknowledged_records_refuses_to_start(tmp_path: Path, kind: str) -> None:
    await acked_records(tmp_path, 40)
    (seg,) = segments(tmp_path)
    DAMAGE[kind](seg)
    before = seg.read_bytes()
    with pytest.raises(CorruptFile) as ei:
        Store(tmp_path).open()
    assert ei.value.path == str(seg)
    assert "acknowledged" in str(ei.value) and "--accept-log-damage" in str(ei.value)
    assert seg.read_bytes() == before  # nothing truncated or "repaired"


@pytest.mark.parametrize(
    "kind", ["truncated by 10 bytes", "truncated by half", "last byte flipped"]
)
async def test_accepting_the_loss_keeps_the_intact_records_and_a_copy(
    tmp_path: Path, kind: str
) -> None:
    recs = await acked_records(tmp_path, 40)
    (seg,) = segments(tmp_path)
    DAMAGE[kind](seg)
    damaged = seg.read_bytes()
    s = Store(tmp_path, accept_damage=True)
    r = s.open()
    assert r.records == recs[: len(r.records)] and len(r.records) < len(recs)
    assert any("ACCEPTED LOSS" in n and str(seg) in n for n in r.notes), r.notes
    assert (tmp_path / (seg.name + ".corrupt")).read_bytes() == damaged
    await s.append(b"later")
    s.close()
    # From now on the directory is consistent: no option needed, nothing more lost.
    s = Store(tmp_path)
    assert s.open().records == [*r.records, b"later"]
    s.close()


async def test_both_commit_slots_damaged_refuses(tmp_path: Path) -> None:
    await acked_records(tmp_path, 3)
    (seg,) = segments(tmp_path)
    flip(seg, store_mod.HEADER_SIZE + 2)
    flip(seg, store_mod.HEADER_SIZE + store_mod.SLOT_SIZE + 2)
    with pytest.raises(CorruptFile, match="both commit slots"):
        Store(tmp_path).open()


async def test_one_damaged_commit_slot_falls_back_to_the_other(tmp_path: Path) -> None:
    """A power loss tearing the slot being written leaves the previous commit point, which
    is never beyond the durable data; the records after it are intact and kept."""
    recs = await acked_records(tmp_path, 5)
    (seg,) = segments(tmp_path)
    data = seg.read_bytes()
    gens = [struct.unpack_from("<QII", data, store_mod.HEADER_SIZE + i * 16)[1] for i in (0, 1)]
    newest = gens.index(max(gens))
    flip(seg, store_mod.HEADER_SIZE + newest * store_mod.SLOT_SIZE + 3)
    s = Store(tmp_path)
    assert s.open().records == recs
    s.close()


async def test_crash_between_data_fsync_and_commit_keeps_whole_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batch is durable but its commit slot was never written (simulated by a failing
    slot write whose rollback is also lost): whole records after the commit point are
    restored; they were simply never acknowledged."""
    s = Store(tmp_path)
    s.open()
    await s.append(b"a")
    (seg,) = segments(tmp_path)
    before = seg.read_bytes()
    await s.append(b"b")
    s.close()
    after = seg.read_bytes()
    # Put back the commit slots of the state before "b" was committed, keep b's bytes.
    head = store_mod.HEADER_SIZE
    slots = before[head : head + 2 * store_mod.SLOT_SIZE]
    seg.write_bytes(after[:head] + slots + after[head + len(slots) :])
    s = Store(tmp_path)
    assert s.open().records == [b"a", b"b"]
    s.close()
    # Restoring it committed it: losing it now is damage.
    truncate(seg, 1)
    with pytest.raises(CorruptFile):
        Store(tmp_path).open()


async def test_a_failed_fsync_is_not_acknowledged_and_not_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Store(tmp_path)
    s.open()
    await s.append(b"before")
    real = store_mod._sys_fsync

    def fsync(fd: int) -> None:  # the batch and its commit record are written, not synced
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(store_mod, "_sys_fsync", fsync)
    with pytest.raises(StoreError, match="not acknowledged"):
        await s.append(b"refused")
    monkeypatch.setattr(store_mod, "_sys_fsync", real)
    await s.append(b"after")
    s.close()
    s = Store(tmp_path)
    r = s.open()
    s.close()
    assert r.records == [b"before", b"after"] and not r.torn_tail and r.notes == []


def v1_header(magic: bytes, seq: int) -> bytes:
    head = struct.pack("<8sIQ", magic, 1, seq)
    return head + zlib.crc32(head).to_bytes(4, "little")


def v1_frame(rec: bytes) -> bytes:
    lb = len(rec).to_bytes(4, "little")
    return struct.pack("<II", len(rec), zlib.crc32(rec, zlib.crc32(lb))) + rec


async def test_version_1_directory_is_read_and_continued_in_the_current_version(
    tmp_path: Path,
) -> None:
    """A data directory written by the previous release (format version 1: no commit
    slots): restored with the version 1 torn-tail rule, then appends go to a new segment."""
    import hashlib

    payload = b"snap-a\nsnap-b"
    body = v1_header(b"gmgr-snp", 2) + struct.pack("<Q", len(payload)) + payload
    (tmp_path / f"snapshot.{2:020d}").write_bytes(
        body + hashlib.blake2b(body, digest_size=32).digest()
    )
    seg = tmp_path / f"log.{2:020d}"
    seg.write_bytes(v1_header(b"gmgr-log", 2) + v1_frame(b"r1") + v1_frame(b"r2") + b"\x07\x00")
    s = Store(tmp_path)
    r = s.open()
    assert r.snapshot == payload and r.records == [b"r1", b"r2"] and r.torn_tail
    await s.append(b"r3")
    s.close()
    names = [p.name for p in segments(tmp_path)]
    assert names == [f"log.{2:020d}", f"log.{3:020d}"]
    assert (tmp_path / names[1]).read_bytes()[8:12] == FORMAT_VERSION.to_bytes(4, "little")
    s = Store(tmp_path)
    assert s.open().records == [b"r1", b"r2", b"r3"]
    s.close()


async def test_unknown_newer_log_version_is_refused(tmp_path: Path) -> None:
    head = struct.pack("<8sIQ", b"gmgr-log", 4, 1)
    seg = tmp_path / f"log.{1:020d}"
    seg.write_bytes(head + zlib.crc32(head).to_bytes(4, "little") + b"\0" * 40)
    with pytest.raises(CorruptFile, match="version 4 is not supported"):
        Store(tmp_path).open()


async def test_power_loss_in_any_commit_keeps_every_acknowledged_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss during a group commit's fdatasync: what was durable when the previous
    fdatasync returned survives; of what the commit wrote since (its batch, and the commit
    slot when it moved), any part may be on disk: the slot old or new, the batch cut at any
    offset or with any one byte bad. Every such state restores every acknowledged record
    (the batches whose fdatasync returned), then the interrupted batch whole or not at all."""
    d = tmp_path / "d"
    at_fsync: list[bytes] = []  # the segment as each fdatasync began (and returned)

    def fsync(fd: int) -> None:
        (seg,) = segments(d)
        at_fsync.append(seg.read_bytes())

    batches = [[b"a"], [b"b" * 30, b"c"], [b"d" * 5], [b"e", b"f" * 9, b"g"], [b"h"]]
    monkeypatch.setattr(store_mod, "IDLE_CHECKPOINT_S", 3600.0)  # only the commits' fsyncs
    s = Store(d)
    s.open()
    monkeypatch.setattr(store_mod, "_sys_fsync", fsync)
    for batch in batches:
        await s.append_many(batch)
    monkeypatch.setattr(store_mod, "_sys_fsync", os.fsync)
    s.close()
    assert len(at_fsync) == len(batches)  # one fdatasync per group commit
    (seg,) = segments(d)
    slots = slice(store_mod.HEADER_SIZE, store_mod.HEADER_SIZE + 2 * store_mod.SLOT_SIZE)
    for k, now in enumerate(at_fsync):
        before = at_fsync[k - 1] if k else now[: store_mod.LOG_DATA_START]
        acked = [r for b in batches[:k] for r in b]
        start = len(before)
        # The commit wrote its batch after the durable end and, maybe, a commit slot.
        assert now[: slots.start] + now[slots.stop : start] == (
            before[: slots.start] + before[slots.stop :]
        )
        states = []
        for slot_bytes in {before[slots], now[slots]}:
            base = now[: slots.start] + slot_bytes + now[slots.stop : start]
            states += [base + now[start:cut] for cut in range(start, len(now) + 1)]
            for off in range(start, len(now)):
                bad = bytearray(base + now[start:])
                bad[off] ^= 0x10
                states.append(bytes(bad))
        for state in states:
            seg.write_bytes(state)
            st = Store(d, fsync=False)  # a restore's own fsyncs are not under test here
            try:
                got = st.open().records
            finally:
                st.close()
            assert got in (acked, acked + batches[k]), (k, len(state), got)


async def test_the_commit_point_reaches_the_end_of_the_log_once_writes_stop(
    tmp_path: Path,
) -> None:
    """A commit moves the commit slot only up to its own batch's start (one fdatasync for
    both), so damage to the last batch reads as a torn write until the next commit, or
    until the flush thread, idle for ``IDLE_CHECKPOINT_S``, commits the log's end: from
    then on a crash image (no close) with that batch damaged is refused."""
    live, image = tmp_path / "live", tmp_path / "image"
    s = Store(live)
    s.open()
    for i in range(5):
        await s.append(b"rec-%d" % i)
    (seg,) = segments(live)

    def committed_end() -> int:
        slots = read_slots(seg.read_bytes())
        assert slots is not None
        return slots[0]

    await until(lambda: committed_end() == seg.stat().st_size, 10, "the log's end committed")
    image.mkdir()
    (image / seg.name).write_bytes(seg.read_bytes())  # what a crash now would leave
    s.close()
    truncate(image / seg.name, 1)
    with pytest.raises(CorruptFile, match="acknowledged"):
        Store(image).open()
