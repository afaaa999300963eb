"""Benchmark the pure anti-entropy protocol beyond one machine: 50 and 200 simulated instances.

Run:  .venv/bin/python bench/bench_sim.py [--quick] [--runs 3]
Prints a table of medians and writes bench/results/sim.json.

``gossipmgr.testing.sim.Sim`` runs N ``AntiEntropy`` objects on the seeded in-memory network
(``gossipmgr.testing.network.InMemoryNetwork``): simulated milliseconds, 0.2-2 ms link delay, 5%
random loss, default ``GossipConfig`` (tick 150 ms, retransmit 300 ms, repair 2 s). Time
is *simulated*; the wall time each scenario took on this box is reported beside it.

What is simulated, exactly (scaled to fit a 2-core box in bounded time):

* every instance starts holding the same 100,000 records (one ~200 B LWW entry each). The
  entries are *shared by reference* between instances (``LWWMap.copy``: one dict and digest
  tree per instance, immutable entries shared), which is what makes 200 x 100,000 fit.
* instances start converged, as after a long steady state: the initial digest exchange
  (every instance with every peer) is marked done instead of simulated, because at 200
  instances it alone is 39,800 digest comparisons and says nothing about steady state.
* scenarios, one after the other on the same cluster:
  1. one write at one instance: time and ticks until every instance holds it, and until
     every buffer is acknowledged (quiet);
  2. partition into two halves for 5 s, 5 writes on each side (one key written on both
     sides, a conflict), heal: time and ticks until every instance holds the winners;
  3. steady state for 10 s: bytes per instance per second (digest repair only).
* bytes are protocol payload bytes (the AEAD header/tag, ~29-40 B per datagram on the real
  wire, is not simulated) counted at the sender, drops included.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import global_records, medians, print_table, write_result
from bench_gossip import seed_state

from gossipmgr.core.crdt import Entry, Key
from gossipmgr.core.state import global_key
from gossipmgr.gossip.protocol import GossipConfig
from gossipmgr.testing.sim import Sim, addr

SIM_START_MS = 1_000_000.0
LOSS = 0.05
PARTITION_MS = 5_000
WRITES_PER_SIDE = 5


_BASE: dict[int, Any] = {}


def build(n: int, records: int, seed: int, drop: float) -> Sim:
    sim = Sim(n, seed=seed, drop=drop, config=GossipConfig(), now=SIM_START_MS, announce=False)
    if records not in _BASE:
        _BASE[records] = global_records(records, base_ms=int(SIM_START_MS) - 60_000)
    base = _BASE[records]
    newest = base.max_timestamp()
    for inst in sim.inst.values():
        seed_state(inst.ae.state, base)
        if newest is not None:
            inst.ae.hlc.advance_to(newest)
        for ps in inst.ae.peers.values():
            # start converged (see the module docstring): no resync, no start's catch-up
            ps.needs_resync = ps.catchup = ps.digest_unanswered = False
    return sim


def bytes_sent(sim: Sim) -> int:
    return sum(i.bytes_sent for i in sim.inst.values())


def holds(sim: Sim, want: dict[Key, Entry]) -> bool:
    for i in sim.inst.values():
        m = i.ae.state.map
        for k, e in want.items():
            if m.entry(k) != e:
                return False
    return True


def quiet(sim: Sim) -> bool:
    for i in sim.inst.values():
        ae = i.ae
        for ps in ae.peers.values():
            if ps.acked < ae.seq or ps.needs_resync or ps.inflight or ps.pending_leaves:
                return False
    return True


def run_until(sim: Sim, pred: Any, max_ms: float, step_ms: float = 10.0) -> float | None:
    start = sim.now
    while sim.now - start <= max_ms:
        if pred():
            return sim.now - start
        sim.step(sim.now + step_ms)
    return None


def scenario(n: int, records: int, seed: int, drop: float) -> dict[str, Any]:
    tick = GossipConfig().tick_ms
    out: dict[str, Any] = {}
    w0 = time.perf_counter()
    sim = build(n, records, seed, drop)
    out["build_wall_s"] = time.perf_counter() - w0

    # 1. one write
    w0 = time.perf_counter()
    sim.step(sim.now + 500)  # let tick phases spread
    b0, t0 = bytes_sent(sim), sim.now
    key = global_key("one-write")
    delta = sim.write(sim.names[0], lambda st, ts: st.d_set(key, "v", ts))
    want = dict(delta.items())
    ms = run_until(sim, lambda: holds(sim, want), 30_000)
    out["one_write_converge_ms"] = ms
    out["one_write_converge_ticks"] = None if ms is None else ms / tick
    q = run_until(sim, lambda: quiet(sim), 30_000, step_ms=50)
    out["one_write_quiet_ms"] = None if q is None or ms is None else ms + q
    out["one_write_bytes_total"] = bytes_sent(sim) - b0
    out["one_write_bytes_per_instance"] = (bytes_sent(sim) - b0) / n
    out["one_write_window_ms"] = sim.now - t0
    out["one_write_wall_s"] = time.perf_counter() - w0

    # 2. partition, writes on both sides, heal
    w0 = time.perf_counter()
    left, right = sim.names[: n // 2], sim.names[n // 2 :]
    sim.net.partition([{addr(x) for x in left}, {addr(x) for x in right}])
    want = {}
    for w in range(WRITES_PER_SIDE):
        for side in (left, right):
            writer = side[(w * 7) % len(side)]
            k = global_key("conflict") if w == 0 else global_key(f"p-{writer}-{w}")
            d = sim.write(writer, lambda st, ts, k=k, w=w: st.d_set(k, f"{w}", ts))
            for kk, e in d.items():
                if kk not in want or e.ts > want[kk].ts:  # LWW winner of the conflict
                    want[kk] = e
        sim.step(sim.now + PARTITION_MS / WRITES_PER_SIDE)
    sim.net.heal()
    b0, t0 = bytes_sent(sim), sim.now
    curve: list[tuple[float, float]] = []

    def healed() -> bool:
        have = sum(
            1
            for i in sim.inst.values()
            if all(i.ae.state.map.entry(k) == e for k, e in want.items())
        )
        curve.append((round(sim.now - t0, 1), have / n))
        return have == n

    ms = run_until(sim, healed, 60_000)
    out["heal_curve"] = curve
    out["heal_converge_ms"] = ms
    out["heal_converge_ticks"] = None if ms is None else ms / tick
    out["heal_bytes_per_instance"] = (bytes_sent(sim) - b0) / n
    out["heal_wall_s"] = time.perf_counter() - w0

    # 3. steady state
    w0 = time.perf_counter()
    run_until(sim, lambda: quiet(sim), 30_000, step_ms=50)
    b0, t0 = bytes_sent(sim), sim.now
    sim.step(sim.now + 10_000)
    out["idle_bytes_per_s_per_instance"] = (bytes_sent(sim) - b0) / n / ((sim.now - t0) / 1000)
    out["idle_kbit_per_s_per_instance"] = out["idle_bytes_per_s_per_instance"] * 8 / 1000
    out["idle_wall_s"] = time.perf_counter() - w0
    digests = {tuple(i.ae.state.map.super_digests()) for i in sim.inst.values()}
    out["all_digests_equal_at_end"] = len(digests) == 1
    out["dropped_datagrams"] = sim.net.counters.get("dropped_random", 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="50 and 200 instances x 10,000, 1 run")
    args = ap.parse_args()
    records = 10_000 if args.quick else 100_000
    runs_n = 1 if args.quick else args.runs
    configs = [(50, LOSS), (200, LOSS)]
    if not args.quick:
        configs.insert(0, (50, 0.0))
    runs: list[dict[str, Any]] = []
    curves: dict[str, Any] = {}
    for seed in range(runs_n):
        out: dict[str, Any] = {}
        for n, drop in configs:
            if n >= 200 and seed > 0 and not args.quick:
                continue  # 200 x 100,000 takes ~3 min of this box: one seed only
            tag = f"n{n}_loss{int(drop * 100)}"
            r = scenario(n, records, seed, drop)
            curve = r.pop("heal_curve")
            if seed == 0:
                curves[tag] = curve
            out.update({f"{tag}_{k}": v for k, v in r.items()})
            wall = sum(v for k, v in r.items() if k.endswith("wall_s"))
            print(
                f"seed {seed}: {tag} done ({wall:.0f} s wall)",
                flush=True,
            )
        runs.append(out)
    med = medians(runs)
    print_table(
        f"pure protocol on the in-memory network, {records} records, median of {runs_n}",
        med.items(),
        runs,
    )
    path = write_result(
        "sim",
        "pure protocol simulation (bench/bench_sim.py)",
        {
            "records": records,
            "record": "one LWW entry, ~200 B encoded; shared by reference between instances",
            "loss": LOSS,
            "link_delay_ms": [0.2, 2.0],
            "partition_ms": PARTITION_MS,
            "writes_per_side": WRITES_PER_SIDE,
            "tick_ms": GossipConfig().tick_ms,
            "configs": [f"n{n}_loss{int(d * 100)}" for n, d in configs],
            "runs_per_config": {"n50": runs_n, "n200": 1 if not args.quick else runs_n},
            "start": "converged (initial digest exchange marked done)",
        },
        runs,
        {"heal_curves": curves},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
