"""The restart catch-up as the protocol runs it, without sockets: rounds, datagrams, bytes, CPU.

Three ``AntiEntropy`` objects in one process (pure, no crypto, no I/O): r1 and r2 hold
``--keys`` globals (or ``--nodes`` node records), ``--missed`` of the globals rewritten; r3
holds the old state as a restore leaves it (adopted whole, digests not computed yet), and
r1/r2 last synced with r3 before it stopped. r3's peers are set (its start's catch-up) and
every datagram is delivered in rounds: all of one round's datagrams, then all the answers
they produced. Printed: after which round r3 holds every missed entry, and when the exchange
ends; the datagrams and payload bytes each instance sent; each one's CPU time (process time
around its own calls); r3's counters. Then, on the restored state alone, the CPU of its
newest timestamp per origin and of its first digests (min of 3).

    .venv/bin/python bench/catchup_exchange.py [--keys 10000] [--missed 1000] [--nodes 0]

It imports whichever ``gossipmgr`` the interpreter finds (no path of its own), so
``PYTHONPATH=<another tree>`` measures that tree. Nothing is written.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable, Iterator
from typing import Any

from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.core.state import ClusterState, global_key, inventory_key, monitoring_key
from gossipmgr.gossip.protocol import AntiEntropy

BASE = int(time.time() * 1000) - 60_000


def records(keys: int, missed: int, nodes: int, rewritten: bool) -> Iterator[tuple[Key, Entry]]:
    for i in range(keys):
        if rewritten and i < missed:
            yield global_key(f"k{i:07d}"), Entry(Timestamp(BASE + 1_000, i, "r1"), f"new{i}")
        else:
            yield global_key(f"k{i:07d}"), Entry(Timestamp(BASE, i, "r1"), f"old{i}" + "v" * 150)
    for i in range(nodes):
        ts = Timestamp(BASE, i, "r2")
        name = f"node-{i:06d}"
        inv = {"status": "Allocated", "prev_status": "Unallocated", "state": "Discovered"}
        yield inventory_key(name), Entry(ts, {**inv, "prev_state": "Unknown", "epoch": 1})
        yield monitoring_key(name), Entry(ts, {"label": f"host{i}", "serial": f"SN{i:08d}"})


def restored(args: argparse.Namespace, rewritten: bool) -> ClusterState:
    st = ClusterState()
    st.adopt(LWWMap.lazy_of(dict(records(args.keys, args.missed, args.nodes, rewritten))))
    return st


def timed(cpu: dict[str, float], name: str, f: Callable[[], Any]) -> Any:
    t = time.process_time()
    try:
        return f()
    finally:
        cpu[name] += time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--missed", type=int, default=1_000)
    ap.add_argument("--nodes", type=int, default=0)
    args = ap.parse_args()
    now = float(BASE + 2_000)
    aes: dict[str, AntiEntropy] = {}
    for name in ("r1", "r2"):
        st = restored(args, True)
        st.map.super_digests()  # a running peer's digests are kept up to date
        ae = AntiEntropy(name, 1, st, HLC(name))
        ae.set_peers(["r1", "r2", "r3"], now)
        for p, ps in ae.peers.items():  # synced with r3 before it stopped
            ps.catchup = ps.digest_unanswered = ps.needs_resync = False
            ps.incarnation = 1 if p != "r3" else 9
        ae.catchup = None
        aes[name] = ae
    aes["r3"] = AntiEntropy("r3", 2, restored(args, False), HLC("r3"))
    gc.collect()
    gc.freeze()  # as the agent does after its restore: no collection walks the states
    cpu = dict.fromkeys(aes, 0.0)
    sent = {n: [0, 0] for n in aes}
    first = timed(cpu, "r3", lambda: aes["r3"].set_peers(["r1", "r2"], now))
    out = [("r3", to, d) for to, d in first]
    r3 = aes["r3"].state
    held_at = None
    rounds = 0
    while out and rounds < 200:
        rounds += 1
        nxt = []
        for src, dst, data in out:
            sent[src][0] += 1
            sent[src][1] += len(data)
            res = timed(cpu, dst, lambda d=data, a=aes[dst], t=now: a.receive_untrusted(d, t))
            nxt += [(dst, to, d) for to, d in res.out]
        now += 1
        out = nxt
        g = r3.globals()
        if held_at is None and all(g[f"k{i:07d}"] == f"new{i}" for i in range(args.missed)):
            held_at = rounds
    print(
        f"{args.keys} globals, {args.nodes} node records, {args.missed} missed: r3 held every "
        f"missed entry after round {held_at} (a round = one leg: r3's datagrams, or the "
        f"answers to them); the exchange ended after round {rounds}"
    )
    for n in aes:
        print(
            f"  {n}: sent {sent[n][0]} datagrams, {sent[n][1]:,} payload bytes; "
            f"CPU {cpu[n] * 1000:.1f} ms"
        )
    print(f"  r3's counters: {dict(sorted(aes['r3'].counters.items()))}")
    for what in ("newest_per_origin", "super_digests"):
        best = 1e9
        for _ in range(3):
            m = restored(args, False).map
            if not hasattr(m, what):
                break
            t = time.process_time()
            getattr(m, what)()
            best = min(best, time.process_time() - t)
        if best < 1e9:
            print(f"  restored state, {what}(): {best * 1000:.1f} ms CPU (min of 3)")


if __name__ == "__main__":
    main()
