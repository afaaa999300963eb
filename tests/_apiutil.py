"""Helpers shared by the API, API fuzz and CLI tests, and a standalone server for subprocesses.

``python tests/_apiutil.py --data DIR --url-file FILE [--token T] [--tokens-file F]
[--nodes N] [--playbooks DIR] [--api-addr HOST:PORT] [--watch-history N]`` runs one
standalone gossipmgr instance (the agent's wiring over a fake Serf: real Replica on disk,
real JobManager running the shipped playbooks against ansible_connection=local hosts) with
its API on 127.0.0.1, port 0, writes its URL to
FILE once bound, and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

import gossipmgr
from gossipmgr.api import serve
from gossipmgr.config import AnsibleConfig
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.testing.fakeserf import FakeSerfCluster
from gossipmgr.testing.standalone import fake_serf, standalone_agent, standalone_config

PLAYBOOKS = Path(gossipmgr.__file__).parent / "playbooks"
LOCAL_HOST_VARS = {
    "ansible_connection": "local",
    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
}


def ansible_config(root: Path) -> AnsibleConfig:
    """The [ansible] section of the tests' instances: the shipped playbooks against
    ansible_connection=local hosts."""
    return AnsibleConfig(
        host_vars=LOCAL_HOST_VARS,
        # the sample playbooks write their marker files under this root, not /tmp
        extra_variables={
            "gossipmgr_demo_root": str(root / "demo"),
            # the shipped playbooks' fence record, not /var/lib/gossipmgr/fence
            "gossipmgr_fence_dir": str(root / "fence"),
        },
        timeout_s=120,
        # no node agent runs in these tests: the discover job ends with its playbook
        discover_join_timeout_s=0,
    )


@asynccontextmanager
async def standalone(
    root: Path,
    name: str = "i1",
    *,
    token: str | None = None,
    claim: bool = True,
    cluster: FakeSerfCluster | None = None,
    fsync: bool = False,
    **cfg_kw: Any,
) -> AsyncIterator[AgentApiContext]:
    """A standalone instance in ``root/name`` (gossipmgr.testing.standalone: the agent's
    wiring over a fake Serf); yields its API context (``ctx.agent`` is the agent).

    ``cluster``: a fake Serf cluster shared with other instances (they then gossip with
    each other; give them one ``encrypt_key_file``). ``claim=False`` does not wait for
    this instance to hold the lease."""
    cfg_kw.setdefault("ansible", ansible_config(root / name))
    cfg = standalone_config(root, name, token=token, **cfg_kw)
    async with standalone_agent(cfg, cluster, claim=claim, fsync=fsync) as agent:
        assert agent.api_ctx is not None
        yield agent.api_ctx


async def add_nodes(ctx: AgentApiContext, n: int, prefix: str = "node") -> list[str]:
    """Discover ``n`` nodes: they join the instance's (fake) Serf, as real nodes do, and are
    recorded through the monitor-event path (holder only); returns once membership lists
    them (so the periodic reconcile against Serf agrees with the inventory)."""
    nodes = [
        {"label": prefix, "serial": str(i), "addr": f"127.0.1.{i % 250 + 1}"} for i in range(n)
    ]
    serf = fake_serf(ctx.agent)
    for nd in nodes:
        tags = {"NodeLabel": nd["label"], "NodeSerial": nd["serial"], "NodeAddr": nd["addr"]}
        serf.cluster.set_member(f"{nd['label']}-{nd['serial']}", tags)
    res = await ctx.jobs.set_monitor_event("discovered", nodes)
    names = list(res["nodes"])
    m = ctx.agent.membership
    assert m is not None
    with trio.fail_after(30):
        while not all(nm in m.nodes and m.nodes[nm].up for nm in names):
            await m.wait_polled()
    return names


@asynccontextmanager
async def serving(app: Any, **kw: Any) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:0 in a nursery; yields the URL; shuts down on exit."""
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        url = await nursery.start(
            lambda task_status: serve(
                app, "127.0.0.1", 0, shutdown_trigger=stop.wait, task_status=task_status, **kw
            )
        )
        try:
            yield url
        finally:
            stop.set()


async def _main(args: argparse.Namespace) -> None:
    root = Path(args.data)
    kw: dict[str, Any] = {}
    if args.tokens_file:
        kw["api_tokens_file"] = Path(args.tokens_file)
    if args.api_addr:
        kw["api_addr"] = args.api_addr
    if args.watch_history:
        kw["watch_history"] = args.watch_history
    if args.playbooks:
        kw["playbook_dir"] = Path(args.playbooks)
    async with standalone(root, token=args.token, **kw) as ctx:
        if args.nodes:
            await add_nodes(ctx, args.nodes)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            url = ctx.agent.api_url  # the instance's own API server
            Path(args.url_file + ".tmp").write_text(url)
            Path(args.url_file + ".tmp").rename(args.url_file)
            async for _ in signals:
                break


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--url-file", required=True)
    p.add_argument("--token")
    p.add_argument("--tokens-file", help="named tokens (api_tokens_file)")
    p.add_argument("--nodes", type=int, default=0)
    p.add_argument("--api-addr", help="default 127.0.0.1:0 (a free port)")
    p.add_argument("--watch-history", type=int, default=0, help="changes the feed keeps")
    p.add_argument("--playbooks", help="playbook_dir (default: the packaged playbooks)")
    trio.run(_main, p.parse_args(sys.argv[1:]))
