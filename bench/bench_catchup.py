"""Restart catch-up: r3 stopped, 1,000 keys rewritten, r3 restarted: all visible on r3.

Three real agents (``gossipmgr.localcluster``: one process and one embedded ``serf agent``
each, loopback, free ports, fsync on). 1,000 globals (``k0000``..``k0999``) are written at
r1 and read back on every instance; r3 is stopped (SIGINT: a graceful stop, Serf's leave
included); the 1,000 keys are rewritten at r1 (8 HTTP clients, ``PUT /globals/{key}``) and
seen on r2; then r3 is started again on its data dir and timed from the process start
(``Popen``):

* ``serve_s``: the first ``GET /health`` answering 200 (the API serves after the restore);
* ``visible_s``: ``GET /info/globals`` on r3 (polled every 50 ms: one answer costs r3 ~15 ms on this
  loaded machine, and a tighter poll slowed the catch-up it measures) holds all 1,000 new
  values (the figure the etcd comparison quotes: restart -> all missed updates visible);
* from r3's own log (its lines carry millisecond timestamps), where the time went:
  ``restored_s`` (the restore done), ``api_s`` (API address bound and gossip listening,
  Serf next), ``peers_s`` (gossip got its peers, "gossip peers now": from the data dir's
  peer file at a restart since issue 17, else from Serf), ``serving_s`` (hypercorn
  serves the API), and from the catch-up's
  own log lines (when the tree has them): when it started (``catchup_start_s``: a digest to
  every peer), got its first answer, joined its last missed entry, and found every peer
  equal (``catchup_first_answer_s``, ``catchup_last_entry_s``, ``catchup_equal_s``);
* ``serve_cpu_s``, ``visible_cpu_s``: r3's CPU time (user + system, ``/proc``) by then:
  what the start costs, less sensitive than the wall times to other load on the machine;
* persisted: after the check, r3 is stopped again and a ``Replica.open`` of its data dir
  must hold all 1,000 new values (asserted, not timed).

    .venv/bin/python bench/bench_catchup.py [--runs 3] [--keys 1000] [--label NAME]
        [--seed-globals N] [--seed-nodes N]

``--seed-globals N`` / ``--seed-nodes N``: every data dir starts from a snapshot of N other
globals (~200 B each) / N node records (3 entries each), as vs_etcd.py seeds its 10,000
keys: the restart then restores, and compares, that much more state.

Prints a table (median over runs) and writes bench/results/catchup.json; ``--before FILE``
keeps an earlier catchup.json's medians as "before" in the new one.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._util import global_records, node_records, print_table, write_result  # noqa: E402
from bench.bench_durability import build_snapshot, wait_serving  # noqa: E402
from bench.bench_startstop import cpu_seconds  # noqa: E402
from gossipmgr.localcluster import LocalCluster, wait_for  # noqa: E402
from gossipmgr.runtime.replica import Replica  # noqa: E402

WRITERS = 8
POLL_S = 0.050

#: r3's log lines that mark the steps of a restart (regex -> the figure's name).
MARKS = {
    r": restored in ": "restored_s",
    r": API on ": "api_s",
    r": gossip peers now \[.+\]": "peers_s",
    r": catch-up: started": "catchup_start_s",
    r"gossipmgr\.api\.hypercorn: Running on ": "serving_s",
}
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
#: The catch-up's own figures, in ms after it started (gossip/catchup.py, CatchUp.summary).
_DONE = re.compile(
    r": catch-up: done .*first answer after (\d+) ms, (\d+) entries \(the last after "
    r"(\d+) ms\), equal after (\d+) ms"
)


def _key(i: int) -> str:
    return f"k{i:04d}"


def write_all(cl: LocalCluster, name: str, keys: int, value: str) -> None:
    url = cl.instances[name].url
    with httpx.Client(headers=cl.headers, timeout=30) as client:

        def put(i: int) -> None:
            r = client.put(f"{url}/globals/{_key(i)}", json={"value": f"{value}{i}"})
            r.raise_for_status()

        with ThreadPoolExecutor(WRITERS) as ex:
            list(ex.map(put, range(keys)))


def holds(cl: LocalCluster, name: str, keys: int, value: str, client: httpx.Client) -> bool:
    r = client.get(f"{cl.instances[name].url}/info/globals", headers=cl.headers, timeout=5)
    if r.status_code != 200:
        return False
    got = r.json()["extra_vars"]
    return all(got.get(_key(i)) == f"{value}{i}" for i in range(keys))


def log_marks(text: str, t0: float) -> dict[str, Any]:
    """Seconds after ``t0`` (epoch) of the first line matching each of ``MARKS``."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        m = _STAMP.match(line)
        if not m:
            continue
        when = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        for pat, name in MARKS.items():
            if name not in out and re.search(pat, line):
                out[name] = round(when - t0, 4)
        d = _DONE.search(line)
        if d and "catchup_start_s" in out and "catchup_entries" not in out:
            start = out["catchup_start_s"]
            first, entries, last, equal = (int(x) for x in d.groups())
            out["catchup_entries"] = entries
            out["catchup_first_answer_s"] = round(start + first / 1000, 4)
            out["catchup_last_entry_s"] = round(start + last / 1000, 4)
            out["catchup_equal_s"] = round(start + equal / 1000, 4)
    return out


