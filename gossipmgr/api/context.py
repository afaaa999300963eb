"""The API's only view of the agent: the :class:`ApiContext` protocol, and how a route
reaches the one its app was built over (:func:`current_context`).

The protocols are structural: the agent's ``AgentApiContext`` and the tests' standalone
context satisfy them without naming them. :func:`gossipmgr.api.create_app` stores the
context in the app (:func:`install_context`); routes are module-level functions and read it
per request, so no route closes over an agent object.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

from quart import current_app
from quart_trio import QuartTrio

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.lease import Lease, LeaseConfig
from gossipmgr.core.quorum import Quorum
from gossipmgr.core.state import ClusterState

#: Where :func:`install_context` keeps the context in ``app.extensions``.
_EXTENSION = "gossipmgr.context"


class ReplicaView(Protocol):
    """What the API uses of ``gossipmgr.runtime.replica.Replica``: reads of the state and
    the lease, and :meth:`commit`, which returns once the delta is durable on this
    instance's disk (StoreError when the data directory refuses it; ValueTooLarge /
    ValueRefused for a record that could not be gossiped; nothing applied in either case).
    Read-only properties, so a ``Replica`` attribute satisfies them."""

    @property
    def name(self) -> str: ...
    @property
    def state(self) -> ClusterState: ...
    @property
    def data_dir(self) -> Path | None: ...
    @property
    def counters(self) -> Mapping[str, int]: ...
    @property
    def candidates(self) -> Sequence[str]: ...
    @property
    def quorum(self) -> Quorum: ...
    @property
    def lease_cfg(self) -> LeaseConfig: ...

    def now_ms(self) -> int: ...
    def lease(self) -> Lease | None: ...
    def is_holder(self) -> bool: ...
    async def commit(
        self, make: Callable[[ClusterState, Timestamp], LWWMap], *, max_bytes: int | None = None
    ) -> LWWMap: ...


class JobsLike(Protocol):
    """What the API needs of ``gossipmgr.runtime.jobs.JobManager`` (structural, so tests and the
    agent may pass the real one). Methods raise RequestError subclasses with clusterm's
    texts, and Unavailable when this instance is not the lease holder."""

    def commission(
        self, nodes: list[str], host_group: str, extra_vars: dict[str, Any], check: bool = ...
    ) -> Any: ...
    def decommission(
        self, nodes: list[str], extra_vars: dict[str, Any], check: bool = ...
    ) -> Any: ...
    def update(
        self, nodes: list[str], host_group: str, extra_vars: dict[str, Any], check: bool = ...
    ) -> Any: ...
    def discover(self, addrs: list[str], extra_vars: dict[str, Any]) -> Any: ...
    def upgrade(self, nodes: list[str], all_: bool = False, **opts: Any) -> Any: ...
    def cancel(self) -> Any: ...
    def set_monitor_event(self, name: str, nodes: list[dict[str, Any]]) -> Any: ...
    def set_host_group(self, node: str, host_group: str) -> Any: ...
    def set_node_vars(self, node: str, variables: Mapping[str, Any]) -> Any: ...
    def set_node_var(self, node: str, var: str, value: Any) -> Any: ...
    def remove_node_var(self, node: str, var: str) -> Any: ...
    def import_inventory(self, entries: Any, dry_run: bool = False) -> Any: ...
    def forget_node(self, name: str, force: bool = False) -> Any: ...
    def job(self, label: str) -> Any: ...
    def jobs(self) -> Any: ...
    def follow(self, job_id: str, offset: int = 0) -> AsyncIterator[str]: ...


class WatchLike(Protocol):
    """One client's change stream (``gossipmgr.runtime.watch.Watch``)."""

    def frames(self) -> AsyncIterator[bytes]: ...


class FeedLike(Protocol):
    """The change feed (``gossipmgr.runtime.watch.ChangeFeed``): :meth:`open` raises
    BadRequest for a ``since`` that is not an event id."""

    def open(self, prefix: str = "", since: str | None = None) -> WatchLike: ...


class ApiContext(Protocol):
    """Everything the API reads or calls; the agent (or the standalone context of
    ``gossipmgr.testing``) owns it.

    Optional attributes read with ``getattr``: ``forward_verify`` (httpx ``verify=``: an
    ``ssl.SSLContext`` or a bool) used when forwarding to / proxying from a peer over
    https; ``allowed_client_vars`` (names an API client may set despite the refusal rule,
    docs/security.md section 3).
    """

    @property
    def replica(self) -> ReplicaView: ...
    @property
    def jobs(self) -> Any: ...  # a JobsLike (gossipmgr.runtime.jobs.JobManager)
    @property
    def feed(self) -> FeedLike: ...
    @property
    def token(self) -> str | None: ...  # read per request: the agent swaps it on SIGHUP

    def peers(self) -> list[dict[str, Any]]: ...
    def serf_healthy(self) -> bool: ...
    def health(self) -> dict[str, Any]: ...
    def metrics_text(self) -> str: ...
    def config(self) -> dict[str, Any]: ...
    async def set_ansible_config(self, cfg: dict[str, Any]) -> None: ...
    def holder_api_url(self) -> str | None: ...
    def instance_api_url(self, name: str) -> str | None: ...


def install_context(app: QuartTrio, ctx: ApiContext) -> None:
    """Make ``ctx`` the context every request to ``app`` sees."""
    app.extensions[_EXTENSION] = ctx


def current_context() -> ApiContext:
    """The context of the app serving the current request (inside a request only)."""
    return cast("ApiContext", current_app.extensions[_EXTENSION])


def current_replica() -> ReplicaView:
    """The current context's replica: what every read is served from."""
    return current_context().replica
