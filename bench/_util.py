"""Shared helpers of the benchmark scripts (bench/bench_*.py, bench/perf.py).

Not a benchmark itself: record builders (the same records in every script), percentiles,
the machine description and the JSON result writer. Every figure a script writes goes to
``bench/results/<name>.json`` as ``{"what", "command", "machine", "params", "median", "runs"}``
so that ``bench/report.py`` can read all of them the same way.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.state import host_group_key, inventory_key, monitoring_key

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent

#: Seeded records carry timestamps this far in the past, so no HLC refuses them as "ahead".
SEED_AGE_MS = 60_000


def seed_ts(i: int, node: str = "seed") -> Timestamp:
    return Timestamp(int(time.time() * 1000) - SEED_AGE_MS, i, node)


def global_records(n: int, value_bytes: int = 160, base_ms: int | None = None) -> LWWMap:
    """``n`` one-entry records of ~200 B on the wire (a key plus a ``value_bytes`` string).

    The gossip figures count these "records": one LWW entry each, like Akka's top-level
    entries. Built with fixed timestamps so every replica seeded with them is identical.
    """
    base = seed_ts(0) if base_ms is None else Timestamp(base_ms, 0, "seed")
    pad = "v" * value_bytes
    m = LWWMap()
    m.join(
        (("g", f"k{i:07d}"), Entry(Timestamp(base.ms, i, "seed"), f"{i}:{pad}")) for i in range(n)
    )
    return m


def node_record_entries(i: int, ts: Timestamp) -> list[tuple[tuple[str, ...], Entry]]:
    """One node record as gossipmgr stores it: inventory + monitoring + host-group entries."""
    name = f"node-{i:06d}"
    inv = {
        "status": "Allocated",
        "prev_status": "Unallocated",
        "state": "Discovered",
        "prev_state": "Unknown",
        "epoch": 1,
    }
    mon = {
        "label": f"host{i}",
        "serial": f"SN{i:08d}",
        "addr": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
    }
    return [
        (inventory_key(name), Entry(ts, inv)),
        (monitoring_key(name), Entry(ts, mon)),
        (host_group_key(name), Entry(ts, "service-worker")),
    ]


def node_records(n: int) -> LWWMap:
    base = seed_ts(0)
    m = LWWMap()
    for i in range(n):
        m.join(node_record_entries(i, Timestamp(base.ms, i, "seed")))
    return m


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]


def medians(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median over runs of the numeric values (keys missing in some runs skipped)."""
    keys: list[str] = []
    for r in runs:
        keys += [k for k in r if k not in keys]
    out: dict[str, Any] = {}
    for k in keys:
        vals = [r[k] for r in runs if isinstance(r.get(k), int | float) and r.get(k) is not None]
        if vals:
            out[k] = statistics.median(vals)
    return out


def machine() -> dict[str, Any]:
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_result(
    name: str,
    what: str,
    params: dict[str, Any],
    runs: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> Path:
    result: dict[str, Any] = {
        "what": what,
        "command": " ".join(["python", *[_rel(a) for a in sys.argv]]),
        "machine": machine(),
        "params": params,
        "median": medians(runs),
        "runs": runs,
    }
    if extra:
        result.update(extra)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return out


def _rel(a: str) -> str:
    try:
        return str(Path(a).resolve().relative_to(REPO)) if a.endswith(".py") else a
    except ValueError:
        return a


def print_table(
    title: str, rows: Iterable[tuple[str, Any]], runs: Sequence[dict[str, Any]] = ()
) -> None:
    print(title)
    print(f"{'metric':46} {'median':>12}   runs")
    for k, v in rows:
        each = ", ".join(_fmt(r.get(k)) for r in runs) if runs else ""
        print(f"{k:46} {_fmt(v):>12}   {each}")
    print()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def rss_kib(pid: int) -> int:
    """VmRSS of a live process in KiB (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def child_pids(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def git_rev() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""
