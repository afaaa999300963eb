"""One bad value must not take an instance down or stall gossip: real agent processes.

Two ``gossipmgr agent`` processes (each with its Serf agent) on loopback:

* a 200,000-float list (800 KB of JSON, 1.8 MB once encoded) PUT to one of them used to be
  answered 200, after which its gossip service raised "message of 1800048 bytes exceeds
  1048576" and the instance exited (issue 14). Now: 413 naming the limit, and the instance
  keeps gossiping.
* a data directory written before the rule (records gossip cannot carry: too large, too
  deep, a 300-character name) used to crash-loop the instance (too large) or make it
  retransmit and resync forever (refused by the peer). Now: those entries are left out of
  the state, logged and counted (``gossipmgr_replica_quarantined_total``); everything else
  flows.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import trio

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import MAX_ENTRY_BYTES, encode_map
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.state import global_key
from gossipmgr.localcluster import LocalCluster, wait_for
from gossipmgr.runtime.store import Store

pytestmark = [pytest.mark.serf, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # One cluster for both tests (starting two agents is most of their time).
    c = LocalCluster(tmp_path_factory.mktemp("limits"), lease_ttl_ms=6_000)
    try:
        c.add_instances("g1", "g2")
        yield c
    finally:
        c.close()


def _metric(c: LocalCluster, name: str, metric: str) -> float:
    text = httpx.get(f"{c.instances[name].url}/metrics", headers=c.headers, timeout=5).text
    m = re.search(rf"^{re.escape(metric)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def _put_raw(c: LocalCluster, name: str, path: str, raw: bytes) -> httpx.Response:
    return httpx.put(
        c.instances[name].url + path,
        content=raw,
        headers={**c.headers, "Content-Type": "application/json"},
        timeout=60,
    )


def _globals(c: LocalCluster, name: str) -> dict[str, Any]:
    return c.get(name, "/info/globals")["extra_vars"]  # type: ignore[no-any-return]


def test_200k_floats_refused_and_the_instance_keeps_gossiping(cluster: LocalCluster) -> None:
    c = cluster
    raw = json.dumps({"value": [0.1] * 200_000}, separators=(",", ":")).encode()
    r = _put_raw(c, "g1", "/globals/floats", raw)
    # Failed before: 200, then g1 exited ~1.4 s later.
    assert r.status_code == 413, r.text[:300]
    assert str(MAX_ENTRY_BYTES) in r.json()["error"]
    assert c.put("g1", "/globals/after", {"value": 1}).status_code == 200
    wait_for(lambda: _globals(c, "g2").get("after") == 1, 20, "g2 to see g1's next write")
    assert c.instances["g1"].alive and c.instances["g2"].alive
    assert "floats" not in _globals(c, "g1")


def _nested(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


def test_old_data_dir_with_unsendable_records_is_quarantined(cluster: LocalCluster) -> None:
    c = cluster
    assert c.put("g2", "/globals/before", {"value": "kept"}).status_code == 200
    wait_for(lambda: _globals(c, "g1").get("before") == "kept", 20, "g1 to see g2's write")
    c.stop("g2")
    # What an older gossipmgr acknowledged and wrote: appended as that version did.
    ts = Timestamp(int(time.time() * 1000), 0, "g2")
    bad = LWWMap(
        {
            global_key("floats"): Entry(ts, [0.1] * 200_000),
            global_key("deep"): Entry(ts, _nested(40)),
            global_key("v" * 300): Entry(ts, 1),
            global_key("fine"): Entry(ts, "also in the record"),
        }
    )
    store = Store(c.instances["g2"].data_dir / "state")
    store.open()

    async def append() -> None:
        await store.append(encode_map(bad))
        await store.aclose()

    trio.run(append)
    c.start("g2")
    c.wait_ready("g2")
    assert c.put("g2", "/globals/after", {"value": 2}).status_code == 200
    # Failed before: g1 did not see g2's writes within 20 s.
    wait_for(
        lambda: {"after", "fine", "before"} <= set(_globals(c, "g1")),
        20,
        "g1 to see g2's writes",
    )
    assert c.put("g1", "/globals/back", {"value": 3}).status_code == 200
    wait_for(lambda: _globals(c, "g2").get("back") == 3, 20, "g2 to see g1's write")
    assert _metric(c, "g2", "gossipmgr_replica_quarantined_total") == 3
    assert "cannot be gossiped" in c.instances["g2"].log()
    g1, g2 = _globals(c, "g1"), _globals(c, "g2")
    assert g1 == g2 and not {"floats", "deep", "v" * 300} & set(g2)
    # Nothing left that gossip could not send, and both still up.
    assert _metric(c, "g2", 'gossipmgr_gossip_dropped_total{reason="unsendable"}') == 0
    assert c.instances["g1"].alive and c.instances["g2"].alive
