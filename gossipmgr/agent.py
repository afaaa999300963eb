"""The composition root: the one module that knows all the others.

``gossipmgr agent`` runs, in one trio nursery:

=================  =====================================================================
replica            state + HLC + durable store (restored before anything else starts)
API                Quart-Trio on hypercorn (``gossipmgr.api``), reads the local replica
gossip             sealed UDP anti-entropy between instances (``gossipmgr.gossip``)
serf               the embedded ``serf agent`` child, supervised (or an existing agent)
membership         Serf ``members`` polling + stream -> gossip peers, lease candidates,
                   node health events
lease              renew/claim decisions (``gossipmgr.core.lease``) every 250 ms
jobs               the job manager: runs workflows when this instance holds the lease
signals            SIGHUP reloads (token, gossip keys, ansible section); SIGINT/SIGTERM stop
=================  =====================================================================

Failure policy (clusterm learnt it the hard way): Serf being down never stops the daemon.
It keeps serving reads from the replica, retries Serf with backoff, reports the condition
on /health and in the log, and stops acting (no candidacy, so no lease) until Serf is back.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import trio

from gossipmgr import __version__
from gossipmgr.api import check_listen_policy, create_app, serve
from gossipmgr.config import AgentConfig, load, read_secret_file, serf_rpc_secret, split_addr
from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.lease import Lease, LeaseConfig, candidates, decide
from gossipmgr.core.state import ANSIBLE_CONFIG_KEY, LEASE_KEY, ClusterState
from gossipmgr.errors import ConfigError, GossipmgrError, SerfError, StoreError
from gossipmgr.gossip.crypto import Keyring, generate_key, load_keyring_file, node_id
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.runtime.ansible import AnsibleSettings, client_overrides, split_config_vars
from gossipmgr.runtime.jobs import JobManager
from gossipmgr.runtime.replica import Replica
from gossipmgr.serf.backoff import Backoff
from gossipmgr.serf.client import open_serf_client, serf_connector
from gossipmgr.serf.membership import (
    PUSH_PULL_S,
    Absences,
    InstancesChanged,
    NodeEvent,
    SerfMembership,
)
from gossipmgr.serf.process import SerfAgentProcess
from gossipmgr.serf.refusals import SerfRefusals, watch_refusals

log = logging.getLogger("gossipmgr.agent")

#: A lease candidate counts as live (first in the claim order) if we heard from it over
#: gossip this recently. An idle live peer is heard at least every ~5 s (3 s until it is
#: silent, then a digest probe every 2 s that it answers); twice that absorbs some loss.
LIVE_PEER_MS = 10_000
#: How often the lease loop decides (renewals are due every ~2.5 s; 250 ms keeps a
#: takeover within a quarter second of the lease becoming claimable).
LEASE_LOOP_S = 0.25
#: The holder reconciles inventory against Serf at takeover, when the instance set changes
#: (a heal merges another side's writes in) and then this often, so a health event lost
#: anywhere (a Serf outage, a handover, the other side of a partition) is repaired within
#: seconds. The partition suite measured 30 s of wrong state with a 30 s period.
RECONCILE_EVERY_S = 5.0
#: ...skipping nodes whose Serf status changed this recently: right after a heal the view
#: is still settling, and acting on it flapped a dead node back to Discovered once.
RECONCILE_SETTLE_S = 2.0
#: ...and Discovered nodes our Serf agent does not list at all, until they have been absent
#: from its list this many push-pull intervals (``PUSH_PULL_S``): our agent may simply not
#: have heard of them yet. A node Serf lists as failed or left is acted on at once.
ABSENT_GRACE_PUSH_PULLS = 2.0
#: Tombstones older than this are garbage collected (hourly). Safe because an instance cut
#: off for longer refuses to rejoin with its old data (see ``check_stale_data``); a week is
#: far above any partition or outage we plan for (Cassandra's gc_grace default is 10 days).
TOMBSTONE_TTL_MS = 7 * 24 * 3600 * 1000
GC_EVERY_S = 3600.0
#: How long the start-up check of an external Serf agent's node name waits for its RPC.
EXTERNAL_SERF_CHECK_S = 5.0
#: A peer's gossip authentication failures are a /health warning this long after the last.
AUTH_FAILURE_WARN_MS = 60_000


def load_or_create_keyring(cfg: AgentConfig) -> tuple[Keyring, Path]:
    path = cfg.encrypt_key_file or (cfg.data_dir / "gossip.key")
    if cfg.encrypt_key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_key() + "\n")
        log.warning("created gossip key %s: copy it to every instance (--encrypt-key-file)", path)
    return load_keyring_file(path), path


#: The token file's name in the data directory when ``api_token_file`` is not set.
TOKEN_FILE_NAME = "api.token"
NO_AUTH_WARNING = (
    "the API requires no token (no_auth = true): every local user, and anyone who can "
    "reach api_addr, can run playbooks, and so commands, as this agent's user"
)


def token_path(cfg: AgentConfig) -> Path | None:
    """The token file the API uses: ``api_token_file``, else ``<data_dir>/api.token``;
    None only with ``no_auth``."""
    if cfg.api_token_file is not None:
        return cfg.api_token_file
    if cfg.no_auth:
        return None
    return cfg.data_dir / TOKEN_FILE_NAME


def load_or_create_token(cfg: AgentConfig) -> str | None:
    """The API token (docs/security.md section 3). With no ``api_token_file`` and no
    ``no_auth``, ``<data_dir>/api.token`` is created on first start: 32 random bytes,
    url-safe base64, mode 0600, owned by the agent's user; its path is logged."""
    path = token_path(cfg)
    if path is None:
        return None
    if cfg.api_token_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process created it in between: read theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
            log.warning(
                "created API token %s (mode 0600): the CLI reads it from there "
                "(GOSSIPMGR_TOKEN_FILE); copy it to every instance (api_token_file)",
                path,
            )
    return read_token(path)


