"""Durability and recovery of whole gossipmgr instances (real processes, real Serf).

- SIGKILL under a concurrent write load: every write acknowledged (HTTP 200) before the
  kill is there after the restart (one seed; three with --long).
- A restarted member of a 3-instance cluster ends identical to the others and receives a
  small fraction of the full state while catching up.
- The lease holder killed in the middle of a job: the next holder ends the orphaned job
  Errored and the node's status takes the failure path (nothing stays Provisioning).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest

from gossipmgr.localcluster import LocalCluster, wait_for

pytestmark = [pytest.mark.serf, pytest.mark.slow]

HERE = Path(__file__).parent


def _field_is(c: LocalCluster, inst: str, path: str, keys: tuple[str, ...], want: Any) -> bool:
    """``GET path`` at ``inst`` has ``want`` under ``keys``."""
    v: Any = c.get(inst, path)
    for k in keys:
        v = v[k]
    return bool(v == want)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[object]:
    made: list[LocalCluster] = []

    def make(**kw: object) -> LocalCluster:
        c = LocalCluster(tmp_path / f"c{len(made)}", lease_ttl_ms=6_000, **kw)  # type: ignore[arg-type]
        made.append(c)
        return c

    try:
        yield make
    finally:
        for c in made:
            c.close()


# One seed in the default run; more kill moments with --long (and bench/crash.py's kill9 reps).
@pytest.mark.parametrize(
    "seed", [1, pytest.param(2, marks=pytest.mark.long), pytest.param(3, marks=pytest.mark.long)]
)
def test_sigkill_under_write_load_loses_no_acknowledged_write(make_cluster, seed: int) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster()
    c.add_instance("solo")
    c.wait_ready("solo")
    url = c.instances["solo"].url
    acked: list[str] = []
    stop = threading.Event()

    def writer(w: int) -> None:
        with httpx.Client(timeout=5, headers=c.headers) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                key = f"w{w}-{i}"
                try:
                    r = client.put(f"{url}/globals/{key}", json={"value": i})
                except httpx.HTTPError:
                    return  # the instance died under us: this write was not acknowledged
                if r.status_code == 200:
                    acked.append(key)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    # Kill only once the load is under way (on a loaded machine the first acknowledgements
    # can take seconds); the moment after that is the random part.
    wait_for(lambda: len(acked) > 20, 60, "the load produced acknowledged writes")
    time.sleep(random.Random(seed).uniform(0.5, 2.0))
    c.kill9("solo")
    stop.set()
    for t in threads:
        t.join(10)
    assert len(acked) > 20, "the load produced acknowledged writes"
    c.start("solo")
    c.wait_ready("solo")
    present = c.get("solo", "/info/globals")["extra_vars"]
    missing = [k for k in acked if k not in present]
    assert not missing, f"seed {seed}: {len(missing)} acknowledged writes lost: {missing[:5]}"


def _received_bytes(c: LocalCluster, name: str) -> int:
    text = httpx.get(f"{c.instances[name].url}/metrics", headers=c.headers, timeout=5).text
    total = 0
    # prometheus_client writes floats: "123.0", "1.2345e+06" from a million on.
    for m in re.finditer(r'gossipmgr_gossip_bytes_total\{dir="recv",[^}]*\} (\S+)', text):
        total += int(float(m.group(1)))
    return total


def test_restarted_member_catches_up_with_a_fraction_of_full_state(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster()
    for n in ("g1", "g2", "g3"):
        c.add_instance(n)
    for n in ("g1", "g2", "g3"):
        c.wait_ready(n)
    big = {f"var{i:05d}": {"value": i, "pad": "x" * 40} for i in range(8000)}
    assert c.post("g1", "/globals", {"extra_vars": big}).status_code == 200
    wait_for(lambda: len(c.get("g3", "/info/globals")["extra_vars"]) == 8000, 60, "g3 has all")
    full_state_bytes = len(msgpack.packb(big))
    c.stop("g3")
    for i in range(20):
        assert c.put("g2", f"/globals/late{i}", {"value": i}).status_code == 200
    c.start("g3")
    c.wait_ready("g3")
    wait_for(
        lambda: c.get("g3", "/info/globals") == c.get("g1", "/info/globals"),
        30,
        "g3 to catch up",
    )
    got = _received_bytes(c, "g3")
    text = httpx.get(f"{c.instances['g3'].url}/metrics", headers=c.headers, timeout=5).text
    print("\n".join(ln for ln in text.splitlines() if "bytes_total" in ln and "recv" in ln))
    ratio = got / full_state_bytes
    print(f"restarted member received {got} B; full state {full_state_bytes} B; {ratio:.1%}")
    # Measured 3.5-16.2% over ~16 runs (peers may pull from the member before it caught up);
    # a 15% bound failed about one run in five. Still a small fraction of the full state.
    assert ratio < 0.25, (got, full_state_bytes)


def test_holder_killed_mid_job_orphan_errored_node_unallocated(make_cluster) -> None:  # type: ignore[no-untyped-def]
    c: LocalCluster = make_cluster(extra_args=("--playbook-dir", str(HERE / "playbooks_long")))
    for n in ("g1", "g2", "g3"):
        c.add_instance(n)
    for n in ("g1", "g2", "g3"):
        c.wait_ready(n)
    node = c.add_node("rack9", "0001")
    wait_for(
        lambda: (
            c.get("g2", "/info/nodes").get(node.name, {}).get("inventory_state", {}).get("state")
            == "Discovered"
        ),
        30,
        "the node to be discovered",
    )
    holder = wait_for(c.holder, 20, "a holder")
    r = c.post(holder, "/commission/nodes", {"nodes": [node.name], "host_group": "service-master"})
    assert r.status_code == 200, r.text
    job_id = r.json()["id"]
    wait_for(
        lambda: (
            c.get(holder, f"/info/node/{node.name}")["inventory_state"]["status"] == "Provisioning"
        ),
        10,
        "the node to be Provisioning",
    )
    c.kill9(holder)
    survivors = [n for n in c.instances if n != holder]
    wait_for(lambda: c.holder(survivors) not in (None, holder), 30, "a new holder")
    for n in survivors:
        wait_for(
            partial(_field_is, c, n, f"/info/job/{job_id}", ("status",), "Errored"),
            30,
            f"the orphaned job Errored at {n}",
        )
        wait_for(
            partial(
                _field_is,
                c,
                n,
                f"/info/node/{node.name}",
                ("inventory_state", "status"),
                "Unallocated",
            ),
            30,
            f"the node back to Unallocated at {n}",
        )
    rec = c.get(survivors[0], f"/info/job/{job_id}")
    assert holder in rec["error"] or "lease" in rec["error"], rec["error"]
