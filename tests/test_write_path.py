"""The write path costs what it writes: nothing a write wakes reads unrelated state.

Every commit wakes the holder's orphan scan (``JobManager.run`` waits on the replica's
change event). It used to build every job record of the history on each wake-up
(``ClusterState.jobs()``), so each write on the holder cost O(jobs). Now the scan starts from
the index of active jobs; counted here in record decodes, not in time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _apiutil import standalone

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.job import COMPLETE, RUNNING, JobRecord, make_job_id
from gossipmgr.core.state import ClusterState, combine, job_key


def _job(i: int, status: str) -> JobRecord:
    ended = 3 if status == COMPLETE else 0
    jid = make_job_id(1_000 + i, i, "i1")
    return JobRecord(jid, "d", "update", "update", (), status, "", 1, "i1", 1, 2, ended)


async def test_the_orphan_scan_every_write_wakes_does_not_read_the_job_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with standalone(tmp_path) as ctx:
        history = [_job(i, COMPLETE) for i in range(300)]

        def make(s: ClusterState, ts: Timestamp) -> LWWMap:
            return combine(*(s.d_set(job_key(j.id), j.to_value(), ts) for j in history))

        await ctx.replica.commit(make)
        decoded = 0
        real = JobRecord.from_value.__func__  # type: ignore[attr-defined]

        def counting(cls: type[JobRecord], value: object) -> Any:
            nonlocal decoded
            decoded += 1
            return real(cls, value)

        monkeypatch.setattr(JobRecord, "from_value", classmethod(counting))
        assert await ctx.jobs.reconcile_orphans() == []
        assert ctx.jobs.active_record() is None
        assert decoded == 0  # was 600: the whole history, twice

        # an active record not run here is still found (and ended) by the scan
        orphan = _job(999, RUNNING)
        await ctx.replica.commit(lambda s, ts: s.d_set(job_key(orphan.id), orphan.to_value(), ts))
        ended = await ctx.jobs.reconcile_orphans()
        assert ended in ([orphan.id], [])  # [] when the scan woken by the commit was first
        rec = ctx.replica.state.job(orphan.id)
        assert rec is not None and rec.status == "Errored"
        assert decoded < 10
