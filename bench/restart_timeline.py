"""Where one restart's time goes: the catch-up scenario of ``vs_etcd.py --only catchup``.

Three real agents (``LocalCluster``, one Serf each) on data dirs seeded with 10,000 globals
(``--nodes N``: N node records instead); r3 stopped (SIGTERM), 1,000 of the keys rewritten
at r1, r3 started again with its trio steps traced (``GOSSIPMGR_TRACE_VISIBLE``: every step
of 1 ms or more, every remote delta joined) and, with ``--importtime``, ``-X importtime``.
The client polls r3 as ``vs_etcd.py`` does (11 keys one by one, then ``GET /info/globals``,
every 10 ms) and samples r3's CPU time (``/proc/<pid>/stat``) at each poll.

    .venv/bin/python bench/restart_timeline.py [--runs 1] [--nodes 10000] [--importtime]

Prints, per run, seconds from r3's process start (``Popen``): its log lines, the first
and last missed entry joined, the longest trio steps (task, start, length), the first
answer of each probe kind and r3's CPU time then; writes bench/results/restart_timeline.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import node_records
from bench_durability import build_snapshot
from bench_startstop import cpu_seconds
from vs_etcd import settle
from vs_etcd_sides import GossipSide

REWRITE = 1000
RESULT = Path(__file__).parent / "results" / "restart_timeline.json"


def log_marks(text: str, t0_wall: float) -> list[tuple[float, str]]:
    """(seconds after ``t0_wall``, message) of each timestamped log line."""
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            stamp = dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            out.append((stamp.timestamp() - t0_wall, line[24:].strip()[:150]))
    return out


def import_groups(text: str) -> dict[str, float]:
    """``-X importtime``: cumulative wall ms of the imports at the top two levels that took
    at least 3 ms (``site`` is the interpreter's own, the editable-install finder in it)."""
    groups: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("import time:") or line.count("|") != 2:
            continue
        _, cum, name = line.split("|")
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        with contextlib.suppress(ValueError):
            ms = int(cum) / 1000
            if depth <= 1 and ms >= 3:
                groups[name.strip()] = groups.get(name.strip(), 0.0) + ms
    return groups


def trace_rows(where: Path, t0: float) -> dict[str, Any]:
    rows: list[list[Any]] = []
    for f in where.glob("trace-*.jsonl"):
        rows += [json.loads(line) for line in f.read_text().splitlines()]
    joined = [r for r in rows if r[0] == "joined" and any(k.startswith("globals/k") for k in r[1])]
    steps = sorted((r for r in rows if r[0] == "step"), key=lambda r: r[3])
    long_steps = sorted(steps, key=lambda r: r[3] - r[4])[:25]
    gcs = [r for r in rows if r[0] == "gc"]
    return {
        "first_joined_s": joined[0][-1] - t0 if joined else None,
        "last_joined_s": joined[-1][-1] - t0 if joined else None,
        "joined_deltas": len(joined),
        "first_step_s": steps[0][3] - t0 if steps else None,
        "long_steps": [
            [r[1], round(r[3] - t0, 4), round((r[4] - r[3]) * 1000, 2)]
            for r in sorted(long_steps, key=lambda r: r[3])
        ],
        "step_ms_by_task": _by_task(steps, t0),
        "gc": [[r[1], round(r[2] - t0, 4), round((r[3] - r[2]) * 1000, 2)] for r in gcs],
    }


def _by_task(steps: list[list[Any]], t0: float) -> dict[str, float]:
    """Milliseconds of steps >= 1 ms per task, in the first second after the start."""
    out: dict[str, float] = {}
    for r in steps:
        if r[3] - t0 < 1.0:
            out[r[1]] = round(out.get(r[1], 0.0) + (r[4] - r[3]) * 1000, 2)
    return dict(sorted(out.items(), key=lambda kv: -kv[1])[:15])


def poll(side: GossipSide, pid: int, t0: float, want: dict[str, str]) -> dict[str, Any]:
    keys = list(want)
    probes = [*keys[:: max(1, len(keys) // 10)], keys[-1]]
    out: dict[str, Any] = {}
    c = httpx.Client(timeout=5, headers=side.cl.headers)
    url = side.url(2)
    while time.monotonic() - t0 < 60:
        cpu = cpu_seconds(pid)
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError, KeyError):
            vals = [c.get(f"{url}/globals/{k}") for k in probes]
            now = time.monotonic() - t0
            out.setdefault("first_probe_200_s", (now, cpu))
            pairs = zip(vals, probes, strict=True)
            if all(r.status_code == 200 and r.json()["value"] == want[k] for r, k in pairs):
                out.setdefault("probes_new_s", (now, cpu))
                allv = c.get(f"{url}/info/globals").json()["extra_vars"]
                if all(allv.get(k) == v for k, v in want.items()):
                    out["all_visible_s"] = (time.monotonic() - t0, cpu_seconds(pid))
                    break
        time.sleep(0.01)
    c.close()
    return out


def one_run(root: Path, nodes: int, importtime: bool) -> dict[str, Any]:
    side = GossipSide(root, seeded=0 if nodes else 10_000)
    if nodes:
        for i in range(3):
            trio.run(build_snapshot, root / f"a{i}" / "state", node_records(nodes))
    with side:
        settle(side)
        keys = [f"k{i:07d}" for i in range(REWRITE)]
        want = {k: f"r{i}" for i, k in enumerate(keys)}
        side.stop(2)
        for k, v in want.items():
            side.put(0, k, v)
        inst = side.cl.instances["a2"]
        if importtime and "-X" not in inst.args:
            inst.args[1:1] = ["-X", "importtime"]
        trace = root / "trace"
        trace.mkdir()
        os.environ["GOSSIPMGR_TRACE_VISIBLE"] = str(trace)
        log_start = inst.log_path.stat().st_size
        t0, t0_wall = time.monotonic(), time.time()
        side.restart(2)
        del os.environ["GOSSIPMGR_TRACE_VISIBLE"]
        assert inst.proc is not None
        res = poll(side, inst.proc.pid, t0, want)
        time.sleep(1.0)  # what follows the catch-up (Serf, membership) for the log
        res["cpu_1s_after"] = cpu_seconds(inst.proc.pid)
        side.stop(2)
        text = inst.log_path.read_bytes()[log_start:].decode(errors="replace")
    text = text.replace(str(root), "<root>")
    res["log"] = [(round(t, 4), m) for t, m in log_marks(text, t0_wall) if t < 3]
    res["imports_ms"] = import_groups(text) if importtime else {}
    res.update(trace_rows(trace, t0))
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=0, help="node records instead of 10,000 globals")
    ap.add_argument("--importtime", action="store_true")
    args = ap.parse_args()
    runs = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="gm-timeline-") as tmp:
            r = one_run(Path(tmp), args.nodes, args.importtime)
        r["loadavg"] = os.getloadavg()[0]
        runs.append(r)
        print(f"--- run {i + 1} (load {r['loadavg']:.2f})")
        print(json.dumps({k: v for k, v in r.items()}, indent=1))
    RESULT.parent.mkdir(exist_ok=True)
    RESULT.write_text(json.dumps({"args": vars(args), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
