"""Anti-entropy protocol over the seeded in-memory network (pure: no trio, no sockets)."""

from __future__ import annotations

import dataclasses
import random
from functools import partial
from typing import Any

import msgpack
import pytest

from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.state import ClusterState, global_key, inventory_key, node_var_key
from gossipmgr.errors import BadPacket
from gossipmgr.gossip.crypto import MAX_PLAINTEXT
from gossipmgr.gossip.messages import DELTA, decode_untrusted
from gossipmgr.gossip.protocol import AntiEntropy, GossipConfig
from gossipmgr.testing.sim import Sim, addr


def _random_write(sim: Sim, rnd: random.Random) -> None:
    name = rnd.choice(sim.names)
    kind = rnd.random()
    if kind < 0.5:
        k = global_key(f"g{rnd.randint(0, 5)}")
        sim.write(name, lambda st, ts: st.d_set(k, rnd.randint(0, 99), ts))
    elif kind < 0.7:
        k = global_key(f"g{rnd.randint(0, 5)}")
        sim.write(name, lambda st, ts: st.d_remove(k, ts))
    else:
        node = f"n{rnd.randint(0, 3)}"
        sim.write(
            name,
            lambda st, ts: st.d_set(node_var_key(node, "v"), {"x": [rnd.random()]}, ts),
        )


def run_schedule(seed: int) -> None:
    rnd = random.Random(seed)
    sim = Sim(5, seed=seed, drop=0.2, dup=0.1, delay=(0.1, 8.0), max_skew_ms=200)
    for _ in range(rnd.randint(3, 12)):
        _random_write(sim, rnd)
        sim.step(sim.now + rnd.uniform(0, 60))
    if rnd.random() < 0.5:
        members = list(sim.names)
        rnd.shuffle(members)
        cut = rnd.randint(1, 4)
        groups = [{addr(n) for n in members[:cut]}, {addr(n) for n in members[cut:]}]
        sim.net.partition(groups)
        for _ in range(rnd.randint(1, 8)):
            _random_write(sim, rnd)
            sim.step(sim.now + rnd.uniform(0, 300))
        sim.net.heal()
    took = sim.run_until_converged(60_000)
    assert took is not None, f"seed {seed} did not converge"
    for i in sim.inst.values():
        assert i.ae.largest_datagram <= MAX_PLAINTEXT


def test_300_schedules_converge_under_loss_dup_reorder_and_partitions() -> None:
    # bench/sim_schedules.py runs 1,000 and more
    for seed in range(300):
        run_schedule(seed)


def test_partition_then_heal_converges_with_lww_winner_everywhere() -> None:
    sim = Sim(5, seed=7, drop=0.05)
    left, right = sim.names[:2], sim.names[2:]
    sim.net.partition([{addr(n) for n in left}, {addr(n) for n in right}])
    sim.write(left[0], lambda st, ts: st.d_set(global_key("k"), "left", ts))
    sim.step(sim.now + 5)
    sim.write(right[0], lambda st, ts: st.d_set(global_key("k"), "right", ts))  # later: wins
    sim.step(sim.now + 2_000)
    assert sim.inst[left[1]].state.globals()["k"] == "left"
    sim.net.heal()
    assert sim.run_until_converged(10_000) is not None
    assert all(i.state.globals()["k"] == "right" for i in sim.inst.values())


def test_single_update_costs_a_small_fraction_of_full_state() -> None:
    sim = Sim(5, seed=3, drop=0.0, delay=(0.1, 1.0))
    for name in sim.names:  # 10,000 records everywhere, converged
        sim.inst[name].state.apply(_bulk(10_000))
    full_state_bytes = len(msgpack.packb(_wire_all(sim.inst[sim.names[0]].state)))
    sim.step(sim.now + 3_000)  # initial digest syncs settle
    before = sum(i.bytes_sent for i in sim.inst.values())
    sim.write(sim.names[0], lambda st, ts: st.d_set(global_key("one"), 1, ts))
    assert sim.run_until_converged(5_000) is not None
    sim.step(sim.now + 1_000)  # acks drain
    spent = sum(i.bytes_sent for i in sim.inst.values()) - before
    assert spent < 0.05 * full_state_bytes, (spent, full_state_bytes)


def _set_global(var: str, value: object, st: ClusterState, ts: Timestamp) -> LWWMap:
    """A write function (``partial(_set_global, var, value)``) for ``Sim.write``."""
    return st.d_set(global_key(var), value, ts)


