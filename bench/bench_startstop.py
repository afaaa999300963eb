"""Start and stop of one real agent process over 10,000 node records.

A data dir holding N node records (inventory, monitoring and host-group entries each;
``bench/_util.py: node_records``) is written beforehand as a snapshot; then, per run, the
``gossipmgr agent`` command (LocalCluster's command line: embedded serf, free loopback
ports) is started on it and timed:

* ``serve_s``: process start (Popen) -> the first ``GET /health`` answering 200 (polled
  every 5 ms);
* ``serve_cpu_s``: the CPU time (user + system) the agent process had used when that
  first 200 came (``/proc/<pid>/stat``): what the start costs, less sensitive than
  ``serve_s`` to other load on the machine;
* ``stop_s``: SIGTERM -> the agent process has exited (its serf child has left and been
  reaped by then: the agent waits for it).

The gossipmgr package is byte-compiled first, as an installation is (pip writes the
``.pyc`` files): with ``PYTHONDONTWRITEBYTECODE`` set and no ``.pyc``, every start would
compile each module again (0.1-0.15 s), which no deployed agent does.

    .venv/bin/python bench/bench_startstop.py [--nodes 10000] [--runs 5] [--profile local]

Prints a table (median over runs) and writes bench/results/startstop.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._util import node_records, print_table, write_result  # noqa: E402
from bench.bench_durability import build_snapshot, wait_serving  # noqa: E402
from gossipmgr.localcluster import LocalCluster  # noqa: E402


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(root: Path, nodes: int, profile: str = "local") -> dict[str, Any]:
    cl = LocalCluster(root, local_ansible=False, profile=profile)
    try:
        t0 = time.perf_counter()
        inst = cl.add_instance("a0")
        wait_serving(inst, 0.005)
        serve_s = time.perf_counter() - t0
        assert inst.proc is not None
        serve_cpu_s = cpu_seconds(inst.proc.pid)
        entries = httpx.get(f"{inst.url}/health", timeout=5).json().get("entries")
        cl.wait_ready("a0")  # serf up too: the stop below includes its leave
        time.sleep(0.5)  # let the first lease round settle
        t1 = time.perf_counter()
        inst.proc.send_signal(signal.SIGTERM)
        code = inst.proc.wait(60)
        stop_s = time.perf_counter() - t1
        return {
            "serve_s": serve_s,
            "serve_cpu_s": serve_cpu_s,
            "stop_s": stop_s,
            "exit_code": code,
            "entries": entries,
        }
    finally:
        cl.close()


def compile_package() -> None:
    """Write the ``.pyc`` files of the gossipmgr the agent runs (see the docstring)."""
    import compileall

    import gossipmgr

    compileall.compile_dir(str(Path(gossipmgr.__file__).parent), quiet=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--label", default="", help="a note stored with the result")
    ap.add_argument(
        "--profile",
        choices=["local", "lan", "wan"],
        default="local",
        help="the embedded Serf's timing profile (the stop waits one gossip round of it)",
    )
    ap.add_argument(
        "--before", type=Path, help="an earlier startstop.json whose medians to keep as 'before'"
    )
    args = ap.parse_args()
    compile_package()
    with tempfile.TemporaryDirectory() as tmp:
        seed = Path(tmp) / "seed"
        trio.run(build_snapshot, seed, node_records(args.nodes))
        runs = []
        for i in range(args.runs):
            root = Path(tmp) / f"run{i}"
            state = root / "a0" / "state"
            state.mkdir(parents=True)
            for f in seed.iterdir():
                (state / f.name).write_bytes(f.read_bytes())
            r = one_run(root, args.nodes, args.profile)
            runs.append(r)
            cpu = r["serve_cpu_s"]
            print(
                f"run {i}: serve {r['serve_s']:.3f} s (cpu {cpu if cpu is None else round(cpu, 2)}"
                f" s), stop {r['stop_s']:.3f} s",
                flush=True,
            )
    med = {k: statistics.median(r[k] for r in runs) for k in ("serve_s", "stop_s")}
    cpus = [r["serve_cpu_s"] for r in runs if r["serve_cpu_s"] is not None]
    rows = [("process start -> serving (s)", med["serve_s"])]
    if cpus:
        rows.append(("CPU time used by then (s)", statistics.median(cpus)))
    rows.append(("SIGTERM -> exit (s)", med["stop_s"]))
    print_table(f"{args.nodes} node records, {args.runs} runs ({args.label or 'this tree'})", rows)
    extra = {}
    if args.before is not None:
        old = json.loads(args.before.read_text())
        extra["before"] = {"params": old["params"], "median": old["median"]}
    out = write_result(
        "startstop",
        "agent process start -> GET /health 200, SIGTERM -> exit; one agent with embedded serf",
        {
            "nodes": args.nodes,
            "runs": args.runs,
            "label": args.label,
            "bytecode": "compiled",
            "profile": args.profile,
        },
        runs,
        extra,
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
