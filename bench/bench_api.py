"""API throughput: requests/s for GET /info/node/<n> and GET /info/nodes with 10,000 nodes.

The server is a standalone instance (gossipmgr.testing.standalone: the agent's own wiring,
Quart-Trio on hypercorn with the shielded send, over a fake Serf) whose replica holds 10,000
node records, written by direct commits (``inventory.d_discovered``
deltas, in batches). Load comes from a SEPARATE process (this script with ``--worker``):
asyncio + httpx with N concurrent keep-alive connections, for a fixed time, loopback only.
The server and the load generator share the machine's cores, so the figures are a lower
bound of what a dedicated server does; ratios between rows matter more than absolutes.

    .venv/bin/python bench/bench_api.py [--nodes 10000] [--seconds 5] [--conns 10]

Prints a table and writes bench/results/api.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


# --------------------------------------------------------------------------- load worker


def worker(url: str, kind: str, conns: int, seconds: float, nodes: int) -> dict[str, Any]:
    """Run in the worker process: hammer one route, return counts and latencies."""
    import asyncio

    import httpx

    lat: list[float] = []
    errors = 0
    rng = random.Random(0)

    def path() -> str:
        if kind == "node":
            return f"/info/node/node-{rng.randrange(nodes)}"
        return {"nodes": "/info/nodes", "health": "/health"}[kind]

    async def one(client: httpx.AsyncClient, stop_at: float, record: bool) -> None:
        nonlocal errors
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            r = await client.get(path())
            await r.aread()
            if r.status_code != 200:
                errors += 1
            elif record:
                lat.append(time.perf_counter() - t0)

    async def main() -> float:
        limits = httpx.Limits(max_connections=conns, max_keepalive_connections=conns)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
            # warm-up: open the connections, fill caches
            await asyncio.gather(
                *(one(client, time.perf_counter() + 0.5, False) for _ in range(conns))
            )
            t0 = time.perf_counter()
            await asyncio.gather(*(one(client, t0 + seconds, True) for _ in range(conns)))
            return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else 0.0

    return {
        "requests": len(lat),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(lat) / elapsed, 1),
        "p50_ms": round(pct(0.50), 2),
        "p99_ms": round(pct(0.99), 2),
    }


# --------------------------------------------------------------------------- server side


async def populate(rep: Any, n: int, batch: int = 500) -> float:
    from gossipmgr.core import inventory as inv
    from gossipmgr.core.state import combine

    t0 = time.perf_counter()
    for start in range(0, n, batch):
        names = range(start, min(n, start + batch))

        def make(state: Any, ts: Any, names: range = names) -> Any:
            return combine(
                *(
                    inv.d_discovered(
                        state,
                        f"node-{i}",
                        "node",
                        str(i),
                        f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                        1,
                        ts,
                    )
                    for i in names
                )
            )

        await rep.commit(make)
    return time.perf_counter() - t0


async def run_bench(args: argparse.Namespace) -> dict[str, Any]:
    import trio

    from gossipmgr.runtime.replica import Replica
    from gossipmgr.testing.standalone import standalone_agent, standalone_config

    with tempfile.TemporaryDirectory() as tmp:
        # The node records are written first, then the instance starts on them (restored
        # from disk, as an agent restarts). Its Serf is a fake that lists no node: the
        # reconcile would mark them Disappeared once absent for two push-pull intervals,
        # 120 s with the wan profile, well after the runs below.
        cfg = standalone_config(Path(tmp), "bench", serf_profile="wan")
        rep = Replica("bench", data_dir=cfg.data_dir / "state", fsync=False)
        rep.open()
        try:
            fill_s = await populate(rep, args.nodes)
            assert len(rep.state.node_names()) == args.nodes
        finally:
            await rep.aclose()
        async with standalone_agent(cfg) as agent:
            url = agent.api_url
            rows: list[dict[str, Any]] = []
            for kind, route, conns in (
                ("health", "GET /health", args.conns),
                ("node", "GET /info/node/<n>", args.conns),
                ("nodes", f"GET /info/nodes ({args.nodes} nodes)", args.nodes_conns),
            ):
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    url,
                    kind,
                    str(conns),
                    str(args.seconds),
                    str(args.nodes),
                ]
                with trio.fail_after(args.seconds * 4 + 60):
                    proc = await trio.run_process(cmd, capture_stdout=True)
                res = json.loads(proc.stdout)
                rows.append({"route": route, "connections": conns, **res})
            return {"fill_seconds": round(fill_s, 2), "rows": rows}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, kind, conns, seconds, nodes = sys.argv[2:7]
        if not url.startswith("http://127."):
            raise SystemExit("the load generator targets loopback only")
        print(
            json.dumps(worker(url, kind, min(int(conns), 64), min(float(seconds), 60), int(nodes)))
        )
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=10_000)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--conns", type=int, default=10)
    p.add_argument(
        "--nodes-conns",
        type=int,
        default=2,
        help="connections for GET /info/nodes (each answer is megabytes)",
    )
    args = p.parse_args()

    import trio

    load_before = list(os.getloadavg())  # other work on a shared machine skews every row
    out = trio.run(run_bench, args)
    print(f"{args.nodes} nodes written in {out['fill_seconds']} s (direct commits)\n")
    hdr = f"{'route':<34} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}"
    print(hdr)
    print("-" * len(hdr))
    for r in out["rows"]:
        print(
            f"{r['route']:<34} {r['connections']:>5} {r['rps']:>9} {r['p50_ms']:>8} "
            f"{r['p99_ms']:>8} {r['errors']:>6}"
        )
    result = {
        "bench": "api",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": _cpus(),
            "loadavg_before": load_before,
            "loadavg_after": list(os.getloadavg()),
            "note": "server and load generator share the cores",
        },
        "params": vars(args),
        **out,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "api.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nload average before/after: {load_before} / {result['machine']['loadavg_after']}")
    print(f"written {HERE / 'results' / 'api.json'}")


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
