"""Partition smoke test: one isolate-and-heal cycle on real hosts (network namespaces).

Three gossipmgr agents, each with its embedded Serf, in namespaces of their own on a bridge
(``bench/netns.py``), plus one simulated node. A non-holder host is cut off the bridge
(``nomaster``: frames really stop, unlike blackhole routes) while one client per instance
writes through that instance's API; after the heal every replica must be identical and
hold every acknowledged write. The full suite with more faults is ``bench/partition.py``.

Needs root and iproute2 (skipped otherwise); every namespace, link and process is removed
even when the test fails (the cluster's ``close`` runs in ``finally``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.netns import NetnsCluster, node_name, sh, unavailable_reason  # noqa: E402
from bench.partition import Workload, canon, missing_writes, prepare, snapshots  # noqa: E402

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.serf,
    pytest.mark.skipif(REASON is not None, reason=f"partition smoke skipped: {REASON}"),
]

PARTITION_S = 8.0
CONVERGE_S = 40.0


def test_isolate_and_heal_converges_with_every_acked_write(tmp_path: Path) -> None:
    c = NetnsCluster(3, 1, root=tmp_path / "cluster")
    prefix = c.prefix
    try:
        c.setup(timeout=45)
        node = node_name(c.nodes["n1"])
        holder = prepare(c, [node], timeout=45)
        victim = [h for h in sorted(c.instances) if h != holder][-1]
        t_base = time.monotonic()
        work = Workload(c, "smoke", node, [node], sorted(c.instances), t_base)
        work.start()
        try:
            time.sleep(1.0)  # some writes before the cut: the workload runs on its own
            c.isolate(victim)
            time.sleep(PARTITION_S)  # the fault's duration is the point here, not a race
        finally:
            writes = work.stop()
        c.heal()
        t_heal = time.monotonic()
        acked = [w for w in writes if w.acked]
        # Both sides took writes while cut off (the API never waits for the other side).
        assert {w.inst for w in acked if w.t0 > 1.5} == set(c.instances), writes[-6:]

        clients = {n: c.client(n) for n in c.instances}
        problems: list[str] = ["not read yet"]
        try:
            while time.monotonic() - t_heal < CONVERGE_S:
                snaps = snapshots(c, clients)
                if len({canon(s) for s in snaps.values()}) != 1:
                    problems = ["replicas differ"]
                else:
                    problems = missing_writes(next(iter(snaps.values())), writes)
                    if not problems:
                        break
                time.sleep(0.25)
        finally:
            for cl in clients.values():
                cl.close()
        assert not problems, (
            f"no convergence {CONVERGE_S:.0f} s after heal: {problems[:5]}\n"
            + c.instances[victim].log()
        )
        assert len(acked) > 20
    finally:
        c.close()
    # Nothing of this run is left behind.
    assert prefix not in sh("ip", "netns", "list").stdout
    assert f"{prefix}br" not in sh("ip", "-o", "link", "show").stdout