def _bulk(n: int) -> LWWMap:
    st = ClusterState()
    h = HLC("seed")
    for k in range(n):
        st.apply(st.d_set(inventory_key(f"node-{k}"), {"status": "Unallocated", "i": k}, h.now(1)))
    return st.map


def _wire_all(st: ClusterState) -> list[object]:
    from gossipmgr.core.codec import entry_to_wire

    return [entry_to_wire(k, e) for k, e in st.map.items()]


def test_fresh_instance_catches_up_10000_records_in_chunks() -> None:
    sim = Sim(3, seed=11, drop=0.02, delay=(0.1, 1.0))
    for name in sim.names[:2]:
        sim.inst[name].state.apply(_bulk(10_000))
    took = sim.run_until_converged(60_000)
    assert took is not None
    fresh = sim.inst[sim.names[2]]
    assert len(fresh.state) == 10_000
    assert fresh.ae.largest_datagram <= MAX_PLAINTEXT
    assert all(i.ae.largest_datagram <= MAX_PLAINTEXT for i in sim.inst.values())


def test_restarted_instance_fetches_only_what_it_missed() -> None:
    sim = Sim(3, seed=5, delay=(0.1, 1.0))
    for name in sim.names:
        sim.inst[name].state.apply(_bulk(10_000))
    sim.step(sim.now + 3_000)
    down = sim.names[2]
    sim.inst[down].up = False
    for k in range(20):
        sim.write(sim.names[k % 2], partial(_set_global, f"w{k}", k))
    sim.step(sim.now + 2_000)
    sim.restart(down, incarnation=2)
    received_before = sim.inst[down].received_novel
    assert sim.run_until_converged(20_000) is not None
    assert sim.inst[down].received_novel - received_before == 20
    assert sim.inst[down].state.globals() == sim.inst[sim.names[0]].state.globals()


def test_delta_buffer_is_bounded_and_laggard_resyncs() -> None:
    cfg = GossipConfig(max_buffer=50)
    sim = Sim(3, seed=9, config=cfg, delay=(0.1, 1.0))
    lagger = sim.names[2]
    sim.net.partition([{addr(sim.names[0]), addr(sim.names[1])}, {addr(lagger)}])
    for k in range(500):
        sim.write(sim.names[0], partial(_set_global, f"k{k % 97}", k))
        sim.step(sim.now + 1)
    assert max(len(i.ae.buffer) for i in sim.inst.values()) <= 50
    sim.net.heal()
    assert sim.run_until_converged(30_000) is not None
    assert sim.inst[sim.names[0]].ae.counters.get("buffer_overflow", 0) > 0


def test_large_value_is_fragmented_and_reassembled() -> None:
    sim = Sim(2, seed=1, delay=(0.1, 1.0))
    big = "x" * 20_000
    sim.write(sim.names[0], lambda st, ts: st.d_set(global_key("big"), big, ts))
    assert sim.run_until_converged(5_000) is not None
    assert sim.inst[sim.names[1]].state.globals()["big"] == big
    assert all(i.ae.largest_datagram <= MAX_PLAINTEXT for i in sim.inst.values())


def _ae(name: str) -> AntiEntropy:
    return AntiEntropy(name, 1, ClusterState(), HLC(name))


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xc1",
        msgpack.packb([9, 1, "b", 1]),
        msgpack.packb([1, 99, "b", 1]),
        msgpack.packb([1, 1, "", 1, 0, 1, []]),
        msgpack.packb([1, 1, "b", 1, 5, 1, []]),  # lo > hi
        msgpack.packb([1, 3, "b", 1, 0, b"short"]),
        msgpack.packb([1, 6, "b", 1, 1, [10**9]]),
        msgpack.packb([1, 9, "b", 1, 1, 5, 2, b"x"]),  # fragment index out of range
        msgpack.packb([1, 1, "a", 1, 0, 1, []]),  # claims to be the receiver itself
    ],
)
def test_malformed_messages_are_dropped_and_counted(payload: bytes) -> None:
    a = _ae("a")
    a.set_peers(["b"], 0)
    before = a.state.map.copy()
    res = a.receive_untrusted(payload, 1_000)
    assert res.out == [] and res.novel is None
    assert a.state.map == before
    assert any(k.startswith("drop_") for k in a.counters)


