"""Benchmark gossipmgr.runtime.store: acknowledged appends/s and restore time.

Run:  .venv/bin/python bench/bench_store.py [--runs 3] [--dir /path/on/the/disk/to/test]
Prints a table of medians and writes bench/results/store.json.

Measures, with fsync on (every figure is an *acknowledged* append: written + fdatasync'd):
- sequential: one task, append() after append();
- concurrent: 64 tasks appending at once (group commit shares one fsync per batch);
- restore (Store.open) of a log of 10,000 / 100,000 records of ~200 B, and of a snapshot
  of the same size (2 MB / 20 MB) with an empty log after it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

from gossipmgr.runtime.store import Store

RECORD = 200
SEQ_N = 2000
CONC_WRITERS = 64
CONC_EACH = 100


def _fresh(root: Path, name: str) -> Path:
    d = root / name
    shutil.rmtree(d, ignore_errors=True)
    return d


async def bench_sequential(root: Path) -> dict[str, float]:
    s = Store(_fresh(root, "seq"))
    s.open()
    rec = b"x" * RECORD
    t0 = time.perf_counter()
    for _ in range(SEQ_N):
        await s.append(rec)
    dt = time.perf_counter() - t0
    st = s.stats
    s.close()
    return {"appends_per_s": SEQ_N / dt, "fsyncs": st.fsyncs, "fsync_max_ms": st.fsync_max_s * 1e3}


async def bench_concurrent(root: Path) -> dict[str, float]:
    s = Store(_fresh(root, "conc"))
    s.open()
    rec = b"y" * RECORD

    async def writer() -> None:
        for _ in range(CONC_EACH):
            await s.append(rec)

    t0 = time.perf_counter()
    async with trio.open_nursery() as n:
        for _ in range(CONC_WRITERS):
            n.start_soon(writer)
    dt = time.perf_counter() - t0
    st = s.stats
    s.close()
    total = CONC_WRITERS * CONC_EACH
    return {
        "appends_per_s": total / dt,
        "fsyncs": st.fsyncs,
        "appends_per_fsync": total / st.fsyncs,
        "fsync_max_ms": st.fsync_max_s * 1e3,
    }


async def _build_log(d: Path, n: int) -> None:
    s = Store(d, fsync=False)  # building the fixture only; open() below is what we time
    s.open()
    recs = [i.to_bytes(8, "little") + b"r" * (RECORD - 8) for i in range(n)]
    for i in range(0, n, 1000):
        await s.append_many(recs[i : i + 1000])
    s.close()


async def _build_snapshot(d: Path, n: int) -> None:
    s = Store(d, fsync=False)
    s.open()
    await s.compact(lambda: os.urandom(n * RECORD))
    s.close()


def _time_open(d: Path, expect_records: int, expect_snapshot: int) -> float:
    s = Store(d)
    t0 = time.perf_counter()
    r = s.open()
    dt = time.perf_counter() - t0
    s.close()
    assert len(r.records) == expect_records
    assert len(r.snapshot or b"") == expect_snapshot
    return dt


async def one_run(root: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    seq = await bench_sequential(root)
    out["seq_appends_per_s"] = seq["appends_per_s"]
    out["seq_fsync_max_ms"] = seq["fsync_max_ms"]
    conc = await bench_concurrent(root)
    out["conc64_appends_per_s"] = conc["appends_per_s"]
    out["conc64_appends_per_fsync"] = conc["appends_per_fsync"]
    out["conc64_fsync_max_ms"] = conc["fsync_max_ms"]
    for n in (10_000, 100_000):
        d = _fresh(root, f"log{n}")
        await _build_log(d, n)
        out[f"restore_log_{n}_s"] = _time_open(d, n, 0)
        d = _fresh(root, f"snap{n}")
        await _build_snapshot(d, n)
        out[f"restore_snapshot_{n}x{RECORD}B_s"] = _time_open(d, 0, n * RECORD)
    return out


def _fs_type(path: Path) -> str:
    try:
        res = subprocess.run(
            ["df", "--output=fstype", str(path)], capture_output=True, text=True, check=True
        )
        return res.stdout.split()[-1]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to put the data (a tmp dir)")
    args = ap.parse_args()
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-store-") as tmp:
        root = Path(tmp)
        fs = _fs_type(root)
        for _ in range(args.runs):
            runs.append(trio.run(one_run, root))
    keys = list(runs[0])
    med = {k: statistics.median(r[k] for r in runs) for k in keys}
    print(
        f"gossipmgr.runtime.store, fsync on, {fs} at {args.dir or tempfile.gettempdir()}, "
        f"median of {args.runs} runs"
    )
    print(f"{'metric':40} {'median':>12}   runs")
    for k in keys:
        print(f"{k:40} {med[k]:12.4g}   " + ", ".join(f"{r[k]:.4g}" for r in runs))
    result: dict[str, Any] = {
        "what": "gossipmgr.runtime.store benchmark (bench/bench_store.py)",
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "fs": fs},
        "params": {
            "record_bytes": RECORD,
            "sequential_appends": SEQ_N,
            "concurrent_writers": CONC_WRITERS,
            "appends_per_writer": CONC_EACH,
        },
        "median": med,
        "runs": runs,
    }
    out = Path(__file__).parent / "results" / "store.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
