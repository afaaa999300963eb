"""Catch-up over real UDP on loopback (gossip services sealed with a shared key)."""

from __future__ import annotations

import contextlib
import os
from functools import partial

import trio

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.gossip.crypto import Keyring
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.runtime.replica import Replica
from gossipmgr.testing.wait import until


def _set_global(var: str, value: object, st: ClusterState, ts: Timestamp) -> LWWMap:
    return st.d_set(global_key(var), value, ts)


async def test_a_start_is_answered_by_a_peer_serf_has_not_named_it_to_yet() -> None:
    """At a start, Serf names the new instance's peers to it before it names the new
    instance to them. The peer answers the new instance's catch-up digest at the datagram's
    source address: the catch-up used to wait until the peer's own Serf view caught up
    (its answers were dropped, ``no_address``)."""
    key = os.urandom(32)
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:

        async def start(name: str) -> GossipService[Replica]:
            rep = Replica(name, data_dir=None)
            rep.open()
            tr = await stack.enter_async_context(open_udp_transport("127.0.0.1", 0))
            svc = GossipService(rep, tr, Keyring(key), boot_ms=rep.now_ms())
            await nursery.start(svc.run)
            return svc

        old = await start("old")
        for i in range(200):
            await old.replica.commit(partial(_set_global, f"k{i}", i))
        new = await start("new")
        new.set_peers({"old": old.local_addr}, {"old": "1"})  # old knows nothing of new
        want = {f"k{i}": i for i in range(200)}
        await until(lambda: new.replica.state.globals() == want, 10)
        assert old.counters.get("drop_no_address", 0) == 0
        assert old.counters["reply_to_source"] >= 1
        assert old.reply_to == {"new": new.local_addr}
        # Once Serf names it, its Serf address is used and the source one forgotten.
        old.set_peers({"new": new.local_addr}, {"new": "1"})
        assert old.reply_to == {}
        nursery.cancel_scope.cancel()


async def test_a_datagram_answered_only_for_its_authenticated_sender() -> None:
    """The source address is used only for answers to the instance the datagram's sealed
    header names as its sender: another name in the answer list gets nothing."""
    key = os.urandom(32)
    rep = Replica("b", data_dir=None)
    rep.open()
    async with open_udp_transport("127.0.0.1", 0) as tr:
        svc = GossipService(rep, tr, Keyring(key), boot_ms=rep.now_ms())
        from gossipmgr.gossip.crypto import node_id

        src = ("127.0.0.1", 40_000)
        svc._note_reply_to([("x", b"")], node_id("y"), src)
        assert svc.reply_to == {}
        svc._note_reply_to([("y", b"")], node_id("y"), src)
        assert svc.reply_to == {"y": src}