def test_every_message_type_decodes_once_into_its_typed_record() -> None:
    """gossip.messages: one decoder turns the bytes into frozen records, so the protocol
    never reads raw fields; a FRAG message is reassembled and decoded again."""
    from gossipmgr.core.clock import Timestamp
    from gossipmgr.core.codec import entry_to_wire
    from gossipmgr.core.crdt import Entry
    from gossipmgr.gossip import messages as m

    e = (global_key("k"), Entry(Timestamp(5, 0, "b"), "v"))
    digests = list(range(64))
    cases: list[tuple[int, list[Any], object]] = [
        (m.DELTA, [0, 1, [entry_to_wire(*e)]], m.Delta(0, 1, [e])),
        (m.ACK, [3], m.Ack(3)),
        (m.DIGEST, [2, m.pack64(digests)], m.Digest(2, digests)),
        (m.SYNC_OK, [2, 4], m.SyncOk(2, 4)),
        (m.LEAVES, [7, m.pack64(digests)], m.Leaves(7, digests)),
        (m.PULL, [1, [5, 6]], m.Pull(1, [5, 6])),
        (m.ENTRIES, [1, [entry_to_wire(*e)]], m.Entries(1, [e])),
        (m.PULL_DONE, [1, 2], m.PullDone(1, 2)),
    ]
    for mtype, fields, want in cases:
        msg = m.decode_untrusted(m.pack(mtype, "b", 9, fields))
        assert (msg.sender, msg.incarnation, msg.type, msg.body) == ("b", 9, mtype, want)
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(msg.body, dataclasses.fields(msg.body)[0].name, 0)
    big = Entry(Timestamp(5, 0, "b"), "x" * 100)
    whole = m.pack(m.DELTA, "b", 9, [0, 1, [entry_to_wire(global_key("big"), big)]])
    pieces = m.fragment(whole, "b", 9, msg_id=1, max_payload=40 + len("b"))
    assert len(pieces) > 1
    from gossipmgr.gossip.datagram import Counters

    r = m.Reassembler(Counters())
    got = [r.add_untrusted("b", m.decode_untrusted(p).body, 0) for p in pieces]  # type: ignore[arg-type]
    assert got[:-1] == [None] * (len(pieces) - 1) and got[-1] == whole


def test_far_future_timestamps_are_refused_not_adopted() -> None:
    a, b = _ae("a"), _ae("b")
    a.set_peers(["b"], 0)
    b.set_peers(["a"], 0)
    future = HLC("a").now(10_000_000)
    out = a.local_write(a.state.d_set(global_key("x"), 1, future), 0).out
    for _, data in out:
        b.receive_untrusted(data, 1_000)
    assert global_key("x") not in b.state.map
    assert b.counters.get("drop_clock") == 1


def test_silent_peer_holds_no_buffer_gets_only_probes_and_resyncs_when_back() -> None:
    sim = Sim(3, seed=21, delay=(0.1, 1.0))
    writer, _live, dead = sim.names
    sim.step(sim.now + 3_000)
    sim.inst[dead].up = False
    for k in range(200):
        sim.write(writer, partial(_set_global, f"k{k}", k))
        sim.step(sim.now + 20)
    sim.step(sim.now + 5_000)
    ae = sim.inst[writer].ae
    assert len(ae.buffer) == 0  # nothing held for the silent peer
    assert ae.peers[dead].needs_resync
    sent_before = sim.inst[writer].bytes_sent
    sim.step(sim.now + 10_000)
    idle = sim.inst[writer].bytes_sent - sent_before
    assert idle < 20_000, idle  # probes and repair digests only, not 200 deltas again
    sim.inst[dead].up = True
    assert sim.run_until_converged(10_000) is not None


def test_a_fragment_inside_a_fragment_is_refused_not_recursed_into() -> None:
    """A reassembled message that is itself a FRAG is dropped (``drop_shape``): no sender
    nests them, and following the nesting let one ~20 KB message (a FRAG of one piece
    holding a FRAG of one piece ... thousands deep) raise RecursionError out of
    ``receive_untrusted`` and take the gossip service down."""
    from gossipmgr.gossip import messages as m

    a = _ae("a")
    a.set_peers(["b"], 0)
    # b answers the catch-up digest (else its first message brings the digest again)
    assert a.receive_untrusted(m.pack(m.SYNC_OK, "b", 1, [0, 0]), 0).out == []
    inner = m.pack(m.ACK, "b", 1, [0])
    for i in range(2_000):
        inner = m.pack(m.FRAG, "b", 1, [i + 1, 0, 1, inner])
    pieces = m.fragment(inner, "b", 1, msg_id=10**6, max_payload=1_300)
    assert len(pieces) > 1
    for p in pieces:
        res = a.receive_untrusted(p, 1_000)
        assert res.out == [] and res.novel is None
    assert a.counters["drop_shape"] == 1
    # One level of nesting is refused just the same (senders fragment whole messages only).
    one_piece = m.pack(m.FRAG, "b", 1, [7, 0, 1, m.pack(m.ACK, "b", 1, [0])])
    assert a.receive_untrusted(one_piece, 1_000).out == []  # a fragmented ACK: taken
    assert a.counters["recv_ack"] == 1 and a.counters["drop_shape"] == 1
    nested = m.pack(m.FRAG, "b", 1, [8, 0, 1, one_piece])
    assert a.receive_untrusted(nested, 1_000).out == []
    assert a.counters["recv_ack"] == 1 and a.counters["drop_shape"] == 2


