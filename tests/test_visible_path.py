"""A local write reaches the peers in parallel with its own fsync (issue 17, write -> visible).

The delta of a local commit is sent to the peers as soon as it is made and checked, before
the writer's group commit has made it durable; the writer still acknowledges (and applies
it to its own state) only after its fsync (docs/design.md, "Write path"). Two replicas over
real UDP on loopback; the writer's store is ``GatedStore``, whose fsync the test holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import trio
from _udpcluster import gossiping

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.errors import StoreError
from gossipmgr.runtime.replica import Replica
from gossipmgr.runtime.watch import ChangeFeed
from gossipmgr.testing.slowstore import GatedStore
from gossipmgr.testing.wait import until


def _set(st: ClusterState, ts: Timestamp) -> LWWMap:
    return st.d_set(global_key("x"), "v1", ts)


@contextlib.asynccontextmanager
async def pair() -> AsyncIterator[tuple[Replica, GatedStore, Replica]]:
    """Writer ``a`` (a GatedStore behind it) and peer ``b`` gossiping over loopback."""
    reps = [Replica(name, data_dir=None) for name in ("a", "b")]
    for rep in reps:
        rep.open()
    store = GatedStore()
    reps[0]._store = store
    async with gossiping(reps, [os.urandom(32)] * 2):
        yield reps[0], store, reps[1]
        store.release()


async def test_a_peer_sees_a_write_before_the_writers_fsync_completes() -> None:
    async with pair() as (a, store, b):
        feed = ChangeFeed(a)
        store.hold()
        done = trio.Event()

        async def write() -> None:
            await a.commit(_set)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            await until(lambda: store.waiting == 1, 10, "the write waiting for its fsync")
            await until(lambda: b.state.globals() == {"x": "v1"}, 10, "b holding the write")
            # Not acknowledged yet, and not visible to the writer's own reads or feed.
            assert not done.is_set()
            assert a.state.globals() == {} and feed.history.head == 0
            store.release()
            with trio.fail_after(10):
                await done.wait()
        assert a.state.globals() == {"x": "v1"}
        got = feed.history.get(1)
        assert feed.history.head == 1 and got is not None and got.key == "globals/x"


async def test_a_write_refused_by_the_store_is_not_applied_here_though_sent() -> None:
    """The price of sending before the fsync (docs/design.md): a write the writer's data
    directory refuses is answered with an error and not applied on the writer, yet its
    peers may hold it already (and anti-entropy brings it back): its outcome is unknown,
    as that of a write whose answer was lost."""
    async with pair() as (a, store, b):
        store.hold()
        async with trio.open_nursery() as nursery:

            async def write() -> None:
                with pytest.raises(StoreError):
                    await a.commit(_set)

            nursery.start_soon(write)
            await until(lambda: b.state.globals() == {"x": "v1"}, 10, "b holding the write")
            store.fail_next("disk full")
        assert a.state.globals() == {} and a.counters["write_errors"] == 1


async def test_a_peers_copy_back_before_the_fsync_is_reported_once_as_the_local_write() -> None:
    """A digest resync can bring a peer's copy of a write back to its writer while the
    writer's fsync runs. The feed then shows it once, after the fsync, and the local-write
    listeners (webhooks) still hear of it."""
    a = Replica("a", data_dir=None)
    a.open()
    store = GatedStore()
    a._store = store
    feed = ChangeFeed(a)
    sent: list[LWWMap] = []
    local: list[list[str]] = []
    a.on_local_send(sent.append)
    a.on_local_write(lambda novel: local.append(["/".join(k) for k, _ in novel.items()]))
    store.hold()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.commit, _set)
        await until(lambda: store.waiting == 1, 10, "the write waiting for its fsync")
        # What the protocol does with the copy: join it, then report the novel part.
        copy = LWWMap.lazy()
        copy.merge(sent[0].items())
        a.remote_applied(a.state.apply(copy))
        assert feed.history.head == 0 and local == []
        store.release()
    assert feed.history.head == 1 and local == [["g/x"]]
    assert a.state.globals() == {"x": "v1"} and a._echoed == {} and a._unapplied == {}


class _Persisting(Replica):
    """A replica recording the size of each remote delta it is asked to persist."""

    persisted: list[int]

    async def persist(self, novel: LWWMap) -> None:
        self.persisted.append(len(novel))
        await super().persist(novel)


async def test_a_remote_write_reaches_a_watch_stream_before_it_is_persisted() -> None:
    """The receive task joins a delta, records it in the change feed and wakes the streams
    in the datagram's own step; persisting it waits for its window (held open here): a
    watching client has the event while nothing has been persisted."""
    a = Replica("a", data_dir=None)
    b = _Persisting("b", data_dir=None)
    b.persisted = []
    for rep in (a, b):
        rep.open()
    frames = ChangeFeed(b).open("globals/").frames()
    async with gossiping([a, b], [os.urandom(32)] * 2, persist_window_ms={"b": 600_000}):
        assert (await frames.__anext__()).startswith(b": watching")
        await a.commit(_set)
        with trio.fail_after(10):
            event = await frames.__anext__()
        assert b'"key":"globals/x"' in event
        assert b.persisted == []
    await frames.aclose()
    assert b.persisted == [1]  # the stop persisted what the window held
