"""A standalone API context: one replica and a job manager, alone (tests, bench)."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from typing import Any

from gossipmgr.core.lease import Lease, LeaseConfig
from gossipmgr.core.state import ANSIBLE_CONFIG_KEY
from gossipmgr.runtime.replica import Replica

#: A standalone instance's lease: it is alone, so nobody competes for it; a day keeps it
#: valid through any test or demo, and a later real cluster sees a holder that is not a
#: candidate, i.e. a vacant lease, and claims epoch + 1 at once (lease.vacant).
STANDALONE_LEASE_MS = 24 * 3600 * 1000


class StandaloneContext:
    """An :class:`ApiContext` over one Replica and one job manager, alone in its cluster.

    It holds the lease (call :meth:`claim_lease` once the replica is open), says Serf is
    healthy (``serf_ok``, settable to test 503s), and has no peers but itself. Used by the
    tests and the demo; the agent has its own context. It owns nothing: the caller opens
    and closes the replica and the job manager.

    ``forward_to``: pretend the lease holder's API is at this URL (tests of forwarding run
    two standalone contexts, one of which does not claim the lease).
    """

    def __init__(
        self,
        replica: Replica,
        jobs: Any = None,
        *,
        token: str | None = None,
        api_url: str | None = None,
        forward_to: str | None = None,
        ansible: Mapping[str, Any] | None = None,
        serf_ok: bool = True,
        forward_verify: Any = True,
        allowed_client_vars: Collection[str] = (),
    ) -> None:
        self.replica = replica
        self.allowed_client_vars = frozenset(allowed_client_vars)
        self.jobs = jobs
        self.token = token
        self.api_url = api_url
        self.forward_to = forward_to
        self.serf_ok = serf_ok
        self.forward_verify = forward_verify
        self.started = time.time()
        self._ansible = dict(ansible or {})
        self.peer_urls: dict[str, str] = {}

    async def claim_lease(self, ttl_ms: int = STANDALONE_LEASE_MS) -> Lease:
        """Take the lease (epoch + 1) as the only candidate. Returns it once durable."""
        rep = self.replica
        # No lease loop renews it: the replica's TTL is this one (its bound on expiry).
        rep.lease_cfg = LeaseConfig(ttl_ms=ttl_ms, renew_ms=ttl_ms)
        old = rep.lease()
        new = Lease(rep.name, (old.epoch + 1) if old else 1, rep.now_ms() + ttl_ms)
        from gossipmgr.core.state import LEASE_KEY

        await rep.commit(lambda s, ts: s.d_set(LEASE_KEY, new.as_value(), ts))
        return new

    def peers(self) -> list[dict[str, Any]]:
        return [
            {
                "name": self.replica.name,
                "api_url": self.api_url,
                "gossip_addr": None,
                "status": "alive",
                "lag": 0,
                "last_heard": time.time(),
            }
        ]

    def serf_healthy(self) -> bool:
        return self.serf_ok

    def health(self) -> dict[str, Any]:
        return {"uptime_s": round(time.time() - self.started, 3), "standalone": True}

    def metrics_text(self) -> str:
        rep = self.replica
        lines = [
            "# HELP gossipmgr_replica_entries Entries in the replicated map (tombstones too).",
            "# TYPE gossipmgr_replica_entries gauge",
            f"gossipmgr_replica_entries {len(rep.state)}",
            "# HELP gossipmgr_nodes Nodes in the inventory.",
            "# TYPE gossipmgr_nodes gauge",
            f"gossipmgr_nodes {len(rep.state.node_names())}",
        ]
        for k, v in sorted(rep.counters.items()):
            lines += [
                f"# TYPE gossipmgr_replica_{k}_total counter",
                f"gossipmgr_replica_{k}_total {v}",
            ]
        lines += [
            "# TYPE gossipmgr_is_lease_holder gauge",
            f"gossipmgr_is_lease_holder {int(rep.is_holder())}",
        ]
        return "\n".join(lines) + "\n"

    def config(self) -> dict[str, Any]:
        ans = self.replica.state.ansible_config()
        return {
            "serf": {"Addr": "", "AuthKey": "", "Timeout": 0},
            "ansible": ans if ans is not None else dict(self._ansible),
            "manager": {"addr": self.api_url or ""},
        }

    async def set_ansible_config(self, cfg: dict[str, Any]) -> None:
        merged = {**self.config()["ansible"], **cfg}
        await self.replica.commit(lambda s, ts: s.d_set(ANSIBLE_CONFIG_KEY, merged, ts))

    def holder_api_url(self) -> str | None:
        return None if self.replica.is_holder() else self.forward_to

    def instance_api_url(self, name: str) -> str | None:
        if name == self.replica.name:
            return self.api_url
        return self.peer_urls.get(name)