def test_a_partial_message_holds_at_most_max_message_bytes() -> None:
    """A partial message is dropped (``too_large``) as soon as its pieces exceed
    ``MAX_MESSAGE_BYTES``, not when its last piece arrives: 2,048 pieces of ~1.3 KB each
    held ~2.6 MiB per partial message (64 of them: ~170 MiB), against the documented 1 MiB."""
    from gossipmgr.gossip import messages as m
    from gossipmgr.gossip.datagram import Counters

    counters = Counters()
    r = m.Reassembler(counters)
    piece = b"p" * 1_200
    total = m.MAX_FRAGMENTS
    refused_at = None
    for i in range(total - 1):  # never the last piece: the message stays partial
        try:
            r.add_untrusted("b", m.Frag(1, i, total, piece), 0)
        except BadPacket as exc:
            assert exc.reason == "too_large"
            refused_at = i
            break
    assert refused_at is not None
    assert refused_at * len(piece) <= m.MAX_MESSAGE_BYTES < (refused_at + 1) * len(piece)
    # The partial message is gone: a later piece starts a new one, it is not appended.
    assert r.add_untrusted("b", m.Frag(1, 0, total, piece), 0) is None
    assert r.held_bytes() == len(piece)


def test_sequential_deltas_share_deferred_acks_and_cause_no_retransmit() -> None:
    """Deltas arriving within ``ack_delay_ms`` of the last ACK to their sender are acked at
    the next tick, together (one ACK each used to cost the receiver a send and the writer a
    receive per write): 20 writes 25 ms apart get at most half as many ACKs, all of them
    end acknowledged (the writer's buffer is pruned) and none is retransmitted."""
    sim = Sim(2, seed=3)
    assert sim.run_until_converged(5_000) is not None
    sim.step(sim.now + 1_000)
    a, b = (sim.inst[n].ae for n in sim.names)
    acks0, retx0 = a.counters["recv_ack"], a.counters["retransmits"]
    for i in range(20):
        sim.write(sim.names[0], partial(_set_g, f"s{i}", i))
        sim.step(sim.now + 25)
    sim.step(sim.now + 1_000)
    assert {f"s{i}" for i in range(20)} <= set(b.state.globals())
    acks = a.counters["recv_ack"] - acks0
    assert 1 <= acks <= 10, acks
    assert b.counters["acks_deferred"] >= 10
    assert a.peers[sim.names[1]].acked == a.seq and not a.buffer
    assert a.counters["retransmits"] == retx0


def _set_g(var: str, value: object, st: ClusterState, ts: Timestamp) -> LWWMap:
    return st.d_set(global_key(var), value, ts)


def _interval_items(buffer: list[tuple[int, str, LWWMap]], peer: str = "b") -> list[Any]:
    """The entries (wire form) of every DELTA message interval_messages builds for ``peer``
    (captured before fragmentation), in order."""
    from gossipmgr.gossip.datagram import Counters
    from gossipmgr.gossip.encoder import MessageEncoder

    enc = MessageEncoder("a", 1, 1_200, Counters())
    sent: list[Any] = []

    def capture(_peer: str, _mtype: int, payload: list[Any]) -> list[tuple[str, bytes]]:
        sent.extend(payload[2])
        return []

    enc.encode = capture  # type: ignore[method-assign,assignment]
    enc.interval_messages(peer, 0, buffer)
    return sent


