"""Long adversarial crash run: no acknowledged write may be lost (issue 14).

Run:  .venv/bin/python bench/crash.py [--reps 20] [--seed 1] [--instances 3] [--modes ...]

A cluster of ``--instances`` real agents on loopback (real Serf, ``local`` profile, free
ports). Each repetition runs tests/_crashload.py's ``run_rep`` on the first instance (the
victim): 8 writer threads PUT unique keys to it over real HTTP while it compacts every few
dozen writes; then, cycling through the modes, it is SIGKILLed at a seeded random moment
(``kill9``), stopped cleanly (``sigint``), or SIGKILLs itself at a named point inside a
compaction or a commit (``point:<name>``, via ``GOSSIPMGR_TEST_CRASH_AT``); it is restarted
and every write answered 200 is checked on it and on every peer. Prints one line per
repetition and the totals; writes bench/results/crash.json. Exits 1 if any acknowledged
write was lost or any answer was neither 200 nor 503.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

from _crashload import COMPACT_BYTES, MODES, WRITERS, environ, expected_exit, run_rep  # noqa: E402
from _util import write_result  # noqa: E402

from gossipmgr.localcluster import LocalCluster  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--instances", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    runs = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gmgr-crash-") as tmp:
        c = LocalCluster(Path(tmp) / "c", lease_ttl_ms=6_000)
        try:
            names = [f"g{i + 1}" for i in range(args.instances)]
            with environ(GOSSIPMGR_TEST_COMPACT_BYTES=str(COMPACT_BYTES)):
                for n in names:
                    c.add_instance(n)
            for n in names:
                c.wait_ready(n, 60)
            for rep in range(args.reps):
                mode = args.modes[rep % len(args.modes)]
                res = run_rep(c, names[0], rep, mode, rng, f"s{args.seed}")
                ok_exit = expected_exit(mode, res.exit_code)
                print(
                    f"rep {rep:3d} {mode:30s} n={res.n:<4d} acked={res.acked:6d} "
                    f"lost={res.lost} refused={res.refused} unexpected={len(res.unexpected)} "
                    f"exit={res.exit_code}{'' if ok_exit else ' (UNEXPECTED)'} "
                    f"compactions_seen={res.compactions_seen} {res.seconds:.1f}s",
                    flush=True,
                )
                runs.append(res.summary() | {"exit_ok": ok_exit})
        finally:
            c.close()
    acked = sum(r["acked"] for r in runs)
    lost = sum(r["lost"] for r in runs)
    unexpected = sum(len(r["unexpected"]) for r in runs)
    bad_exit = sum(not r["exit_ok"] for r in runs)
    print(
        f"\n{len(runs)} repetitions, {args.instances} instances, {WRITERS} writers, "
        f"compaction every {COMPACT_BYTES} B of log: {acked} writes acknowledged, {lost} lost, "
        f"{unexpected} unexpected answers, {bad_exit} unexpected exits, "
        f"{time.monotonic() - t0:.0f} s"
    )
    out = write_result(
        "crash",
        "acknowledged writes lost across kill -9 / SIGINT / crash points inside compactions",
        {
            "reps": args.reps,
            "seed": args.seed,
            "instances": args.instances,
            "writers": WRITERS,
            "compact_bytes": COMPACT_BYTES,
            "modes": args.modes,
        },
        runs,
        {"total": {"acked": acked, "lost": lost, "unexpected": unexpected, "bad_exit": bad_exit}},
    )
    print(f"wrote {out}")
    return 1 if lost or unexpected or bad_exit else 0


if __name__ == "__main__":
    sys.exit(main())
