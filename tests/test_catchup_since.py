"""A restart's catch-up by SINCE (gossip/catchup.py, docs/design.md "Catch-up").

An instance that restarts with a state sends, as its very first datagram to each peer, a
SINCE: its newest timestamp per origin and a share of the leaves for that peer; each peer
answers with its newer entries in its share at once, so what the instance missed arrives in
one round trip, each entry once, from all its peers in parallel; a digest comparison with
each follows and says "equal". Pure (rounds of datagrams delivered by hand, or the seeded
simulation), except the last tests: forged and replayed SINCE datagrams over real UDP.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest
import trio
from _udpcluster import cluster

from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.errors import BadPacket
from gossipmgr.gossip.catchup import SINCE_BUDGET_BYTES, SINCE_EVERY_MS
from gossipmgr.gossip.crypto import Keyring, Sealer, node_id
from gossipmgr.gossip.messages import (
    DIGEST,
    ENTRIES,
    PULL_DONE,
    SINCE,
    Entries,
    PullDone,
    Since,
    decode_untrusted,
    pack,
)
from gossipmgr.gossip.protocol import AntiEntropy
from gossipmgr.testing.sim import Sim
from gossipmgr.testing.wait import until

KEYS = 3_000
MISSED = 1_000
BASE = 1_700_000_000_000


def _entries(rewritten: bool) -> Iterator[tuple[Key, Entry]]:
    """KEYS globals written by r1 and r2; the first MISSED rewritten later (by r1 and r2
    in turn) when ``rewritten``: what the restarted r3 missed."""
    for i in range(KEYS):
        origin = ("r1", "r2")[i % 2]
        if rewritten and i < MISSED:
            yield global_key(f"k{i:04d}"), Entry(Timestamp(BASE + 5_000, i, origin), f"new{i}")
        else:
            yield global_key(f"k{i:04d}"), Entry(Timestamp(BASE, i, origin), f"old{i}")


def _restored(rewritten: bool) -> ClusterState:
    """A state as a restore makes it: adopted whole, digests not computed yet."""
    st = ClusterState()
    st.adopt(LWWMap.lazy_of(dict(_entries(rewritten))))
    return st


def _trio() -> dict[str, AntiEntropy]:
    """r1 and r2, up to date and knowing r3 (already synced with it before it stopped);
    r3 restarted on its old state, its peers not set yet."""
    aes = {}
    for name in ("r1", "r2"):
        ae = AntiEntropy(name, 1, _restored(True), HLC(name))
        ae.set_peers(["r1", "r2", "r3"], BASE + 6_000)
        for ps in ae.peers.values():
            ps.catchup = ps.digest_unanswered = ps.needs_resync = False
            ps.incarnation = 1
        ae.catchup = None
        aes[name] = ae
    aes["r3"] = AntiEntropy("r3", 2, _restored(False), HLC("r3"))
    return aes


Datagram = tuple[str, str, bytes]  # (from, to, payload)


def _deliver(aes: dict[str, AntiEntropy], out: list[Datagram], now: float) -> list[Datagram]:
    """Deliver one round of datagrams (in order); the answers they produced."""
    nxt: list[Datagram] = []
    for _src, dst, data in out:
        res = aes[dst].receive_untrusted(data, now)
        nxt += [(dst, to, d) for to, d in res.out]
    return nxt


def _missed_held(st: ClusterState) -> int:
    g = st.globals()
    return sum(g[f"k{i:04d}"] == f"new{i}" for i in range(MISSED))


def test_the_first_datagram_of_a_restart_to_each_peer_is_its_summary_and_that_peers_share() -> None:
    aes = _trio()
    r3 = aes["r3"]
    out = r3.set_peers(["r1", "r2"], BASE + 6_000)
    assert sorted(to for to, _ in out) == ["r1", "r2"], "one datagram to each peer"
    newest = {
        "r1": Timestamp(BASE, KEYS - 2, "r1"),  # KEYS is even: r1 wrote the even ones
        "r2": Timestamp(BASE, KEYS - 1, "r2"),
    }
    shares = set()
    for _, data in out:
        msg = decode_untrusted(data)
        assert msg.type == SINCE
        assert isinstance(msg.body, Since)
        assert msg.body.summary == newest
        shares.add((msg.body.share, msg.body.shares))
    assert shares == {(0, 2), (1, 2)}
    # Nothing was hashed for it: the restored state's digests wait for the comparison.
    assert not r3.state.map._hashed


def test_one_round_trip_brings_every_missed_entry_once_from_both_peers() -> None:
    """The old catch-up needed a digest, 64 leaf-digest answers and ~30 pull windows
    (about 18 rounds here) and moved every entry of each differing leaf (~2.4 per missed
    one); now the answers to the first datagrams hold exactly the missed entries."""
    aes = _trio()
    now = BASE + 6_000
    first = [("r3", to, d) for to, d in aes["r3"].set_peers(["r1", "r2"], now)]
    answers = _deliver(aes, first, now)
    assert {src for src, _, _ in answers} == {"r1", "r2"}, "both peers answer, in parallel"
    moved: list[Key] = []
    for _, _, data in answers:
        body = decode_untrusted(data).body
        if isinstance(body, Entries):
            moved += [k for k, _ in body.entries]
    assert len(moved) == len(set(moved)) == MISSED, "each missed entry once, nothing else"
    then = _deliver(aes, answers, now + 1)
    r3 = aes["r3"]
    assert _missed_held(r3.state) == MISSED, "all of it after one round trip"
    # Then one digest comparison with each, and both say "equal": the catch-up is done.
    assert sorted((to, decode_untrusted(d).type) for _, to, d in then) == [
        ("r1", DIGEST),
        ("r2", DIGEST),
    ]
    assert _deliver(aes, _deliver(aes, then, now + 2), now + 3) == []
    assert r3.catchup is not None and r3.catchup.done_ms is not None
    assert r3.catchup.entries == MISSED
    assert r3.state.map.super_digests() == aes["r1"].state.map.super_digests()


def test_since_wait_until_is_when_since_waiting_ends() -> None:
    """The agent sleeps until ``since_wait_until`` or an answer (``on_since_end``) instead
    of polling ``since_waiting``: both must agree, before and after the first answer."""
    aes = _trio()
    now = BASE + 6_000
    r3 = aes["r3"]
    ends: list[int] = []
    r3.on_since_end = lambda: ends.append(1)
    first = [("r3", to, d) for to, d in r3.set_peers(["r1", "r2"], now)]
    until = r3.since_wait_until(now)
    assert until is not None
    assert r3.since_waiting(until - 1) and not r3.since_waiting(until)
    assert r3.since_wait_until(until) is None
    only_r1 = [d for d in first if d[1] == "r1"]  # r2's SINCE is lost
    _deliver(aes, _deliver(aes, only_r1, now + 10), now + 20)
    assert ends == [1], "r1's complete answer woke the waiter"
    until = r3.since_wait_until(now + 20)
    assert until is not None and until < now + r3.cfg.pull_timeout_ms
    assert r3.since_waiting(until - 1) and not r3.since_waiting(until)


def test_a_peer_answers_one_since_per_sender_within_since_every_ms() -> None:
    """Each SINCE made a peer scan up to SINCE_MAX_ENTRIES entries and send up to its share
    of SINCE_BUDGET_BYTES; a key holder could make one per datagram (the replay guard only
    stops repeats of the same datagram). A second SINCE from a sender within
    SINCE_EVERY_MS gets an empty answer (PULL_DONE 0: its asker goes on by the digests)."""
    aes = _trio()
    now = BASE + 6_000
    to_r1 = [("r3", to, d) for to, d in aes["r3"].set_peers(["r1", "r2"], now) if to == "r1"]

    def kinds(out: list[Datagram]) -> list[int]:
        return [decode_untrusted(d).type for _, _, d in out]

    assert ENTRIES in kinds(_deliver(aes, to_r1, now))
    again = _deliver(aes, to_r1, now + SINCE_EVERY_MS - 1)
    assert kinds(again) == [PULL_DONE]
    done = decode_untrusted(again[0][2]).body
    assert isinstance(done, PullDone) and done.count == 0
    assert aes["r1"].counters.get("since_refused") == 1
    assert ENTRIES in kinds(_deliver(aes, to_r1, now + SINCE_EVERY_MS + 1))


def test_a_lost_since_falls_back_to_the_digests_after_the_pull_timeout() -> None:
    """A SINCE that gets no answer (lost, or a peer that does not know the message) holds
    back the digests only until ``pull_timeout_ms``; then the ordinary resync pulls it."""
    aes = _trio()
    now = BASE + 6_000
    aes["r3"].set_peers(["r1", "r2"], now)  # both SINCE datagrams lost
    r3 = aes["r3"]
    assert r3.tick(now + 150) == [], "no digest while the answers may still come"
    timeout = r3.cfg.pull_timeout_ms
    out = [("r3", to, d) for to, d in r3.tick(now + timeout)]
    assert {(to, decode_untrusted(d).type) for _, to, d in out} == {("r1", DIGEST), ("r2", DIGEST)}
    t = now + timeout
    while out:
        t += 1
        out = _deliver(aes, out, t)
    assert _missed_held(r3.state) == MISSED


def test_a_remembered_peer_that_is_gone_costs_its_share_a_resync_with_the_others() -> None:
    """The peer file names a peer that is down: its share comes from the peer that answered,
    by the digest comparison, soon after the answer (not after the whole pull timeout)."""
    sim = Sim(3, seed=3, delay=(0.1, 1.0))
    st = ClusterState()
    h = HLC("seed")
    for k in range(2_000):
        st.apply(st.d_set(global_key(f"k{k:04d}"), f"old{k}", h.now(int(sim.now) - 60_000)))
    for i in sim.inst.values():
        i.state.apply(st.map.copy())
    a, b, down = sim.names
    sim.step(sim.now + 3_000)
    sim.inst[down].up = False
    rnd = random.Random(3)
    for k in range(300):
        sim.write(rnd.choice([a, b]), partial(_set, f"k{k:04d}", f"new{k}"))
        sim.step(sim.now + 1)
    sim.step(sim.now + 3_000)
    sim.inst[b].up = False  # gone by the time `down` comes back
    for i in sim.inst.values():
        i.next_tick = sim.now + 10_000 if i.ae.name != down else sim.now
    sim.restart(down, incarnation=2)
    took = sim.run_until_converged(800, [a, down])
    assert took is not None, "the share of the gone peer did not come from the other one"
    assert sim.inst[down].ae.counters.get("since_sent") == 2


def _set(var: str, value: object, st: ClusterState, ts: Timestamp) -> LWWMap:
    return st.d_set(global_key(var), value, ts)


def run_restart_schedule(seed: int) -> None:
    """One seeded restart (``bench/sim_schedules.py --restart N`` runs more): 3-5 instances,
    0-20 % loss, 5 % duplication, delays up to 1-20 ms, 50-1,000 globals; one instance
    stops, 10-400 writes land elsewhere, sometimes another instance is gone by the time
    it restarts (its peer set still names it); then the live instances converge, the
    restarted one's catch-up having started with SINCE."""
    rnd = random.Random(seed)
    n = rnd.choice([3, 4, 5])
    sim = Sim(
        n,
        seed=seed,
        drop=rnd.choice([0.0, 0.1, 0.2]),
        dup=0.05,
        delay=(0.1, rnd.choice([1.0, 4.0, 20.0])),
    )
    st = ClusterState()
    h = HLC("seed")
    for k in range(rnd.choice([50, 200, 1_000])):
        st.apply(st.d_set(global_key(f"k{k:04d}"), f"old{k}", h.now(int(sim.now) - 60_000)))
    for i in sim.inst.values():
        i.state.apply(st.map.copy())
    down = sim.names[seed % n]
    sim.step(sim.now + 3_000)
    sim.inst[down].up = False
    others = [x for x in sim.names if x != down]
    gone = rnd.choice(others) if rnd.random() < 0.3 else None
    for k in range(rnd.choice([10, 100, 400])):
        sim.write(rnd.choice(others), partial(_set, f"w{k % 150}", k))
        sim.step(sim.now + rnd.uniform(0, 5))
    if gone is not None:
        sim.step(sim.now + 3_000)
        sim.inst[gone].up = False
    sim.restart(down, incarnation=2)
    if seed % 2:
        sim.serf_view()
    live = [x for x in sim.names if sim.inst[x].up]
    assert sim.run_until_converged(30_000, live) is not None, f"seed {seed}: no convergence"
    assert sim.inst[down].ae.counters.get("since_sent", 0) >= 1


