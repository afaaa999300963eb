"""The API's view of a running agent (``gossipmgr.api.ApiContext``): peers, health,
warnings, the ansible config section, where the lease holder and other instances listen.

:class:`AgentApiContext` reads a :class:`RunningAgent` (the protocol below; the agent in
``gossipmgr.agent`` is the one implementation, also in tests, where only its Serf
connection is a fake). It owns nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from gossipmgr import __version__
from gossipmgr.core.peer import Peer
from gossipmgr.core.state import ANSIBLE_CONFIG_KEY
from gossipmgr.core.tokens import TokenTable
from gossipmgr.gossip.crypto import node_id
from gossipmgr.gossip.service import GossipService
from gossipmgr.runtime.ansible import client_overrides
from gossipmgr.runtime.jobs import JobManager
from gossipmgr.runtime.replica import Replica
from gossipmgr.runtime.serflink import SerfLink
from gossipmgr.runtime.watch import ChangeFeed
from gossipmgr.serf.membership import SerfMembership
from gossipmgr.serf.refusals import SerfRefusals

log = logging.getLogger("gossipmgr.agent")

#: A peer's gossip authentication failures are a /health warning this long after the last.
AUTH_FAILURE_WARN_MS = 60_000
NO_AUTH_WARNING = (
    "the API requires no token (no_auth = true): every local user, and anyone who can "
    "reach api_addr, can run playbooks, and so commands, as this agent's user"
)
#: What /health and the start-up log say about --serf-no-encrypt (docs/security.md).
SERF_UNENCRYPTED_WARNING = (
    "serf is unencrypted (--serf-no-encrypt): anyone who reaches the Serf port can join and "
    "forge node members (they appear Discovered; nothing runs on them until commissioned). "
    "Gossip between instances stays sealed. See docs/security.md"
)


class AnsibleFileSettings(Protocol):
    """The config file's ansible section, as far as the API reads it."""

    @property
    def extra_variables(self) -> Mapping[str, Any]: ...
    @property
    def allow_client_vars(self) -> tuple[str, ...]: ...


class AgentSettings(Protocol):
    """The agent's configuration (``gossipmgr.config.AgentConfig``), as far as read here."""

    @property
    def name(self) -> str: ...
    @property
    def data_dir(self) -> Path: ...
    @property
    def api_addr(self) -> str: ...
    @property
    def serf_rpc(self) -> str: ...
    @property
    def serf_rpc_bind(self) -> str: ...
    @property
    def serf_no_encrypt(self) -> bool: ...
    @property
    def serf_discover(self) -> str: ...
    @property
    def serf_iface(self) -> str: ...
    @property
    def ansible(self) -> AnsibleFileSettings: ...


class RunningAgent(Protocol):
    """What the context reads of the agent: its parts, as wired by ``gossipmgr.agent``."""

    @property
    def cfg(self) -> AgentSettings: ...
    @property
    def replica(self) -> Replica: ...
    @property
    def jobs(self) -> JobManager: ...
    @property
    def feed(self) -> ChangeFeed: ...
    @property
    def token(self) -> str | None: ...
    @property
    def tokens(self) -> TokenTable | None: ...
    @property
    def api_url(self) -> str: ...
    @property
    def started(self) -> float: ...
    @property
    def membership(self) -> SerfMembership | None: ...
    @property
    def gossip(self) -> GossipService[Replica] | None: ...
    @property
    def serf_link(self) -> SerfLink: ...
    @property
    def serf_refusals(self) -> SerfRefusals: ...
    def file_ansible_section(self) -> dict[str, Any]: ...
    def metrics_text(self) -> str: ...


def runtime_extra_vars(section: Mapping[str, Any]) -> dict[str, Any]:
    """The ``extra_variables`` of a replicated ansible section: a string holding a JSON
    object (clusterm's form) or an object; anything else counts as none."""
    value = section.get("extra_variables")
    if isinstance(value, str) and value.strip():
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            return parsed
        log.warning("ignoring runtime ansible extra_variables: not a JSON object")
        return {}
    return dict(value) if isinstance(value, dict) else {}


