"""The majority rule's seeded schedules, long version (tests/test_majority.py runs 100).

    .venv/bin/python bench/majority_sim.py [--seeds 1000] [--first 0] [--comeback A,H]
    .venv/bin/python bench/majority_sim.py [--seeds 1000] [--first 0] --rejoin

Each schedule (``gossipmgr.testing.majorityschedules.run_schedule``): 2-7 instances over
the simulated network, one or two faults (partitions, isolations whose Serf view notices
nothing, holder crashes, two-instance clusters with the solo bound), a cluster node
killed, heals; a quarter of them first the "missed death" fault (an instance whose Serf
agent could not receive when the node died keeps it alive in its view, and spreads that
to every view at its push-pull, until a probe and a suspicion fail it again; the holder
then goes, and that instance often takes over). Checked: epochs only grow; never a
holder on a minority side once every Serf view has caught up and a majority side exists;
after the heal at most one holder (exactly one when one may exist); the dead node
Disappeared everywhere and never back to Discovered. ``--comeback 30,30`` runs them with
other comeback bounds (alive_s, held_s; 30,30 was the bound before the missed-death
corner was closed: 18 of the first 1,000 seeds flap). Prints the failing seeds (replay
one with ``--first SEED --seeds 1``); exit 1 if any.

``--rejoin``: the rejoin schedules instead (``gossipmgr.testing.catchupsim.
run_rejoin_schedule``: catch-up modelled, graceful restarts of one or several instances,
crashes and restarts, partitions, isolations; also checked: never two holders in one
connected group once formed; tests/test_quorum_rejoin.py runs 40).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gossipmgr.testing.catchupsim import run_rejoin_schedule  # noqa: E402
from gossipmgr.testing.majorityschedules import run_schedule  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=1000, help="how many schedules")
    ap.add_argument("--first", type=int, default=0, help="the first seed")
    ap.add_argument("--rejoin", action="store_true", help="the rejoin schedules")
    ap.add_argument(
        "--comeback",
        metavar="ALIVE_S,HELD_S",
        help="comeback bounds instead of production's (e.g. 30,30: one lan push-pull, "
        "the bound before the missed-death corner was closed)",
    )
    a = ap.parse_args(argv)
    bounds = None
    if a.comeback:
        alive_s, held_s = (float(x) for x in a.comeback.split(","))
        bounds = (alive_s, held_s)
    t0 = time.monotonic()
    failed: list[str] = []
    for seed in range(a.first, a.first + a.seeds):
        try:
            if a.rejoin:
                run_rejoin_schedule(seed)
            else:
                run_schedule(seed, bounds)
        except AssertionError as exc:
            failed.append(f"seed {seed}: {exc}")
    took = time.monotonic() - t0
    print(
        f"{a.seeds} schedules (seeds {a.first}-{a.first + a.seeds - 1}) in {took:.1f} s: "
        f"{len(failed)} failed"
    )
    for line in failed:
        print("  " + line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
