"""SIGKILL a real writer process at random moments: no acknowledged record may be lost.

tests/_store_writer.py appends from 8 concurrent tasks and compacts every 20-80 ms, printing
each id only after its append returned. We kill it (SIGKILL: no cleanup, no flush, no
atexit) 0.2-1.0 s after it reported ready, twice per seed on the same directory (the
second writer first recovers the first one's crash), then restore in this process and
check every printed id is there. A process crash keeps the page cache, so this exercises
torn frames, compaction at every stage and recovery; power loss is argued in
docs/storage-format.md, not tested here.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from gossipmgr.runtime.store import CRASH_POINTS, Restored, Store

WRITER = Path(__file__).with_name("_store_writer.py")
REPO = Path(__file__).resolve().parent.parent


def ids_of(r: Restored) -> set[bytes]:
    ids = set(r.snapshot.split(b"\n")) - {b""} if r.snapshot else set()
    return ids | {rec.split(b"|", 1)[0] for rec in r.records}


async def run_and_kill(
    data: Path, tag: str, seed: int, delay: float | None, log: Path, crash_at: str = ""
) -> set[bytes]:
    """Run one writer, SIGKILL it ``delay`` s after it is ready (``None``: wait until it
    SIGKILLs itself at ``crash_at``, a GOSSIPMGR_TEST_CRASH_AT value); return the acked ids."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if crash_at:
        env["GOSSIPMGR_TEST_CRASH_AT"] = crash_at
    buf = bytearray()
    with log.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [sys.executable, str(WRITER), str(data), tag, str(seed)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
        try:
            assert proc.stdout is not None
            stdout = proc.stdout

            async def pump() -> None:
                while chunk := await stdout.receive_some(65536):
                    buf.extend(chunk)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                with trio.fail_after(20):
                    while b"\n" not in buf:
                        if proc.poll() is not None:
                            break
                        await trio.sleep(0.01)
                assert buf.startswith(b"ready"), f"writer did not start: {log.read_text()}"
                if delay is None:
                    with trio.fail_after(60):
                        await proc.wait()
                else:
                    # The random kill moment is the point of the test, not a wait for a
                    # condition.
                    await trio.sleep(delay)
                    assert proc.poll() is None, f"writer died on its own: {log.read_text()}"
                    proc.send_signal(signal.SIGKILL)
                    with trio.fail_after(10):
                        await proc.wait()
        finally:
            if proc.returncode is None:
                proc.kill()
                with trio.move_on_after(10) as cs:
                    cs.shield = True
                    await proc.wait()
    assert proc.returncode == -signal.SIGKILL, log.read_text()
    lines = bytes(buf).split(b"\n")
    # Only complete lines count: a cut-off last line is an id we never saw acknowledged.
    return set(lines[1:-1])


@pytest.mark.parametrize("seed", range(6))
async def test_sigkill_during_writes_and_compaction_loses_nothing_acked(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    data = tmp_path / "data"
    acked: set[bytes] = set()
    for rnd in range(2):
        got = await run_and_kill(
            data, f"s{seed}r{rnd}", seed, rng.uniform(0.2, 1.0), tmp_path / f"err{rnd}"
        )
        assert got, "the writer acknowledged nothing before the kill"
        acked |= got
    store = Store(data)
    r = store.open()
    store.close()
    restored = ids_of(r)
    missing = acked - restored
    assert not missing, f"{len(missing)} acknowledged ids lost, e.g. {sorted(missing)[:5]}"
    # Nothing invented: every restored id has the shape the writers produce.
    prefixes = (f"s{seed}r0-".encode(), f"s{seed}r1-".encode())
    assert all(i.startswith(prefixes) for i in restored)


@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_sigkill_at_each_named_point_loses_nothing_acked(tmp_path: Path, point: str) -> None:
    """The writer SIGKILLs itself at a named point (between a batch's write and its fsync,
    between the fsync and the commit slot, and at each step of a compaction), twice on the
    same directory; every acknowledged id must be restored."""
    rng = random.Random(point)
    data = tmp_path / "data"
    acked: set[bytes] = set()
    # Two rounds: the second writer first recovers what the first one's crash left.
    for rnd in range(2 if point.startswith("compact") else 1):
        n = rng.randint(1, 3) if point.startswith("compact") else rng.randint(20, 100)
        got = await run_and_kill(
            data, f"p{rnd}", rnd, None, tmp_path / f"err{rnd}", crash_at=f"{point}:{n}"
        )
        acked |= got
    assert acked, "the writer acknowledged nothing before it killed itself"
    store = Store(data)
    r = store.open()
    store.close()
    missing = acked - ids_of(r)
    assert not missing, f"{point}: {len(missing)} acknowledged ids lost: {sorted(missing)[:5]}"
