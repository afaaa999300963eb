"""A fake Serf agent for in-process instances: the one part of an agent tests replace.

:class:`FakeSerf` has the shape of the agent's Serf connection (``runtime.serflink.
SerfLink``): the real :class:`~gossipmgr.serf.membership.SerfMembership`, refusal watcher and
lease loop run over it unchanged. Its RPC client answers the calls those make (``members``,
``stream``, ``monitor``, ``tags``, ``stats``) from a :class:`FakeSerfCluster`, a member list
that several instances of one test may share. An instance is alone in its own cluster unless
given a shared one; :meth:`FakeSerf.set_healthy` makes its agent unreachable (every call
raises ``SerfError``, as a stopped ``serf agent`` does), and :meth:`FakeSerf.see` changes how
it sees another member (``failed``, another API URL), as a partial Serf view would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

import trio

from gossipmgr.errors import SerfError
from gossipmgr.serf.client import SerfClient
from gossipmgr.serf.process import SerfAgentProcess


class FakeSerfCluster:
    """Serf's member list as every fake agent in it reports it."""

    def __init__(self) -> None:
        self.members: dict[str, dict[str, Any]] = {}
        self._changed = trio.Event()

    def set_member(self, name: str, tags: Mapping[str, str], status: str = "alive") -> None:
        self.members[name] = {
            "Name": name,
            "Addr": "127.0.0.1",
            "Port": 7946,
            "Tags": dict(tags),
            "Status": status,
        }
        self.changed()

    def changed(self) -> None:
        """Wake every member-event stream (Serf's stream makes the poller look again)."""
        self._changed.set()
        self._changed = trio.Event()

    async def wait_changed(self) -> None:
        await self._changed.wait()


class _Client:
    """The subset of :class:`~gossipmgr.serf.client.SerfClient` the agent calls."""

    def __init__(self, serf: FakeSerf) -> None:
        self._serf = serf
        self.name = f"fake-serf:{serf.name}"

    def _check(self) -> None:
        if not self._serf.healthy:
            raise SerfError(f"{self.name}: connection refused (fake Serf set unhealthy)")

    async def members(self) -> list[dict[str, Any]]:
        self._check()
        return self._serf.view()

    async def tags(self, set: Mapping[str, str] | None = None, delete: Any = ()) -> None:
        self._check()
        self._serf.set_tags(set or {})

    async def stats(self) -> dict[str, Any]:
        self._check()
        return {"agent": {"name": self._serf.name}, "serf": {"encrypted": "true"}}

    @asynccontextmanager
    async def stream(self, filter: str = "*") -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        self._check()
        yield self._events()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            await self._serf.cluster.wait_changed()
            self._check()
            yield {"Event": "member-update"}

    @asynccontextmanager
    async def monitor(self, log_level: str = "INFO") -> AsyncIterator[AsyncIterator[Any]]:
        self._check()
        yield self._no_lines()

    async def _no_lines(self) -> AsyncIterator[Any]:
        while True:
            await self._serf.cluster.wait_changed()
            self._check()
            if False:  # pragma: no cover (an async generator that never yields a line)
                yield None


class FakeSerf:
    """A Serf connection (``runtime.serflink.SerfLink``) to a fake agent named ``name``."""

    process: SerfAgentProcess | None = None

    def __init__(self, name: str, cluster: FakeSerfCluster | None = None) -> None:
        self.name = name
        self.cluster = cluster if cluster is not None else FakeSerfCluster()
        self.healthy = True
        self._tags: dict[str, str] = {}
        #: How this agent sees other members: name -> field overrides (``see``).
        self._seen_as: dict[str, dict[str, Any]] = {}

    def connector(self) -> Callable[[], AbstractAsyncContextManager[SerfClient]]:
        @asynccontextmanager
        async def connect() -> AsyncIterator[SerfClient]:
            client = _Client(self)
            client._check()
            # The fake implements exactly the calls membership and the refusal watcher make.
            yield cast(SerfClient, client)

        return connect

    def encrypted(self) -> bool | None:
        return True

    async def run(
        self,
        tags: Mapping[str, str],
        healthy: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Join the fake cluster as an alive member carrying ``tags``; leave it when
        cancelled (as an agent's graceful leave does)."""
        self.set_tags(tags)
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            member = self.cluster.members.get(self.name)
            if member is not None:
                member["Status"] = "left"
                self.cluster.changed()

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._tags.update(tags)
        self.cluster.set_member(self.name, self._tags)

    def view(self) -> list[dict[str, Any]]:
        """The member list this agent reports (the cluster's, with ``see`` applied)."""
        out = []
        for name, m in sorted(self.cluster.members.items()):
            seen = self._seen_as.get(name, {})
            tags = {**m["Tags"], **seen.get("Tags", {})}
            out.append({**m, **seen, "Tags": tags})
        return out

    def see(self, name: str, *, status: str | None = None, api: str | None = None) -> None:
        """From now on report member ``name`` with this status and/or API URL tag."""
        seen = self._seen_as.setdefault(name, {})
        if status is not None:
            seen["Status"] = status
        if api is not None:
            seen.setdefault("Tags", {})["api"] = api
        self.cluster.changed()

    def set_healthy(self, healthy: bool) -> None:
        """Make the agent (un)reachable; the membership poller notices on its next poll."""
        self.healthy = healthy
        self.cluster.changed()
