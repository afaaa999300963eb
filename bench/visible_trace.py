"""Where a write -> visible sample's time goes: gossipmgr alone, traced on every instance.

Run:  .venv/bin/python bench/visible_trace.py [--writes 200] [--seeded 10000] [--runs 1]
      [--keep DIR]

Starts 3 agents as ``bench/vs_etcd.py`` does (``GossipSide``: real processes, real Serf,
loopback), with ``GOSSIPMGR_TRACE_VISIBLE`` set so each records its side of the path
(``gossipmgr/runtime/visibletrace.py``), then times ``--writes`` writes at r1 (a0) until
the ``/watch`` streams of r2 and r3 show them, as ``vs_etcd.py`` does (~20 ms apart). After
the agents stop it joins the client's times with theirs, all on one clock (CLOCK_MONOTONIC):

  put      client sends the PUT -> r1 hands the delta to gossip (``on_local_send``)
  wake     -> the receiver's receive task is scheduled (its datagram is readable)
  run      -> that task runs (scheduling delay)
  join     -> the delta is joined and recorded in the feed
  sse      -> the stream's generator hands the chunk to hypercorn
  client   -> the client's reader thread has parsed it

per segment p50 / p99 / max, how many writes r1 made while a peer was marked for a resync
with its ACKs behind (main's ``AntiEntropy.push_local`` did not push to such a peer; it
now does), and for the slowest
samples every GC collection and every trio task step >= 1 ms on any instance during the
sample. ``--seeded`` starts the agents on data
dirs holding that many globals (the 10,000-keys phase). Writes bench/results/visible_trace.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _util import pct, write_result  # noqa: E402
from vs_etcd import settle  # noqa: E402
from vs_etcd_sides import GossipSide  # noqa: E402

from gossipmgr.runtime.visibletrace import ENV  # noqa: E402

SEGMENTS = ("put", "wake", "run", "join", "sse", "client")


def drive(side: GossipSide, n: int, spacing: float) -> list[dict[str, Any]]:
    """Write ``n`` keys at r1; per key its client times: t0, ack, seen on r2 and r3."""
    prefix = "vis_"
    seen: dict[str, dict[int, float]] = {}
    cond = threading.Condition()

    def at(r: int) -> Callable[[str, float], None]:
        def note(key: str, t: float) -> None:
            with cond:
                seen.setdefault(key, {}).setdefault(r, t)
                cond.notify_all()

        return note

    watchers = [side.watch(r, prefix, at(r)) for r in (1, 2)]
    out = []
    try:
        for w in watchers:
            if not w.ready.wait(30) or w.error is not None:
                raise RuntimeError(f"watch not ready: {w.error!r}")
        for i in range(n):
            key = f"{prefix}{i}"
            t0 = time.perf_counter()
            side.put(0, key, str(i))
            ack = time.perf_counter()
            with cond:
                if not cond.wait_for(lambda k=key: len(seen.get(k, {})) == 2, 10):
                    raise TimeoutError(f"{key} not seen on r2 and r3")
                got = dict(seen[key])
            out.append({"key": key, "t0": t0, "ack": ack, "seen": got})
            time.sleep(spacing)
    finally:
        for w in watchers:
            w.stop()
    return out


def load_traces(where: Path) -> dict[str, list[list[Any]]]:
    by_name = {}
    for f in where.glob("trace-*.jsonl"):
        rows = [json.loads(line) for line in f.read_text().splitlines()]
        by_name[rows[0][1]] = rows[1:]
    return by_name


def _index(rows: list[list[Any]], kind: str) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for row in rows:
        if row[0] == kind:
            for k in row[1]:
                if kind == "sse":
                    k = json.loads(k).get("key", "")
                out.setdefault(k.removeprefix("globals/"), row)
    return out


def breakdown(samples: list[dict[str, Any]], traces: dict[str, list[list[Any]]]) -> list[dict]:
    """Per sample: the segments (ms) on the path to the slower of r2 and r3."""
    r1 = traces["a0"]
    sent = _index(r1, "local_send")
    joins = {r: _index(traces[f"a{r}"], "joined") for r in (1, 2)}
    sses = {r: _index(traces[f"a{r}"], "sse") for r in (1, 2)}
    out = []
    for s in samples:
        k = s["key"]
        got = {int(r): t for r, t in s["seen"].items()}
        r = max(got, key=lambda x: got[x])
        ls = sent[k][2]
        _, _, sched, began, joined = joins[r][k]
        sse = sses[r][k]
        marks = [s["t0"], ls, sched, began, joined, sse[2], got[r]]
        seg = {n: (b - a) * 1e3 for n, a, b in zip(SEGMENTS, marks[:-1], marks[1:], strict=True)}
        out.append(
            {
                "key": k,
                "replica": f"a{r}",
                "visible_ms": (got[r] - s["t0"]) * 1e3,
                "ack_ms": (s["ack"] - s["t0"]) * 1e3,
                "marked": sent[k][3] if len(sent[k]) > 3 else [],
                "t0": s["t0"],
                "end": got[r],
                **seg,
            }
        )
    return out


def pauses(traces: dict[str, list[list[Any]]], t0: float, t1: float) -> list[str]:
    """GC collections and long task steps on any instance between t0 and t1."""
    notes = []
    for name, rows in sorted(traces.items()):
        for row in rows:
            if row[0] == "gc" and row[3] >= t0 and row[2] <= t1:
                notes.append(f"{name} gc gen{row[1]} {(row[3] - row[2]) * 1e3:.1f} ms")
            elif row[0] == "step" and row[4] >= t0 and row[3] <= t1 and row[4] - row[3] >= 1e-3:
                task = row[1].rsplit(".", 1)[-1]
                notes.append(f"{name} step {task} {(row[4] - row[3]) * 1e3:.1f} ms")
    return notes


def report(rows: list[dict], traces: dict[str, list[list[Any]]]) -> dict[str, Any]:
    res: dict[str, Any] = {}
    for n in ("visible_ms", "ack_ms", *SEGMENTS):
        xs = [r[n] for r in rows]
        for q, v in (("p50", pct(xs, 50)), ("p99", pct(xs, 99)), ("max", max(xs))):
            res[f"{n.removesuffix('_ms')}_{q}_ms"] = round(v, 3)
        print(f"{n:>11}: p50 {pct(xs, 50):7.2f}  p99 {pct(xs, 99):7.2f}  max {max(xs):7.2f}")
    gcs = [r for rs in traces.values() for r in rs if r[0] == "gc"]
    for gen in (0, 1, 2):
        ms = [(r[3] - r[2]) * 1e3 for r in gcs if r[1] == gen]
        if ms:
            print(f"gc gen{gen}: {len(ms)} collections, max {max(ms):.1f} ms, sum {sum(ms):.0f} ms")
    for g in (0, 1, 2):
        res[f"gc_gen{g}_collections"] = sum(1 for r in gcs if r[1] == g)
    skipped = [r for r in rows if r["marked"]]
    res["writes_to_a_peer_marked_for_resync"] = len(skipped)
    if skipped:
        ms = sorted(r["visible_ms"] for r in skipped)
        print(
            f"writes while a peer was marked for a resync, its ACKs behind (main did not push"
            f" to it): {len(ms)}, visible {ms[0]:.1f}-{ms[-1]:.1f} ms"
        )
    slow = sorted(rows, key=lambda r: -r["visible_ms"])[:6]
    res["slowest"] = []
    for r in slow:
        segs = " ".join(f"{n} {r[n]:.1f}" for n in SEGMENTS)
        notes = pauses(traces, r["t0"], r["end"])
        miss = f" ({', '.join(r['marked'])} marked for a resync)" if r["marked"] else ""
        print(f"{r['key']} -> {r['replica']}: {r['visible_ms']:.1f} ms = {segs}{miss}")
        for note in notes:
            print(f"    {note}")
        res["slowest"].append(
            {**{k: v for k, v in r.items() if k not in ("t0", "end")}, "during": notes}
        )
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--writes", type=int, default=200)
    ap.add_argument("--seeded", type=int, default=0, help="globals in the data dirs at start")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--keep", type=Path, default=None, help="keep the traces in this directory")
    ap.add_argument("--analyze", type=Path, default=None, help="only read a kept run's dir")
    args = ap.parse_args()
    if args.analyze:
        samples = json.loads((args.analyze / "samples.json").read_text())
        report(breakdown(samples, load_traces(args.analyze)), load_traces(args.analyze))
        return 0
    results = []
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="gm-vtrace-") as tmp:
            where = args.keep / f"run{i}" if args.keep else Path(tmp) / "trace"
            where.mkdir(parents=True, exist_ok=True)
            os.environ[ENV] = str(where)
            with GossipSide(Path(tmp) / "c", seeded=args.seeded) as side:
                settle(side)  # as vs_etcd.py: membership and peers known before timing
                [side.get(0, "target") for _ in range(300)]  # vs_etcd.py's GETs come first
                samples = drive(side, args.writes, 0.02)
            (where / "samples.json").write_text(json.dumps(samples))
            print(f"== run {i + 1}/{args.runs}, load {os.getloadavg()[0]:.1f}")
            results.append(report(breakdown(samples, load_traces(where)), load_traces(where)))
    params = vars(args) | {"keep": str(args.keep)}
    write_result("visible_trace", "write -> visible, traced on every instance", params, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
