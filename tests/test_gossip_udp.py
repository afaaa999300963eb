"""Three replicas over real UDP on loopback, sealed with a shared key."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from functools import partial

import pytest
import trio
import trio.testing
from _imports import modules_loaded_by
from _udpcluster import cluster, gossiping

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.gossip.crypto import Keyring
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.runtime.replica import Replica
from gossipmgr.testing.wait import until

Service = GossipService[Replica]


def _set_global(var: str, value: object, st: ClusterState, ts: Timestamp) -> LWWMap:
    """A commit function (``partial(_set_global, var, value)``)."""
    return st.d_set(global_key(var), value, ts)


def test_the_replica_does_not_import_the_gossip_layer() -> None:
    """runtime/ sits above gossip/: the service owns the protocol and the replica is one of
    its inputs. The replica used to build the anti-entropy object (an import cycle)."""
    loaded = modules_loaded_by(["gossipmgr.runtime.replica"])
    assert [m for m in loaded if m.startswith("gossipmgr.gossip")] == []


async def test_three_instances_converge_over_udp(tmp_path: object) -> None:
    key = os.urandom(32)
    async with cluster(["a", "b", "c"], [key] * 3) as svcs:
        a, b, c = svcs
        await a.replica.commit(lambda st, ts: st.d_set(global_key("x"), 1, ts))
        await c.replica.commit(lambda st, ts: st.d_set(global_key("y"), 2, ts))
        await until(lambda: all(s.replica.state.globals() == {"x": 1, "y": 2} for s in svcs), 10)
        assert a.counters["datagrams_sent"] > 0 and b.counters["datagrams_received"] > 0


async def test_wrong_key_converges_with_no_one_and_is_counted(tmp_path: object) -> None:
    good, bad = os.urandom(32), os.urandom(32)
    async with cluster(["a", "b", "z"], [good, good, bad]) as svcs:
        a, b, z = svcs
        await a.replica.commit(lambda st, ts: st.d_set(global_key("x"), 1, ts))
        await z.replica.commit(lambda st, ts: st.d_set(global_key("evil"), 1, ts))
        await until(lambda: b.replica.state.globals() == {"x": 1}, 10)
        await until(lambda: z.sealer.refused.get("unknown_key", 0) > 0, 10)
        await until(lambda: a.sealer.refused.get("unknown_key", 0) > 0, 10)
        assert "evil" not in a.replica.state.globals()
        assert "x" not in z.replica.state.globals()


async def test_replayed_and_truncated_datagrams_are_counted_and_ignored(tmp_path: object) -> None:
    key = os.urandom(32)
    async with cluster(["a", "b"], [key] * 2) as svcs:
        a, b = svcs
        async with open_udp_transport("127.0.0.1", 0) as spy:
            # Tap one real datagram from a to b by pointing a's view of b at the spy.
            a.set_peers({"b": spy.local_addr})
            await a.replica.commit(lambda st, ts: st.d_set(global_key("x"), 1, ts))
            with trio.fail_after(5):
                captured, _ = await spy.recv()
            a.set_peers({"b": b.local_addr})
            await spy.send(captured, b.local_addr)  # delivered once: accepted
            await until(lambda: b.replica.state.globals() == {"x": 1}, 10)
            await spy.send(captured, b.local_addr)  # replayed: refused
            await spy.send(captured[:40], b.local_addr)  # truncated: refused
            await until(lambda: b.sealer.refused.get("replay", 0) >= 1, 10)
            await until(lambda: b.sealer.refused.get("short", 0) >= 1, 10)
            assert b.counters.get("drop_replay", 0) >= 1 and b.counters.get("drop_short", 0) >= 1


async def test_datagrams_captured_before_either_side_restarts_are_refused(tmp_path: object) -> None:
    """An attacker on the path records a's datagrams to b; b restarts and hears from a
    again: every recorded datagram replayed is refused (``stale``: sent before b started)
    and counted. Then a restarts and b hears from its new incarnation: what it recorded
    since b's restart is refused too (``replay``: an older boot). None changes b's state."""
    key = os.urandom(32)
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        spy = await stack.enter_async_context(open_udp_transport("127.0.0.1", 0))

        async def start(name: str, boot: int) -> GossipService[Replica]:
            rep = Replica(name, data_dir=None)
            rep.open()
            tr = await stack.enter_async_context(open_udp_transport("127.0.0.1", 0))
            svc = GossipService(rep, tr, Keyring(key), boot_ms=boot)
            await nursery.start(svc.run)
            return svc

        async def capture(a: Service, b: Service, prefix: str) -> list[bytes]:
            """a writes 5 keys to b through the spy, which records and forwards."""
            captured: list[bytes] = []
            tap = await stack.enter_async_context(open_udp_transport("127.0.0.1", 0))
            relaying = trio.CancelScope()

            async def relay() -> None:
                with relaying:
                    while True:
                        d = (await tap.recv())[0]
                        captured.append(d)
                        await tap.send(d, b.local_addr)

            a.set_peers({b.replica.name: tap.local_addr})
            b.set_peers({a.replica.name: a.local_addr})
            nursery.start_soon(relay)
            for i in range(5):
                await a.replica.commit(partial(_set_global, f"{prefix}{i}", i))
            await until(
                lambda: all(f"{prefix}{i}" in b.replica.state.globals() for i in range(5)), 10
            )
            relaying.cancel()
            a.set_peers({b.replica.name: b.local_addr})
            assert captured
            return captured

        async def replay_all(
            captured: list[bytes], b: Service, reason: str, sender: Service
        ) -> None:
            # b's state must be settled first: what the live sender holds still arrives by
            # ordinary anti-entropy, and that is not a replay (a run on a loaded machine saw
            # k0 land during the replays and fail the state check below).
            await until(
                lambda: sender.replica.state.globals().items() <= b.replica.state.globals().items(),
                30,
            )
            before = dict(b.sealer.refused)
            state = dict(b.replica.state.globals())
            for d in captured:
                await spy.send(d, b.local_addr)
            want = before.get(reason, 0) + len(captured)
            await until(lambda: b.sealer.refused[reason] >= want, 10)
            assert b.sealer.refused[reason] == want
            assert b.sealer.refused.total() == sum(before.values()) + len(captured)
            assert b.counters[f"drop_{reason}"] >= len(captured)
            assert b.replica.state.globals() == state

        a = await start("a", int(time.time() * 1000))
        b = await start("b", int(time.time() * 1000))
        first = await capture(a, b, "k")

        # The receiver restarts (new boot, empty replica) and hears from a again first.
        b.set_peers({})
        b2 = await start("b", b.sealer.boot + 1 + int(time.time() * 1000) - b.sealer.boot)
        second = await capture(a, b2, "after")
        assert a.sealer.sender_id in b2.sealer.guard  # b2 holds replay state for a
        await replay_all(first, b2, "stale", a)

        # The sender restarts; b2 hears from its new incarnation.
        a.set_peers({})
        a2 = await start("a", a.sealer.boot + 1 + int(time.time() * 1000) - a.sealer.boot)
        await capture(a2, b2, "a2-")
        await replay_all(second, b2, "replay", a2)
        await replay_all(first, b2, "stale", a2)
        nursery.cancel_scope.cancel()


async def test_wrong_key_datagrams_from_many_ports_log_one_warning_per_host(
    tmp_path: object, caplog: pytest.LogCaptureFixture
) -> None:
    """Anyone who can reach the gossip port can send datagrams with a key id we do not
    hold, from a new source port each time. Each is counted per source, but the warning
    ("a peer whose gossip key differs from ours?") is said once per host: it used to be
    logged for every new source port, one log line per datagram of such a flood."""
    from gossipmgr.gossip.crypto import Sealer, node_id

    key = os.urandom(32)
    async with cluster(["a"], [key]) as [a]:
        stranger = Sealer(Keyring(os.urandom(32)), node_id("z"), int(time.time() * 1000))
        caplog.set_level(logging.WARNING, logger="gossipmgr.gossip")
        n = 300  # more sources than the service keeps (MAX_FAILING_SOURCES)
        for _ in range(n):
            with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as s:
                await s.sendto(stranger.seal(b"junk", int(time.time() * 1000)), a.local_addr)
        await until(lambda: a.counters["drop_unknown_key"] == n, 10)
        warned = [r for r in caplog.records if "failed authentication" in r.getMessage()]
        assert len(warned) == 1, [r.getMessage() for r in warned[:5]]
        assert sum(f.count for f in a.auth_failures.values()) <= n


class _CountingReplica(Replica):
    """A replica recording the size of each remote delta it is asked to persist."""

    persisted: list[int]

    async def persist(self, novel: LWWMap) -> None:
        self.persisted.append(len(novel))
        await super().persist(novel)


async def test_remote_deltas_of_one_window_are_persisted_in_one_append(tmp_path: object) -> None:
    """Remote deltas arriving within the persist window share one append (one group commit,
    not one per delta), and what the window holds when the service stops is persisted:
    reopened, the data dir has every delta received. (The window is made long here so that
    all of them fall in it whatever the machine's load.)"""
    import pathlib

    key = os.urandom(32)
    data = pathlib.Path(str(tmp_path)) / "b"
    a = Replica("a", data_dir=None)
    b = _CountingReplica("b", data_dir=data, fsync=False)
    b.persisted = []
    for r in (a, b):
        r.open()
    n = 30
    async with gossiping([a, b], [key] * 2, persist_window_ms={"b": 600_000}):
        for i in range(n):
            await a.commit(partial(_set_global, f"k{i}", i))
        await until(lambda: len(b.state.globals()) == n, 10)
        await trio.testing.wait_all_tasks_blocked()  # b's receive loop queued the last
        assert b.persisted == []  # all held in the window
    assert b.persisted == [n]  # the stop persisted the window's deltas, in one append
    await b.aclose()
    again = Replica("b", data_dir=data, fsync=False)
    again.open()
    try:
        assert again.state.globals() == {f"k{i}": i for i in range(n)}
    finally:
        await again.aclose()
