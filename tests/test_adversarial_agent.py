"""Adversarial cases against real gossipmgr agents (each with its embedded ``serf agent``)
on loopback: oversized datagrams, a forged far-future lease, members posing as gossipmgr
instances, and a second Serf member claiming an existing node's identity.

Every process is stopped by the cluster fixture, even on failure.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gossipmgr.localcluster import HOST, LocalCluster, wait_for

pytestmark = [pytest.mark.serf, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    c = LocalCluster(tmp_path / "cluster", lease_ttl_ms=4_000)
    try:
        yield c
    except BaseException:
        for inst in c.instances.values():
            print(f"--- {inst.name} log tail ---\n{inst.log()[-4000:]}")
        raise
    finally:
        c.close()
    for inst in c.instances.values():
        assert not inst.alive


def metric(c: LocalCluster, inst: str, name: str) -> float:
    """One sample of /metrics (``name`` includes its labels), 0 when absent."""
    text = httpx.get(f"{c.instances[inst].url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_oversized_datagrams_are_dropped_and_counted_in_metrics(cluster: LocalCluster) -> None:
    cluster.add_instance("g1")
    cluster.wait_ready("g1")
    port = cluster.instances["g1"].gossip_port
    name = 'gossipmgr_gossip_dropped_total{reason="recv_too_large"}'
    assert metric(cluster, "g1", name) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for size in (1_401, 9_000, 65_507):  # 65,507: the largest IPv4 UDP payload
            s.sendto(b"\xa5" * size, (HOST, port))
    wait_for(lambda: metric(cluster, "g1", name) == 3, 10, "three drops counted in /metrics")
    assert cluster.get("g1", "/health")["status"] == "serving"
