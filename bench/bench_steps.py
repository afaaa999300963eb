"""Scheduler rounds per write: trio task steps and task spawns per ``PUT /globals/{key}``.

Run:  .venv/bin/python bench/bench_steps.py [--writes 300] [--peers 2]
      PYTHONPATH=<other tree> .venv/bin/python bench/bench_steps.py   (another checkout)

A standalone instance (the agent's wiring over a fake Serf, fsync on) serves the API in
this process; a client thread sends ``--writes`` sequential PUTs (after 20 to warm up) over
one keep-alive connection. A trio instrument counts the server's task steps (each one a
round through trio's scheduler) and the tasks spawned while they run, per write and per
task. Unlike time or CPU, these counts do not depend on the machine's load, so a change of
the request path can be compared on a shared machine (docs/benchmarks.md, "Write ->
visible"). Prints the counts; writes nothing.

``--peers N``: N more standalone instances in the same process and the same (fake) Serf
cluster, gossiping with the writer over real UDP with a shared key (the writer holds the
lease); a write is counted once it is on every peer. The counts are then those of the whole
process, the peers' receiving included, per write; with ``--peers 2`` the writer's part is
what changes between two trees whose receive path is the same. Also counted then: the
writer's gossip datagrams sent per write, and how many of them its send task sent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio


class Steps(trio.abc.Instrument):
    """Task steps (by task name) and spawns while ``on``."""

    def __init__(self) -> None:
        self.on = False
        self.spawned = 0
        self.by_task: dict[str, int] = {}
        self.sent: dict[str, float] = {}

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.by_task[task.name] = self.by_task.get(task.name, 0) + 1

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        if self.on:
            self.spawned += 1


def client(url: str, n: int, steps: Steps, peers: list[Any]) -> None:
    with httpx.Client(timeout=30) as c:
        for i in range(20):
            c.put(f"{url}/globals/warm{i}", json={"value": "w"}).raise_for_status()
        _wait_on(peers, "warm19")
        steps.on = True
        for i in range(n):
            c.put(f"{url}/globals/k{i:06d}", json={"value": "v" * 160}).raise_for_status()
        _wait_on(peers, f"k{n - 1:06d}")
        steps.on = False


def _wait_on(peers: list[Any], key: str) -> None:
    """Until every peer holds ``key`` (read from this thread: a dict lookup)."""
    deadline = time.monotonic() + 30
    while not all(p.replica.state.has_global(key) for p in peers):
        if time.monotonic() > deadline:
            raise SystemExit(f"{key} did not reach every peer in 30 s")
        time.sleep(0.001)


async def measure(n: int, peers: int) -> Steps:
    from contextlib import AsyncExitStack

    from gossipmgr.testing.fakeserf import FakeSerfCluster
    from gossipmgr.testing.standalone import shared_key, standalone_agent, standalone_config

    steps = Steps()
    trio.lowlevel.add_instrument(steps)
    with tempfile.TemporaryDirectory() as tmp:
        kw: dict[str, Any] = {}
        if peers:
            kw = {"encrypt_key_file": shared_key(Path(tmp))}
        cluster = FakeSerfCluster() if peers else None
        async with AsyncExitStack() as stack:
            agent = await stack.enter_async_context(
                standalone_agent(standalone_config(Path(tmp), "s1", **kw), cluster, fsync=True)
            )
            others = [
                await stack.enter_async_context(
                    standalone_agent(
                        standalone_config(Path(tmp), f"s{i + 2}", **kw),
                        cluster,
                        claim=False,
                        fsync=True,
                    )
                )
                for i in range(peers)
            ]
            sent0 = _sent(agent)
            await trio.to_thread.run_sync(client, agent.api_url, n, steps, others)
            sent1 = _sent(agent)
            steps.sent = {k: (sent1.get(k, 0) - sent0.get(k, 0)) / n for k in sent1}
    return steps


def _sent(agent: Any) -> dict[str, int]:
    """The writer's gossip counters (datagrams sent, and those pushed by the writer's task:
    ``pushed_now`` where the tree has it)."""
    counters = getattr(agent.gossip, "counters", {})
    return {k: int(counters.get(k, 0)) for k in ("datagrams_sent", "pushed_now")}


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--writes", type=int, default=300)
    ap.add_argument("--peers", type=int, default=0)
    args = ap.parse_args()
    steps = trio.run(measure, args.writes, args.peers)
    n = args.writes
    total = sum(steps.by_task.values())
    print(f"per write: {total / n:.1f} task steps, {steps.spawned / n:.2f} tasks spawned")
    for name, k in sorted(steps.by_task.items(), key=lambda kv: -kv[1])[:10]:
        print(f"  {k / n:6.2f}  {name}")
    if steps.sent:
        print(
            "writer's gossip, per write: "
            + ", ".join(f"{k} {v:.2f}" for k, v in steps.sent.items())
        )


if __name__ == "__main__":
    main()
