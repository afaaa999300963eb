"""The cost of one ``GET /metrics`` scrape, without HTTP: the collector's read of the live
state and prometheus_client's text exposition.

Over an instance's real parts (tests/test_metrics.py's ``open_parts``: a replica with its
store, a gossip service on a loopback socket with ``--peers`` peers, Serf membership and
a job manager not started) whose replica holds ``--nodes`` node records. ``timeit`` runs
``--number`` scrapes ``--repeat`` times; the figure is the median time of one scrape.

    .venv/bin/python bench/bench_metrics.py [--nodes 5000] [--peers 5]

Prints the figures and writes bench/results/metrics.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import trio  # noqa: E402
from _util import print_table, write_result  # noqa: E402
from test_metrics import add_nodes, open_parts  # noqa: E402

from gossipmgr.localcluster import HOST, free_port  # noqa: E402
from gossipmgr.metrics import Metrics  # noqa: E402


def measure(render: Callable[[], object], number: int, repeat: int) -> dict[str, Any]:
    runs = timeit.repeat(render, number=number, repeat=repeat)
    per = [t / number * 1000 for t in runs]
    return {
        "scrape_ms_median": round(statistics.median(per), 3),
        "scrape_ms_min": round(min(per), 3),
        "bytes": len(str(render())),
    }


async def run(
    args: argparse.Namespace, make_render: Callable[[Any], Callable[[], object]]
) -> dict[str, Any]:
    peers = {f"peer-{i}": (HOST, free_port()) for i in range(args.peers)}
    with tempfile.TemporaryDirectory() as tmp:
        async with open_parts(Path(tmp), peers) as parts:
            for first in range(0, args.nodes, 500):
                await add_nodes(parts.replica, first, min(500, args.nodes - first))
            assert len(parts.replica.state.node_names()) == args.nodes
            return measure(make_render(parts), args.number, args.repeat)


def main(make_render: Callable[[Any], Callable[[], object]] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=5000)
    p.add_argument("--peers", type=int, default=5)
    p.add_argument("--number", type=int, default=200)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args()
    render = make_render or (lambda parts: Metrics(parts).render)
    out = trio.run(run, args, render)
    print_table(f"one scrape, {args.nodes} nodes, {args.peers} peers", out.items())
    if make_render is None:
        print(f"written {write_result('metrics', 'one /metrics scrape', vars(args), [out])}")


if __name__ == "__main__":
    main()
