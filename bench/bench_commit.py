"""The local write path without HTTP: sequential ``Replica.commit`` calls on a standalone
instance, as ``PUT /globals/{key}`` and ``PATCH /globals`` make them.

Run:  .venv/bin/python bench/bench_commit.py [--writes 2000] [--keys 1] [--runs 3] [--nofsync]
      PYTHONPATH=<other tree> .venv/bin/python bench/bench_commit.py   (another checkout)

A standalone instance (the agent's wiring over a fake Serf, fsync on unless ``--nofsync``,
holding the lease, as a daemon has it) commits ``--writes`` deltas one after another, each
of ``--keys`` globals with a ~160-character string value (one delta: what the route hands
to the replica after its own checks), and lets what each commit wakes (change feed,
webhooks, the holder's scans) run before the next one. Per run: commits/s (wall), CPU per
commit (process time: every thread of this process, the store's flush thread included),
fdatasync calls per commit (counted by wrapping the store's fsync seam: the idle commit of
the log's end included), and trio task steps per commit. Prints one JSON line per run and
the medians; ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio.testing

VALUE = "v" * 160


class Steps(trio.abc.Instrument):
    def __init__(self) -> None:
        self.on = False
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.steps += 1


def one_run(args: argparse.Namespace) -> dict[str, float]:
    from gossipmgr.core.state import global_key
    from gossipmgr.runtime import store as store_mod
    from gossipmgr.testing.standalone import standalone_agent, standalone_config

    fsyncs = [0]
    real_fsync = store_mod._sys_fsync

    def counted(fd: int) -> None:
        fsyncs[0] += 1
        real_fsync(fd)

    store_mod._sys_fsync = counted
    steps = Steps()

    async def main() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = standalone_config(Path(tmp), "w1")
            async with standalone_agent(cfg, fsync=not args.nofsync) as agent:
                rep = agent.replica
                trio.lowlevel.add_instrument(steps)

                async def write(i: int) -> None:
                    keys = [global_key(f"k{i}.{j}") for j in range(args.keys)]

                    def make(st: Any, ts: Any) -> Any:
                        d = st.d_set(keys[0], VALUE, ts)
                        for k in keys[1:]:
                            d.merge(st.d_set(k, VALUE, ts).items())
                        return d

                    await rep.commit(make)
                    await trio.testing.wait_all_tasks_blocked()

                for i in range(50):  # warm up
                    await write(-1 - i)
                f0, steps.on = fsyncs[0], True
                c0, t0 = time.process_time(), time.perf_counter()
                for i in range(args.writes):
                    await write(i)
                cpu, wall = time.process_time() - c0, time.perf_counter() - t0
                steps.on = False
                n = args.writes
                return {
                    "commits_per_s": round(n / wall, 1),
                    "cpu_us_per_commit": round(cpu / n * 1e6, 1),
                    "fdatasyncs_per_commit": round((fsyncs[0] - f0) / n, 3),
                    "steps_per_commit": round(steps.steps / n, 2),
                }

    return trio.run(main)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writes", type=int, default=2000)
    p.add_argument("--keys", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--nofsync", action="store_true")
    p.add_argument("--json", type=Path)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    import subprocess

    runs = []
    for _ in range(args.runs):  # each run in a fresh process: no warm caches carried over
        cmd = [sys.executable, __file__, "--one", "--writes", str(args.writes)]
        cmd += ["--keys", str(args.keys)] + (["--nofsync"] if args.nofsync else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print("median", json.dumps(med))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "median": med}, indent=1) + "\n")


if __name__ == "__main__":
    main()
