"""The agent's connection to Serf: an embedded ``serf agent`` child, or an existing agent.

Both give the agent what it needs of Serf and nothing more: a factory of RPC connections
(for membership and the refusal log), a task that keeps our member's tags in place, and
whether the Serf traffic is encrypted. Tests plug in a fake with the same shape
(``gossipmgr.testing.fakeserf``); that is the only part of an agent they replace.

Failure policy (docs/design.md): Serf being down never stops the daemon; only a
misconfiguration found at start (an external agent under another node name) does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

import trio

from gossipmgr.errors import ConfigError, SerfError
from gossipmgr.serf.backoff import Backoff
from gossipmgr.serf.client import open_serf_client, serf_connector
from gossipmgr.serf.membership import Connect
from gossipmgr.serf.process import SerfAgentProcess

log = logging.getLogger("gossipmgr.agent")

#: How long the start-up check of an external Serf agent's node name waits for its RPC.
EXTERNAL_SERF_CHECK_S = 5.0
#: The embedded agent's restart backoff: doubling from 1 s up to this.
SERF_RESTART_MAX_S = 30.0


class SerfLink(Protocol):
    """What an agent uses of its Serf agent."""

    @property
    def process(self) -> SerfAgentProcess | None:
        """The embedded agent's supervisor, or None when we did not start one."""
        ...

    def connector(self) -> Connect:
        """Fresh RPC connections to the agent, one per call."""
        ...

    def encrypted(self) -> bool | None:
        """Whether Serf's own traffic is encrypted (None: not known)."""
        ...

    async def run(
        self,
        tags: Mapping[str, str],
        healthy: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Start (or find) the agent, reporting started once it may be used; then keep our
        ``tags`` on our member for ever. ``healthy``: whether membership reaches Serf now."""
        ...


class _SerfRpc:
    """A Serf agent reached over RPC at ``rpc`` (with ``rpc_auth``, if it sets one)."""

    process: SerfAgentProcess | None = None

    def __init__(
        self, name: str, rpc: tuple[str, int], rpc_auth: str | None, encrypted: bool | None
    ) -> None:
        self.name = name
        self._rpc = rpc
        self._auth = rpc_auth
        self._encrypted = encrypted

    def connector(self) -> Connect:
        return serf_connector(*self._rpc, self._auth)

    def encrypted(self) -> bool | None:
        return self._encrypted


class EmbeddedSerf(_SerfRpc):
    """A ``serf agent`` child we start and restart for ever (a failing first start too).

    ``make_process`` builds its supervisor from our member's tags (the agent knows the
    command line options); ``rpc`` is where its RPC listens.
    """

    def __init__(
        self,
        name: str,
        make_process: Callable[[Mapping[str, str]], SerfAgentProcess],
        rpc: tuple[str, int],
        rpc_auth: str | None,
        *,
        encrypted: bool,
        counters: dict[str, int],
    ) -> None:
        super().__init__(name, rpc, rpc_auth, encrypted)
        self._make = make_process
        #: the agent's counters (``serf_restarts``)
        self.counters = counters

    async def run(
        self,
        tags: Mapping[str, str],
        healthy: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        self.process = self._make(tags)  # a bad option raises ConfigError here, at start
        task_status.started()
        backoff = Backoff(1.0, SERF_RESTART_MAX_S)
        while True:
            try:
                await self.process.run()
            except (SerfError, ConfigError, OSError) as exc:
                self.counters["serf_restarts"] += 1
                log.error(
                    "%s: serf agent failed: %s; retrying in %.0f s", self.name, exc, backoff.current
                )
            await trio.sleep(backoff.next())


class ExternalSerf(_SerfRpc):
    """An existing Serf agent (``--serf-rpc``): its node name must be ours. Whether it
    encrypts is known from its stats once it has answered."""

    def __init__(self, name: str, rpc: tuple[str, int], rpc_auth: str | None) -> None:
        super().__init__(name, rpc, rpc_auth, None)

    async def run(
        self,
        tags: Mapping[str, str],
        healthy: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.move_on_after(EXTERNAL_SERF_CHECK_S):
            await self.check()
        task_status.started()
        await self._keep_tags(tags, healthy)

    async def check(self) -> None:
        """Refuse an external Serf agent whose node name is not ours (``ConfigError``).

        The lease and gossip find this instance among Serf's members by ``--name``; an agent
        named otherwise would leave it with no lease and no replication, silently. An agent
        that does not answer is not an error (Serf down never stops the daemon): the check
        runs again whenever it becomes reachable.
        """
        host, port = self._rpc
        try:
            async with open_serf_client(host, port, self._auth) as c:
                stats = await c.stats()
        except SerfError as exc:
            log.warning("%s: serf agent at %s:%s: %s", self.name, host, port, exc)
            return
        agent_name = str(stats.get("agent", {}).get("name", ""))
        if agent_name != self.name:
            raise ConfigError(
                f"the Serf agent at {host}:{port} (--serf-rpc) is node {agent_name!r} but "
                f"this instance is --name {self.name!r}: start gossipmgr with --name "
                f"{agent_name} or point --serf-rpc at this instance's own agent"
            )
        encrypted = str(stats.get("serf", {}).get("encrypted", "")).lower()
        self._encrypted = encrypted == "true" if encrypted else None

    async def _keep_tags(self, tags: Mapping[str, str], healthy: Callable[[], bool]) -> None:
        """(Re)apply our tags whenever the agent is reachable (it may have been replaced)."""
        applied = False
        while True:
            up = healthy()
            if up and not applied:
                await self.check()
                applied = await self._set_tags(tags)
            elif not up:
                applied = False
            await trio.sleep(1.0)

    async def _set_tags(self, tags: Mapping[str, str]) -> bool:
        try:
            async with open_serf_client(*self._rpc, self._auth) as c:
                await c.tags(set=tags)
        except SerfError as exc:
            log.warning("%s: could not set serf tags: %s", self.name, exc)
            return False
        return True
