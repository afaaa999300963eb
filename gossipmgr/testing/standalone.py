"""Standalone instances for tests and benchmarks: the agent's own wiring, Serf faked.

:func:`standalone_agent` builds a :class:`gossipmgr.agent.Agent` from an ``AgentConfig``,
as ``gossipmgr agent`` does (the same replica, job manager, gossip over UDP on a free
loopback port, lease loop, API context, API server on a free loopback port), except that
its Serf connection is a :class:`~gossipmgr.testing.fakeserf.FakeSerf`: alone and healthy,
or sharing a :class:`~gossipmgr.testing.fakeserf.FakeSerfCluster` with other instances.
It waits until the instance holds the lease (``claim=True``) and stops it on exit.

What differs from a daemon, on purpose: no signal handling (a test process keeps its
own), no fsync and a faster job-log flush unless asked, and a day-long lease
(:func:`standalone_config`; any config field can be passed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from gossipmgr.agent import Agent
from gossipmgr.config import AgentConfig, AnsibleConfig
from gossipmgr.gossip.crypto import generate_key
from gossipmgr.runtime.context import RunningAgent
from gossipmgr.testing.fakeserf import FakeSerf, FakeSerfCluster

#: How long an instance may take to start and claim the lease (it claims on its first
#: lease-loop turn once its fake Serf lists it: well under a second unloaded).
START_TIMEOUT_S = 30.0
#: A standalone instance's lease TTL: a day keeps it valid through any test or benchmark.
STANDALONE_LEASE_MS = 24 * 3600 * 1000


def standalone_config(
    root: Path,
    name: str = "i1",
    *,
    token: str | None = None,
    ansible: AnsibleConfig | None = None,
    encrypt_key_file: Path | None = None,
    **kw: Any,
) -> AgentConfig:
    """An instance's config under ``root/name``: API and gossip on free loopback ports;
    ``token`` in a file (None: ``no_auth``); ``kw``: any other ``AgentConfig`` field
    (``api_addr`` too: a restarted instance can keep its port).

    The lease lasts a day and is renewed only at its end (``STANDALONE_LEASE_MS``), so a
    test sees no renewal writes; a test of lease timing passes its own."""
    kw.setdefault("lease_ttl_ms", STANDALONE_LEASE_MS)
    kw.setdefault("lease_renew_ms", STANDALONE_LEASE_MS - 1)
    base = root / name
    base.mkdir(parents=True, exist_ok=True)
    token_file = None
    if token is not None:
        token_file = base / "api.token"
        token_file.write_text(token + "\n")
        token_file.chmod(0o600)
    return AgentConfig(
        name=name,
        data_dir=base / "data",
        api_addr=kw.pop("api_addr", "127.0.0.1:0"),
        gossip_addr="127.0.0.1:0",
        api_token_file=token_file,
        no_auth=token is None,
        encrypt_key_file=encrypt_key_file,
        ansible=ansible if ansible is not None else AnsibleConfig(),
        **kw,
    )


def shared_key(root: Path) -> Path:
    """A gossip key file for instances of one test that gossip with each other."""
    path = root / "gossip.key"
    if not path.exists():
        path.write_text(generate_key() + "\n")
        path.chmod(0o600)
    return path


def build(cfg: AgentConfig, cluster: FakeSerfCluster | None = None, **agent_kw: Any) -> Agent:
    """The agent for ``cfg`` over a fake Serf (in ``cluster``, else alone). Not started."""
    return Agent(cfg, serf=FakeSerf(cfg.name, cluster), **agent_kw)


async def wait_until_holder(agent: RunningAgent, holder: bool = True) -> None:
    """Wait (bounded) until ``agent`` does (or does not) hold the lease."""
    with trio.fail_after(START_TIMEOUT_S):
        while agent.replica.is_holder() != holder:  # noqa: ASYNC110 (state, not an event)
            await trio.sleep(0.05)  # the lease loop decides every 250 ms


@asynccontextmanager
async def standalone_agent(
    cfg: AgentConfig,
    cluster: FakeSerfCluster | None = None,
    *,
    claim: bool = True,
    fsync: bool = False,
    log_flush_s: float = 0.05,
) -> AsyncIterator[Agent]:
    """Run the agent for ``cfg`` over a fake Serf until the block ends.

    ``claim``: wait until it holds the lease (as it does at once when alone). ``fsync``
    and ``log_flush_s`` default to a test's speed, not a daemon's durability.
    """
    agent = build(cfg, cluster, fsync=fsync, log_flush_s=log_flush_s)
    async with trio.open_nursery() as nursery:
        with trio.fail_after(START_TIMEOUT_S):
            await nursery.start(
                lambda task_status: agent.run(signals=False, task_status=task_status)
            )
        try:
            if claim:
                await wait_until_holder(agent)
            yield agent
        finally:
            nursery.cancel_scope.cancel()


def fake_serf(agent: object) -> FakeSerf:
    """The fake Serf connection of a standalone agent (``ctx.agent`` of its API context)."""
    link = getattr(agent, "serf_link", None)
    assert isinstance(link, FakeSerf), "not a standalone agent"
    return link


async def set_serf_healthy(agent: Agent, healthy: bool) -> None:
    """Make the agent's fake Serf (un)reachable and wait until its membership says so."""
    fake_serf(agent).set_healthy(healthy)
    m = agent.membership
    assert m is not None
    with trio.fail_after(START_TIMEOUT_S):
        while m.healthy != healthy:  # noqa: ASYNC110 (a flag, no event to wait on)
            await trio.sleep(0.02)  # the poller retries with backoff (0.1 s doubling)
