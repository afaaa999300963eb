"""Catch-up (gossip/catchup.py) in the seeded simulation: pure, simulated milliseconds.

An instance that starts pulls what it missed at once, from every peer in parallel, as soon
as its peers are set (Serf names them), not at its next tick or repair round; a peer that
Serf lists alive again (after failing, or restarted under a new boot id) is caught up with
at once too. The tests push every instance's next tick out of the window they look at, so
what converges there was moved by the catch-up alone.
"""

from __future__ import annotations

import random
from functools import partial

import pytest

from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.gossip.messages import DIGEST, decode_untrusted
from gossipmgr.gossip.protocol import AntiEntropy, GossipConfig
from gossipmgr.testing.sim import Sim, addr

KEYS = 1_000


def _set(var: str, value: object, st: ClusterState, ts: Timestamp) -> LWWMap:
    return st.d_set(global_key(var), value, ts)


def _seed(sim: Sim, n: int) -> None:
    """``n`` globals on every instance (identical entries), converged."""
    st = ClusterState()
    h = HLC("seed")
    for k in range(n):
        st.apply(st.d_set(global_key(f"k{k:04d}"), f"old{k}", h.now(int(sim.now) - 60_000)))
    for i in sim.inst.values():
        i.state.apply(st.map.copy())


def _no_ticks_for(sim: Sim, ms: float) -> None:
    """No instance ticks in the next ``ms``: no retransmit, resync retry or repair round."""
    for i in sim.inst.values():
        i.next_tick = sim.now + ms


def _digests_to(out: list[tuple[str, bytes]]) -> set[str]:
    return {peer for peer, data in out if decode_untrusted(data).type == DIGEST}


def _served(sim: Sim, name: str) -> int:
    """Catch-up requests ``name`` answered: pulls of leaves and SINCE shares."""
    c = sim.inst[name].ae.counters
    return c.get("pulls_served", 0) + c.get("since_served", 0)


def _rewrite_while_down(sim: Sim, down: str, rnd: random.Random) -> None:
    sim.step(sim.now + 3_000)  # start-up resyncs settle
    sim.inst[down].up = False
    writers = [n for n in sim.names if n != down]
    for k in range(KEYS):
        sim.write(rnd.choice(writers), partial(_set, f"k{k:04d}", f"new{k}"))
        sim.step(sim.now + 1)
    sim.step(sim.now + 5_000)  # the writers converge; the down one is silent to them
    assert sim.converged(writers)


def test_a_start_sends_a_digest_to_every_peer_at_once() -> None:
    """Setting the peers of an instance that just started returns a digest to each of them
    (they used to be resynced one at a time, from the next tick)."""
    ae = AntiEntropy("a", 1, ClusterState(), HLC("a"))
    out = ae.set_peers(["a", "b", "c", "d"], 1_000)
    assert _digests_to(out) == {"b", "c", "d"}
    assert ae.catchup is not None and sorted(ae.catchup.waiting) == ["b", "c", "d"]
    # Listing the same peers again starts nothing new.
    assert ae.set_peers(["a", "b", "c", "d"], 1_010) == []


def test_restarted_instance_pulls_what_it_missed_from_every_peer_before_any_tick() -> None:
    sim = Sim(3, seed=17, delay=(0.1, 1.0))
    _seed(sim, 2_000)
    down = sim.names[2]
    _rewrite_while_down(sim, down, random.Random(17))
    assert not sim.converged(sim.names)
    peers = [n for n in sim.names if n != down]
    served_before = {n: _served(sim, n) for n in peers}
    sim.restart(down, incarnation=2)
    _no_ticks_for(sim, 10_000)
    took = sim.run_until_converged(2_000)
    assert took is not None, "the catch-up alone did not bring the rewrite"
    sim.step(sim.now + 100)  # the last digests say "equal"
    back = sim.inst[down]
    assert all(back.state.globals()[f"k{k:04d}"] == f"new{k}" for k in range(KEYS))
    # In parallel: both peers served it (its SINCE, each its share).
    for n in peers:
        assert _served(sim, n) > served_before[n], n
    assert back.ae.catchup is not None and back.ae.catchup.done_ms is not None
    assert back.ae.catchup.entries == KEYS


def test_restart_catch_up_under_loss_converges() -> None:
    """Lost catch-up digests and pulls are recovered by the ordinary retries (ticks on)."""
    for seed in range(8):
        sim = Sim(4, seed=seed, drop=0.1, dup=0.05, delay=(0.1, 4.0))
        _seed(sim, 200)
        down = sim.names[seed % 4]
        rnd = random.Random(seed)
        sim.step(sim.now + 3_000)
        sim.inst[down].up = False
        for k in range(100):
            sim.write(rnd.choice([n for n in sim.names if n != down]), partial(_set, f"w{k}", k))
            sim.step(sim.now + rnd.uniform(0, 5))
        sim.restart(down, incarnation=2)
        if seed % 2:
            sim.serf_view()
        assert sim.run_until_converged(30_000) is not None, seed