def test_seeded_restarts_with_loss_and_a_gone_peer_converge() -> None:
    for seed in range(12):
        run_restart_schedule(seed)


def test_an_empty_state_starts_with_digests_and_a_peer_coming_back_later_too() -> None:
    """A first start has nothing to summarize; a later catch-up (a peer restarted) is the
    ordinary digest resync."""
    fresh = AntiEntropy("a", 1, ClusterState(), HLC("a"))
    assert {decode_untrusted(d).type for _, d in fresh.set_peers(["b", "c"], 0)} == {DIGEST}
    r3 = _trio()["r3"]
    r3.set_peers(["r1", "r2"], BASE, {"r1": "1", "r2": "1"})
    out = r3.set_peers(["r1", "r2"], BASE + 10_000, {"r1": "2", "r2": "1"})
    assert [(to, decode_untrusted(d).type) for to, d in out] == [("r1", DIGEST)]


@pytest.mark.parametrize(
    "fields",
    [
        [1, 0, 0, []],  # no shares
        [1, 2, 2, []],  # share out of range
        [1, 0, 65, []],  # too many shares
        [1, 0, 1, [["a", 1, 2], ["a", 3, 4]]],  # an origin twice
        [1, 0, 1, [["a", -1, 2]]],
        [1, 0, 1, [["", 1, 2]]],
        [1, 0, 1, [["a", 1]]],
        [1, 0, 1, [[f"n{i}", 1, 1] for i in range(513)]],  # too many origins
        [1, 0, 1, {"a": [1, 2]}],
        ["1", 0, 1, []],
    ],
)
def test_a_malformed_since_is_refused_by_shape(fields: list[object]) -> None:
    with pytest.raises(BadPacket) as ei:
        decode_untrusted(pack(SINCE, "r3", 2, fields))
    assert ei.value.reason == "shape"


