"""Replica + Store: a compaction never drops a write that a commit has acknowledged.

``Replica.commit`` appends a delta to the log and applies it to memory after the append
returns. A compaction snapshots memory and makes the log before its instant superseded, so
a snapshot taken while a commit sits between its append and its apply would miss that
write, and the write would be gone after a restart (issue 14: "the lost keys are in no
snapshot"). These tests force each interleaving deterministically (real Store on a real
directory; the only seam is a wrapper around ``Store.append`` that parks the committing
task at a chosen point) and restore from disk after each; a seeded version parks every
commit for random scheduler turns and checks copies of the directory taken at random
moments, as a crash would leave it (all 20 seeds tried lost writes before the fix).
"""

from __future__ import annotations

import gc
import random
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.errors import StoreError
from gossipmgr.runtime.replica import Replica


def restored_globals(d: Path) -> dict[str, object]:
    rep = Replica("r", data_dir=d, fsync=False)
    rep.open()
    try:
        return rep.state.globals()
    finally:
        rep.store.close()


def put(var: str, value: object) -> Callable[[ClusterState, Timestamp], LWWMap]:
    def make(s: ClusterState, ts: Timestamp) -> LWWMap:
        return s.d_set(global_key(var), value, ts)

    return make


def park_after_append(rep: Replica) -> tuple[trio.Event, trio.Event]:
    """Make the next append park after it returned (durable, not yet applied)."""
    appended, release = trio.Event(), trio.Event()
    orig: Callable[[bytes], Awaitable[None]] = rep.store.append
    state = {"armed": True}

    async def append(record: bytes) -> None:
        await orig(record)
        if state["armed"]:
            state["armed"] = False
            appended.set()
            await release.wait()

    rep.store.append = append
    return appended, release


async def test_compaction_between_append_and_apply_keeps_the_write(tmp_path: Path) -> None:
    d = tmp_path / "state"
    rep = Replica("r", data_dir=d, fsync=False, compact_bytes=1 << 30)
    rep.open()
    await rep.commit(put("before", 1))
    appended, release = park_after_append(rep)
    async with trio.open_nursery() as n:
        n.start_soon(rep.commit, put("parked", 2))
        await appended.wait()  # "parked" is on disk in the current segment, not in memory
        n.start_soon(rep.snapshot_now)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert rep.store.stats.compactions == 1
    await rep.commit(put("after", 4))
    await rep.aclose()
    got = restored_globals(d)
    assert got == {"before": 1, "parked": 2, "after": 4}, got


async def test_compaction_waits_for_a_batch_being_fsynced(tmp_path: Path) -> None:
    """A compaction that starts while a group-commit batch is in flight (several commits in
    one batch, parked inside the append) still covers every one of them after restart."""
    d = tmp_path / "state"
    rep = Replica("r", data_dir=d, fsync=False, compact_bytes=1 << 30)
    rep.open()
    appended, release = park_after_append(rep)
    async with trio.open_nursery() as n:
        for i in range(5):
            n.start_soon(rep.commit, put(f"k{i}", i))
        await appended.wait()
        n.start_soon(rep.snapshot_now)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    await rep.aclose()
    assert restored_globals(d) == {f"k{i}": i for i in range(5)}


async def test_writes_queued_behind_a_compaction_go_on(tmp_path: Path) -> None:
    """Commits arriving while a compaction waits for in-flight commits are neither lost
    nor stuck: they complete after the snapshot instant and are restored from the log."""
    d = tmp_path / "state"
    rep = Replica("r", data_dir=d, fsync=False, compact_bytes=1 << 30)
    rep.open()
    appended, release = park_after_append(rep)
    async with trio.open_nursery() as n:
        n.start_soon(rep.commit, put("first", 0))
        await appended.wait()
        n.start_soon(rep.snapshot_now)
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            n.start_soon(rep.commit, put(f"late{i}", i))
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    await rep.aclose()
    assert restored_globals(d) == {"first": 0, "late0": 0, "late1": 1, "late2": 2}


def crash_copy(d: Path, dest: Path) -> None:
    """What a crash would leave: a copy of the data directory made while the store runs
    (torn tails allowed; a file deleted by a compaction mid-copy: copy again)."""
    while True:
        shutil.rmtree(dest, ignore_errors=True)
        try:
            shutil.copytree(d, dest, ignore=shutil.ignore_patterns("LOCK"))
            return
        except (FileNotFoundError, shutil.Error):
            continue