def auth_failures(
    gossip: GossipService[Replica] | None, membership: SerfMembership | None, now_ms: int
) -> list[dict[str, Any]]:
    """Gossip datagrams that failed authentication, per source, named when we can.

    The source address is matched against the instances' gossip addresses (then their
    hosts, then cluster nodes' addresses); the sender id the datagrams claimed (not
    proven: they did not authenticate) is matched against instance names too.
    """
    if gossip is None or not gossip.auth_failures:
        return []
    m = membership
    instances = [*m.instances, *m.view.failed_instances] if m is not None else []
    by_addr = {i.gossip_addr: i.name for i in instances}
    by_host = {i.gossip_addr[0]: i.name for i in instances}
    by_node_addr = {n.addr: n.member for n in m.nodes.values()} if m is not None else {}
    by_id = {node_id(i.name): i.name for i in instances}
    out = []
    for src, f in gossip.auth_failures.items():
        peer = by_addr.get((src[0], src[1])) or by_host.get(src[0]) or by_node_addr.get(src[0])
        out.append(
            {
                "peer": peer,
                "claimed": by_id.get(f.claimed_sender),
                "source": f"{src[0]}:{src[1]}",
                "count": f.count,
                "reasons": f.reasons.snapshot(),
                "last_ms_ago": max(0, now_ms - f.last_ms),
            }
        )
    return sorted(out, key=lambda a: (str(a["peer"] or ""), str(a["source"])))