def serf_key(cfg: AgentConfig, keyring: Keyring) -> str | None:
    """The key the embedded Serf agent encrypts with: none with --serf-no-encrypt, the Serf
    cluster's own with --serf-encrypt-key-file, else the gossip key (one key for both)."""
    if cfg.serf_no_encrypt:
        return None
    if cfg.serf_encrypt_key_file is not None:
        return base64.b64encode(load_keyring_file(cfg.serf_encrypt_key_file).primary).decode()
    return base64.b64encode(keyring.primary).decode()


#: What /health and the start-up log say about --serf-no-encrypt (docs/security.md).
SERF_UNENCRYPTED_WARNING = (
    "serf is unencrypted (--serf-no-encrypt): anyone who reaches the Serf port can join and "
    "forge node members (they appear Discovered; nothing runs on them until commissioned). "
    "Gossip between instances stays sealed. See docs/security.md"
)


def read_token(path: Path | None) -> str | None:
    if path is None:
        return None
    return read_secret_file(path, "api token file")


class Agent:
    """One gossipmgr instance. ``run`` owns everything it starts."""

    def __init__(self, cfg: AgentConfig, overrides: dict[str, Any] | None = None) -> None:
        self.cfg = cfg
        #: command-line options, re-applied over the file on every SIGHUP reload
        self.overrides = dict(overrides or {})
        self.token = load_or_create_token(cfg)
        #: read once at start, like the embedded Serf agent's config.json it goes into
        self.serf_rpc_auth = serf_rpc_secret(cfg)
        api_host, _ = split_addr(cfg.api_addr, "api-addr")
        check_listen_policy(api_host, self.token, cfg.insecure)
        if self.token is None:
            log.warning("%s: %s", cfg.name, NO_AUTH_WARNING)
        else:
            log.info("%s: API token from %s", cfg.name, token_path(cfg))
        self.keyring, self.key_path = load_or_create_keyring(cfg)
        self.serf_key = serf_key(cfg, self.keyring)
        self.replica = Replica(
            cfg.name,
            data_dir=cfg.data_dir / "state",
            accept_damage=cfg.accept_log_damage,
            lease=LeaseConfig(ttl_ms=cfg.lease_ttl_ms, renew_ms=cfg.lease_renew_ms),
        )
        self.replica.candidates = []  # nothing until Serf says who is alive
        self.jobs = JobManager(
            self.replica,
            self.ansible_settings,
            cfg.data_dir / "work",
            reconfigure_on_reappear=cfg.reconfigure_on_reappear,
        )
        self.boot_ms = int(time.time() * 1000)
        self.membership: SerfMembership | None = None
        self.gossip: GossipService | None = None
        self.serf: SerfAgentProcess | None = None
        self.api_url = ""
        self.api_ctx: AgentApiContext | None = None
        self._reconcile_soon = False
        self._absences = Absences()
        self._bounded_seen: dict[str, Any] | None = None
        #: Seconds a Discovered node must be missing from our Serf list before a reconcile
        #: marks it Disappeared (an external Serf's profile is unknown: assume lan).
        self.absent_grace_s = ABSENT_GRACE_PUSH_PULLS * PUSH_PULL_S.get(cfg.serf_profile, 30.0)
        #: With --serf-rpc: whether the external agent encrypts (from its stats), if known.
        self.external_serf_encrypted: bool | None = None
        #: Serf traffic our agent refused for encryption reasons (from its log).
        self.serf_refusals = SerfRefusals()
        self.started = time.time()
        self.ready = trio.Event()
        self.counters: dict[str, int] = {
            "lease_bounded": 0,
            "lease_claims": 0,
            "lease_renewals": 0,
            "node_events_applied": 0,
            "node_events_ignored": 0,
            "reconciles": 0,
            "serf_restarts": 0,
        }

    # ------------------------------------------------------------------ settings
    def ansible_settings(self) -> AnsibleSettings:
        """The file's ansible section overlaid with the replicated runtime one (POST /config).

        Read at every job start, so a changed section reaches the next run (clusterm's bug).
        """
        a = self.cfg.ansible
        runtime = self.replica.state.ansible_config() or {}
        extra = runtime_extra_vars(runtime)

        def pick(key: str, default: str) -> str:
            v = runtime.get(key)
            return v if isinstance(v, str) and v else default

        operator, client = split_config_vars(a.extra_variables, extra)
        playbook_dir = Path(pick("playbook_location", str(self.cfg.playbook_dir)))
        return AnsibleSettings(
            playbook_dir=playbook_dir,
            configure_playbook=pick("configure_playbook", a.configure_playbook),
            cleanup_playbook=pick("cleanup_playbook", a.cleanup_playbook),
            upgrade_playbook=pick("upgrade_playbook", a.upgrade_playbook),
            user=pick("user", a.user),
            priv_key_file=pick("priv_key_file", a.priv_key_file),
            extra_variables=operator,
            client_extra_variables=client,
            host_vars=dict(a.host_vars),
            timeout_s=a.timeout_s,
            discover_join_timeout_s=a.discover_join_timeout_s,
            allowed_client_vars=frozenset(a.allow_client_vars),
        )

    def file_ansible_section(self) -> dict[str, Any]:
        a = self.cfg.ansible
        return {
            "configure_playbook": a.configure_playbook,
            "cleanup_playbook": a.cleanup_playbook,
            "upgrade_playbook": a.upgrade_playbook,
            "playbook_location": str(self.cfg.playbook_dir),
            "extra_variables": json.dumps(dict(a.extra_variables)) if a.extra_variables else "",
            "user": a.user,
            "priv_key_file": a.priv_key_file,
        }

    def check_stale_data(self) -> None:
        """Refuse to rejoin a cluster with data older than the tombstone TTL.

        While any instance runs, the lease entry is rewritten every few seconds, so the
        newest timestamp in a restored replica tells when this instance last took part.
        If that is longer ago than the TTL, peers may have garbage-collected tombstones of
        keys this replica still holds: joining would resurrect deleted keys. A lone instance
        (no --join) has nobody to resurrect them at, so it only gets a warning.
        """
        newest = self.replica.state.max_timestamp()
        if newest is None:
            return
        age_ms = self.replica.now_ms() - newest.ms
        if age_ms <= TOMBSTONE_TTL_MS:
            return
        days = age_ms / 86_400_000
        msg = (
            f"the data in {self.cfg.data_dir} was last updated {days:.1f} days ago, longer "
            f"than the tombstone TTL ({TOMBSTONE_TTL_MS // 86_400_000} days)"
        )
        if self.cfg.join:
            raise ConfigError(
                f"{msg}: rejoining with it could resurrect deleted keys. Move "
                f"{self.cfg.data_dir / 'state'} aside and start again: the instance refills "
                "from its peers"
            )
        log.warning("%s: %s (a lone instance: starting anyway)", self.cfg.name, msg)

    async def _gc_loop(self) -> None:
        while True:
            await trio.sleep(GC_EVERY_S)
            dropped = self.replica.state.map.gc(self.replica.now_ms() - TOMBSTONE_TTL_MS)
            if dropped:
                log.info("%s: garbage-collected %d tombstones", self.cfg.name, dropped)

    # ------------------------------------------------------------------ run
    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        if cfg.serf_no_encrypt:
            log.warning("%s: %s", cfg.name, SERF_UNENCRYPTED_WARNING)
        for note in self.replica.open():
            log.info("%s: %s", cfg.name, note)
        try:
            self.check_stale_data()
        except ConfigError:
            await self.replica.aclose()
            raise
        log.info(
            "%s: restored in %.3f s (%d entries)",
            cfg.name,
            self.replica.restore_seconds,
            len(self.replica.state),
        )
        try:
            gossip_host, gossip_port = split_addr(cfg.gossip_addr, "gossip-addr")
            async with open_udp_transport(gossip_host, gossip_port) as transport:
                self.gossip = GossipService(
                    self.replica, transport, self.keyring, boot_ms=self.boot_ms
                )
                async with trio.open_nursery() as nursery:
                    await self._start(nursery)
                    self.ready.set()
                    task_status.started(self)
        finally:
            with trio.CancelScope(shield=True):
                await self.replica.aclose()

    async def _start(self, nursery: trio.Nursery) -> None:
        cfg = self.cfg
        ctx = AgentApiContext(self)
        self.api_ctx = ctx
        app = create_app(ctx)
        api_host, api_port = split_addr(cfg.api_addr, "api-addr")
        url = await nursery.start(
            lambda task_status: serve(
                app,
                api_host,
                api_port,
                certfile=str(cfg.tls_cert) if cfg.tls_cert else None,
                keyfile=str(cfg.tls_key) if cfg.tls_key else None,
                task_status=task_status,
            )
        )
        self.api_url = cfg.advertise_api or str(url)
        assert self.gossip is not None
        gossip_addr = await nursery.start(self.gossip.run)
        log.info("%s: API on %s, gossip on %s:%s", cfg.name, self.api_url, *gossip_addr)
        tags = {
            "role": "gossipmgr",
            "gossip": f"{gossip_addr[0]}:{gossip_addr[1]}",
            "api": self.api_url,
            "boot": f"{self.boot_ms:x}",
        }
        if cfg.serf_rpc:
            rpc_host, rpc_port = split_addr(cfg.serf_rpc, "serf-rpc")
            with trio.move_on_after(EXTERNAL_SERF_CHECK_S):
                await self._check_external_serf(rpc_host, rpc_port)
            nursery.start_soon(self._keep_external_tags, rpc_host, rpc_port, tags)
        else:
            rpc_host, rpc_port = split_addr(cfg.serf_rpc_bind, "serf-rpc-bind")
            self.serf = SerfAgentProcess(
                name=cfg.name,
                bind=cfg.serf_bind,
                rpc=cfg.serf_rpc_bind,
                data_dir=cfg.data_dir / "serf",
                tags=tags,
                encrypt_key=self.serf_key,
                retry_join=list(cfg.join),
                discover=cfg.serf_discover or None,
                iface=cfg.serf_iface or None,
                profile=cfg.serf_profile,
                rpc_auth=self.serf_rpc_auth,
            )
            nursery.start_soon(self._supervise_serf)
        auth = self.serf_rpc_auth
        self.membership = SerfMembership(serf_connector(rpc_host, rpc_port, auth))
        nursery.start_soon(
            watch_refusals,
            serf_connector(rpc_host, rpc_port, auth),
            self.serf_refusals,
            self.replica.now_ms,
        )
        events = self.membership.subscribe()
        await nursery.start(self.membership.run)
        nursery.start_soon(self._membership_loop, events)
        nursery.start_soon(self._lease_loop)
        nursery.start_soon(self._gc_loop)
        await nursery.start(self.jobs.run)
        nursery.start_soon(self._signals, nursery)

    async def _check_external_serf(self, host: str, port: int) -> None:
        """Refuse an external Serf agent whose node name is not ours (``ConfigError``).

        The lease and gossip find this instance among Serf's members by ``--name``; an agent
        named otherwise would leave it with no lease and no replication, silently. An agent
        that does not answer is not an error (Serf down never stops the daemon): the check
        runs again whenever it becomes reachable.
        """
        try:
            async with open_serf_client(host, port, self.serf_rpc_auth) as c:
                stats = await c.stats()
        except SerfError as exc:
            log.warning("%s: serf agent at %s:%s: %s", self.cfg.name, host, port, exc)
            return
        agent_name = str(stats.get("agent", {}).get("name", ""))
        if agent_name != self.cfg.name:
            raise ConfigError(
                f"the Serf agent at {host}:{port} (--serf-rpc) is node {agent_name!r} but "
                f"this instance is --name {self.cfg.name!r}: start gossipmgr with --name "
                f"{agent_name} or point --serf-rpc at this instance's own agent"
            )
        encrypted = str(stats.get("serf", {}).get("encrypted", "")).lower()
        self.external_serf_encrypted = encrypted == "true" if encrypted else None

    async def _supervise_serf(self) -> None:
        """The embedded agent: restarted forever; a failing first start is retried too."""
        assert self.serf is not None
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                await self.serf.run()
            except (SerfError, ConfigError, OSError) as exc:
                self.counters["serf_restarts"] += 1
                log.error(
                    "%s: serf agent failed: %s; retrying in %.0f s",
                    self.cfg.name,
                    exc,
                    backoff.current,
                )
            await trio.sleep(backoff.next())

    async def _keep_external_tags(self, host: str, port: int, tags: dict[str, str]) -> None:
        """With --serf-rpc, (re)apply our tags whenever the agent is reachable."""
        applied = False
        while True:
            healthy = self.membership is not None and self.membership.healthy
            if healthy and not applied:
                await self._check_external_serf(host, port)  # it may have been replaced
                try:
                    async with open_serf_client(host, port, self.serf_rpc_auth) as c:
                        await c.tags(set=tags)
                    applied = True
                except SerfError as exc:
                    log.warning("%s: could not set serf tags: %s", self.cfg.name, exc)
            elif not healthy:
                applied = False
            await trio.sleep(1.0)

    # ------------------------------------------------------------------ membership
    def _refresh_peers(self) -> None:
        m = self.membership
        if m is None or self.gossip is None:
            return
        if not m.healthy:
            # Without Serf we cannot know who is alive: stop being a candidate (so we stop
            # acting), but keep gossiping with the peers we last knew.
            self.replica.candidates = []
            return
        alive = [i for i in m.instances if i.status == "alive"]
        # Keep gossiping with instances Serf marks failed (memberlist's GossipToTheDead):
        # after a partition the data heals when the network does, not at Serf's 30 s
        # reconnect, and a cut-off holder learns of the newer lease at once. They are never
        # lease candidates, and an unreachable one only costs its unacknowledged deltas
        # (bounded by max_buffer) and a share of the periodic digests.
        peers = {i.name: i.gossip_addr for i in (*alive, *m.view.failed_instances)}
        self.gossip.set_peers(peers)
        self.replica.candidates = candidates([i.name for i in alive])

    async def _membership_loop(self, events: trio.MemoryReceiveChannel[Any]) -> None:
        async for ev in events:
            self._refresh_peers()
            if isinstance(ev, InstancesChanged):
                self._reconcile_soon = True
                continue
            if isinstance(ev, NodeEvent) and ev.kind in ("discovered", "disappeared"):
                if self.replica.is_holder():
                    try:
                        await self.jobs.apply_node_event(
                            ev.kind, ev.name, ev.label, ev.serial, ev.addr
                        )
                        self.counters["node_events_applied"] += 1
                    except (GossipmgrError, StoreError) as exc:
                        log.error("%s: node event %s refused: %s", self.cfg.name, ev, exc)
                else:
                    # The holder applies it; a takeover reconciles against Serf.
                    self.counters["node_events_ignored"] += 1

    def alive_nodes(self) -> dict[str, tuple[str, str, str]]:
        m = self.membership
        if m is None:
            return {}
        return {n.name: (n.label, n.serial, n.addr) for n in m.nodes.values() if n.up}

    def unsettled_nodes(self) -> set[str]:
        m = self.membership
        if m is None:
            return set()
        now = trio.current_time()
        known = m.nodes
        out = {n.name for n in known.values() if now - n.since < RECONCILE_SETTLE_S}
        # Only nodes Serf does not list can be absent: look up just those (normally none),
        # not every record (jobs.reconcile scans them all once already).
        state = self.replica.state
        unlisted = [
            n
            for n in state.node_names()
            if n not in known
            and (r := state.node(n)) is not None
            and inv.state_of(r) == inv.DISCOVERED
        ]
        out |= self._absences.young(unlisted, known, now, self.absent_grace_s)
        return out

    # ------------------------------------------------------------------ lease
    def _note_bounded_lease(self, lease: Lease | None) -> None:
        """Log (once per entry) and count a lease whose expiry was cut by the bound."""
        raw = self.replica.state.lease()
        if lease is None or raw is None or raw.get("expires_ms") == lease.expires_ms:
            return
        if raw != self._bounded_seen:
            self._bounded_seen = raw
            self.counters["lease_bounded"] += 1
            log.warning(
                "%s: the lease entry (holder %r, epoch %d) expires %s ms ahead, more than a "
                "TTL after it was written: read as expiring at %d (forged, or a peer with a "
                "longer --lease-ttl-ms)",
                self.cfg.name,
                lease.holder,
                lease.epoch,
                raw.get("expires_ms"),
                lease.expires_ms,
            )

    async def _lease_loop(self) -> None:
        rep = self.replica
        assert self.gossip is not None  # made in run() before _start()
        gossip = self.gossip
        was_holder = False
        reconciled_epoch = -1
        last_reconcile = 0.0
        while True:
            self._refresh_peers()
            lease = rep.lease()
            self._note_bounded_lease(lease)
            new = decide(
                rep.name,
                lease,
                rep.candidates,
                rep.now_ms(),
                rep.lease_cfg,
                rep.state.max_record_epoch,
                live=gossip.ae.heard_from(rep.now_ms(), LIVE_PEER_MS),
            )
            if new is not None:
                renewal = lease is not None and lease.holder == rep.name
                value = new.as_value()

                def make(s: ClusterState, ts: Timestamp, value: Any = value) -> LWWMap:
                    return s.d_set(LEASE_KEY, value, ts)

                try:
                    await rep.commit(make)
                    if renewal:
                        self.counters["lease_renewals"] += 1
                    else:
                        self.counters["lease_claims"] += 1
                        log.warning("%s: claimed the lease, epoch %d", rep.name, new.epoch)
                except StoreError as exc:
                    log.error("%s: cannot write the lease: %s", rep.name, exc)
            holder = rep.is_holder()
            if holder != was_holder:
                log.warning("%s: %s the lease holder", rep.name, "now" if holder else "no longer")
                was_holder = holder
            m = self.membership
            current = rep.lease()
            if holder and current is not None and m is not None and m.healthy and m.polls > 0:
                # At takeover (a new epoch) and then periodically: repair any health event
                # lost in the handover or during a Serf outage.
                now = trio.current_time()
                due = now - last_reconcile > RECONCILE_EVERY_S or self._reconcile_soon
                if current.epoch != reconciled_epoch or due:
                    self._reconcile_soon = False
                    try:
                        fixed = await self.jobs.reconcile(
                            self.alive_nodes(), self.unsettled_nodes()
                        )
                        self.counters["reconciles"] += 1
                        if fixed["discovered"] or fixed["disappeared"]:
                            log.warning(
                                "%s: reconcile against Serf (epoch %d): discovered %s, "
                                "disappeared %s",
                                rep.name,
                                current.epoch,
                                fixed["discovered"],
                                fixed["disappeared"],
                            )
                        reconciled_epoch, last_reconcile = current.epoch, now
                    except (GossipmgrError, StoreError) as exc:
                        log.error("%s: reconcile failed: %s", rep.name, exc)
            await trio.sleep(LEASE_LOOP_S)

    # ------------------------------------------------------------------ signals
    async def _signals(self, nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGINT, signal.SIGTERM) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    self.reload()
                else:
                    log.warning("%s: signal %s: shutting down", self.cfg.name, signum)
                    nursery.cancel_scope.cancel()
                    return

    def reload(self) -> None:
        """SIGHUP: re-read the config file; apply what can change at run time."""
        path = self.cfg.config_file
        try:
            new = load(path, self.overrides) if path is not None else self.cfg
            if new.no_auth != self.cfg.no_auth:
                # Turning auth off must be as loud as starting without it (and pass the
                # listen policy): only a restart does that.
                raise ConfigError("no_auth changed: that needs a restart")
            token = load_or_create_token(new)
            keyring, _ = load_or_create_keyring(new)
        except GossipmgrError as exc:
            log.error("%s: reload refused, keeping the old settings: %s", self.cfg.name, exc)
            return
        self.cfg = AgentConfig(
            **{
                **self.cfg.__dict__,
                "ansible": new.ansible,
                "api_token_file": new.api_token_file,
                "encrypt_key_file": new.encrypt_key_file,
                "reconfigure_on_reappear": new.reconfigure_on_reappear,
            }
        )
        self.token = token
        if self.api_ctx is not None:
            self.api_ctx.token = token
        self.jobs.reconfigure_on_reappear = new.reconfigure_on_reappear
        if self.gossip is not None:
            self.gossip.set_keyring(keyring)
        log.warning("%s: reloaded %s (token, gossip keys, ansible section)", self.cfg.name, path)

    # ------------------------------------------------------------------ views
    def auth_failures(self) -> list[dict[str, Any]]:
        """Gossip datagrams that failed authentication, per source, named when we can.

        The source address is matched against the instances' gossip addresses (then their
        hosts, then cluster nodes' addresses); the sender id the datagrams claimed (not
        proven: they did not authenticate) is matched against instance names too.
        """
        g = self.gossip
        if g is None or not g.auth_failures:
            return []
        m = self.membership
        instances = [*m.instances, *m.view.failed_instances] if m is not None else []
        by_addr = {i.gossip_addr: i.name for i in instances}
        by_host = {i.gossip_addr[0]: i.name for i in instances}
        by_node_addr = {n.addr: n.member for n in m.nodes.values()} if m is not None else {}
        by_id = {node_id(i.name): i.name for i in instances}
        now = self.replica.now_ms()
        out = []
        for src, f in g.auth_failures.items():
            addr = (src[0], src[1])
            peer = by_addr.get(addr) or by_host.get(src[0]) or by_node_addr.get(src[0])
            out.append(
                {
                    "peer": peer,
                    "claimed": by_id.get(f.claimed_sender),
                    "source": f"{src[0]}:{src[1]}",
                    "count": f.count,
                    "reasons": f.reasons.snapshot(),
                    "last_ms_ago": max(0, now - f.last_ms),
                }
            )
        return sorted(out, key=lambda a: (str(a["peer"] or ""), str(a["source"])))

    def warnings(self) -> list[str]:
        """Misconfigurations an operator must see (on /health and in ``gossipmgr peers``)."""
        out: list[str] = []
        if self.token is None:
            out.append(NO_AUTH_WARNING)
        if self.cfg.serf_no_encrypt:
            out.append(SERF_UNENCRYPTED_WARNING)
        elif self.cfg.serf_rpc and self.external_serf_encrypted is False:
            out.append(
                f"the Serf agent at {self.cfg.serf_rpc} (--serf-rpc) is unencrypted: anyone "
                "who reaches its Serf port can forge node members. See docs/security.md"
            )
        for r in self.serf_refusals.snapshot(self.replica.now_ms()):
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

    def peers(self) -> list[dict[str, Any]]:
        m = self.membership
        g = self.gossip
        stats = g.ae.stats(self.replica.now_ms())["peers"] if g is not None else {}
        out: list[dict[str, Any]] = []
        seen = set()
        failing: dict[str, list[dict[str, Any]]] = {}
        for a in self.auth_failures():
            if a["peer"] is not None:
                failing.setdefault(str(a["peer"]), []).append(a)
        for inst in m.instances if m is not None else ():
            seen.add(inst.name)
            p = stats.get(inst.name, {})
            fails = failing.get(inst.name, [])
            reasons: dict[str, int] = {}
            for a in fails:
                for k, v in a["reasons"].items():
                    reasons[k] = reasons.get(k, 0) + v
            out.append(
                {
                    "auth_failures": sum(a["count"] for a in fails),
                    "auth_failure_reasons": reasons,
                    "name": inst.name,
                    "api_url": inst.api_url,
                    "gossip_addr": f"{inst.gossip_addr[0]}:{inst.gossip_addr[1]}",
                    "status": inst.status,
                    "self": inst.name == self.cfg.name,
                    "lag": p.get("lag", 0),
                    "resyncing": p.get("resyncing", False),
                    "last_heard_ms_ago": p.get("last_heard_ms_ago"),
                }
            )
        if self.cfg.name not in seen:
            out.append(
                {
                    "name": self.cfg.name,
                    "api_url": self.api_url,
                    "gossip_addr": None,
                    "status": "unknown (serf down)"
                    if m is None or not m.healthy
                    else "not in serf",
                    "self": True,
                    "lag": 0,
                }
            )
        return sorted(out, key=lambda p: str(p["name"]))

    def instance_api_url(self, name: str) -> str | None:
        if name == self.cfg.name:
            return self.api_url
        m = self.membership
        for inst in m.instances if m is not None else ():
            if inst.name == name:
                return inst.api_url
        return None

    def holder_api_url(self) -> str | None:
        lease = self.replica.lease()
        if lease is None or lease.holder == self.cfg.name:
            return None
        if lease.expires_ms <= self.replica.now_ms():
            return None
        return self.instance_api_url(lease.holder)

    def health(self) -> dict[str, Any]:
        m = self.membership
        store = self.replica.store
        return {
            "name": self.cfg.name,
            "version": __version__,
            "uptime_s": round(time.time() - self.started, 3),
            "serf": {
                "healthy": bool(m and m.healthy),
                "error": "" if m and m.healthy else (m.last_error if m else "not started"),
                "embedded": self.serf is not None,
                # Members claiming another member's node identity: ignored (serf/membership.py)
                "identity_conflicts": [c.as_json() for _, c in sorted(m.view.conflicts.items())]
                if m
                else [],
                "encrypted": (
                    self.serf_key is not None
                    if not self.cfg.serf_rpc
                    else self.external_serf_encrypted
                ),
                "discover": self.cfg.serf_discover,
                "iface": self.cfg.serf_iface,
                "refused": self.serf_refusals.snapshot(self.replica.now_ms()),
            },
            "gossip": {"auth_failures": self.auth_failures()},
            "warnings": self.warnings(),
            "lease": {
                "holder": self.replica.is_holder(),
                **(self.replica.lease().__dict__ if self.replica.lease() else {}),
            },
            "durability": {
                "data_dir": str(self.cfg.data_dir),
                "write_errors": self.replica.counters["write_errors"],
                "log_bytes": store.log_bytes if store is not None else 0,
                "restore_seconds": round(self.replica.restore_seconds, 4),
            },
            "entries": len(self.replica.state),
            "auth": (
                {"token": True}
                if self.token is not None
                else {"token": False, "warning": NO_AUTH_WARNING}
            ),
        }


