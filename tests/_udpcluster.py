"""Real gossip services on loopback UDP, for the tests that need several of them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio

from gossipmgr.gossip.crypto import Keyring
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.runtime.replica import Replica


@contextlib.asynccontextmanager
async def cluster(
    names: list[str], keys: list[bytes], tmp: str
) -> AsyncIterator[list[GossipService[Replica]]]:
    async with contextlib.AsyncExitStack() as stack:
        services = []
        for name, key in zip(names, keys, strict=True):
            rep = Replica(name, data_dir=None)
            rep.open()
            tr = await stack.enter_async_context(open_udp_transport("127.0.0.1", 0))
            services.append(GossipService(rep, tr, Keyring(key), boot_ms=rep.now_ms()))
        addrs = {s.replica.name: s.local_addr for s in services}
        for s in services:
            s.set_peers(addrs)
        async with trio.open_nursery() as nursery:
            for s in services:
                await nursery.start(s.run)
            yield services
            nursery.cancel_scope.cancel()
