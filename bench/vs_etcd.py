"""Side by side with etcd: the same client workloads against 3 etcd members and 3 gossipmgr agents.

Run:  .venv/bin/python bench/vs_etcd.py [--runs 3] [--writes 2000|10000] [--quick]
      [--only catchup]   (that workload alone, on clusters holding 10,000 keys; written
      to bench/results/vs_etcd_catchup.json, so the full run's file is kept)
Then: .venv/bin/python bench/report.py   (docs/benchmarks.md and docs/img/vs_etcd.png)

One run starts each system in turn (which one first alternates between runs): 3 etcd members
(Debian's ``etcd-server`` 3.4, default settings, fsync on, through its v3 HTTP gateway) and 3
gossipmgr agents (real processes, each with its own Serf, ``LocalCluster``), all on 127.0.0.1
on free ports with temporary data dirs. A key is one etcd key or one gossipmgr global
extra-var (``PUT /globals/{key}``); r1 is the first member or agent, r2 and r3 the others.
One client (this process) sends sequential requests over keep-alive HTTP.

* writes/s: N sequential single-key writes (~200 B values) to r1 (2,000; ``--writes``);
* write -> visible: a write at r1, timed until it is seen on r2 AND r3 (etcd: one
  ``/v3/watch`` stream per replica; gossipmgr: one stream of its change feed, ``/watch``
  (Server-Sent Events), per replica or, where the feed is missing, ``GET /globals/{key}``
  polled every 1 ms, labelled "polled"); 200 writes ~20 ms apart; p50 / p99 / max, and
  the ack p50 of those writes at r1; on a fresh cluster and on one holding 10,000 keys;
* restart catch-up: r3 stopped (SIGTERM), 1,000 of the 10,000 keys rewritten at r1, r3
  started again: time from its process start until its local store holds all 1,000 new
  values (checked every 10 ms, first by reading 11 of the keys one by one, then all 1,000
  at once: etcd, one serializable range; gossipmgr, ``GET /info/globals``);
* GET: p50 of 300 single-key reads at r1 with 0 / 10,000 / 100,000 other keys (etcd:
  serializable, a local read like gossipmgr's, and interleaved with it its default
  linearizable read, in a row of its own).
  etcd is filled by transactions of 100 puts, gossipmgr started on data dirs seeded with a
  snapshot of that many globals (each system's fastest way in).

``--fresh-only`` runs the fresh-cluster phase alone (writes/s, write -> visible, ack, GET
at 0 keys; a few minutes for 3 runs, to measure a change of the write or receive path) and
writes bench/results/vs_etcd_fresh.json instead.

Figures are medians over ``--runs`` (3); ratios are gossipmgr / etcd of the medians, next to
the goals of issue 17. Every process is stopped at the end, even on failure. Writes
bench/results/vs_etcd.json.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _util import REPO, medians, pct, write_result  # noqa: E402
from vs_etcd_sides import PAD, EtcdSide, GossipSide, Watcher  # noqa: E402

SYSTEMS = ("etcd", "gossipmgr")


# ---------------------------------------------------------------------------- plan (pure)
@dataclass(frozen=True)
class Plan:
    runs: int
    writes: int
    visible: int
    rewrite: int
    gets: int
    mid: int
    big: int
    spacing_s: float = 0.02
    #: one workload alone ("catchup"), or "" for all of them
    only: str = ""
    #: only the fresh-cluster phase (``--fresh-only``)
    fresh_only: bool = False


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="repetitions; medians are reported")
    ap.add_argument("--writes", type=int, default=2000, help="sequential writes (e.g. 10000)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 run, small sizes")
    ap.add_argument(
        "--only",
        choices=["catchup"],
        default="",
        help="run this workload alone (catchup: r3 restarted after 1,000 of 10,000 keys "
        "were rewritten); results in vs_etcd_catchup.json",
    )
    ap.add_argument(
        "--fresh-only",
        action="store_true",
        help="only the fresh-cluster phase (writes/s, write -> visible, ack, GET at 0 keys)",
    )
    args = ap.parse_args(argv)
    if args.runs < 1 or args.writes < 1:
        ap.error("--runs and --writes must be at least 1")
    return args


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        return Plan(
            runs=1,
            writes=min(args.writes, 200),
            visible=30,
            rewrite=100,
            gets=50,
            mid=1_000,
            big=10_000,
            only=args.only,
        )
    return Plan(
        args.runs,
        args.writes,
        visible=200,
        rewrite=1_000,
        gets=300,
        mid=10_000,
        big=100_000,
        only=args.only,
        fresh_only=args.fresh_only,
    )


def summary(samples: Sequence[float]) -> dict[str, float]:
    return {"p50": pct(samples, 50), "p99": pct(samples, 99), "max": max(samples)}


#: (label, metric, unit, goal on the ratio gossipmgr / etcd: (op, bound, stretch) or None)
Goal = tuple[str, float, float | None]


def metric_rows(p: Plan, polled: bool) -> list[tuple[str, str, str, Goal | None]]:
    how = " (gossipmgr polled)" if polled else ""
    mid = f"{p.mid:,} keys"
    rows: list[tuple[str, str, str, Goal | None]] = [
        (f"{p.writes:,} sequential single-key writes", "writes_per_s", "writes/s", (">=", 1.0, 1.5))
    ]
    for phase, where in (("fresh", "fresh cluster"), ("mid", mid)):
        for q in ("p50", "p99", "max"):
            goal: Goal | None = None if q == "max" else ("<=", 1.0, None)
            label = f"write at r1 -> visible on r2 and r3, {q}, {where}{how}"
            rows.append((label, f"visible_{phase}_{q}_ms", "ms", goal))
        rows.append(
            (f"write ack p50 at r1 during that run, {where}", f"ack_{phase}_p50_ms", "ms", None)
        )
    rows.append(
        (
            f"r3 restarted after {p.rewrite:,} keys were rewritten: all visible on r3",
            "catch_up_s",
            "s",
            ("<=", 1.0, None),
        )
    )
    for n in (0, p.mid, p.big):
        rows.append((f"single-key GET p50 at r1, {n:,} keys", f"get_{n}_p50_ms", "ms", None))
    rows.append(
        (
            f"etcd linearizable GET p50, {p.big:,} keys (gossipmgr: local read)",
            f"get_{p.big}_p50_ms",
            "ms",
            None,
        )
    )
    return rows


def verdict(ratio: float | None, goal: Goal | None) -> str:
    if goal is None:
        return ""
    if ratio is None:
        return "not measured"
    op, bound, stretch = goal
    met = ratio >= bound if op == ">=" else ratio <= bound
    text = f"{op} {bound:g}" + (f" (stretch {stretch:g})" if stretch else "")
    if met and stretch is not None and ratio >= stretch:
        return f"{text}: met, stretch met"
    return f"{text}: {'met' if met else 'missed'}"


def ratio(g: Any, e: Any) -> float | None:
    if isinstance(g, int | float) and isinstance(e, int | float) and e:
        return float(g) / float(e)
    return None


def table(med: dict[str, Any], p: Plan, polled: bool) -> list[dict[str, Any]]:
    """The rows of the side-by-side table from the medians: each system's figure, the
    ratio gossipmgr / etcd and the goal's verdict."""
    out = []
    for label, metric, unit, goal in metric_rows(p, polled):
        e_key = "etcd_" + metric
        if label.startswith("etcd linearizable"):
            e_key = f"etcd_lin_{metric}"
        e, g = med.get(e_key), med.get("gossipmgr_" + metric)
        r = ratio(g, e)
        out.append(
            {
                "what": label,
                "unit": unit,
                "etcd": e,
                "gossipmgr": g,
                "ratio": r,
                "goal": verdict(r, goal),
            }
        )
    for name in SYSTEMS:
        r = ratio(med.get(f"{name}_get_{p.big}_p50_ms"), med.get(f"{name}_get_0_p50_ms"))
        out.append(
            {
                "what": f"{name}: GET p50 at {p.big:,} keys / GET p50 at 0 keys",
                "unit": "x",
                "etcd": None,
                "gossipmgr": None,
                "ratio": r,
                "goal": verdict(r, ("<=", 1.2, None)) if name == "gossipmgr" else "",
            }
        )
    return out