_BYTES = re.compile(r'^gossipmgr_gossip_bytes_total\{dir="(\w+)",type="(\w+)"\} (\S+)$')


def gossip_bytes(cl: LocalCluster, name: str) -> dict[str, int]:
    """``<dir>_<type>`` -> sealed gossip bytes so far, from the instance's /metrics."""
    out: dict[str, int] = {}
    for line in _metrics(cl, name):
        m = _BYTES.match(line)
        if m:
            out[f"{m.group(1)}_{m.group(2)}"] = int(float(m.group(3)))
    return out


def _metrics(cl: LocalCluster, name: str) -> list[str]:
    r = httpx.get(f"{cl.instances[name].url}/metrics", headers=cl.headers, timeout=10)
    r.raise_for_status()
    return r.text.splitlines()


async def stored_globals(state_dir: Path) -> dict[str, Any]:
    """The globals a stopped instance's data dir holds (what it restores at its next start)."""
    rep = Replica("r3", data_dir=state_dir, fsync=False)
    rep.open()
    try:
        return rep.state.globals()
    finally:
        await rep.aclose()


def one_run(root: Path, keys: int, seed_globals: int = 0, seed_nodes: int = 0) -> dict[str, Any]:
    cl = LocalCluster(root, local_ansible=False)
    try:
        if seed_globals or seed_nodes:
            seed = global_records(seed_globals)
            seed.join(node_records(seed_nodes))
            for n in ("r1", "r2", "r3"):
                trio.run(build_snapshot, cl.root / n / "state", seed)
        for n in ("r1", "r2", "r3"):
            cl.add_instance(n)
        for n in ("r1", "r2", "r3"):
            cl.wait_ready(n)
        write_all(cl, "r1", keys, "old")
        with httpx.Client() as c:
            for n in ("r2", "r3"):
                wait_for(lambda n=n: holds(cl, n, keys, "old", c), 60, f"{n} to hold the keys")
        cl.stop("r3")
        write_all(cl, "r1", keys, "new")
        with httpx.Client() as c:
            wait_for(lambda: holds(cl, "r2", keys, "new", c), 60, "r2 to hold the rewrite")
        r3 = cl.instances["r3"]
        log_offset = r3.log_path.stat().st_size
        t0_epoch = time.time()
        t0 = time.perf_counter()
        cl.start("r3")
        wait_serving(r3, 0.005)
        serve_s = time.perf_counter() - t0
        assert r3.proc is not None
        serve_cpu_s = cpu_seconds(r3.proc.pid)
        with httpx.Client() as c:
            wait_for(lambda: holds(cl, "r3", keys, "new", c), 60, "r3 to catch up", POLL_S)
        visible_s = time.perf_counter() - t0
        visible_cpu_s = cpu_seconds(r3.proc.pid)
        time.sleep(0.5)  # let the last novel deltas reach the disk before stopping r3
        moved = {f"r3_{k}": v for k, v in gossip_bytes(cl, "r3").items() if "entries" in k}
        text = r3.log()[log_offset:] if len(r3.log()) > log_offset else r3.log()
        cl.stop("r3")
        got = trio.run(stored_globals, r3.data_dir / "state")
        persisted = all(got.get(_key(i)) == f"new{i}" for i in range(keys))
        assert persisted, "r3's data dir does not hold the rewrite after the catch-up"
        return {
            "serve_s": serve_s,
            "visible_s": visible_s,
            "serve_cpu_s": serve_cpu_s,
            "visible_cpu_s": visible_cpu_s,
            **log_marks(text, t0_epoch),
            **moved,
        }
    finally:
        cl.close()