class AgentApiContext:
    """The API's view of a running agent (``gossipmgr.api.ApiContext``)."""

    def __init__(self, agent: RunningAgent) -> None:
        self.agent = agent
        self.replica = agent.replica
        self.jobs = agent.jobs
        self.feed = agent.feed
        self.token: str | None = agent.token  # the agent updates it on SIGHUP
        self.tokens: TokenTable | None = agent.tokens  # ... and these

    @property
    def allowed_client_vars(self) -> frozenset[str]:
        """The operator's [ansible] allow_client_vars (current after a SIGHUP reload)."""
        return frozenset(self.agent.cfg.ansible.allow_client_vars)

    def serf_healthy(self) -> bool:
        m = self.agent.membership
        return bool(m and m.healthy)

    def metrics_text(self) -> str:
        return self.agent.metrics_text()

    def auth_failures(self) -> list[dict[str, Any]]:
        a = self.agent
        return auth_failures(a.gossip, a.membership, self.replica.now_ms())

    # ------------------------------------------------------------------ peers
    def peer_records(self) -> list[Peer]:
        """Every instance Serf lists, and this one (sorted by name)."""
        m = self.agent.membership
        name = self.agent.cfg.name
        g = self.agent.gossip
        stats = g.ae.stats(self.replica.now_ms())["peers"] if g is not None else {}
        failing: dict[str, list[dict[str, Any]]] = {}
        for a in self.auth_failures():
            if a["peer"] is not None:
                failing.setdefault(str(a["peer"]), []).append(a)
        out: list[Peer] = []
        for inst in m.instances if m is not None else ():
            p = stats.get(inst.name, {})
            fails = failing.get(inst.name, [])
            reasons: dict[str, int] = {}
            for a in fails:
                for k, v in a["reasons"].items():
                    reasons[k] = reasons.get(k, 0) + v
            out.append(
                Peer(
                    name=inst.name,
                    api_url=inst.api_url,
                    gossip_addr=f"{inst.gossip_addr[0]}:{inst.gossip_addr[1]}",
                    status=inst.status,
                    self_=inst.name == name,
                    lag=p.get("lag", 0),
                    resyncing=p.get("resyncing", False),
                    last_heard_ms_ago=p.get("last_heard_ms_ago"),
                    auth_failures=sum(a["count"] for a in fails),
                    auth_failure_reasons=reasons,
                )
            )
        if all(p.name != name for p in out):
            status = "unknown (serf down)" if m is None or not m.healthy else "not in serf"
            out.append(Peer(name, self.agent.api_url, None, status, True, in_serf=False))
        return sorted(out, key=lambda p: p.name)

    def peers(self) -> list[dict[str, Any]]:
        return [p.to_json() for p in self.peer_records()]

    def instance_api_url(self, name: str) -> str | None:
        if name == self.agent.cfg.name:
            return self.agent.api_url
        m = self.agent.membership
        for inst in m.instances if m is not None else ():
            if inst.name == name:
                return inst.api_url
        return None

    def holder_api_url(self) -> str | None:
        lease = self.replica.lease()
        if lease is None or lease.holder == self.agent.cfg.name:
            return None
        if lease.expires_ms <= self.replica.now_ms():
            return None
        return self.instance_api_url(lease.holder)

    # ------------------------------------------------------------------ health
    def warnings(self) -> list[str]:
        """Misconfigurations an operator must see (on /health and in ``gossipmgr peers``)."""
        cfg = self.agent.cfg
        out: list[str] = []
        if self.token is None:
            out.append(NO_AUTH_WARNING)
        if cfg.serf_no_encrypt:
            out.append(SERF_UNENCRYPTED_WARNING)
        elif cfg.serf_rpc and self.agent.serf_link.encrypted() is False:
            out.append(
                f"the Serf agent at {cfg.serf_rpc} (--serf-rpc) is unencrypted: anyone "
                "who reaches its Serf port can forge node members. See docs/security.md"
            )
        for r in self.agent.serf_refusals.snapshot(self.replica.now_ms()):
            if r["last_ms_ago"] > AUTH_FAILURE_WARN_MS:
                continue
            where = (
                f"to {r['source']} (our join)"
                if r["direction"] == "join"
                else (f"from {r['source']}")
            )
            out.append(
                f"serf traffic {where} refused {r['count']} times: {r['reason']}"
                + (f": {r['hint']}" if r["hint"] else "")
            )
        for a in self.auth_failures():
            if a["last_ms_ago"] > AUTH_FAILURE_WARN_MS:
                continue
            who = a["peer"] or a["claimed"] or "an unknown sender"
            out.append(
                f"gossip from {who} ({a['source']}) fails authentication: {a['count']} "
                f"datagrams refused ({', '.join(f'{k} {v}' for k, v in a['reasons'].items())}); "
                "its gossip key (--encrypt-key-file) differs from ours"
            )
        return out

    def health(self) -> dict[str, Any]:
        a = self.agent
        cfg, rep, m = a.cfg, self.replica, a.membership
        store = rep.store
        lease = rep.lease()
        return {
            "name": cfg.name,
            "version": __version__,
            "uptime_s": round(time.time() - a.started, 3),
            "serf": {
                "healthy": bool(m and m.healthy),
                "error": "" if m and m.healthy else (m.last_error if m else "not started"),
                "embedded": a.serf_link.process is not None,
                # Members claiming another member's node identity: ignored (serf/membership.py)
                "identity_conflicts": [c.as_json() for _, c in sorted(m.view.conflicts.items())]
                if m
                else [],
                "encrypted": a.serf_link.encrypted(),
                "discover": cfg.serf_discover,
                "iface": cfg.serf_iface,
                "refused": a.serf_refusals.snapshot(rep.now_ms()),
            },
            # False until the gossip service has started (it starts after the API serves)
            "gossip": {"started": a.gossip is not None, "auth_failures": self.auth_failures()},
            "warnings": self.warnings(),
            "lease": {"holder": rep.is_holder(), **(lease.__dict__ if lease else {})},
            "durability": {
                "data_dir": str(cfg.data_dir),
                "write_errors": rep.counters["write_errors"],
                "log_bytes": store.log_bytes if store is not None else 0,
                "restore_seconds": round(rep.restore_seconds, 4),
            },
            "entries": len(rep.state),
            "auth": (
                {"token": True}
                if self.token is not None
                else {"token": False, "warning": NO_AUTH_WARNING}
            ),
        }

    @property
    def history_limit(self) -> int:
        """History entries kept per node (``node_history_limit``): the default and the
        largest ``limit`` of GET /info/node/{name}/history."""
        return self.agent.jobs.gate.history_limit

    # ------------------------------------------------------------------ config
    def config(self) -> dict[str, Any]:
        cfg = self.agent.cfg
        runtime = self.replica.state.ansible_config() or {}
        file_vars = dict(cfg.ansible.extra_variables)
        extra = {**file_vars, **client_overrides(file_vars, runtime_extra_vars(runtime))}
        return {
            "serf": {"Addr": cfg.serf_rpc or cfg.serf_rpc_bind, "AuthKey": "", "Timeout": 0},
            "ansible": {
                **self.agent.file_ansible_section(),
                **runtime,
                "extra_variables": json.dumps(extra) if extra else "",
            },
            "manager": {"addr": cfg.api_addr},
        }

    async def set_ansible_config(self, cfg: dict[str, Any]) -> None:
        """Store the section replicated. Its ``extra_variables`` holds only what clients
        set over the config file's (the file's own stay the operator's: a later edit of
        the file applies, and a client cannot drop them)."""
        merged = {**self.config()["ansible"], **cfg}
        overrides = client_overrides(
            self.agent.cfg.ansible.extra_variables, runtime_extra_vars(merged)
        )
        merged["extra_variables"] = json.dumps(overrides) if overrides else ""
        await self.replica.commit(lambda s, ts: s.d_set(ANSIBLE_CONFIG_KEY, merged, ts))
