"""The seeded schedules of the default test run, long version (more seeds, same checks).

    .venv/bin/python bench/sim_schedules.py [--lease N] [--gossip N] [--first SEED]

``--lease N`` (default 1000): ``tests/test_lease.py``'s ``run_lease_schedule`` for seeds
``first .. first+N-1`` (2-7 instances over the simulated network with lagging Serf views:
partitions, holder crashes, both, or quiet; then one holder per connected group, growing
epochs, every stale action fenced). The default run takes the first 250.

``--gossip N`` (default 1000): ``tests/test_gossip_protocol.py``'s ``run_schedule`` (5
instances, 20% loss, 10% duplication, reordering, clock skew, an optional partition; then
convergence and the datagram bound). The default run takes the first 300.

``--restart N`` (default 1000): ``tests/test_catchup_since.py``'s ``run_restart_schedule``
(3-5 instances, loss, duplication, delays; one restarts after missing writes, its
catch-up starting with SINCE, sometimes with a peer gone; then convergence). The default
run takes the first 12.

Prints the failing seeds (replay one with ``--first SEED --lease 1 --gossip 0``); exit 1
if any failed. Pure code: no trio, no sockets.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from test_catchup_since import run_restart_schedule  # noqa: E402
from test_gossip_protocol import run_schedule  # noqa: E402
from test_lease import run_lease_schedule  # noqa: E402


def run(name: str, fn: Callable[[int], None], first: int, n: int) -> list[str]:
    t0 = time.monotonic()
    failed: list[str] = []
    for seed in range(first, first + n):
        try:
            fn(seed)
        except AssertionError as exc:
            failed.append(f"{name} seed {seed}: {exc}")
    took = time.monotonic() - t0
    seeds = f"seeds {first}-{first + n - 1}"
    print(f"{name}: {n} schedules ({seeds}) in {took:.1f} s: {len(failed)} failed")
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lease", type=int, default=1000, help="lease schedules")
    ap.add_argument("--gossip", type=int, default=1000, help="anti-entropy schedules")
    ap.add_argument("--restart", type=int, default=1000, help="restart catch-up schedules")
    ap.add_argument("--first", type=int, default=0, help="the first seed")
    a = ap.parse_args(argv)
    failed: list[str] = []
    if a.lease:
        failed += run("lease", run_lease_schedule, a.first, a.lease)
    if a.gossip:
        failed += run("gossip", run_schedule, a.first, a.gossip)
    if a.restart:
        failed += run("restart", run_restart_schedule, a.first, a.restart)
    for line in failed:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