FIGURES = (
    ("serve_s", "process start -> GET /health 200"),
    ("restored_s", "  log: restore done"),
    ("api_s", "  log: API bound and gossip listening"),
    ("peers_s", "  log: gossip got its peers (peer file or Serf)"),
    ("catchup_start_s", "  log: catch-up started (digests to every peer)"),
    ("catchup_first_answer_s", "  log: catch-up: first answer"),
    ("catchup_last_entry_s", "  log: catch-up: last missed entry joined"),
    ("catchup_equal_s", "  log: catch-up: every peer equal"),
    ("serving_s", "  log: the API serves (hypercorn running)"),
    ("visible_s", "process start -> all keys visible on r3"),
    ("serve_cpu_s", "r3's CPU time by its first GET /health 200"),
    ("visible_cpu_s", "r3's CPU time by all keys visible"),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keys", type=int, default=1_000)
    ap.add_argument("--label", default="", help="a note stored with the result")
    ap.add_argument("--before", type=Path, help="an earlier catchup.json to keep as 'before'")
    ap.add_argument("--keep", type=Path, help="run under this directory and keep the logs")
    ap.add_argument("--seed-globals", type=int, default=0, help="other globals in every dir")
    ap.add_argument("--seed-nodes", type=int, default=0, help="node records in every dir")
    args = ap.parse_args()
    runs = []
    where = tempfile.TemporaryDirectory() if args.keep is None else nullcontext(str(args.keep))
    with where as tmp:
        for i in range(args.runs):
            r = one_run(Path(tmp) / f"run{i}", args.keys, args.seed_globals, args.seed_nodes)
            runs.append(r)
            print(f"run {i}: " + ", ".join(f"{k} {v}" for k, v in r.items()), flush=True)
    rows = []
    for key, label in FIGURES:
        vals = [r[key] for r in runs if key in r]
        if vals:
            rows.append((f"{label} (s)", statistics.median(vals)))
    print_table(f"{args.keys} keys, {args.runs} runs ({args.label or 'this tree'})", rows)
    extra = {}
    if args.before is not None:
        old = json.loads(args.before.read_text())
        extra["before"] = {
            "params": old["params"],
            "median": old["median"],
            "after_peers_runs": [x["visible_s"] - x["peers_s"] for x in old["runs"]],
        }
    out = write_result(
        "catchup",
        "3 agents; r3 stopped, keys rewritten at r1, r3 restarted: process start -> all "
        "visible on r3",
        {
            "keys": args.keys,
            "runs": args.runs,
            "label": args.label,
            "writers": WRITERS,
            "seed_globals": args.seed_globals,
            "seed_nodes": args.seed_nodes,
        },
        runs,
        extra,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
