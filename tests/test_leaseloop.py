"""The lease loop (``gossipmgr.runtime.leaseloop``) of the agent's own wiring, Serf faked,
over replicated lease entries no honest instance writes.

The entry arrives by gossip from a key holder (or from a damaged peer) and is kept on disk;
here it is written into the instance's data directory before it starts, as a restart after
such a gossip round would find it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import LEASE_KEY, ClusterState
from gossipmgr.runtime.replica import Replica
from gossipmgr.testing.standalone import standalone_agent, standalone_config


async def _write_lease_entry(data_dir: Path, name: str, value: Any) -> None:
    rep = Replica(name, data_dir=data_dir / "state", fsync=False)
    rep.open()
    try:

        def make(s: ClusterState, ts: Timestamp) -> LWWMap:
            return s.d_set(LEASE_KEY, value, ts)

        await rep.commit(make)
    finally:
        await rep.aclose()


@pytest.mark.parametrize("value", ["forged", 7, [1, 2], None])
async def test_a_lease_entry_that_is_not_a_map_is_claimed_past(tmp_path: Path, value: Any) -> None:
    """Such an entry reads as no lease (``Lease.from_value``) and ranks at epoch -1, so the
    first claim outbids it. The loop's check for a bounded expiry read it as a map first
    (``dict("forged")``): the loop raised on its first turn and took the agent down, at
    every restart."""
    cfg = standalone_config(tmp_path, "i1")
    await _write_lease_entry(cfg.data_dir, cfg.name, value)
    with trio.fail_after(60):
        async with standalone_agent(cfg) as agent:  # waits until it holds the lease
            lease = agent.replica.lease()
            assert lease is not None and (lease.holder, lease.epoch) == ("i1", 1)
            assert agent.counters["lease_bounded"] == 0
