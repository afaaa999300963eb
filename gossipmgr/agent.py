"""The composition root: the one module that knows all the others.

:class:`Agent` builds one gossipmgr instance from its config and runs, in one trio nursery:

=================  =====================================================================
replica            state + HLC + durable store (restored before anything else starts)
API                Quart-Trio on hypercorn (``gossipmgr.api``) over ``runtime.context``
gossip             sealed UDP anti-entropy between instances (``gossipmgr.gossip``)
serf               the embedded ``serf agent`` child, supervised, or an existing agent
                   (``runtime.serflink``)
membership         Serf ``members`` polling + stream -> gossip peers, lease candidates,
                   node health events
lease              renew/claim decisions and reconcile (``runtime.leaseloop``) every 250 ms
jobs               the job manager: runs workflows when this instance holds the lease
signals            SIGHUP reloads (token, gossip keys, ansible section); SIGINT/SIGTERM stop
=================  =====================================================================

Start order (issue 17): the replica is restored, the API's address bound and the front
(``api.front``) serves /health and /globals/{key}; gossip asks the peers it last knew
(``runtime.peerfile``) what this instance missed, before Serf is up, while Serf, membership,
the lease and the jobs start; once they answered and the front's reads paused, the web
stack (Quart, hypercorn) loads in a thread; then the rest of the API is served. /health
says what has not started yet.

Its Serf connection is the one part a caller may supply (``serf=``): the tests' standalone
instances (``gossipmgr.testing.standalone``) are this same wiring over a fake Serf. The
command line is ``gossipmgr.daemon``.

Failure policy (clusterm learnt it the hard way): Serf being down never stops the daemon.
It keeps serving reads from the replica, retries Serf with backoff, reports the condition
on /health and in the log, and stops acting (no candidacy, so no lease) until Serf is back.
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import signal
import socket
import time
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

import trio

from gossipmgr.api import Front, bind_listener, check_listen_policy, listener_url
from gossipmgr.config import AgentConfig, load, read_secret_file, serf_rpc_secret, split_addr
from gossipmgr.core.lease import LeaseConfig
from gossipmgr.errors import ConfigError, GossipmgrError
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.keys import (
    load_or_create_keyring,
    load_or_create_token,
    load_tokens,
    serf_key,
    token_path,
)
from gossipmgr.metrics import Metrics
from gossipmgr.runtime.ansible import AnsibleSettings, split_config_vars
from gossipmgr.runtime.confirm import Confirmer
from gossipmgr.runtime.context import (
    NO_AUTH_WARNING,
    SERF_UNENCRYPTED_WARNING,
    AgentApiContext,
    auth_failures,
    runtime_extra_vars,
)
from gossipmgr.runtime.firstreads import pause_in, since_answered
from gossipmgr.runtime.jobs import LOG_FLUSH_S, JobManager
from gossipmgr.runtime.leaseloop import Holder, absent_grace_s
from gossipmgr.runtime.peerfile import catch_up_from_last_peers
from gossipmgr.runtime.replica import Replica
from gossipmgr.runtime.serflink import EmbeddedSerf, ExternalSerf, SerfLink
from gossipmgr.runtime.watch import ChangeFeed
from gossipmgr.runtime.webhooks import Hook, Notifier
from gossipmgr.serf.membership import SerfMembership
from gossipmgr.serf.process import SerfAgentProcess
from gossipmgr.serf.refusals import SerfRefusals, watch_refusals

__all__ = [
    "NO_AUTH_WARNING",
    "SERF_UNENCRYPTED_WARNING",
    "TOMBSTONE_TTL_MS",
    "Agent",
    "AgentApiContext",
    "serf_link",
]

log = logging.getLogger("gossipmgr.agent")

#: Tombstones older than this are garbage collected (hourly): an instance cut off longer
#: refuses to rejoin with its old data (``check_stale_data``); Cassandra's gc_grace: 10 days.
TOMBSTONE_TTL_MS = 7 * 24 * 3600 * 1000
GC_EVERY_S = 3600.0
#: The API's web stack (Quart, flask, werkzeug, jinja2, hypercorn), loaded in a thread once
#: gossip caught up and the first reads were served (``Agent._first_reads``).
WEB_STACK = ("gossipmgr.api.app", "gossipmgr.api.server")
#: It waits at most CATCH_UP_FIRST_S for the catch-up, then at most FIRST_READS_S for a
#: pause of QUIET_S in the front's requests.
CATCH_UP_FIRST_S, FIRST_READS_S, QUIET_S = 0.25, 1.0, 0.03


def _import_web_stack() -> None:
    """Import :data:`WEB_STACK` with the cyclic GC off (as the CLI imports the daemon) and
    freeze what it made (as the restore does): no collection walks it (~20 ms each)."""
    gc_on = gc.isenabled()
    gc.disable()
    try:
        for name in WEB_STACK:
            importlib.import_module(name)
        gc.freeze()
    finally:
        if gc_on:
            gc.enable()


def serf_link(
    cfg: AgentConfig, key: str | None, rpc_auth: str | None, counters: dict[str, int]
) -> SerfLink:
    """The Serf connection ``cfg`` asks for: an existing agent (``serf_rpc``), else an
    embedded ``serf agent`` child encrypting with ``key``."""
    if cfg.serf_rpc:
        return ExternalSerf(cfg.name, split_addr(cfg.serf_rpc, "serf-rpc"), rpc_auth)

    def make(tags: Mapping[str, str]) -> SerfAgentProcess:
        return SerfAgentProcess(
            name=cfg.name,
            bind=cfg.serf_bind,
            rpc=cfg.serf_rpc_bind,
            data_dir=cfg.data_dir / "serf",
            tags=tags,
            encrypt_key=key,
            retry_join=list(cfg.join),
            discover=cfg.serf_discover or None,
            iface=cfg.serf_iface or None,
            profile=cfg.serf_profile,
            rpc_auth=rpc_auth,
        )

    rpc = split_addr(cfg.serf_rpc_bind, "serf-rpc-bind")
    return EmbeddedSerf(cfg.name, make, rpc, rpc_auth, encrypted=key is not None, counters=counters)


class Agent:
    """One gossipmgr instance. ``run`` owns everything it starts.

    ``serf``: the Serf connection to use instead of the one ``cfg`` asks for (tests pass a
    fake). ``fsync`` and ``log_flush_s`` tune the replica's store and the job logs' flush
    (tests trade durability for speed; the daemon keeps the defaults).
    """

    def __init__(
        self,
        cfg: AgentConfig,
        overrides: dict[str, Any] | None = None,
        *,
        serf: SerfLink | None = None,
        fsync: bool = True,
        log_flush_s: float = LOG_FLUSH_S,
    ) -> None:
        self.cfg = cfg
        #: command-line options, re-applied over the file on every SIGHUP reload
        self.overrides = dict(overrides or {})
        self.token = load_or_create_token(cfg)
        #: every token the API accepts, by name and role (the agent swaps it on SIGHUP)
        self.tokens = load_tokens(cfg, self.token)
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
            fsync=fsync,
            accept_damage=cfg.accept_log_damage,
            lease=LeaseConfig(ttl_ms=cfg.lease_ttl_ms, renew_ms=cfg.lease_renew_ms),
        )
        self.replica.candidates = []  # nothing until Serf says who is alive
        self.feed = ChangeFeed(self.replica, history=cfg.watch_history)
        self.jobs = JobManager(
            self.replica,
            self.ansible_settings,
            cfg.data_dir / "work",
            reconfigure_on_reappear=cfg.reconfigure_on_reappear,
            log_flush_s=log_flush_s,
            job_log_max_bytes=cfg.job_log_max_bytes,
            job_queue=cfg.job_queue,
            job_queue_max=cfg.job_queue_max,
        )
        self.jobs.gate.history_limit = cfg.node_history_limit
        # a queued job waits while Serf is unreachable here, as a request gets a 503 then
        self.jobs.queue.may_start = lambda: bool(self.membership and self.membership.healthy)
        self.boot_ms = int(time.time() * 1000)
        self.counters: dict[str, int] = {
            "lease_bounded": 0,
            "lease_claims": 0,
            "lease_renewals": 0,
            "node_events_applied": 0,
            "node_events_deferred": 0,
            "node_events_ignored": 0,
            "reconciles": 0,
            "serf_restarts": 0,
            # webhooks (gossipmgr.runtime.webhooks): exported even with none configured
            "webhook_dropped": 0,
            "webhook_failed": 0,
            "webhook_retries": 0,
            "webhook_sent": 0,
        }
        self.serf_link = serf or serf_link(cfg, self.serf_key, self.serf_rpc_auth, self.counters)
        self.notifier: Notifier | None = None
        if cfg.webhooks and cfg.webhook_secret_file is not None:  # config.validate: both
            secret = read_secret_file(cfg.webhook_secret_file, "webhook-secret-file")
            hooks = [Hook(w.url, w.events) for w in cfg.webhooks]
            self.notifier = Notifier(self.replica, hooks, secret.encode(), self.counters)
        self.membership: SerfMembership | None = None
        self.gossip: GossipService[Replica] | None = None
        self.holder: Holder | None = None
        self.api_url = ""
        self.api_ctx: AgentApiContext | None = None
        self.front: Front | None = None  # the API's server (plain HTTP: api.front)
        #: Serf traffic our agent refused for encryption reasons (from its log).
        self.serf_refusals = SerfRefusals()
        self.started = time.time()
        self.ready = trio.Event()
        self.metrics = Metrics(self)

    @property
    def serf(self) -> SerfAgentProcess | None:
        """The embedded Serf agent's supervisor (None with an existing or fake agent)."""
        return self.serf_link.process

    def auth_failures(self) -> list[dict[str, Any]]:
        return auth_failures(self.gossip, self.membership, self.replica.now_ms())

    def metrics_text(self) -> str:
        return self.metrics.text()

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
            upgrade_wait_s=a.upgrade_wait_s,
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
            dropped = self.replica.state.gc(self.replica.now_ms() - TOMBSTONE_TTL_MS)
            if dropped:
                log.info("%s: garbage-collected %d tombstones", self.cfg.name, dropped)

    # ------------------------------------------------------------------ run
    async def run(
        self, *, signals: bool = True, task_status: Any = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run until cancelled (or SIGINT/SIGTERM when ``signals``, which also reloads on
        SIGHUP: only the main thread of a process may take them)."""
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
        api_host, api_port = split_addr(cfg.api_addr, "api-addr")
        try:
            sock = bind_listener(api_host, api_port)
        except OSError:
            await self.replica.aclose()
            raise
        self.api_url = cfg.advertise_api or listener_url(sock, cfg.tls_cert is not None)
        self.api_ctx = AgentApiContext(self)
        front = self.front = None if cfg.tls_cert else Front(self.api_ctx, sock)
        try:
            async with trio.open_nursery() as nursery:
                # The front serves now; the web stack, once loaded, the rest (issue 17).
                if front is not None:
                    await nursery.start(front.run)
                await nursery.start(self._run_parts, nursery, signals)
                await self._first_reads()
                await trio.to_thread.run_sync(_import_web_stack, abandon_on_cancel=True)
                await self._serve_api(nursery, sock, front)
                self.ready.set()
                task_status.started(self)
        finally:
            sock.close()  # the server's by now, if it started (closing twice is fine)
            with trio.CancelScope(shield=True):
                await self.replica.aclose()

    async def _serve_api(self, n: trio.Nursery, sock: socket.socket, front: Front | None) -> None:
        from gossipmgr.api import connection_handler, create_app, serve  # imported by now

        cfg, ctx = self.cfg, self.api_ctx
        assert ctx is not None
        app = create_app(ctx)
        if front is not None:  # plain HTTP: what the front does not serve goes to hypercorn
            front.hand_to(await n.start(connection_handler, app))
        else:  # TLS (config.validate: a key with the cert): hypercorn serves the socket
            cert, key = str(cfg.tls_cert), str(cfg.tls_key)
            await n.start(partial(serve, app, "", 0, certfile=cert, keyfile=key, sock=sock))

    async def _run_parts(
        self,
        outer: trio.Nursery,
        signals: bool,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Gossip, Serf, membership, the lease and the jobs, beside the API (``outer``, which
        a stop signal cancels with them); the gossip transport outlives its tasks."""
        gossip_host, gossip_port = split_addr(self.cfg.gossip_addr, "gossip-addr")
        async with open_udp_transport(gossip_host, gossip_port) as transport:
            self.gossip = GossipService(self.replica, transport, self.keyring, boot_ms=self.boot_ms)
            async with trio.open_nursery() as nursery:
                await self._start(nursery, signals, outer)
                task_status.started()

    async def _start(self, nursery: trio.Nursery, signals: bool, outer: trio.Nursery) -> None:
        cfg = self.cfg
        assert self.gossip is not None
        gossip_addr = await nursery.start(self.gossip.run)
        log.info("%s: API on %s, gossip on %s:%s", cfg.name, self.api_url, *gossip_addr)
        catch_up_from_last_peers(self.gossip, cfg.data_dir / "peers.json", cfg.name)
        tags = {
            "role": "gossipmgr",
            "gossip": f"{gossip_addr[0]}:{gossip_addr[1]}",
            "api": self.api_url,
            "boot": f"{self.boot_ms:x}",
        }
        link = self.serf_link
        membership = self.membership = SerfMembership(link.connector())
        await nursery.start(link.run, tags, lambda: membership.healthy)
        nursery.start_soon(
            watch_refusals, link.connector(), self.serf_refusals, self.replica.now_ms
        )
        events = membership.subscribe()
        await nursery.start(membership.run)
        self.holder = Holder(
            self.replica,
            self.jobs,
            self.gossip,
            membership,
            self.counters,
            absent_grace_s=absent_grace_s(cfg.serf_profile),
            solo_after_s=cfg.lease_solo_after_s if cfg.lease_solo_after_s >= 0 else None,
            serf_profile=cfg.serf_profile,
        )
        self.jobs.executor.confirmer = Confirmer(self.replica, self.gossip, self.jobs.counters)
        nursery.start_soon(self.holder.membership_loop, events)
        nursery.start_soon(self.holder.lease_loop)
        nursery.start_soon(self._gc_loop)
        await nursery.start(self.jobs.run)
        if self.notifier is not None:
            await nursery.start(self.notifier.run)
        if signals:
            nursery.start_soon(self._signals, outer)

    async def _first_reads(self) -> None:
        """The catch-up's answers, then a pause in the front's reads (none once a request
        waits for the web stack), before the web stack's import (~0.3 s of CPU, in a
        thread) takes the CPU (issue 17; ``runtime.firstreads``)."""
        if self.gossip is not None:
            await since_answered(self.gossip.ae, self.replica.now_ms, CATCH_UP_FIRST_S)
        if (front := self.front) is not None:
            await pause_in(lambda: front.answered, front.wanted, QUIET_S, FIRST_READS_S)

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
            tokens = load_tokens(new, token)
            keyring, _ = load_or_create_keyring(new)
        except GossipmgrError as exc:
            log.error("%s: reload refused, keeping the old settings: %s", self.cfg.name, exc)
            return
        self.cfg = AgentConfig(
            **{
                **self.cfg.__dict__,
                "ansible": new.ansible,
                "api_token_file": new.api_token_file,
                "api_tokens_file": new.api_tokens_file,
                "encrypt_key_file": new.encrypt_key_file,
                "reconfigure_on_reappear": new.reconfigure_on_reappear,
            }
        )
        self.token, self.tokens = token, tokens
        if self.api_ctx is not None:
            self.api_ctx.token, self.api_ctx.tokens = token, tokens
        self.jobs.reconfigure_on_reappear = new.reconfigure_on_reappear
        if self.gossip is not None:
            self.gossip.set_keyring(keyring)
        log.warning("%s: reloaded %s (tokens, gossip keys, ansible section)", self.cfg.name, path)
