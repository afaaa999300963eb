"""``GET /metrics``: one Prometheus collector over an instance's live state.

:class:`InstanceCollector` is a ``prometheus_client`` custom collector: it holds no values of its
own, it reads a :class:`MetricsSource` (the agent, or the standalone test instance built
from the same wiring) each time it is scraped. :class:`Metrics` registers one collector in a
:class:`~prometheus_client.CollectorRegistry` of its own (one per instance, never the
process-global one: tests run several instances in one process) and renders it with
``prometheus_client``'s text exposition (format 0.0.4, :data:`CONTENT_TYPE`), which also
escapes label values and help text.

The metric set (names, types, labels) is listed in docs/operations.md, section 8. Families
whose part is absent are left out: the ``gossipmgr_store_*`` ones without a data directory,
the ``gossipmgr_gossip_*`` ones without a gossip service, the identity-conflict ones until
Serf membership is set up.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence, Sized
from typing import TYPE_CHECKING, Any, Protocol

from gossipmgr.runtime.replica import Replica

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

#: The content type of what :meth:`Metrics.render` returns (the text format, version 0.0.4:
#: prometheus_client's CONTENT_TYPE_PLAIN_0_0_4, which is only imported at the first scrape).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ConflictView(Protocol):
    """Serf members claiming a node identity another member owns (serf.membership)."""

    @property
    def conflicts(self) -> Sized: ...
    @property
    def conflicts_total(self) -> int: ...


class MembershipReading(Protocol):
    @property
    def healthy(self) -> bool: ...
    @property
    def view(self) -> ConflictView: ...


class GossipReading(Protocol):
    def stats(self) -> Mapping[str, Any]: ...


class SerfProcessReading(Protocol):
    @property
    def starts(self) -> int: ...


class JobsReading(Protocol):
    @property
    def counters(self) -> Mapping[str, int]: ...


class MetricsSource(Protocol):
    """What the collector reads at scrape time.

    ``counters``: the instance's own event counts (``gossipmgr_<name>_total``), among them
    ``serf_restarts``, to which the collector adds the embedded Serf agent's restarts
    (``serf.starts - 1``). ``auth_failures()``: the records of ``GET /info/peers``'s
    ``auth_failures`` (``peer``, ``source``, ``count`` are read). ``membership``, ``gossip``,
    ``serf`` and ``jobs`` are None when the instance has no such part (yet).
    """

    @property
    def replica(self) -> Replica: ...
    @property
    def membership(self) -> MembershipReading | None: ...
    @property
    def gossip(self) -> GossipReading | None: ...
    @property
    def serf(self) -> SerfProcessReading | None: ...
    @property
    def jobs(self) -> JobsReading | None: ...
    @property
    def counters(self) -> Mapping[str, int]: ...
    def auth_failures(self) -> Sequence[Mapping[str, Any]]: ...


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    from prometheus_client.core import GaugeMetricFamily  # lazy: heavy, only a scrape needs it

    return GaugeMetricFamily(name, help_, value=value)


def _counter(name: str, help_: str, value: float) -> CounterMetricFamily:
    from prometheus_client.core import CounterMetricFamily  # lazy: heavy, only a scrape

    return CounterMetricFamily(name, help_, value=value)


def _labelled(
    family: GaugeMetricFamily | CounterMetricFamily,
    samples: Mapping[tuple[str, ...], float],
) -> Metric:
    for labels, value in samples.items():
        family.add_metric(list(labels), value)
    return family


def socket_drops(counters: Mapping[str, int]) -> dict[str, int]:
    """The UDP transport's drops as metric reasons: ``recv_too_large`` (over MAX_DATAGRAM,
    refused before any decryption), ``recv_error_<ERRNO>`` and ``send_error_<ERRNO>``."""
    return {
        k.replace(":", "_"): v
        for k, v in counters.items()
        if k == "recv_too_large" or k.startswith(("recv_error:", "send_error:"))
    }


def gossip_drops(stats: Mapping[str, Any]) -> dict[str, int]:
    """Every layer's drops by reason; a reason two layers share (``version``,
    ``too_large``) is summed."""
    drops = socket_drops(stats["socket"])
    for layer in (stats["transport"], stats["protocol"]["counters"]):
        for k, v in layer.items():
            if k.startswith("drop_"):
                drops[k[5:]] = drops.get(k[5:], 0) + v
    return drops


class InstanceCollector:
    """A ``prometheus_client`` collector reading ``source`` at each scrape.

    It has no ``describe``: the registry then does not check names at registration, which
    it would refuse here (the gauge ``gossipmgr_serf_identity_conflicts`` and the counter
    ``gossipmgr_serf_identity_conflicts_total`` share an OpenMetrics family name; the 0.0.4
    text format served keeps them apart, as it always did).
    """

    def __init__(self, source: MetricsSource) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._replica()
        yield from self._counters()
        store = self.source.replica.store
        if store is not None:
            yield from self._store(store.stats)
        gossip = self.source.gossip
        if gossip is not None:
            yield from self._gossip(gossip.stats())
        jobs = self.source.jobs
        for k, v in sorted((jobs.counters if jobs is not None else {}).items()):
            yield _counter(f"gossipmgr_jobs_{k}_total", f"Job counter {k}.", v)

    def _replica(self) -> Iterator[Metric]:
        rep = self.source.replica
        m = self.source.membership
        lease = rep.lease()
        yield _gauge("gossipmgr_up", "1 while the agent runs.", 1)
        yield _gauge("gossipmgr_serf_healthy", "1 when Serf answers.", int(bool(m and m.healthy)))
        yield _gauge(
            "gossipmgr_entries", "Entries in the replica (tombstones too).", len(rep.state)
        )
        yield _gauge("gossipmgr_nodes", "Nodes in the inventory.", rep.state.node_count())
        yield _gauge(
            "gossipmgr_lease_holder", "1 if this instance holds the lease.", int(rep.is_holder())
        )
        yield _gauge("gossipmgr_lease_epoch", "Current lease epoch.", lease.epoch if lease else 0)
        yield _counter(
            "gossipmgr_fenced_writes_total",
            "Writes refused for carrying a stale lease epoch.",
            rep.state.map.fenced,
        )
        yield _counter(
            "gossipmgr_hlc_refused_total",
            "Remote timestamps refused for running too far ahead.",
            rep.hlc.refused,
        )
        if m is not None:
            yield _gauge(
                "gossipmgr_serf_identity_conflicts",
                "Serf members claiming a node identity another member owns (ignored).",
                len(m.view.conflicts),
            )
            yield _counter(
                "gossipmgr_serf_identity_conflicts_total",
                "Members found claiming another member's node identity.",
                m.view.conflicts_total,
            )

    def _counters(self) -> Iterator[Metric]:
        counters = dict(self.source.counters)
        serf = self.source.serf
        if serf is not None:  # crashes restarted by the supervisor, plus failed starts
            counters["serf_restarts"] = counters.get("serf_restarts", 0) + max(0, serf.starts - 1)
        for k, v in sorted(counters.items()):
            yield _counter(f"gossipmgr_{k}_total", f"Agent counter {k}.", v)
        for k, v in sorted(self.source.replica.counters.items()):
            yield _counter(f"gossipmgr_replica_{k}_total", f"Replica counter {k}.", v)

    @staticmethod
    def _store(st: Any) -> Iterator[Metric]:
        yield _counter("gossipmgr_store_appends_total", "Records appended.", st.appends)
        yield _counter("gossipmgr_store_fsyncs_total", "Group-commit fsyncs.", st.fsyncs)
        yield _counter("gossipmgr_store_errors_total", "Write/fsync errors.", st.errors)
        yield _gauge("gossipmgr_store_fsync_max_seconds", "Slowest fsync.", st.fsync_max_s)
        yield _gauge("gossipmgr_store_log_bytes", "Log bytes since the snapshot.", st.log_bytes)
        yield _counter("gossipmgr_store_compactions_total", "Snapshots written.", st.compactions)

    def _gossip(self, g: Mapping[str, Any]) -> Iterator[Metric]:
        # lazy: prometheus_client is heavy and only a scrape needs it
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        proto, tr = g["protocol"], g["transport"]
        yield _gauge(
            "gossipmgr_gossip_delta_buffer", "Deltas kept for peers.", proto["buffer_depth"]
        )
        yield _gauge(
            "gossipmgr_gossip_largest_datagram_bytes",
            "Largest plaintext payload sent.",
            proto["largest_datagram"],
        )
        yield _labelled(
            GaugeMetricFamily(
                "gossipmgr_gossip_peer_lag", "Unacknowledged deltas per peer.", labels=["peer"]
            ),
            {(n,): p["lag"] for n, p in proto["peers"].items()},
        )
        yield _labelled(
            CounterMetricFamily(
                "gossipmgr_gossip_datagrams_total", "Datagrams by direction.", labels=["dir"]
            ),
            {
                ("sent",): tr.get("datagrams_sent", 0),
                ("received",): tr.get("datagrams_received", 0),
            },
        )
        yield _labelled(
            CounterMetricFamily(
                "gossipmgr_gossip_bytes_total",
                "Bytes by direction and type.",
                labels=["dir", "type"],
            ),
            {tuple(k.split("_bytes_", 1)): v for k, v in tr.items() if "_bytes_" in k},
        )
        drops = gossip_drops(g)
        yield _labelled(
            CounterMetricFamily(
                "gossipmgr_gossip_dropped_total", "Datagrams dropped by reason.", labels=["reason"]
            ),
            {(k,): v for k, v in sorted(drops.items())} or {("none",): 0},
        )
        yield _labelled(
            CounterMetricFamily(
                "gossipmgr_gossip_auth_failures_total",
                "Datagrams that failed authentication, by peer (or source address).",
                labels=["peer", "source"],
            ),
            {(a["peer"] or "", a["source"]): a["count"] for a in self.source.auth_failures()}
            or {("", ""): 0},
        )
        yield _counter(
            "gossipmgr_gossip_resyncs_total",
            "Digest resyncs started.",
            proto["counters"].get("digests_sent", 0),
        )


class Metrics:
    """One instance's metrics: a registry of its own holding one :class:`InstanceCollector`."""

    content_type = CONTENT_TYPE

    def __init__(self, source: MetricsSource) -> None:
        self.source = source
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """Made at the first use: prometheus_client is imported then, not at start."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry  # lazy: heavy, only a scrape

            self._registry = CollectorRegistry(auto_describe=False)
            self._registry.register(InstanceCollector(self.source))
        return self._registry

    def render(self) -> bytes:
        """The text exposition (UTF-8) of every figure, read now."""
        from prometheus_client import generate_latest  # lazy: heavy, only a scrape needs it

        return generate_latest(self.registry)

    def text(self) -> str:
        return self.render().decode("utf-8")
