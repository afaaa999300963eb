"""Real gossip services on loopback UDP, for the tests that need several of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence

import trio

from gossipmgr.gossip.crypto import Keyring
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.runtime.replica import Replica


@contextlib.asynccontextmanager
async def gossiping(
    replicas: Sequence[Replica],
    keys: Sequence[bytes],
    persist_window_ms: Mapping[str, int] | None = None,
) -> AsyncIterator[list[GossipService[Replica]]]:
    """A running gossip service per opened replica (its key from ``keys``), each on its
    own loopback port and every other as its peer; stopped on exit. ``persist_window_ms``:
    a replica's persist window by name, set before its service starts."""
    async with contextlib.AsyncExitStack() as stack:
        services = []
        for rep, key in zip(replicas, keys, strict=True):
            tr = await stack.enter_async_context(open_udp_transport("127.0.0.1", 0))
            services.append(GossipService(rep, tr, Keyring(key), boot_ms=rep.now_ms()))
        for s in services:
            s.persist_window_ms = (persist_window_ms or {}).get(s.replica.name, s.persist_window_ms)
        addrs = {s.replica.name: s.local_addr for s in services}
        for s in services:
            s.set_peers(addrs)
        async with trio.open_nursery() as nursery:
            for s in services:
                await nursery.start(s.run)
            yield services
            nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def cluster(
    names: list[str], keys: list[bytes]
) -> AsyncIterator[list[GossipService[Replica]]]:
    """:func:`gossiping` over a fresh in-memory replica per name."""
    replicas = [Replica(name, data_dir=None) for name in names]
    for rep in replicas:
        rep.open()
    async with gossiping(replicas, keys) as services:
        yield services