def test_the_shares_of_newer_entries_split_them_without_overlap_or_loss() -> None:
    m = _restored(True).map
    summary = {"r1": Timestamp(BASE, 10**6, "r1")}  # r2 unknown: all of r2's count
    want = {k for k, e in m.items() if e.ts.node == "r2" or e.ts > summary["r1"]}
    parts = [{k for k, _ in m.newer_than(summary, i, 3)} for i in range(3)]
    assert set().union(*parts) == want and sum(map(len, parts)) == len(want)
    assert all(parts), "every share holds some"


def test_an_answer_stays_within_its_part_of_the_budget() -> None:
    """A summary from long ago (or a state far behind) does not make a peer burst its
    whole state: its answer holds at most its share of the budget; the digests pull the
    rest, a window at a time."""
    aes = _trio()
    big = "x" * 1_000
    r1 = aes["r1"]
    r1.state.apply(
        [(global_key(f"b{i}"), Entry(Timestamp(BASE + 5_000, i, "r9"), big)) for i in range(2_000)]
    )
    out = r1.receive_untrusted(pack(SINCE, "r3", 2, [7, 0, 2, [["r1", BASE, 0]]]), BASE + 6_000)
    sent = sum(len(d) for _, d in out.out)
    assert SINCE_BUDGET_BYTES // 2 * 0.9 < sent < SINCE_BUDGET_BYTES // 2 * 1.1