def test_a_peer_listed_alive_again_after_a_partition_is_caught_up_with_at_once() -> None:
    sim = Sim(3, seed=5, delay=(0.1, 1.0))
    _seed(sim, 2_000)
    sim.step(sim.now + 3_000)
    cut = sim.names[2]
    sim.net.partition([{addr(n) for n in sim.names[:2]}, {addr(cut)}])
    sim.serf_view(cut=[cut])  # each side sees the other failed
    for k in range(50):
        sim.write(sim.names[k % 2], partial(_set, f"k{k:04d}", f"major{k}"))
        sim.write(cut, partial(_set, f"m{k}", f"minor{k}"))
        sim.step(sim.now + 10)
    sim.step(sim.now + 5_000)  # both sides silent to each other
    sim.net.heal()
    _no_ticks_for(sim, 10_000)  # no probe of the silent peers in the window
    sim.serf_view()  # Serf lists everyone alive again
    took = sim.run_until_converged(2_000)
    assert took is not None, "the catch-up alone did not heal the partition's writes"
    st = sim.inst[cut].state.globals()
    assert st["k0049"] == "major49" and sim.inst[sim.names[0]].state.globals()["m49"] == "minor49"


def test_a_peer_restarted_under_a_new_boot_id_is_caught_up_with() -> None:
    """Serf hides a fast restart (the member never failed); its boot id changes, and that
    alone starts a catch-up with it."""
    ae = AntiEntropy("a", 1, ClusterState(), HLC("a"))
    ae.set_peers(["b", "c"], 0, {"b": "1", "c": "1"})
    ae.catchup = None
    assert ae.set_peers(["b", "c"], 500, {"b": "1", "c": "1"}) == []
    out = ae.set_peers(["b", "c"], 1_000, {"b": "2", "c": "1"})
    assert _digests_to(out) == {"b"}
    # Failed (listed, not alive): nothing; alive again: caught up with.
    assert ae.set_peers(["b", "c"], 1_500, {"b": "2"}) == []
    assert _digests_to(ae.set_peers(["b", "c"], 2_000, {"b": "2", "c": "1"})) == {"c"}


def test_the_catch_up_fan_out_is_bounded_in_a_large_cluster() -> None:
    """At most ``catchup_fanout`` peers get a catch-up digest at once (30 instances: 8 of
    29); the others resync one at a time after it, as before. Smaller here: 3 of 7."""
    assert GossipConfig().catchup_fanout == 8
    ae = AntiEntropy("a", 1, ClusterState(), HLC("a"))
    assert len(_digests_to(ae.set_peers([f"p{k}" for k in range(29)], 0))) == 8
    cfg = GossipConfig(catchup_fanout=3)
    sim = Sim(8, seed=3, delay=(0.1, 1.0), config=cfg)
    _seed(sim, 200)
    sim.step(sim.now + 3_500)
    down = sim.names[7]
    sim.inst[down].up = False
    for k in range(100):
        sim.write(sim.names[k % 5], partial(_set, f"k{k:04d}", f"new{k}"))
    sim.step(sim.now + 3_500)
    sim.restart(down, incarnation=2)
    back = sim.inst[down].ae
    assert back.catchup is not None and len(back.catchup.peers) == 3
    assert sim.run_until_converged(10_000) is not None


@pytest.mark.parametrize("left", [False, True])
def test_the_peers_of_a_restarted_instance_pull_nothing_stale_from_it(left: bool) -> None:
    """Its peers see it restarted (a new incarnation, then Serf lists it again) while it
    pulls from them: they leave the resync to it instead of pulling its stale leaves
    (which used to cost it ~3x what it pulled), and end equal all the same. ``left``: it
    had left (a graceful stop), so its peers dropped it and hear its digests before Serf
    names it to them again."""
    sim = Sim(3, seed=23, delay=(5.0, 20.0))  # slow links: its catch-up spans their ticks
    _seed(sim, 2_000)
    down = sim.names[2]
    _rewrite_while_down(sim, down, random.Random(23))
    if left:
        for n in sim.names[:2]:
            sim.inst[n].ae.set_peers(sim.names[:2], sim.now)
    sim.restart(down, incarnation=2)
    sim.step(sim.now + 30)  # its digests reach them before their Serf lists it again
    sim.serf_view()
    assert sim.run_until_converged(5_000) is not None
    sim.step(sim.now + 3_000)  # their own resync rounds with it, if any, happen here
    back = sim.inst[down].ae
    assert back.counters.get("pulls_served", 0) == 0
    assert sim.converged(sim.names)