@pytest.mark.parametrize("seed", range(4))
async def test_seeded_interleavings_of_commits_and_compactions(tmp_path: Path, seed: int) -> None:
    """8 writers commit while a compactor snapshots at random moments; every commit parks
    for a random number of scheduler turns after its append returned (the window of the
    race) and before it. A checker copies the data directory at random moments, as a crash
    would leave it: every write acknowledged before the copy must restore from it."""
    rng = random.Random(seed)
    d = tmp_path / "state"
    rep = Replica("r", data_dir=d, fsync=False, compact_bytes=1 << 30)
    rep.open()
    orig: Callable[[bytes], Awaitable[None]] = rep.store.append

    async def append(record: bytes) -> None:
        for _ in range(rng.randrange(3)):
            await trio.lowlevel.checkpoint()
        await orig(record)
        for _ in range(rng.randrange(6)):
            await trio.lowlevel.checkpoint()

    rep.store.append = append
    acked: dict[str, int] = {}
    lost: list[str] = []
    done = trio.Event()

    async def writer(w: int) -> None:
        for i in range(25):
            await rep.commit(put(f"w{w}-{i}", i))
            acked[f"w{w}-{i}"] = i

    async def compactor() -> None:
        while not done.is_set():
            for _ in range(rng.randrange(1, 12)):
                await trio.lowlevel.checkpoint()
            await rep.snapshot_now()

    async def checker() -> None:
        n = 0
        while not done.is_set():
            for _ in range(rng.randrange(1, 8)):
                await trio.lowlevel.checkpoint()
            before = dict(acked)
            n += 1
            crash_copy(d, tmp_path / "copy")
            got = restored_globals(tmp_path / "copy")
            lost.extend(f"check {n}: {k}" for k, v in before.items() if got.get(k) != v)

    async with trio.open_nursery() as n:
        n.start_soon(compactor)
        n.start_soon(checker)
        async with trio.open_nursery() as writers:
            for w in range(8):
                writers.start_soon(writer, w)
        done.set()
    await rep.aclose()
    got = restored_globals(d)
    lost.extend(f"end: {k}" for k, v in acked.items() if got.get(k) != v)
    assert rep.store is None and len(acked) == 200
    assert not lost, f"seed {seed}: acknowledged writes lost: {lost[:5]} ({len(lost)})"


async def test_a_snapshot_larger_than_one_delta_restores(tmp_path: Path) -> None:
    """Every value is within the limits, but together they exceed MAX_DELTA_BYTES (64 MiB,
    the cap on a delta from the network). Compaction wrote the snapshot (the store takes up
    to MAX_SNAPSHOT, 1 GiB); restore decoded it with the network's cap and refused it as
    malformed, so the instance could not start again with its own state."""
    from gossipmgr.core.codec import MAX_DELTA_BYTES, MAX_ENTRY_BYTES

    d = tmp_path / "state"
    rep = Replica("r", data_dir=d, fsync=False, compact_bytes=1 << 40)
    rep.open()
    big = "x" * (MAX_ENTRY_BYTES - 1024)  # one object: the state shares it
    n = MAX_DELTA_BYTES // len(big) + 2
    for i in range(n):
        await rep.commit(put(f"k{i}", big))
    await rep.snapshot_now()
    await rep.aclose()
    assert (d / "snapshot.00000000000000000002").stat().st_size > MAX_DELTA_BYTES
    got = restored_globals(d)
    assert sorted(got) == sorted(f"k{i}" for i in range(n))
    assert all(v == big for v in got.values())


async def test_open_leaves_the_garbage_collector_as_it_found_it(tmp_path: Path) -> None:
    """open() turns the cyclic collector off while it restores (issue 17): it must be back
    on afterwards, also when the restore fails, and stay off if it was off."""
    d = tmp_path / "s"
    rep = Replica("r", data_dir=d, fsync=False)
    rep.open()
    await rep.commit(put("k", 1))
    await rep.aclose()
    assert gc.isenabled()
    rep = Replica("r", data_dir=d, fsync=False)
    rep.open()
    assert gc.isenabled() and len(rep.state) == 1
    await rep.aclose()
    gc.disable()
    try:
        rep = Replica("r", data_dir=d, fsync=False)
        rep.open()
        assert not gc.isenabled()
        await rep.aclose()
    finally:
        gc.enable()
    held = Replica("r", data_dir=d, fsync=False)
    held.open()
    try:
        with pytest.raises(StoreError):  # the directory lock is held: the restore raises
            Replica("r2", data_dir=d, fsync=False).open()
        assert gc.isenabled()
    finally:
        await held.aclose()