async def test_forged_and_replayed_since_datagrams_are_refused(tmp_path: Path) -> None:
    """Over real UDP: a SINCE sealed with another key is dropped before it is read; a
    genuine one captured and sent again is refused by the replay guard: answered once."""
    key = os.urandom(32)
    async with cluster(["a", "b"], [key, key]) as (a, b):
        a.replica.state.apply(
            [(global_key(f"k{i}"), Entry(Timestamp(BASE, i, "a"), i)) for i in range(50)]
        )
        since = pack(SINCE, "b", b.replica.incarnation, [99, 0, 1, [["a", BASE - 1, 0]]])
        now = a.replica.now_ms()
        forged = Sealer(Keyring(os.urandom(32)), node_id("b"), now).seal(since, now, node_id("a"))
        genuine = b.sealer.seal(since, b.replica.now_ms(), node_id("a"))
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        with sock:
            await sock.bind(("127.0.0.1", 0))
            await sock.sendto(forged, a.local_addr)
            await until(lambda: a.sealer.refused.snapshot().get("unknown_key"), 10, "the drop")
            assert a.ae.counters.get("since_served", 0) == 0
            await sock.sendto(genuine, a.local_addr)
            await until(lambda: a.ae.counters.get("since_served", 0) == 1, 10, "the answer")
            await sock.sendto(genuine, a.local_addr)
            await until(lambda: a.sealer.refused.snapshot().get("replay"), 10, "the replay")
        assert a.ae.counters.get("since_served", 0) == 1
        # The answer went to b, whom the sealed header names, not to the sending socket.
        await until(lambda: b.ae.counters.get("recv_entries", 0) >= 1, 10, "b's entries")