def test_one_side_pulling_makes_both_sides_equal() -> None:
    """Push-pull: a completed pull sends the peer what it lacks in those leaves, so a
    resync started by one side alone heals both sides' writes (no tick of the other)."""
    sim = Sim(2, seed=9, delay=(0.1, 1.0))
    a, b = sim.names
    _seed(sim, 500)
    sim.step(sim.now + 3_000)
    sim.net.partition([{addr(a)}, {addr(b)}])
    for k in range(100):
        sim.write(a, partial(_set, f"a{k}", k))
        sim.write(b, partial(_set, f"b{k}", k))
    sim.step(sim.now + 5_000)
    sim.net.heal()
    _no_ticks_for(sim, 10_000)
    b_digests = sim.inst[b].ae.counters.get("digests_sent", 0)
    sim._send(a, sim.inst[a].ae.catch_up([b], sim.now))  # a alone starts a resync
    assert sim.run_until_converged(2_000) is not None
    assert sim.inst[b].ae.counters.get("digests_sent", 0) == b_digests  # b compared nothing
    assert sim.inst[a].ae.counters["pushed_back"] == 100


def _idle_bytes_per_instance_s(n: int, seconds: float = 12.0) -> tuple[float, Sim]:
    sim = Sim(n, seed=n, delay=(0.1, 1.0))
    sim.serf_view()
    sim.step(sim.now + 5_000)  # the start's catch-ups settle
    before = sum(i.bytes_sent for i in sim.inst.values())
    sim.step(sim.now + seconds * 1000)
    return (sum(i.bytes_sent for i in sim.inst.values()) - before) / n / seconds, sim


def test_idle_traffic_per_instance_does_not_grow_with_the_cluster() -> None:
    """An idle peer is no longer probed by digest (650 bytes to each peer every 2-3 s: at 30
    instances every peer was "silent" at every other, 8x the 3-instance bytes per
    instance); it gets a small heartbeat, from the peers sorting before it only, and still
    hears from each of those within the lease's 10 s (LIVE_PEER_MS)."""
    three, _ = _idle_bytes_per_instance_s(3)
    thirty, sim = _idle_bytes_per_instance_s(30)
    assert thirty <= 2 * three, (three, thirty)
    for name, i in sim.inst.items():
        before = {p for p in sim.names if p < name}
        assert before <= i.ae.heard_from(sim.now, 10_000), name


def test_a_write_in_a_large_cluster_is_not_forwarded_by_every_peer() -> None:
    """Beyond ``forward_all_up_to`` peers, a delta received from its writer is not sent on
    by every receiver to every other peer (29 x 28 datagrams per write at 30 instances,
    the lease renewals' cost when idle); the writer's push reaches everyone. A one-way
    cut is still healed, by the repair rounds."""
    sim = Sim(30, seed=4, delay=(0.1, 1.0))
    sim.serf_view()
    sim.step(sim.now + 5_000)
    sent = sum(i.datagrams_sent for i in sim.inst.values())
    sim.write(sim.names[0], partial(_set, "x", 1))
    assert sim.run_until_converged(1_000) is not None
    sim.step(sim.now + 1_000)
    # 29 deltas + 29 acks, plus the background (repair digests, heartbeats) of ~1 s.
    assert sum(i.datagrams_sent for i in sim.inst.values()) - sent < 300
    writer, cut = sim.names[0], sim.names[1]
    sim.net.cut(addr(writer), addr(cut))
    sim.write(writer, partial(_set, "y", 2))
    assert sim.run_until_converged(20_000) is not None


def test_a_would_be_holder_hears_a_majority_of_a_large_idle_cluster_once_it_probes() -> None:
    """The lease's majority rule counts the instances heard from in the last 5 s; with more
    than 8 peers nothing is forwarded and heartbeats go only to the peers sorting after
    their sender, so an idle instance early in the claim order (the lease holder's
    successor) hears almost nobody. When the holder goes, it could never claim, and those
    after it wait for it: no holder at all. ``probe_unheard`` (called by the lease loop of
    an instance that may claim) asks each unheard peer a digest, whose answer is heard."""
    sim = Sim(30, seed=5, delay=(0.1, 1.0))
    sim.serf_view()
    sim.step(sim.now + 20_000)  # idle: only heartbeats (and the start's catch-ups, settled)
    successor = sim.inst[sim.names[1]]
    window = 5_000
    assert len(successor.ae.heard_from(sim.now, window)) + 1 <= 15  # no majority of 30
    others = [n for n in sim.names if n != sim.names[1]]
    out = successor.ae.probe_unheard(others, sim.now, window)
    assert len(_digests_to(out)) >= 15
    sim._send(sim.names[1], out)
    sim.step(sim.now + 1_000)
    assert len(successor.ae.heard_from(sim.now, window)) + 1 > 15
    # Probes are rate-limited: asking again at once sends nothing to the peers just probed.
    again = _digests_to(successor.ae.probe_unheard(others, sim.now, 0))
    assert not again & _digests_to(out)