def test_a_retransmit_sends_a_key_rewritten_in_the_interval_once_its_newest() -> None:
    """The partition suite: a job's open log chunk (~32 KiB) rewritten at every flush was
    resent once per version at every retransmit, ~1.9 GB of fragments from one holder."""
    key = global_key("chunk")
    record = global_key("record")  # each flush also writes the job record's log_count
    buffer = [
        (
            seq,
            "a",
            LWWMap(
                [
                    (key, Entry(Timestamp(1_000 + seq, 0, "a"), "x" * 3_000)),
                    (record, Entry(Timestamp(1_000 + seq, 0, "a"), seq)),
                ]
            ),
        )
        for seq in range(1, 51)
    ]
    buffer.append((51, "a", LWWMap([(global_key("other"), Entry(Timestamp(2_000, 0, "a"), 1))])))
    items = _interval_items(buffer)
    chunk = [w for w in items if "chunk" in repr(w)]
    assert len(chunk) == 1, f"{len(chunk)} versions of one key in one retransmit"
    assert "1050" in repr(chunk[0]), "not the newest version"  # Timestamp(1_000 + 50, ...)
    assert len(items) == 3


def test_a_later_entry_that_loses_does_not_hide_the_winner_in_a_retransmit() -> None:
    """Deltas forwarded from several origins: a later-buffered entry with an older clock
    loses under LWW, so the earlier winner must still be sent (the batch used to take the
    later one over it)."""
    key = global_key("g")
    win = Entry(Timestamp(5_000, 0, "c"), "new")
    lose = Entry(Timestamp(4_000, 0, "d"), "old")
    items = _interval_items([(1, "c", LWWMap([(key, win)])), (2, "d", LWWMap([(key, lose)]))])
    assert any("new" in repr(w) for w in items)
    # the peer's own later delta that wins makes ours redundant (BP: it has its own)
    own = Entry(Timestamp(6_000, 0, "b"), "own")
    items = _interval_items([(1, "c", LWWMap([(key, win)])), (2, "b", LWWMap([(key, own)]))])
    assert items == []


def test_every_write_is_pushed_to_every_peer_while_repair_digests_cross_the_writes() -> None:
    """A write is pushed at once to every peer heard from lately, even one this instance
    marked for a resync because its repair digest crossed a write in flight (the digests
    then differ). Such a peer used to get no push until the resync ended: with the ACKs of
    sequential writes deferred, a write landing then reached it only by another peer's
    forward (up to a tick, 150 ms) or a retransmit (300 ms).
    500 writes 20 ms apart (10 s, ~15 repair rounds), network delay 1-4 ms: each write is on
    both peers 8 ms later."""
    sim = Sim(3, seed=1, delay=(1.0, 4.0))
    assert sim.run_until_converged(5_000) is not None
    sim.step(sim.now + 1_000)
    writer = sim.names[0]
    ae = sim.inst[writer].ae
    late, resyncing = [], 0
    for i in range(500):
        resyncing += any(ps.needs_resync for ps in ae.peers.values())
        sim.write(writer, partial(_set_g, f"p{i}", i))
        sim.step(sim.now + 8)
        late += [(i, n) for n in sim.names[1:] if f"p{i}" not in sim.inst[n].state.globals()]
        sim.step(sim.now + 12)
    assert resyncing > 0  # the case arose
    assert late == []


def _deltas_between(sim: Sim, counts: dict[tuple[str, str], int]) -> None:
    """Count DELTA datagrams per (sender, recipient) from now on in ``counts``."""
    send = sim.net.send

    def counting(src: tuple[str, int], dst: tuple[str, int], data: bytes, now: float) -> None:
        if decode_untrusted(data).type == DELTA:
            counts[(src[0], dst[0])] = counts.get((src[0], dst[0]), 0) + 1
        send(src, dst, data, now)

    sim.net.send = counting  # type: ignore[method-assign, assignment]


def test_an_equal_repair_round_acknowledges_what_its_answerer_buffered() -> None:
    """An equal digest exchange tells each side that the other holds all it buffered: the
    answerer takes its buffer as acknowledged (``SYNC_OK``), and the asker must take the
    answerer's deltas up to the seq the ``SYNC_OK`` names as received. Else the answerer's
    next delta, starting there, never fits ``received``, is never acknowledged, and is
    resent with all that follows at every retransmit (how each receiver of sequential
    writes came to get ~1 forwarded datagram per write, not ~0.18)."""
    sim = Sim(2, seed=2, delay=(0.5, 0.5))
    sim.serf_view()
    assert sim.run_until_converged(5_000) is not None
    sim.step(sim.now + 1_000)
    a_name, b_name = sim.names
    a, b = sim.inst[a_name].ae, sim.inst[b_name].ae
    sim.write(b_name, partial(_set_g, "w1", 1))
    sim.step(sim.now + 50)
    sim.net.cut(addr(b_name), addr(a_name), both_ways=False)
    lost = sim.write(b_name, partial(_set_g, "w2", 2))  # its push is lost ...
    sim.step(sim.now + 5)
    sim.net.heal()
    a.state.apply(lost)  # ... and it reaches a another way (a pull from a third peer)
    assert a.peers[b_name].received < b.seq
    sim._send(a_name, a._digest(b_name, a.peers[b_name], sim.now))
    sim.step(sim.now + 5)  # the repair round: equal
    assert b.peers[a_name].acked == b.seq
    assert a.peers[b_name].received == b.seq
    retx0 = b.counters.get("retransmits", 0)
    sim.write(b_name, partial(_set_g, "w3", 3))
    sim.step(sim.now + 2_000)
    assert b.peers[a_name].acked == b.seq and not b.buffer
    assert b.counters.get("retransmits", 0) == retx0


