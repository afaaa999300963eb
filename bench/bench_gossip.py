"""Benchmark gossip over real UDP on loopback: latency, bytes per update, catch-up, idle cost.

Run:  .venv/bin/python bench/bench_gossip.py [--quick] [--runs 3] [--profile]
Prints tables of medians and writes bench/results/gossip.json.

Every instance is an in-process ``Replica`` with a ``GossipService`` on its own UDP socket
bound to 127.0.0.1 port 0, sealed with one shared key (as tests/test_gossip_udp.py does).
All instances share one Python process, hence ONE core: the figures include every
instance's CPU time serialised, which is pessimistic against one instance per machine.

(a) write-to-visible latency, 3 and 5 instances: commit at instance 0, time until the key is
    visible at each other instance (event-driven watchers on ``Replica.wait_change``);
    "mem" = replicas without a data dir, "fsync" = with data dirs, fsync on (the commit
    waits for its fdatasync before pushing, as in production).
(b) bytes on the wire for one single-key update in a converged 3-instance cluster holding
    10,000 records, summed over all links until every buffer is acknowledged, against one
    full-state transfer (the encoded state, and the bytes a fresh instance really received).
(c) catch-up of a fresh instance (nothing) joining two instances that hold 10,000 / 100,000
    records: time until its digests equal theirs, and bytes it received.
(d) idle traffic of a converged 3-instance cluster with 10,000 records, per instance.

A "record" here is one LWW entry of ~200 B encoded (``bench/_util.py: global_records``).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import global_records, pct, print_table, write_result

from gossipmgr.core.codec import encode_map
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.gossip.crypto import Keyring
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.runtime.replica import Replica


def seed_state(st: ClusterState, m: LWWMap) -> None:
    """Give the empty ``st`` a copy of ``m`` without re-hashing every entry (``LWWMap.copy``).

    ``ClusterState.apply`` would hash each entry again (seconds at 100,000); ``adopt`` takes
    the copy as the state and builds the read indexes the way ``apply`` keeps them.
    """
    st.adopt(m.copy())


@contextlib.asynccontextmanager
async def udp_cluster(
    n: int,
    seed: LWWMap | None = None,
    fresh: frozenset[int] = frozenset(),
    data_root: Path | None = None,
) -> AsyncIterator[list[GossipService]]:
    """``n`` replicas + gossip services on 127.0.0.1:0; indexes in ``fresh`` hold nothing."""
    key = os.urandom(32)
    async with contextlib.AsyncExitStack() as stack:
        services = []
        for i in range(n):
            name = f"i{i}"
            rep = Replica(name, data_dir=data_root / name if data_root else None)
            rep.open()
            stack.push_async_callback(rep.aclose)
            if seed is not None and i not in fresh:
                seed_state(rep.state, seed)
                newest = seed.max_timestamp()
                if newest is not None:
                    rep.hlc.advance_to(newest)
            tr = await stack.enter_async_context(open_udp_transport("127.0.0.1", 0))
            services.append(GossipService(rep, tr, Keyring(key), boot_ms=rep.now_ms()))
        addrs = {s.replica.name: s.local_addr for s in services}
        async with trio.open_nursery() as nursery:
            for s in services:
                await nursery.start(s.run)
            for s in services:
                s.set_peers(addrs)
            yield services
            nursery.cancel_scope.cancel()


def quiet(svcs: list[GossipService]) -> bool:
    """Every instance synced with every peer and every buffer acknowledged."""
    for s in svcs:
        for ps in s.ae.peers.values():
            if ps.needs_resync or ps.acked < s.ae.seq or ps.inflight or ps.pending_leaves:
                return False
    return True


async def wait_until(pred: Any, timeout: float, what: str, poll: float = 0.005) -> float:  # noqa: ASYNC109
    t0 = time.perf_counter()
    with trio.move_on_after(timeout):
        while not pred():  # noqa: ASYNC110 - polls state owned by other tasks
            await trio.sleep(poll)
        return time.perf_counter() - t0
    raise TimeoutError(f"{what} not reached in {timeout} s")


def total(svcs: list[GossipService], counter: str) -> int:
    return sum(s.counters.get(counter, 0) for s in svcs)


# ---------------------------------------------------------------------------- (a)
async def latency(n: int, writes: int, disk: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-gossip-") as tmp:
        root = Path(tmp) if disk else None
        async with udp_cluster(n, data_root=root) as svcs:
            await wait_until(lambda: quiet(svcs), 10, "initial sync")
            writer, others = svcs[0].replica, [s.replica for s in svcs[1:]]
            pending: dict[str, Any] = {"key": None, "seen": {}}
            done = trio.Event()

            async def watch(rep: Replica) -> None:
                while True:
                    k = pending["key"]
                    if (
                        k is not None
                        and rep.name not in pending["seen"]
                        and rep.state.map.entry(k) is not None
                    ):
                        pending["seen"][rep.name] = time.perf_counter()
                        if len(pending["seen"]) == len(others):
                            done.set()
                    await rep.wait_change()

            all_ms: list[float] = []
            each_ms: list[float] = []
            async with trio.open_nursery() as nursery:
                for rep in others:
                    nursery.start_soon(watch, rep)
                await trio.sleep(0.05)
                for w in range(writes):
                    done = trio.Event()
                    key = global_key(f"lat{w}")
                    pending["seen"] = {}
                    pending["key"] = key
                    t0 = time.perf_counter()
                    await writer.commit(lambda st, ts, key=key, w=w: st.d_set(key, w, ts))
                    with trio.fail_after(10):
                        await done.wait()
                    seen = pending["seen"].values()
                    each_ms += [(t - t0) * 1e3 for t in seen]
                    all_ms.append((max(seen) - t0) * 1e3)
                    await trio.sleep(0.01)  # one write every ~10 ms: latency, not throughput
                nursery.cancel_scope.cancel()
    return {
        "p50_all_ms": pct(all_ms, 50),
        "p99_all_ms": pct(all_ms, 99),
        "max_all_ms": max(all_ms),
        "p50_each_ms": pct(each_ms, 50),
        "p99_each_ms": pct(each_ms, 99),
        "samples_all_ms": [round(x, 3) for x in all_ms],
    }


# ---------------------------------------------------------------------------- (b)
async def update_bytes(n: int, seed: LWWMap) -> dict[str, Any]:
    async with udp_cluster(n, seed) as svcs:
        await wait_until(lambda: quiet(svcs), 20, "initial sync")
        names = ["bytes_sent", "sent_bytes_delta", "sent_bytes_ack", "datagrams_sent"]
        before = {c: total(svcs, c) for c in names}
        key = global_key("one-update")
        t0 = time.perf_counter()
        await svcs[0].replica.commit(lambda st, ts: st.d_set(key, "x" * 40, ts))
        visible = await wait_until(
            lambda: all(s.replica.state.map.entry(key) is not None for s in svcs), 10, "visible"
        )
        await wait_until(lambda: quiet(svcs), 10, "all acknowledged")
        settled = time.perf_counter() - t0
        after = {c: total(svcs, c) for c in names}
    d = {c: after[c] - before[c] for c in names}
    return {
        "update_bytes": d["sent_bytes_delta"] + d["sent_bytes_ack"],
        "update_datagrams_total": d["datagrams_sent"],
        "window_bytes_all_types": d["bytes_sent"],
        "visible_ms": visible * 1e3,
        "settled_ms": settled * 1e3,
    }


# ---------------------------------------------------------------------------- (c)
async def catch_up(records: int, seed: LWWMap, timeout: float) -> dict[str, Any]:  # noqa: ASYNC109
    async with udp_cluster(3, seed, fresh=frozenset({2})) as svcs:
        fresh = svcs[2]
        target = svcs[0].replica.state.map.super_digests()
        t0 = time.perf_counter()

        def caught_up() -> bool:
            m = fresh.replica.state.map
            return len(m) >= records and m.super_digests() == target

        dt = await wait_until(caught_up, timeout, f"catch-up of {records}", poll=0.02)
        rx = fresh.counters.get("bytes_received", 0)
        rx_entries = fresh.counters.get("recv_bytes_entries", 0)
        tx = sum(s.counters.get("bytes_sent", 0) for s in svcs[:2])
        ctr = fresh.ae.counters
        _ = t0
    return {
        "seconds": dt,
        "bytes_received": rx,
        "bytes_received_entries": rx_entries,
        "bytes_sent_by_holders": tx,
        "pulls_timed_out": ctr.get("pull_timeout", 0),
        "pulls_incomplete": ctr.get("pull_incomplete", 0),
        "entries_per_s": records / dt,
    }


# ---------------------------------------------------------------------------- (d)
async def idle(n: int, seed: LWWMap, seconds: float) -> dict[str, Any]:
    async with udp_cluster(n, seed) as svcs:
        await wait_until(lambda: quiet(svcs), 20, "initial sync")
        await trio.sleep(1.0)
        before = [s.counters.get("bytes_sent", 0) for s in svcs]
        t0 = time.perf_counter()
        await trio.sleep(seconds)
        dt = time.perf_counter() - t0
        after = [s.counters.get("bytes_sent", 0) for s in svcs]
    per = [(a - b) / dt for a, b in zip(after, before, strict=True)]
    return {
        "bytes_per_s_per_instance": statistics.mean(per),
        "kbit_per_s_per_instance": statistics.mean(per) * 8 / 1000,
        "kbit_per_s_max_instance": max(per) * 8 / 1000,
    }


def profile_catch_up(records: int, seed: LWWMap) -> str:
    prof = cProfile.Profile()
    prof.enable()
    trio.run(catch_up, records, seed, 120.0)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(18)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="fewer samples, 10,000 records only")
    ap.add_argument("--profile", action="store_true", help="profile one 100,000 catch-up")
    args = ap.parse_args()
    runs_n = 1 if args.quick else args.runs
    writes = 60 if args.quick else 200
    idle_s = 5.0 if args.quick else 15.0
    sizes = [10_000] if args.quick else [10_000, 100_000]
    goals = {"catch_up_10000_s": 2.0, "catch_up_100000_s": 20.0}

    seeds = {r: global_records(r) for r in sizes}
    full_state = {r: len(encode_map(seeds[r])) for r in sizes}
    runs: list[dict[str, Any]] = []
    samples: dict[str, list[float]] = {}
    for run in range(runs_n):
        out: dict[str, Any] = {}
        for n in (3, 5):
            for disk in (False, True):
                tag = f"latency_{n}_{'fsync' if disk else 'mem'}"
                r = trio.run(latency, n, writes, disk)
                for k, v in r.items():
                    if k == "samples_all_ms":
                        samples.setdefault(tag, []).extend(v)
                    else:
                        out[f"{tag}_{k}"] = v
        b = trio.run(update_bytes, 3, seeds[10_000])
        for k, v in b.items():
            out[f"update_3x10000_{k}"] = v
        for r_n in sizes:
            c = trio.run(catch_up, r_n, seeds[r_n], 30.0 if r_n <= 10_000 else 120.0)
            for k, v in c.items():
                out[f"catch_up_{r_n}_{k}"] = v
            out[f"catch_up_{r_n}_s"] = c["seconds"]
        i = trio.run(idle, 3, seeds[10_000], idle_s)
        for k, v in i.items():
            out[f"idle_3x10000_{k}"] = v
        out["update_vs_full_state_pct"] = (
            100 * out["update_3x10000_update_bytes"] / full_state[10_000]
        )
        out["update_vs_catch_up_bytes_pct"] = (
            100 * out["update_3x10000_update_bytes"] / out["catch_up_10000_bytes_received"]
        )
        runs.append(out)
        print(f"run {run + 1}/{runs_n} done", flush=True)

    from _util import medians

    med = medians(runs)
    profile = ""
    if args.profile or (
        100_000 in sizes and med.get("catch_up_100000_s", 0) >= goals["catch_up_100000_s"]
    ):
        profile = profile_catch_up(100_000, seeds[100_000])
    print_table(f"gossip over real UDP (loopback), median of {runs_n} run(s)", med.items(), runs)
    print(f"full state, 10,000 records: {full_state[10_000]} B encoded")
    if profile:
        print(profile)
    path = write_result(
        "gossip",
        "gossip over real UDP on loopback (bench/bench_gossip.py)",
        {
            "writes_per_latency_run": writes,
            "idle_seconds": idle_s,
            "record": "one LWW entry, ~200 B encoded",
            "full_state_bytes": full_state,
            "instances_share_one_process": True,
            "goals": {
                "update_vs_full_state_pct_max": 5,
                "catch_up_10000_s_max": 2,
                "catch_up_100000_s_max": 20,
                "idle_kbit_per_s_max": 10,
            },
        },
        runs,
        {"latency_samples_ms": samples, "profile_catch_up_100000": profile},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
