"""Benchmark durability: restore, time to serve, acknowledged writes/s, restart catch-up.

Run:  .venv/bin/python bench/bench_durability.py [--quick] [--runs 3]
Prints a table of medians and writes bench/results/durability.json.

A *node record* is what gossipmgr replicates per node: its inventory, monitoring and
host-group entries (three LWW entries, ~330 B encoded; ``bench/_util.py: node_records``).

* restore: ``Replica.open`` of a data dir holding 10,000 / 100,000 node records, as one
  snapshot ("snapshot") or as a log of one record per node ("log", compaction off; in
  production the replica snapshots after 8 MiB of log, so the log variant is the worst case).
* agent start: a real ``gossipmgr agent`` subprocess (embedded Serf, loopback, free ports,
  via ``gossipmgr.localcluster``) over a data dir holding 0 / 10,000 / 100,000 node records
  as a snapshot: seconds from spawn until ``GET /health`` answers 200 (the API serves only
  after the restore), and VmRSS of the agent (and its serf child) once serving.
* writes: acknowledged ``Replica.commit`` of one node record each, fsync on (the commit
  returns only after fdatasync): one task in a loop ("sequential"), and 64 tasks at once
  ("concurrent", the store's group commit shares one fsync among queued appends).
* restart: a 3-instance cluster over real UDP (in-process replicas with data dirs) holding
  10,000 node records; one member is stopped, 100 node records change while it is down,
  it is restarted from its data dir: bytes it received until its digests equal the others',
  against the full state's size (and a member restarted with an EMPTY data dir, for scale).
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (
    child_pids,
    node_record_entries,
    node_records,
    print_table,
    rss_kib,
    write_result,
)
from bench_gossip import seed_state, wait_until

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import encode_entries, encode_map
from gossipmgr.core.crdt import LWWMap
from gossipmgr.gossip.crypto import Keyring
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.localcluster import LocalCluster
from gossipmgr.runtime.replica import Replica, encode_snapshot
from gossipmgr.runtime.store import Store

SEQ_WRITES = 500
CONC_TASKS = 64
CONC_EACH = 20


# ---------------------------------------------------------------------------- fixtures
async def build_snapshot(d: Path, m: LWWMap) -> None:
    s = Store(d, fsync=False)
    s.open()
    newest = m.max_timestamp() or Timestamp(0, 0, "seed")
    st = Replica("fixture", data_dir=None).state
    seed_state(st, m)
    await s.compact(lambda: encode_snapshot(st, newest))
    s.close()


async def build_log(d: Path, n: int) -> None:
    s = Store(d, fsync=False)
    s.open()
    base = int(time.time() * 1000) - 60_000
    batch: list[bytes] = []
    for i in range(n):
        batch.append(encode_entries(node_record_entries(i, Timestamp(base, i, "seed"))))
        if len(batch) == 1000:
            await s.append_many(batch)
            batch = []
    if batch:
        await s.append_many(batch)
    s.close()


def time_open(d: Path, expect_entries: int) -> float:
    rep = Replica("r", data_dir=d)
    t0 = time.perf_counter()
    rep.open()
    dt = time.perf_counter() - t0
    assert len(rep.state) == expect_entries, (len(rep.state), expect_entries)
    trio.run(rep.aclose)
    return dt


# ---------------------------------------------------------------------------- agent start
def wait_serving(inst: Any, step: float, within: float = 60.0) -> None:
    """Poll ``GET /health`` of a LocalCluster instance every ``step`` s until it answers 200;
    raises if the agent exits or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        try:
            if httpx.get(f"{inst.url}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not inst.alive:
            raise RuntimeError(f"agent exited:\n{inst.log()[-2000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"agent did not serve in {within:g} s")
        time.sleep(step)


def agent_start(root: Path, records: LWWMap | None, n: int) -> dict[str, Any]:
    name = "a0"
    cl = LocalCluster(root / f"agent{n}", local_ansible=False)
    try:
        if records is not None:
            trio.run(build_snapshot, cl.root / name / "state", records)
        t0 = time.perf_counter()
        inst = cl.add_instance(name)
        wait_serving(inst, 0.01)
        serve_s = time.perf_counter() - t0
        health = httpx.get(f"{inst.url}/health", timeout=5).json()
        time.sleep(1.0)  # let the serf child and the first lease round settle
        assert inst.proc is not None
        pid = inst.proc.pid
        serf = [p for p in child_pids(pid) if b"serf" in Path(f"/proc/{p}/cmdline").read_bytes()]
        return {
            "serve_s": serve_s,
            "restore_s_reported": health.get("durability", {}).get("restore_seconds"),
            "entries": health.get("entries"),
            "rss_mib": rss_kib(pid) / 1024,
            "serf_rss_mib": sum(rss_kib(p) for p in serf) / 1024,
        }
    finally:
        cl.close()


# ---------------------------------------------------------------------------- writes
async def writes(root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    d = root / "w-seq"
    shutil.rmtree(d, ignore_errors=True)
    rep = Replica("w", data_dir=d)
    rep.open()
    i = 0

    def make(st: Any, ts: Timestamp) -> LWWMap:
        return LWWMap(node_record_entries(i, ts))

    t0 = time.perf_counter()
    for i in range(SEQ_WRITES):  # noqa: B007 - read by make()
        await rep.commit(make)
    out["seq_writes_per_s"] = SEQ_WRITES / (time.perf_counter() - t0)
    await rep.aclose()

    d = root / "w-conc"
    shutil.rmtree(d, ignore_errors=True)
    rep = Replica("w", data_dir=d)
    rep.open()

    async def writer(k: int) -> None:
        for j in range(CONC_EACH):
            idx = k * CONC_EACH + j
            await rep.commit(lambda st, ts, idx=idx: LWWMap(node_record_entries(idx, ts)))

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(CONC_TASKS):
            nursery.start_soon(writer, k)
    out["conc64_writes_per_s"] = CONC_TASKS * CONC_EACH / (time.perf_counter() - t0)
    st = rep.store.stats
    out["conc64_writes_per_fsync"] = CONC_TASKS * CONC_EACH / max(1, st.fsyncs)
    assert len(rep.state) == 3 * CONC_TASKS * CONC_EACH
    await rep.aclose()
    return out


# ---------------------------------------------------------------------------- restart
class Member:
    def __init__(self, name: str, data: Path, key: bytes) -> None:
        self.name, self.data, self.key = name, data, key
        self.rep: Replica | None = None
        self.svc: GossipService | None = None
        self.scope: trio.CancelScope | None = None
        self.stopped = trio.Event()

    async def run(self, records: LWWMap | None, *, task_status: Any) -> None:
        self.stopped = trio.Event()
        rep = Replica(self.name, data_dir=self.data)
        rep.open()
        if records is not None:
            seed_state(rep.state, records)
            newest = records.max_timestamp()
            if newest is not None:
                rep.hlc.advance_to(newest)
            await rep.snapshot_now()
        try:
            async with open_udp_transport("127.0.0.1", 0) as tr:
                self.rep, self.svc = (
                    rep,
                    GossipService(rep, tr, Keyring(self.key), boot_ms=rep.now_ms()),
                )
                with trio.CancelScope() as self.scope:
                    async with trio.open_nursery() as n:
                        await n.start(self.svc.run)
                        task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await rep.aclose()
            self.stopped.set()

    async def stop(self) -> None:
        assert self.scope is not None
        self.scope.cancel()
        await self.stopped.wait()


def wire(members: list[Member]) -> None:
    addrs = {
        m.name: m.svc.local_addr
        for m in members
        if m.svc is not None and m.scope is not None and not m.scope.cancel_called
    }
    for m in members:
        if m.svc is not None and m.scope is not None and not m.scope.cancel_called:
            m.svc.set_peers(addrs)


async def restart(root: Path, records: LWWMap, updates: int, wipe: bool) -> dict[str, Any]:
    key = os.urandom(32)
    tag = "wipe" if wipe else "keep"
    ms = [Member(f"m{i}", root / f"restart-{tag}" / f"m{i}", key) for i in range(3)]
    async with trio.open_nursery() as nursery:
        for m in ms:
            await nursery.start(m.run, records)
        wire(ms)
        a, c = ms[0], ms[2]
        assert a.rep is not None
        await wait_until(
            lambda: all(x.rep and len(x.rep.state) == len(records) for x in ms), 20, "seeded"
        )
        await c.stop()
        wire(ms)
        if wipe:
            shutil.rmtree(c.data)
        base = a.rep.now_ms()
        for i in range(updates):
            await a.rep.commit(lambda st, ts, i=i: LWWMap(node_record_entries(i, ts)))
        _ = base
        await trio.sleep(0.3)
        t0 = time.perf_counter()
        await nursery.start(c.run, None)
        wire(ms)
        assert c.svc is not None and c.rep is not None
        target = a.rep.state.map.super_digests()
        dt = await wait_until(
            lambda: c.rep.state.map.super_digests() == target, 60, "restart catch-up", poll=0.01
        )
        rx = c.svc.counters.get("bytes_received", 0)
        full = len(encode_map(a.rep.state.map))
        res = {
            "catch_up_s": dt,
            "bytes_received": rx,
            "full_state_bytes": full,
            "received_vs_full_pct": 100 * rx / full,
            "wall_s": time.perf_counter() - t0,
        }
        for m in ms:
            await m.stop()
        nursery.cancel_scope.cancel()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10,000 only, one run")
    ap.add_argument("--dir", type=Path, default=None, help="where to put the data (a tmp dir)")
    args = ap.parse_args()
    runs_n = 1 if args.quick else args.runs
    # A real install (pip) byte-compiles the package; an editable checkout under
    # PYTHONDONTWRITEBYTECODE=1 (set on these machines) would recompile all of gossipmgr
    # (~0.2 s) on every agent start, and the agent-start figure would measure the compiler.
    import gossipmgr

    compileall.compile_dir(str(Path(gossipmgr.__file__).parent), quiet=1)
    sizes = [10_000] if args.quick else [10_000, 100_000]
    recs = {n: node_records(n) for n in sizes}
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-dur-") as tmp:
        root = Path(tmp)
        for n in sizes:  # fixtures once; opening them is what is timed
            trio.run(build_snapshot, root / f"snap{n}", recs[n])
            trio.run(build_log, root / f"log{n}", n)
        for run in range(runs_n):
            out: dict[str, Any] = {}
            # 100,000 restores take ~30 s each here: measured in the first run only.
            run_sizes = sizes if run == 0 else [10_000]
            for n in run_sizes:
                out[f"restore_snapshot_{n}_s"] = time_open(root / f"snap{n}", 3 * n)
                out[f"restore_log_{n}_s"] = time_open(root / f"log{n}", 3 * n)
            for n in [0, *run_sizes]:
                r = agent_start(root / f"run{run}", recs.get(n), n)
                for k, v in r.items():
                    out[f"agent_{n}_{k}"] = v
            out.update(trio.run(writes, root))
            for wipe in (False, True):
                r = trio.run(restart, root / f"run{run}", recs[10_000], 100, wipe)
                for k, v in r.items():
                    out[f"restart_{'empty' if wipe else 'datadir'}_10000_{k}"] = v
            runs.append(out)
            print(f"run {run + 1}/{runs_n} done", flush=True)
            with contextlib.suppress(OSError):
                shutil.rmtree(root / f"run{run}")
    from _util import medians

    med = medians(runs)
    print_table(f"durability, fsync on, median of {runs_n} run(s)", med.items(), runs)
    sizes_b = {n: len(encode_map(recs[n])) for n in sizes}
    path = write_result(
        "durability",
        "durability: restore, agent start, acknowledged writes, restart catch-up "
        "(bench/bench_durability.py)",
        {
            "node_record": "inventory + monitoring + host-group: 3 LWW entries",
            "state_bytes": sizes_b,
            "seq_writes": SEQ_WRITES,
            "concurrent": f"{CONC_TASKS} tasks x {CONC_EACH}",
            "restart_updates_while_down": 100,
            "goals": {"agent_10000_serve_s_max": 1.0},
        },
        runs,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