def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def print_side_by_side(rows: list[dict[str, Any]]) -> None:
    print(f"{'workload':78} {'etcd':>9} {'gossipmgr':>10} {'ratio':>7}  goal")
    for r in rows:
        rat = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        what = f"{r['what']} [{r['unit']}]"
        print(f"{what:78} {fmt(r['etcd']):>9} {fmt(r['gossipmgr']):>10} {rat:>7}  {r['goal']}")


# ---------------------------------------------------------------------------- workloads
Side = EtcdSide | GossipSide


def get_p50s(side: Side, n: int) -> dict[str, float]:
    """p50 (ms) of ``n`` single-key GETs at r1, per kind: ``""`` a local read (etcd:
    serializable) and, for etcd, ``"lin_"`` its default linearizable read; the kinds are
    interleaved request by request so that neither gets the quieter moments."""
    kinds = {"": True, "lin_": False} if isinstance(side, EtcdSide) else {"": True}
    for _ in range(min(20, n)):
        for serializable in kinds.values():
            side.get(0, "target", serializable)
    lat: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(n):
        for kind, serializable in kinds.items():
            t0 = time.perf_counter()
            found = side.get(0, "target", serializable)
            lat[kind].append((time.perf_counter() - t0) * 1e3)
            if not found:
                raise RuntimeError(f"{side.name}: the key read is missing")
    return {k: statistics.median(v) for k, v in lat.items()}


