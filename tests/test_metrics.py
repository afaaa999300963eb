"""``gossipmgr.metrics``: the prometheus_client collector behind ``GET /metrics``.

In process, over an instance's real parts (a replica with its store, a gossip service on a
loopback UDP socket, a Serf membership and a job manager that are not started): values are
read at each scrape and label values are escaped by the library (a peer named with a quote,
a backslash and a newline parses back unchanged). Against real agents (embedded ``serf
agent``): the served content type, and the exported set equals docs/operations.md's table.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.parser import text_string_to_metric_families
from serfutil import local_cluster

from gossipmgr.core import inventory as inv
from gossipmgr.core.state import combine
from gossipmgr.gossip.crypto import Keyring
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import Addr, open_udp_transport
from gossipmgr.localcluster import HOST, LocalCluster, free_port, wait_for
from gossipmgr.metrics import CONTENT_TYPE, Metrics
from gossipmgr.runtime.ansible import AnsibleSettings
from gossipmgr.runtime.jobs import JobManager
from gossipmgr.runtime.replica import Replica
from gossipmgr.serf.client import serf_connector
from gossipmgr.serf.membership import SerfMembership

REPO = Path(__file__).resolve().parent.parent
#: A peer name with every character the text format must escape in a label value.
ODD_PEER = 'odd"peer\\name\nline2'


@dataclass
class InstanceParts:
    """An instance's parts as the agent holds them (a :class:`MetricsSource`), none of the
    services started: Serf is not reached, no datagram is sent, no job runs."""

    replica: Replica
    gossip: GossipService[Replica] | None
    membership: SerfMembership | None
    jobs: JobManager | None
    serf: None = None  # an external Serf agent: no embedded one to count restarts of
    counters: dict[str, int] = field(default_factory=lambda: {"reconciles": 0})

    def auth_failures(self) -> list[dict[str, Any]]:
        return []  # nothing failed authentication: nothing was received


@asynccontextmanager
async def open_parts(
    data_dir: Path, peers: Mapping[str, Addr] | None = None
) -> AsyncIterator[InstanceParts]:
    rep = Replica("i1", data_dir=data_dir / "state", fsync=False)
    rep.open()
    try:
        async with open_udp_transport(HOST, 0) as transport:
            gossip = GossipService(rep, transport, Keyring(os.urandom(32)), boot_ms=1)
            gossip.set_peers(dict(peers or {}))
            yield InstanceParts(
                rep,
                gossip,
                SerfMembership(serf_connector(HOST, free_port())),
                JobManager(rep, lambda: AnsibleSettings(data_dir), data_dir / "work"),
            )
    finally:
        await rep.aclose()


async def add_nodes(rep: Replica, first: int, n: int) -> None:
    def make(state: Any, ts: Any) -> Any:
        return combine(
            *(
                inv.d_discovered(
                    state, f"node-{i}", "node", str(i), f"10.0.{i // 256}.{i % 256}", 1, ts
                )
                for i in range(first, first + n)
            )
        )

    await rep.commit(make)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, parsed by prometheus_client: (name, labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_values_are_read_at_each_scrape(tmp_path: Path) -> None:
    async with open_parts(tmp_path) as parts:
        metrics = Metrics(parts)
        await add_nodes(parts.replica, 0, 3)
        first = samples(metrics.text())
        assert first[("gossipmgr_nodes", ())] == 3
        assert first[("gossipmgr_replica_writes_total", ())] == 1
        assert first[("gossipmgr_store_appends_total", ())] >= 1
        assert first[("gossipmgr_serf_healthy", ())] == 0  # membership never ran
        assert first[("gossipmgr_gossip_dropped_total", (("reason", "none"),))] == 0
        assert first[("gossipmgr_gossip_auth_failures_total", (("peer", ""), ("source", "")))] == 0
        await add_nodes(parts.replica, 3, 2)
        parts.counters["reconciles"] += 5
        parts.jobs.counters["orphans"] += 1  # type: ignore[union-attr]
        second = samples(metrics.text())
        assert second[("gossipmgr_nodes", ())] == 5
        assert second[("gossipmgr_replica_writes_total", ())] == 2
        assert second[("gossipmgr_reconciles_total", ())] == 5
        assert second[("gossipmgr_jobs_orphans_total", ())] == 1


async def test_label_values_are_escaped(tmp_path: Path) -> None:
    peers = {ODD_PEER: (HOST, free_port()), "plain": (HOST, free_port())}
    async with open_parts(tmp_path, peers) as parts:
        await add_nodes(parts.replica, 0, 1)  # a delta the peers have not acknowledged
        text = Metrics(parts).text()
    got = samples(text)  # the hand formatter's output did not parse: the quote was raw
    assert got[("gossipmgr_gossip_peer_lag", (("peer", ODD_PEER),))] == 1
    assert got[("gossipmgr_gossip_peer_lag", (("peer", "plain"),))] == 1
    assert 'peer="odd\\"peer\\\\name\\nline2"' in text


def test_exposition_content_type_is_the_text_format_served() -> None:
    assert CONTENT_TYPE == CONTENT_TYPE_PLAIN_0_0_4 == "text/plain; version=0.0.4; charset=utf-8"


# ------------------------------------------------------------------ against real agents


def documented_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """docs/operations.md section 8's metric table: name -> (type, label names)."""
    text = (REPO / "docs" / "operations.md").read_text()
    section = text.split("## 8. Health and metrics", 1)[1].split("\n## ", 1)[0]
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for row in re.findall(r"^\| (`gossipmgr_.*?) \| ([a-z, ]+) \|", section, re.M):
        names = re.findall(r"`([^`]+)`", row[0])
        types = row[1].split(", ")
        types = types if len(types) == len(names) else types * len(names)
        prev = ""
        for name, kind in zip(names, types, strict=True):
            if name.startswith("..."):
                name = prev + name[3:]
            base, _, labels = name.partition("{")
            out[base] = (kind, frozenset(filter(None, labels.rstrip("}").split(","))))
            prev = base
    return out


def exported_metrics(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        out[name] = (family.type, frozenset(k for s in family.samples for k in s.labels))
    return out


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "cluster", lease_ttl_ms=6_000) as c:
        yield c


@pytest.mark.serf
@pytest.mark.slow
def test_agent_exports_the_documented_set_with_odd_instance_names(cluster: LocalCluster) -> None:
    # Instance names may hold a quote and a backslash (no whitespace: config refuses it).
    a, b = 'g"1\\a', 'g"2\\b'
    for name in (a, b):
        cluster.add_instance(name)
    for name in (a, b):
        cluster.wait_ready(name)

    def scrape() -> httpx.Response:
        r = httpx.get(f"{cluster.instances[a].url}/metrics", headers=cluster.headers, timeout=5)
        assert r.status_code == 200, r.text
        return r

    def lag_of_b_listed_and_gossip_counted() -> bool:
        # Serf can show b before the first datagram: the byte counters have no sample yet.
        got = samples(scrape().text)
        return ("gossipmgr_gossip_peer_lag", (("peer", b),)) in got and any(
            name == "gossipmgr_gossip_bytes_total" for name, _ in got
        )

    wait_for(lag_of_b_listed_and_gossip_counted, 30, f"{a} to list {b}'s gossip lag and bytes")
    r = scrape()
    assert r.headers["content-type"] == CONTENT_TYPE
    assert exported_metrics(r.text) == documented_metrics()