class AgentApiContext:
    """The API's view of a running agent (``gossipmgr.api.ApiContext``)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.replica = agent.replica
        self.jobs = agent.jobs
        self.token: str | None = agent.token  # the agent updates it on SIGHUP

    @property
    def allowed_client_vars(self) -> frozenset[str]:
        """The operator's [ansible] allow_client_vars (current after a SIGHUP reload)."""
        return frozenset(self.agent.cfg.ansible.allow_client_vars)

    def peers(self) -> list[dict[str, Any]]:
        return self.agent.peers()

    def serf_healthy(self) -> bool:
        m = self.agent.membership
        return bool(m and m.healthy)

    def health(self) -> dict[str, Any]:
        return self.agent.health()

    def metrics_text(self) -> str:
        return metrics_text(self.agent)

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

    def holder_api_url(self) -> str | None:
        return self.agent.holder_api_url()

    def instance_api_url(self, name: str) -> str | None:
        return self.agent.instance_api_url(name)


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


def _metric(lines: list[str], name: str, kind: str, help_: str, samples: Any) -> None:
    lines.append(f"# HELP {name} {help_}")
    lines.append(f"# TYPE {name} {kind}")
    if isinstance(samples, dict):
        for labels, v in samples.items():
            lines.append(f"{name}{{{labels}}} {v}")
    else:
        lines.append(f"{name} {samples}")