def record_gets(s: Side, n: int, gets: int, row: dict[str, Any]) -> None:
    for kind, v in get_p50s(s, gets).items():
        row[f"{s.name}_{kind}get_{n}_p50_ms"] = v


def writes_per_s(side: Side, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        side.put(0, f"w{i:07d}", f"{i}:{PAD}")
    return n / (time.perf_counter() - t0)


def settle(side: Side) -> None:
    """One write at r1 read back on r2 and r3 before anything is timed (membership, peers)."""
    side.put(0, "target", "t")
    deadline = time.monotonic() + 60
    while not all(side.get(r, "target") for r in (1, 2)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{side.name}: a first write never reached r2 and r3")
        time.sleep(0.02)


def visible(side: Side, tag: str, n: int, spacing: float) -> tuple[list[float], list[float]]:
    """(write -> visible on r2 and r3, ack at r1) in ms for ``n`` writes at r1."""
    prefix = f"vis_{tag}_"
    arrivals: dict[str, dict[int, float]] = {}
    cond = threading.Condition()

    def seen_at(r: int) -> Callable[[str, float], None]:
        def seen(key: str, t: float) -> None:
            with cond:
                arrivals.setdefault(key, {}).setdefault(r, t)
                cond.notify_all()

        return seen

    watchers = [side.watch(r, prefix, seen_at(r)) for r in (1, 2)]
    try:
        for w in watchers:
            if not w.ready.wait(30) or w.error is not None:
                raise RuntimeError(f"{side.name}: watch not ready: {w.error!r}")
        vis, ack = [], []
        for i in range(n):
            key = f"{prefix}{i}"
            t0 = time.perf_counter()
            side.put(0, key, str(i))
            ack.append((time.perf_counter() - t0) * 1e3)
            with cond:
                cond.wait_for(lambda k=key: len(arrivals.get(k, {})) == 2 or _broken(watchers), 10)
                got = dict(arrivals.get(key, {}))
            if len(got) < 2:
                errs = [w.error for w in watchers]
                raise TimeoutError(f"{side.name}: {key} not seen on r2 and r3 in 10 s {errs}")
            vis.append((max(got.values()) - t0) * 1e3)
            time.sleep(spacing)
    finally:
        for w in watchers:
            w.stop()
    return vis, ack


def _broken(watchers: list[Watcher]) -> bool:
    return any(w.error is not None or not w.thread.is_alive() for w in watchers)


def catch_up(side: Side, n: int) -> float:
    """r3 stopped, ``n`` keys rewritten at r1, r3 restarted: seconds from its process
    start until its local store holds every new value. Checked cheaply first (single-key
    reads of 11 of the keys) and only then with one read of them all, so that the checks
    do not load the instance that is catching up."""
    keys = [f"k{i:07d}" for i in range(n)]
    want = {k: f"r{i}" for i, k in enumerate(keys)}
    probes = [*keys[:: max(1, n // 10)], keys[-1]]
    side.stop(2)
    for k, v in want.items():
        side.put(0, k, v)
    t0 = time.perf_counter()
    side.restart(2)
    deadline = t0 + 120
    while True:
        with contextlib.suppress(httpx.HTTPError, OSError, ValueError, KeyError):
            if all(side.value(2, k) == want[k] for k in probes) and side.values(2, keys) == want:
                return time.perf_counter() - t0
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{side.name}: r3 did not catch up in 120 s")
        time.sleep(0.01)


# ---------------------------------------------------------------------------- one run
def phases_etcd(root: Path, p: Plan, row: dict[str, Any], samples: dict[str, list[float]]) -> None:
    with EtcdSide(root / "etcd-fresh") as s:
        settle(s)
        fresh_phase(s, p, row, samples)
    if p.fresh_only:
        return
    with EtcdSide(root / "etcd-filled") as s:
        s.fill(0, p.mid)
        settle(s)
        mid_phase(s, p, row, samples)
        s.fill(p.mid, p.big)
        record_gets(s, p.big, p.gets, row)


def phases_gossipmgr(
    root: Path, p: Plan, row: dict[str, Any], samples: dict[str, list[float]]
) -> None:
    with GossipSide(root / "g-fresh") as s:
        settle(s)
        fresh_phase(s, p, row, samples)
        row["gossipmgr_visible_polled"] = int(s.mode == "polled")
    if p.fresh_only:
        return
    with GossipSide(root / "g-mid", seeded=p.mid) as s:
        settle(s)
        mid_phase(s, p, row, samples)
    with GossipSide(root / "g-big", seeded=p.big) as s:
        settle(s)
        record_gets(s, p.big, p.gets, row)


def catchup_etcd(root: Path, p: Plan, row: dict[str, Any], _: dict[str, list[float]]) -> None:
    with EtcdSide(root / "etcd-filled") as s:
        s.fill(0, p.mid)
        settle(s)
        row["etcd_catch_up_s"] = catch_up(s, p.rewrite)


def catchup_gossipmgr(root: Path, p: Plan, row: dict[str, Any], _: dict[str, list[float]]) -> None:
    with GossipSide(root / "g-mid", seeded=p.mid) as s:
        settle(s)
        row["gossipmgr_catch_up_s"] = catch_up(s, p.rewrite)


def fresh_phase(s: Side, p: Plan, row: dict[str, Any], samples: dict[str, list[float]]) -> None:
    record_gets(s, 0, p.gets, row)
    vis_phase(s, "fresh", p, row, samples)
    row[f"{s.name}_writes_per_s"] = writes_per_s(s, p.writes)


def mid_phase(s: Side, p: Plan, row: dict[str, Any], samples: dict[str, list[float]]) -> None:
    record_gets(s, p.mid, p.gets, row)
    vis_phase(s, "mid", p, row, samples)
    row[f"{s.name}_catch_up_s"] = catch_up(s, p.rewrite)


def vis_phase(
    s: Side, phase: str, p: Plan, row: dict[str, Any], samples: dict[str, list[float]]
) -> None:
    vis, ack = visible(s, phase, p.visible, p.spacing_s)
    for q, v in summary(vis).items():
        row[f"{s.name}_visible_{phase}_{q}_ms"] = v
    row[f"{s.name}_ack_{phase}_p50_ms"] = pct(ack, 50)
    samples.setdefault(f"{s.name}_visible_{phase}", []).extend(round(x, 3) for x in vis)


def one_run(i: int, root: Path, p: Plan, samples: dict[str, list[float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"run": i + 1}
    order = [("etcd", phases_etcd), ("gossipmgr", phases_gossipmgr)]
    if p.only == "catchup":
        order = [("etcd", catchup_etcd), ("gossipmgr", catchup_gossipmgr)]
    for name, phases in order if i % 2 == 0 else order[::-1]:
        print(f"== run {i + 1}/{p.runs}: {name}", flush=True)
        t0 = time.perf_counter()
        try:
            phases(root / f"run{i}", p, row, samples)
        except Exception:  # recorded; the other system and the other runs still go on
            traceback.print_exc()
            row[f"{name}_error"] = traceback.format_exc(limit=3)[-2000:]
        row[f"{name}_wall_s"] = time.perf_counter() - t0
        row[f"{name}_loadavg_1m"] = loadavg()
    return row


def loadavg() -> float | None:
    """The machine's 1-minute load average (its own processes included): how shared it was."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def etcd_version() -> str:
    out = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else ""


def product_commit() -> str:
    """The last commit that changed gossipmgr's code (what was measured)."""
    cmd = ["git", "log", "-1", "--format=%h", "--", "gossipmgr", "pyproject.toml"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True).stdout.strip()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    p = make_plan(args)
    if shutil.which("etcd") is None:
        print("etcd not found: apt-get install -y etcd-server etcd-client", file=sys.stderr)
        return 2
    samples: dict[str, list[float]] = {}
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-vs-etcd-") as tmp:
        for i in range(p.runs):
            runs.append(one_run(i, Path(tmp), p, samples))
    med = medians(runs)
    polled = any(r.get("gossipmgr_visible_polled") for r in runs)
    rows = table(med, p, polled)
    if p.only:  # the rows of that workload only
        rows = [r for r in rows if r["etcd"] is not None or r["gossipmgr"] is not None]
    print_side_by_side(rows)
    errors = {k: v for r in runs for k, v in r.items() if k.endswith("_error")}
    path = write_result(
        f"vs_etcd_{p.only}" if p.only else "vs_etcd_fresh" if p.fresh_only else "vs_etcd",
        "etcd 3.4 and gossipmgr side by side, 3 replicas each on loopback (bench/vs_etcd.py)",
        {**asdict(p), "quick": args.quick},
        runs,
        {
            "table": rows,
            "gossipmgr_visible_mode": "polled" if polled else "watch",
            "etcd_version": etcd_version(),
            "gossipmgr_commit": product_commit(),
            "samples_ms": samples,
            "errors": errors,
        },
    )
    print(f"wrote {path}" + (f"; {len(errors)} failed phase(s)" if errors else ""))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
