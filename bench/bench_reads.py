"""Single-key reads against unrelated state: GET of one global, one node, one job.

A standalone instance (gossipmgr.testing.standalone: the agent's own wiring, Quart-Trio on
hypercorn, over a fake Serf) holds one global, one node and one job record that are read,
plus N *unrelated* records joined straight into its replica: N/2 other globals and N/2
other node records (inventory, monitoring and host-group entries each), for N = 0, 10,000
and 100,000. Each read is timed sequentially, one request at a time:

* ``inproc``: through the app's test client (the whole route, no socket);
* ``http``: over real HTTP on 127.0.0.1 (httpx, keep-alive; the client runs in the
  server's process and trio loop, so its own cost is in the figure too).

A read that costs what it reads takes the same time at every N.

    .venv/bin/python bench/bench_reads.py [--sizes 0,10000,100000] [--requests 200] [--runs 3]

Prints a table (median over runs of each run's median latency, ms) and writes
bench/results/reads.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._util import node_record_entries, print_table, seed_ts, write_result  # noqa: E402
from gossipmgr.core.clock import Timestamp  # noqa: E402
from gossipmgr.core.crdt import Entry, Key  # noqa: E402
from gossipmgr.core.job import JobRecord, make_job_id  # noqa: E402
from gossipmgr.core.state import global_key, job_key  # noqa: E402

GLOBAL = "target"
NODE = "node-999999"  # node_record_entries(999_999): sorts after every unrelated node
JOB = make_job_id(1_700_000_000_000, 1, "bench")
READS = {
    "global": f"/globals/{GLOBAL}",
    "node": f"/info/node/{NODE}",
    "job": f"/info/job/{JOB}",
}


def _disappeared(entries: list[tuple[Key, Entry]]) -> list[tuple[Key, Entry]]:
    # Disappeared, not Discovered: the holder's reconcile against the fake Serf (which lists
    # none of them) then has nothing to write while the reads are timed.
    out = []
    for k, e in entries:
        if k[2] == "inv":
            e = Entry(e.ts, {**e.value, "state": "Disappeared", "prev_state": "Discovered"})
        out.append((k, e))
    return out


def targets() -> list[tuple[Key, Entry]]:
    ts = seed_ts(0, "target")
    job = JobRecord(
        id=JOB,
        desc="commission [node-999999]",
        task="commission",
        workflow="commission",
        nodes=(NODE,),
        status="Complete",
        error="",
        epoch=1,
        runner="bench",
        created_ms=ts.ms,
        started_ms=ts.ms,
        ended_ms=ts.ms,
    )
    return [
        (global_key(GLOBAL), Entry(ts, {"a": 1})),
        (job_key(JOB), Entry(ts, job.to_value())),
        *_disappeared(node_record_entries(999_999, ts)),
    ]


def unrelated(start: int, stop: int) -> list[tuple[Key, Entry]]:
    """Records ``start..stop``: even ones globals, odd ones node records."""
    base = seed_ts(0)
    out: list[tuple[Key, Entry]] = []
    for i in range(start, stop):
        ts = Timestamp(base.ms, i, "seed")
        if i % 2 == 0:
            out.append((global_key(f"k{i:07d}"), Entry(ts, f"{i}:" + "v" * 160)))
        else:
            out += _disappeared(node_record_entries(i, ts))
    return out


async def _time(call: Any, n: int) -> dict[str, float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        status = await call()
        lat.append((time.perf_counter() - t0) * 1000)
        if status != 200:
            raise RuntimeError(f"read answered {status}")
    lat.sort()
    return {"p50": statistics.median(lat), "p99": lat[min(len(lat) - 1, int(0.99 * len(lat)))]}


async def one_run(sizes: list[int], requests: int) -> dict[str, Any]:
    import httpx

    from gossipmgr.api import create_app
    from gossipmgr.testing.standalone import standalone_agent, standalone_config

    row: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = standalone_config(Path(tmp), "bench", serf_profile="wan")
        async with standalone_agent(cfg) as agent:
            assert agent.api_ctx is not None
            state = agent.replica.state
            state.apply(targets())
            client = create_app(agent.api_ctx).test_client()
            have = 0
            async with httpx.AsyncClient(base_url=agent.api_url, timeout=60) as http:
                for n in sizes:
                    state.apply(unrelated(have, n))
                    have = n
                    for what, path in READS.items():

                        async def inproc(path: str = path) -> int:
                            r = await client.get(path)
                            await r.get_data()
                            return r.status_code

                        async def over_http(path: str = path) -> int:
                            r = await http.get(path)
                            return r.status_code

                        for mode, call in (("inproc", inproc), ("http", over_http)):
                            await call()  # warm-up
                            t = await _time(call, requests)
                            row[f"{what}_{mode}_{n}_p50_ms"] = round(t["p50"], 3)
                            row[f"{what}_{mode}_{n}_p99_ms"] = round(t["p99"], 3)
                    row[f"entries_{n}"] = len(state)
    return row


def main() -> None:
    import trio

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="0,10000,100000")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    runs = [trio.run(one_run, sizes, args.requests) for _ in range(args.runs)]
    params = {"sizes": sizes, "requests": args.requests}
    out = write_result(
        "reads",
        "GET of one global / node / job, median ms, at N unrelated records",
        params,
        runs,
    )
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median over {len(runs)} run(s) of each run's median (p50) latency, ms")
    print(f"{'read':18}" + "".join(f"{f'N={n:,}':>14}" for n in sizes) + f"{'ratio':>9}")
    for what in READS:
        for mode in ("inproc", "http"):
            vals = [med[f"{what}_{mode}_{n}_p50_ms"] for n in sizes]
            ratio = vals[-1] / vals[0] if vals[0] else float("nan")
            print(
                f"{what + ' ' + mode:18}" + "".join(f"{v:>14.3f}" for v in vals) + f"{ratio:>8.2f}x"
            )
    print()
    print_table("all figures (median over runs)", sorted(med.items()), runs)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
