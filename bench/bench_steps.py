"""Scheduler rounds per write: trio task steps and task spawns per ``PUT /globals/{key}``.

Run:  .venv/bin/python bench/bench_steps.py [--writes 300]
      PYTHONPATH=<other tree> .venv/bin/python bench/bench_steps.py   (another checkout)

A standalone instance (the agent's wiring over a fake Serf, fsync on) serves the API in
this process; a client thread sends ``--writes`` sequential PUTs (after 20 to warm up) over
one keep-alive connection. A trio instrument counts the server's task steps (each one a
round through trio's scheduler) and the tasks spawned while they run, per write and per
task. Unlike time or CPU, these counts do not depend on the machine's load, so a change of
the request path can be compared on a shared machine (docs/benchmarks.md, "Write ->
visible"). Prints the counts; writes nothing.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import httpx
import trio


class Steps(trio.abc.Instrument):
    """Task steps (by task name) and spawns while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.spawned = 0
        self.by_task: dict[str, int] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.by_task[task.name] = self.by_task.get(task.name, 0) + 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.spawned += 1


def client(url: str, n: int, steps: Steps) -> None:
    with httpx.Client(timeout=30) as c:
        for i in range(20):
            c.put(f"{url}/globals/warm{i}", json={"value": "w"}).raise_for_status()
        steps.on = True
        for i in range(n):
            c.put(f"{url}/globals/k{i:06d}", json={"value": "v" * 160}).raise_for_status()
        steps.on = False


async def measure(n: int) -> Steps:
    from gossipmgr.testing.standalone import standalone_agent, standalone_config

    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = standalone_config(Path(tmp), "s1")
        async with standalone_agent(cfg, fsync=True) as agent:
            await trio.to_thread.run_sync(client, agent.api_url, n, steps)
    return steps


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--writes", type=int, default=300)
    args = ap.parse_args()
    steps = trio.run(measure, args.writes)
    n = args.writes
    total = sum(steps.by_task.values())
    print(f"per write: {total / n:.1f} task steps, {steps.spawned / n:.2f} tasks spawned")
    for name, k in sorted(steps.by_task.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {k / n:6.2f}  {name}")


if __name__ == "__main__":
    main()