def _label(value: str) -> str:
    """A Prometheus label value: backslash, quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def socket_drops(counters: dict[str, int]) -> dict[str, int]:
    """The UDP transport's drops as metric reasons: ``recv_too_large`` (over MAX_DATAGRAM,
    refused before any decryption), ``recv_error_<ERRNO>`` and ``send_error_<ERRNO>``."""
    return {
        k.replace(":", "_"): v
        for k, v in counters.items()
        if k == "recv_too_large" or k.startswith(("recv_error:", "send_error:"))
    }


def metrics_text(agent: Agent) -> str:
    """Prometheus text exposition of every figure the agent keeps."""
    rep = agent.replica
    lines: list[str] = []
    m = agent.membership
    lease = rep.lease()
    _metric(lines, "gossipmgr_up", "gauge", "1 while the agent runs.", 1)
    _metric(
        lines, "gossipmgr_serf_healthy", "gauge", "1 when Serf answers.", int(bool(m and m.healthy))
    )
    _metric(
        lines,
        "gossipmgr_entries",
        "gauge",
        "Entries in the replica (tombstones too).",
        len(rep.state),
    )
    _metric(
        lines, "gossipmgr_nodes", "gauge", "Nodes in the inventory.", len(rep.state.node_names())
    )
    _metric(
        lines,
        "gossipmgr_lease_holder",
        "gauge",
        "1 if this instance holds the lease.",
        int(rep.is_holder()),
    )
    _metric(
        lines, "gossipmgr_lease_epoch", "gauge", "Current lease epoch.", lease.epoch if lease else 0
    )
    _metric(
        lines,
        "gossipmgr_fenced_writes_total",
        "counter",
        "Writes refused for carrying a stale lease epoch.",
        rep.state.map.fenced,
    )
    _metric(
        lines,
        "gossipmgr_hlc_refused_total",
        "counter",
        "Remote timestamps refused for running too far ahead.",
        rep.hlc.refused,
    )
    if m is not None:
        _metric(
            lines,
            "gossipmgr_serf_identity_conflicts",
            "gauge",
            "Serf members claiming a node identity another member owns (ignored).",
            len(m.view.conflicts),
        )
        _metric(
            lines,
            "gossipmgr_serf_identity_conflicts_total",
            "counter",
            "Members found claiming another member's node identity.",
            m.view.conflicts_total,
        )
    counters = dict(agent.counters)
    if agent.serf is not None:  # crashes restarted by the supervisor, plus failed starts
        counters["serf_restarts"] += max(0, agent.serf.starts - 1)
    for k, v in sorted(counters.items()):
        _metric(lines, f"gossipmgr_{k}_total", "counter", f"Agent counter {k}.", v)
    for k, v in sorted(rep.counters.items()):
        _metric(lines, f"gossipmgr_replica_{k}_total", "counter", f"Replica counter {k}.", v)
    store = rep.store
    if store is not None:
        st = store.stats
        _metric(lines, "gossipmgr_store_appends_total", "counter", "Records appended.", st.appends)
        _metric(lines, "gossipmgr_store_fsyncs_total", "counter", "Group-commit fsyncs.", st.fsyncs)
        _metric(lines, "gossipmgr_store_errors_total", "counter", "Write/fsync errors.", st.errors)
        _metric(
            lines, "gossipmgr_store_fsync_max_seconds", "gauge", "Slowest fsync.", st.fsync_max_s
        )
        _metric(
            lines,
            "gossipmgr_store_log_bytes",
            "gauge",
            "Log bytes since the snapshot.",
            st.log_bytes,
        )
        _metric(
            lines,
            "gossipmgr_store_compactions_total",
            "counter",
            "Snapshots written.",
            st.compactions,
        )
    if agent.gossip is not None:
        g = agent.gossip.stats()
        proto = g["protocol"]
        _metric(
            lines,
            "gossipmgr_gossip_delta_buffer",
            "gauge",
            "Deltas kept for peers.",
            proto["buffer_depth"],
        )
        _metric(
            lines,
            "gossipmgr_gossip_largest_datagram_bytes",
            "gauge",
            "Largest plaintext payload sent.",
            proto["largest_datagram"],
        )
        _metric(
            lines,
            "gossipmgr_gossip_peer_lag",
            "gauge",
            "Unacknowledged deltas per peer.",
            {f'peer="{n}"': p["lag"] for n, p in proto["peers"].items()},
        )
        tr = g["transport"]
        _metric(
            lines,
            "gossipmgr_gossip_datagrams_total",
            "counter",
            "Datagrams by direction.",
            {
                'dir="sent"': tr.get("datagrams_sent", 0),
                'dir="received"': tr.get("datagrams_received", 0),
            },
        )
        _metric(
            lines,
            "gossipmgr_gossip_bytes_total",
            "counter",
            "Bytes by direction and type.",
            {
                f'dir="{k.split("_bytes_")[0]}",type="{k.split("_bytes_")[1]}"': v
                for k, v in tr.items()
                if "_bytes_" in k
            },
        )
        # Every layer's drops; a reason two layers share (`version`, `too_large`) is summed.
        drops: dict[str, int] = socket_drops(g["socket"])
        for layer in (tr, proto["counters"]):
            for k, v in layer.items():
                if k.startswith("drop_"):
                    drops[k[5:]] = drops.get(k[5:], 0) + v
        _metric(
            lines,
            "gossipmgr_gossip_dropped_total",
            "counter",
            "Datagrams dropped by reason.",
            {f'reason="{k}"': v for k, v in sorted(drops.items())} or {'reason="none"': 0},
        )
        _metric(
            lines,
            "gossipmgr_gossip_auth_failures_total",
            "counter",
            "Datagrams that failed authentication, by peer (or source address).",
            {
                f'peer="{_label(a["peer"] or "")}",source="{_label(a["source"])}"': a["count"]
                for a in agent.auth_failures()
            }
            or {'peer="",source=""': 0},
        )
        _metric(
            lines,
            "gossipmgr_gossip_resyncs_total",
            "counter",
            "Digest resyncs started.",
            proto["counters"].get("digests_sent", 0),
        )
    for k, v in sorted(getattr(agent.jobs, "counters", {}).items()):
        _metric(lines, f"gossipmgr_jobs_{k}_total", "counter", f"Job counter {k}.", v)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- command line
OPTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "--config",
        {
            "type": Path,
            "metavar": "FILE",
            "help": "TOML config file (every option is "
            "also a key there; the ansible section is [ansible]); SIGHUP re-reads it",
        },
    ),
    ("--name", {"help": "instance name, unique; also its Serf node name (default: hostname)"}),
    ("--data-dir", {"type": Path, "help": "state, logs, keys (default /var/lib/gossipmgr)"}),
    ("--api-addr", {"help": "API listen HOST:PORT (default 127.0.0.1:9007; port 0 = any)"}),
    ("--advertise-api", {"help": "API URL peers and the CLI use (default: from --api-addr)"}),
    (
        "--gossip-addr",
        {
            "help": "UDP HOST:PORT for gossip between instances "
            "(default 127.0.0.1:7950; port 0 = any)"
        },
    ),
    ("--serf-bind", {"help": "embedded Serf agent's bind HOST:PORT (default 127.0.0.1:7946)"}),
    ("--serf-rpc-bind", {"help": "embedded Serf agent's RPC HOST:PORT (default 127.0.0.1:7373)"}),
    (
        "--serf-rpc",
        {
            "help": "use an existing Serf agent's RPC at HOST:PORT instead of "
            "starting one (its node name must equal --name)"
        },
    ),
    (
        "--serf-rpc-auth",
        {
            "help": "Serf RPC auth key, if the agent sets rpc_auth. Deprecated: every local "
            "user can read it in /proc; use --serf-rpc-auth-file or the config file"
        },
    ),
    (
        "--serf-rpc-auth-file",
        {"type": Path, "help": "file holding the Serf RPC auth key (rpc_auth)"},
    ),
    (
        "--serf-profile",
        {
            "choices": ["lan", "local", "wan"],
            "help": "memberlist timing profile for the embedded agent (default lan)",
        },
    ),
    (
        "--join",
        {
            "action": "append",
            "metavar": "ADDR",
            "help": "Serf address to join (repeatable; retried until it works)",
        },
    ),
    (
        "--encrypt-key-file",
        {
            "type": Path,
            "help": "shared gossip key (32 bytes base64, Serf's "
            "-encrypt format; also the embedded Serf's key unless --serf-encrypt-key-file or "
            "--serf-no-encrypt). Default: "
            "<data-dir>/gossip.key, created if missing",
        },
    ),
    (
        "--serf-encrypt-key-file",
        {
            "type": Path,
            "metavar": "FILE",
            "help": "the Serf cluster's key, when it differs from the gossip key "
            "(embedded Serf only)",
        },
    ),
    (
        "--serf-no-encrypt",
        {
            "action": "store_true",
            "default": None,
            "help": "run the embedded Serf unencrypted, to join nodes whose Serf runs without "
            "-encrypt (contiv/ansible's); gossip stays sealed. Warned about at start and "
            "on /health",
        },
    ),
    (
        "--serf-discover",
        {
            "metavar": "NAME",
            "help": "find the Serf cluster by mDNS under this name (Serf's -discover; "
            "contiv's serf_cluster_name)",
        },
    ),
    (
        "--serf-iface",
        {
            "metavar": "IF",
            "help": "interface the embedded Serf binds and runs mDNS on (Serf's -iface); "
            "--serf-bind then defaults to 0.0.0.0:7946, Serf picking the interface's address",
        },
    ),
    (
        "--api-token-file",
        {
            "type": Path,
            "help": "bearer token required by every route but /health "
            "(default: <data-dir>/api.token, created mode 0600 on first start)",
        },
    ),
    (
        "--no-auth",
        {
            "action": "store_true",
            "default": None,
            "help": "serve the API without any token: every local user can then run "
            "playbooks as the agent's user (warned at start and in /health)",
        },
    ),
    ("--tls-cert", {"type": Path, "help": "serve the API over TLS with this certificate"}),
    ("--tls-key", {"type": Path, "help": "... and this private key"}),
    (
        "--insecure",
        {
            "action": "store_true",
            "default": None,
            "help": "with --no-auth, allow a non-loopback API address too",
        },
    ),
    (
        "--playbook-dir",
        {
            "type": Path,
            "help": "where site.yml/cleanup.yml live "
            "(default: the sample playbooks shipped with gossipmgr)",
        },
    ),
    (
        "--reconfigure-on-reappear",
        {
            "action": "store_true",
            "default": None,
            "help": "re-run the configure playbook on an Allocated node that comes back",
        },
    ),
    (
        "--accept-log-damage",
        {
            "action": "store_true",
            "default": None,
            "help": "start even if acknowledged log records are damaged: keep the intact "
            "ones, copy the damaged segment to log.<seq>.corrupt (they are LOST here; "
            "peers may still hold them)",
        },
    ),
    ("--lease-ttl-ms", {"type": int, "help": "lease time to live (default 10000)"}),
    (
        "--lease-renew-ms",
        {"type": int, "help": "renew when this much of the TTL has passed (default 2500)"},
    ),
    ("--log-level", {"choices": ["debug", "info", "warning", "error"], "help": "default info"}),
]


def add_agent_options(p: argparse.ArgumentParser) -> None:
    for flag, kw in OPTIONS:
        p.add_argument(flag, **kw)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, _ in OPTIONS:
        key = flag[2:].replace("-", "_")
        if key == "config":
            continue
        val = getattr(args, key, None)
        if key == "join" and val is not None:
            val = tuple(val)
        overrides[key] = val
    return overrides


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return load(args.config, overrides_from_args(args))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_agent(args: argparse.Namespace) -> int:
    try:
        overrides = overrides_from_args(args)
        cfg = load(args.config, overrides)
        setup_logging(cfg.log_level)
        for note in cfg.config_notes:
            log.warning("%s", note)
        if overrides.get("serf_rpc_auth"):
            log.warning(
                "--serf-rpc-auth puts the Serf RPC secret on the command line, where every "
                "local user can read it (/proc/<pid>/cmdline): use --serf-rpc-auth-file or "
                "serf_rpc_auth in a 0600 config file"
            )
        agent = Agent(cfg, overrides)
    except GossipmgrError as exc:
        print(f"gossipmgr agent: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(agent.run)
    except GossipmgrError as exc:
        print(f"gossipmgr agent: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gossipmgr agent: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        print(f"gossipmgr agent: {first}", file=sys.stderr)
        return 1
    return 0


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the gossipmgr daemon",
        description="Run one gossipmgr instance: REST API, gossip, an embedded Serf agent "
        "(unless --serf-rpc), the lease and the job runner. SIGHUP reloads the config "
        "file's token, gossip keys and ansible section; SIGINT/SIGTERM leave gracefully.",
    )
    add_agent_options(p)
    p.set_defaults(func=cmd_agent)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gossipmgr agent")
    add_agent_options(parser)
    return cmd_agent(parser.parse_args(argv))
