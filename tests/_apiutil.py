"""Helpers shared by the API, API fuzz and CLI tests, and a standalone server for subprocesses.

``python tests/_apiutil.py --data DIR --url-file FILE [--token T] [--nodes N]`` runs one
standalone gossipmgr API (real Replica on disk, real JobManager running the shipped
playbooks against ansible_connection=local hosts) on 127.0.0.1, port 0, writes its URL to
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
from gossipmgr.api import create_app, serve
from gossipmgr.runtime.ansible import AnsibleSettings
from gossipmgr.runtime.jobs import JobManager
from gossipmgr.runtime.replica import Replica
from gossipmgr.testing.standalone import StandaloneContext

PLAYBOOKS = Path(gossipmgr.__file__).parent / "playbooks"
LOCAL_HOST_VARS = {
    "ansible_connection": "local",
    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
}


def ansible_settings(root: Path) -> AnsibleSettings:
    return AnsibleSettings(
        playbook_dir=PLAYBOOKS,
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
    forward_to: str | None = None,
    fsync: bool = False,
) -> AsyncIterator[StandaloneContext]:
    """A StandaloneContext over a Replica in ``root/name`` with a running JobManager.

    ``claim=False`` leaves the lease unclaimed: the instance is then not the holder and
    forwards job requests to ``forward_to``."""
    base = root / name
    rep = Replica(name, data_dir=base / "data", fsync=fsync)
    rep.open()
    try:
        jobs = JobManager(rep, lambda: ansible_settings(base), base / "work", log_flush_s=0.05)
        ctx = StandaloneContext(rep, jobs, token=token, forward_to=forward_to)
        if claim:
            await ctx.claim_lease()
        async with trio.open_nursery() as nursery:
            await nursery.start(jobs.run)
            try:
                yield ctx
            finally:
                nursery.cancel_scope.cancel()
    finally:
        await rep.aclose()


async def add_nodes(ctx: StandaloneContext, n: int, prefix: str = "node") -> list[str]:
    """Discover ``n`` nodes through the real monitor-event path (holder only)."""
    nodes = [
        {"label": prefix, "serial": str(i), "addr": f"127.0.1.{i % 250 + 1}"} for i in range(n)
    ]
    res = await ctx.jobs.set_monitor_event("discovered", nodes)
    return list(res["nodes"])


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
    async with standalone(root, token=args.token) as ctx:
        if args.nodes:
            await add_nodes(ctx, args.nodes)
        app = create_app(ctx)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with serving(app) as url:
                ctx.api_url = url
                Path(args.url_file + ".tmp").write_text(url)
                Path(args.url_file + ".tmp").rename(args.url_file)
                async for _ in signals:
                    break


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True)
    p.add_argument("--url-file", required=True)
    p.add_argument("--token")
    p.add_argument("--nodes", type=int, default=0)
    trio.run(_main, p.parse_args(sys.argv[1:]))
