"""Crash-test load for gossipmgr.runtime.store
(run by tests/test_store_crash.py; not a test itself).

Usage: python tests/_store_writer.py DATA_DIR TAG SEED

Opens a Store, restores its state (a grow-only set of ids: the snapshot is the ids joined by
newlines, each record is ``id|padding``), prints ``ready``, then runs 8 trio tasks appending
numbered records and a task compacting every 20-80 ms, until it is killed. An id is printed
(and stdout flushed) only AFTER its append returned, i.e. once it is acknowledged. The
in-memory state gains an id when its append is *called*, as the Store's compact() contract
requires. Exits 3 on any error so the test can tell a crash of ours from its SIGKILL.
"""

from __future__ import annotations

import random
import sys
import traceback
from pathlib import Path

import trio

from gossipmgr.runtime.store import Store

WRITERS = 8


def ids_of(snapshot: bytes | None, records: list[bytes]) -> set[bytes]:
    ids = set(snapshot.split(b"\n")) - {b""} if snapshot else set()
    return ids | {r.split(b"|", 1)[0] for r in records}


async def main(data_dir: Path, tag: str, seed: int) -> None:
    rng = random.Random(seed)
    store = Store(data_dir)
    restored = store.open()
    state = ids_of(restored.snapshot, restored.records)
    out = sys.stdout
    out.write(f"ready {len(state)}\n")
    out.flush()

    def ack(ids: list[bytes]) -> None:
        out.write("".join(i.decode() + "\n" for i in ids))
        out.flush()

    async def writer(w: int) -> None:
        i = 0
        while True:
            n = 3 if w == 0 else 1  # writer 0 uses append_many
            ids = [f"{tag}-{w}-{i + k}".encode() for k in range(n)]
            i += n
            state.update(ids)
            recs = [x + b"|" + b"p" * rng.randrange(0, 300) for x in ids]
            if n == 1:
                await store.append(recs[0])
            else:
                await store.append_many(recs)
            ack(ids)

    async def compactor() -> None:
        while True:
            await trio.sleep(rng.uniform(0.02, 0.08))
            await store.compact(lambda: b"\n".join(sorted(state)))

    async with trio.open_nursery() as nursery:
        for w in range(WRITERS):
            nursery.start_soon(writer, w)
        nursery.start_soon(compactor)


if __name__ == "__main__":
    try:
        trio.run(main, Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))
    except BaseException:
        traceback.print_exc()
        sys.exit(3)
