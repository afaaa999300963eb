"""Restart catch-up with real agents (one process and one ``serf agent`` each, loopback).

r3 is stopped, 1,000 keys are written at r1, r3 is started again on its data dir: every
key written while it was down must become visible on r3. Correctness only (no timing: the figure is
``bench/bench_catchup.py``'s). The cluster fixture stops every process, even on failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from serfutil import local_cluster

from gossipmgr.localcluster import LocalCluster, wait_for

pytestmark = [pytest.mark.serf, pytest.mark.slow]

KEYS = 1_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "cluster", lease_ttl_ms=10_000) as c:
        yield c


def _write_all(c: LocalCluster, name: str, value: str) -> None:
    url = c.instances[name].url
    with httpx.Client(headers=c.headers, timeout=30) as client:

        def put(i: int) -> None:
            r = client.put(f"{url}/globals/k{i:04d}", json={"value": f"{value}{i}"})
            assert r.status_code == 200, r.text

        with ThreadPoolExecutor(8) as ex:
            list(ex.map(put, range(KEYS)))


def _holds(c: LocalCluster, name: str, value: str) -> bool:
    got = c.get(name, "/info/globals")["extra_vars"]
    return all(got.get(f"k{i:04d}") == f"{value}{i}" for i in range(KEYS))


def test_a_restarted_instance_gets_every_key_written_while_it_was_down(
    cluster: LocalCluster,
) -> None:
    for n in ("r1", "r2", "r3"):
        cluster.add_instance(n)
    for n in ("r1", "r2", "r3"):
        cluster.wait_ready(n)
    r = cluster.put("r1", "/globals/k0000", {"value": "old0"})
    assert r.status_code == 200, r.text
    wait_for(lambda: cluster.get("r3", "/globals/k0000")["value"] == "old0", 30, "r3 to see it")
    cluster.stop("r3")
    _write_all(cluster, "r1", "new")
    cluster.start("r3")
    cluster.wait_ready("r3")
    wait_for(lambda: _holds(cluster, "r3", "new"), 60, "r3 to catch up with the rewrite")
    log = cluster.instances["r3"].log()
    assert "r3: catch-up: started with" in log