@pytest.mark.parametrize("both_ways", [False, True])
def test_a_clean_cluster_forwards_nothing_and_a_one_way_cut_heals_by_relay(
    both_ways: bool,
) -> None:
    """Three instances, sequential writes at one: each receiver gets each write once, from
    its writer (it used to get it again, forwarded by the other receiver at its next
    retransmit: decoded and joined for nothing). With the writer's datagrams to one
    receiver cut (one way, or both ways: a partial cut, that receiver reaching only the
    other), its acks stall and the writer relays the writes through the other receiver,
    which forwards them: every write reaches the cut-off receiver within 8 ticks."""
    sim = Sim(3, seed=1, delay=(0.5, 0.5))
    sim.serf_view()
    assert sim.run_until_converged(5_000) is not None
    sim.step(sim.now + 1_000)
    counts: dict[tuple[str, str], int] = {}
    _deltas_between(sim, counts)
    writer, r2, r3 = sim.names
    for i in range(1_000):
        sim.write(writer, partial(_set_g, f"s{i}", "x" * 160))
        sim.step(sim.now + 4.4)
    sim.step(sim.now + 1_000)
    assert sim.converged()
    assert counts[(writer, r2)] == counts[(writer, r3)] == 1_000
    assert counts.get((r2, r3), 0) + counts.get((r3, r2), 0) == 0, counts
    for n in sim.names:
        ae = sim.inst[n].ae
        assert all(ps.acked == ae.seq for ps in ae.peers.values()), n
    tick = sim.config.tick_ms
    sim.net.cut(addr(writer), addr(r3), both_ways=both_ways)
    late = []
    for i in range(200):
        sim.write(writer, partial(_set_g, f"c{i}", i))
        sim.step(sim.now + 20)
        if i >= 60:
            old = i - 60  # written 1.2 s (8 ticks) ago
            late += [old] if f"c{old}" not in sim.inst[r3].state.globals() else []
    sim.step(sim.now + 8 * tick)
    assert late == []
    assert {f"c{i}" for i in range(200)} <= set(sim.inst[r3].state.globals())
    assert sim.inst[writer].ae.counters.get("relays", 0) > 0


def test_a_lost_push_is_resent_while_the_writes_go_on() -> None:
    """Each push puts the writer's retransmit off (``retransmit_ms`` with nothing sent), so
    while it kept writing, a lost push reached its peer only at a pause in the writes (the
    other receivers' forward hid that). Now a peer that acknowledged nothing for
    ``retransmit_ms`` gets the interval again: 2 instances, a write every 20 ms, one push
    lost; it arrives within 3 ticks, the writes going on."""
    sim = Sim(2, seed=5, delay=(0.5, 0.5))
    sim.serf_view()
    assert sim.run_until_converged(5_000) is not None
    sim.step(sim.now + 1_000)
    writer, peer = sim.names
    for i in range(10):
        sim.write(writer, partial(_set_g, f"b{i}", i))
        sim.step(sim.now + 20)
    sim.net.cut(addr(writer), addr(peer), both_ways=False)
    sim.write(writer, partial(_set_g, "lost", 1))
    sim.step(sim.now + 2)
    sim.net.heal()
    arrived = None
    for i in range(60):
        sim.write(writer, partial(_set_g, f"a{i}", i))
        sim.step(sim.now + 20)
        if arrived is None and "lost" in sim.inst[peer].state.globals():
            arrived = i * 20
    assert arrived is not None and arrived <= 3 * sim.config.tick_ms, arrived
    ae = sim.inst[writer].ae
    sim.step(sim.now + 1_000)
    assert ae.peers[peer].acked == ae.seq and not ae.buffer
