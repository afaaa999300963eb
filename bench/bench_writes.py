"""API writes: sequential single-key PUTs and batches of 100 keys, from one client.

One client (a SEPARATE process: this script with ``--worker``, httpx over one keep-alive
connection) writes as fast as the answers come, each request after the previous answer:

* ``seq1``: ``PUT /globals/k<i>`` with a ~160-character string value, one key per request;
* ``batch100``: ``PATCH /globals`` with 100 such keys per request (one delta, one fsync).

Against three servers, each started afresh per run (empty data dir, loopback only):

* ``standalone``: the agent's own wiring over a fake Serf (gossipmgr.testing.standalone),
  in this process (in a child process with ``--before-tree``), fsync on, as a daemon has it;
* ``standalone_nofsync``: the same with fsync off (what the tests run): the cost of
  everything but the disk;
* ``agent``: a real ``gossipmgr agent`` process with its own ``serf agent``
  (gossipmgr.localcluster, one instance), fsync on;
* ``cluster3``: three real agents (r1, r2, r3, each with its Serf, fsync on); the client
  writes to r1 only; the CPU per write of each agent (``r2``/``r3``: what receiving,
  persisting and acknowledging a peer's delta costs), their idle CPU before the run, and
  with ``--profile DIR`` a record of each agent (``--profile-tool``: py-spy stacks, py-spy
  of the GIL holder only, or ``strace -c -f`` syscall counts);
* ``holder`` (no HTTP, no client): a standalone instance holding the lease commits
  ``--writes`` globals in process with 0, then 100 ended jobs in its history (the most it
  keeps), and lets what each commit wakes run: the CPU of one commit on the holder.

Every answer must be 200. Reported per server and workload: requests/s, keys/s, p50 and p99
latency of one request, and the server's CPU time per request (user + system, all its
threads: background work included); the median over ``--runs`` runs (default 3). The client
and the server share the machine's cores, so the figures are lower bounds; compare rows of
one run.

    .venv/bin/python bench/bench_writes.py [--writes 2000] [--batches 200] [--runs 3]

``--before-tree DIR`` (a checkout of an older commit, e.g. ``git archive <rev> | tar -x -C
DIR``) runs every server of every run twice, alternating: once on DIR's gossipmgr, once on
this tree's, and records DIR's figures under ``before`` (only ``seq1`` there when DIR has
no PATCH /globals: ``--before-workloads``).

Writes bench/results/writes.json (bench/results/replication.json for ``--servers cluster3``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
#: ``--before-tree``: the server side of a run is this script's ``--one`` mode in a child
#: process whose gossipmgr is imported from the tree named here (agents it starts inherit it).
TREE_ENV = "GOSSIPMGR_BENCH_TREE"
sys.path.insert(0, os.environ.get(TREE_ENV) or str(HERE.parent))
sys.path.insert(1, str(HERE))

from _util import medians, pct, print_table, write_result  # noqa: E402

VALUE = "v" * 160
BATCH = 100


# --------------------------------------------------------------------------- client


def worker(url: str, kind: str, n: int, token: str) -> dict[str, Any]:
    """In the worker process: ``n`` sequential requests of ``kind``; counts and latencies."""
    import httpx

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"

    def request(c: httpx.Client, i: int) -> httpx.Response:
        if kind == "seq1":
            return c.put(f"/globals/k{i}", content=json.dumps({"value": VALUE}))
        body = {f"b{i}-{j}": VALUE for j in range(BATCH)}
        return c.patch("/globals", content=json.dumps(body))

    lat: list[float] = []
    with httpx.Client(base_url=url, headers=headers, timeout=60) as c:
        for i in range(20):  # warm-up: the connection, the first commits
            request(c, -1 - i).raise_for_status()
        t0 = time.perf_counter()
        for i in range(n):
            t = time.perf_counter()
            r = request(c, i)
            lat.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise SystemExit(f"{kind} request {i}: {r.status_code} {r.text[:200]}")
        elapsed = time.perf_counter() - t0
    keys = n * (BATCH if kind == "batch100" else 1)
    return {
        "requests_per_s": round(n / elapsed, 1),
        "keys_per_s": round(keys / elapsed, 1),
        "p50_ms": round(pct(lat, 50) * 1000, 2),
        "p99_ms": round(pct(lat, 99) * 1000, 2),
    }


def run_worker(url: str, kind: str, n: int, token: str = "") -> dict[str, Any]:
    import subprocess

    cmd = [sys.executable, __file__, "--worker", url, kind, str(n), token]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise SystemExit(f"worker failed: {out.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(out.stdout)
    return res


# --------------------------------------------------------------------------- servers


def workloads(
    url: str, args: argparse.Namespace, cpu: Callable[[], float], token: str = ""
) -> dict[str, Any]:
    """Each workload in turn; ``cpu()``: the server's CPU seconds so far (user + system), so
    that its CPU per request is known too (less sensitive to a loaded machine than rates)."""
    out: dict[str, Any] = {}
    for kind, n in (("seq1", args.writes), ("batch100", args.batches)):
        if kind not in args.workloads.split(","):
            continue
        c0 = cpu()
        res = run_worker(url, kind, n, token)
        # the worker's 20 warm-up requests count as well
        res["server_cpu_us_per_request"] = round((cpu() - c0) / (n + 20) * 1e6)
        for k, v in res.items():
            out[f"{kind}_{k}"] = v
    return out


def proc_cpu(pid: int, system_only: bool = False) -> float:
    """CPU seconds (user + system, or system only) of process ``pid`` (its threads
    included, its children not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[12]) + (0 if system_only else int(fields[11]))
    return ticks / os.sysconf("SC_CLK_TCK")


def standalone_run(args: argparse.Namespace, fsync: bool) -> dict[str, Any]:
    import trio

    from gossipmgr.testing.standalone import standalone_agent, standalone_config

    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory() as tmp:
            cfg = standalone_config(Path(tmp), "w1")
            async with standalone_agent(cfg, fsync=fsync) as agent:
                url = agent.api_url
                return await trio.to_thread.run_sync(workloads, url, args, time.process_time)

    return trio.run(main)


def agent_run(args: argparse.Namespace) -> dict[str, Any]:
    from gossipmgr.localcluster import LocalCluster

    with tempfile.TemporaryDirectory() as tmp:
        cl = LocalCluster(Path(tmp), local_ansible=False)
        try:
            inst = cl.add_instance("w1")
            cl.wait_ready("w1")
            assert inst.proc is not None
            pid = inst.proc.pid
            return workloads(
                inst.url, args, lambda: proc_cpu(pid), cl.token_file.read_text().strip()
            )
        finally:
            cl.close()


def holder_run(args: argparse.Namespace) -> dict[str, Any]:
    """The ``holder`` server: no HTTP. A standalone instance (fsync off) holding the lease,
    with 0 and then 100 ended jobs in its history (``jobs.HISTORY``, what a busy cluster
    keeps), commits ``--writes`` globals in process, letting the tasks each commit wakes (the
    holder's orphan scan) run after each; CPU per commit."""
    import trio
    import trio.testing

    from gossipmgr.core.job import JobRecord, make_job_id
    from gossipmgr.core.state import combine, global_key, job_key
    from gossipmgr.testing.standalone import standalone_agent, standalone_config

    def job(i: int) -> JobRecord:
        jid = make_job_id(1_000 + i, i, "w1")
        return JobRecord(jid, "d", "update", "update", (), "Complete", "", 1, "w1", 1, 2, 3)

    async def main(n_jobs: int) -> float:
        with tempfile.TemporaryDirectory() as tmp:
            async with standalone_agent(standalone_config(Path(tmp), "w1")) as agent:
                rep = agent.replica
                hist = [job(i) for i in range(n_jobs)]

                def seed(st: Any, ts: Any) -> Any:
                    return combine(*(st.d_set(job_key(j.id), j.to_value(), ts) for j in hist))

                await rep.commit(seed)
                await trio.testing.wait_all_tasks_blocked()
                c0 = time.process_time()
                for i in range(args.writes):
                    key = global_key(f"k{i}")

                    def write(st: Any, ts: Any, key: Any = key) -> Any:
                        return st.d_set(key, VALUE, ts)

                    await rep.commit(write)
                    await trio.testing.wait_all_tasks_blocked()
                return float((time.process_time() - c0) / args.writes * 1e6)

    return {f"commit_{n}jobs_cpu_us": round(trio.run(main, n)) for n in (0, 100)}


def _profile(pids: dict[str, int], out_dir: Path, tool: str) -> list[Any]:
    """Each of ``pids`` recorded until stopped, into ``out_dir/<name>.txt``: ``py-spy``
    (``pip install py-spy``) raw collapsed stacks, 200 Hz, idle samples left out;
    ``py-spy-gil`` the same, only samples of the thread holding the GIL (Python's own
    CPU, not the wait in a syscall); ``strace``: ``strace -c -f`` (syscall counts and
    system time per call, all threads; it slows the agent, so read its counts, not the
    rates of that run)."""
    import subprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    spy = str(Path(sys.executable).parent / "py-spy")
    procs = []
    for name, pid in pids.items():
        out = str(out_dir / f"{name}.txt")
        if tool == "strace":
            cmd = ["strace", "-c", "-f", "-p", str(pid), "-o", out]
        else:
            cmd = [spy, "record", "-p", str(pid), "-r", "200", "-f", "raw", "-o", out]
            cmd += ["--gil"] if tool == "py-spy-gil" else []
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if tool == "strace":
        time.sleep(1)  # strace attaches to every thread before the writes start
    return procs


def _datagrams(cl: Any, name: str) -> dict[str, float]:
    """``gossipmgr_gossip_datagrams_total`` of agent ``name`` by direction (its /metrics)."""
    import httpx

    inst = cl.instances[name]
    text = httpx.get(f"{inst.url}/metrics", headers=cl.headers, timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("gossipmgr_gossip_datagrams_total{"):
            d = line.split('dir="', 1)[1].split('"', 1)[0]
            out[d] = float(line.rsplit(" ", 1)[1])
    return out


def cluster3_run(args: argparse.Namespace) -> dict[str, Any]:
    """The ``cluster3`` server: three real agents (each with its Serf, fsync on); the client
    writes to r1 only. CPU per write of each agent process (user + system, its threads, not
    its children: Serf is not counted), and of each agent idle over 5 s before (the tick,
    lease renewals, Serf polls: what a write's figure includes per second of the run)."""
    import signal

    from gossipmgr.localcluster import LocalCluster, wait_for

    with tempfile.TemporaryDirectory() as tmp:
        cl = LocalCluster(Path(tmp), local_ansible=False)
        try:
            names = ("r1", "r2", "r3")
            for n in names:
                cl.add_instance(n)
            for n in names:
                cl.wait_ready(n)
            r = cl.put("r1", "/globals/ready", {"value": "1"})
            r.raise_for_status()

            def seen() -> bool:
                return all(cl.get(n, "/globals/ready").get("value") == "1" for n in names[1:])

            wait_for(seen, 30, "the first write to reach r2 and r3")
            pids = {n: cl.instances[n].proc.pid for n in names}  # type: ignore[union-attr]
            c0 = {n: proc_cpu(p) for n, p in pids.items()}
            time.sleep(5)
            idle = {n: (proc_cpu(p) - c0[n]) / 5 for n, p in pids.items()}
            spies = _profile(pids, Path(args.profile), args.profile_tool) if args.profile else []
            c0 = {n: proc_cpu(p) for n, p in pids.items()}
            s0 = {n: proc_cpu(p, True) for n, p in pids.items()}
            d0 = {n: _datagrams(cl, n) for n in names}
            t0 = time.perf_counter()
            res = run_worker(
                cl.instances["r1"].url, "seq1", args.writes, cl.token_file.read_text().strip()
            )
            last = f"k{args.writes - 1}"
            wait_for(
                lambda: all(cl.get(n, f"/globals/{last}").get("value") == VALUE for n in names[1:]),
                60,
                "the last write to reach r2 and r3",
            )
            elapsed = time.perf_counter() - t0
            cpu = {n: proc_cpu(p) - c0[n] for n, p in pids.items()}
            sys_cpu = {n: proc_cpu(p, True) - s0[n] for n, p in pids.items()}
            for s in spies:
                s.send_signal(signal.SIGINT)
                s.wait(30)
            n_req = args.writes + 20
            for n in names:
                d1 = _datagrams(cl, n)
                for k in ("sent", "received"):
                    res[f"{n}_datagrams_{k}_per_write"] = round((d1[k] - d0[n][k]) / n_req, 2)
            for n in names:
                res[f"{n}_cpu_us_per_write"] = round(cpu[n] / n_req * 1e6)
                res[f"{n}_sys_cpu_us_per_write"] = round(sys_cpu[n] / n_req * 1e6)
                res[f"{n}_idle_cpu_ms_per_s"] = round(idle[n] * 1e3, 1)
                res[f"{n}_busy_cpu_us_per_write"] = round(
                    (cpu[n] - idle[n] * elapsed) / n_req * 1e6
                )
            return res
        finally:
            cl.close()


def one(args: argparse.Namespace, server: str) -> dict[str, Any]:
    if server == "agent":
        return agent_run(args)
    if server == "cluster3":
        return cluster3_run(args)
    if server == "holder":
        return holder_run(args)
    return standalone_run(args, fsync=server == "standalone")


def one_in_tree(
    args: argparse.Namespace, server: str, tree: Path, workloads: str
) -> dict[str, Any]:
    """:func:`one` in a child process importing gossipmgr from ``tree`` (both trees run
    that way when compared, so neither server shares a process with the harness)."""
    import subprocess

    env = dict(os.environ, PYTHONPATH=str(tree))
    env[TREE_ENV] = str(tree)
    cmd = [sys.executable, __file__, "--one", server, "--writes", str(args.writes)]
    cmd += ["--batches", str(args.batches), "--workloads", workloads]
    if args.profile:
        cmd += ["--profile", str(Path(args.profile).resolve() / tree.name)]
        cmd += ["--profile-tool", args.profile_tool]
    # cwd: an agent is started as ``python -m gossipmgr.cli.main``, which puts its working
    # directory first on sys.path, before PYTHONPATH: run from a checkout, every agent ran
    # that checkout's gossipmgr, whatever the tree.
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise SystemExit(f"run on {tree} failed: {out.stderr[-2000:]}")
    res: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        url, kind, n, token = (*sys.argv[2:5], sys.argv[5] if len(sys.argv) > 5 else "")
        if not url.startswith("http://127."):
            raise SystemExit("the load generator targets loopback only")
        print(json.dumps(worker(url, kind, int(n), token)))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writes", type=int, default=2000, help="PUTs per run")
    p.add_argument("--batches", type=int, default=200, help="PATCHes of 100 keys per run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--servers", default="standalone,standalone_nofsync,agent,holder")
    p.add_argument("--workloads", default="seq1,batch100")
    p.add_argument("--label", default="", help="a name for this tree (e.g. a commit)")
    p.add_argument("--one", default="", help=argparse.SUPPRESS)
    p.add_argument("--before-tree", type=Path, default=None)
    p.add_argument("--before-label", default="")
    p.add_argument("--before-workloads", default="seq1")
    p.add_argument("--profile", default="", help="cluster3: record each agent into this dir")
    p.add_argument("--profile-tool", default="py-spy", choices=("py-spy", "py-spy-gil", "strace"))
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args, args.one)))
        return
    servers = [s for s in args.servers.split(",") if s]
    runs: list[dict[str, Any]] = []
    before: list[dict[str, Any]] = []
    for i in range(args.runs):
        row: dict[str, Any] = {}
        old: dict[str, Any] = {}
        for s in servers:  # alternated within a run: the machine's load hits all alike
            if args.before_tree is not None:
                res = one_in_tree(args, s, args.before_tree, args.before_workloads)
                old.update({f"{s}_{k}": v for k, v in res.items()})
                print(f"run {i + 1} {s} (before): {res}", flush=True)
                res = one_in_tree(args, s, HERE.parent, args.workloads)
            else:
                res = one(args, s)
            row.update({f"{s}_{k}": v for k, v in res.items()})
            print(f"run {i + 1} {s}: {res}", flush=True)
        runs.append(row)
        if old:
            before.append(old)
    med = medians(runs)
    print_table("API writes, one sequential client", med.items(), runs)
    extra: dict[str, Any] = {}
    if before:
        extra["before"] = {"label": args.before_label, "median": medians(before), "runs": before}
        print_table(f"before ({args.before_label})", medians(before).items(), before)
    params = {
        "writes": args.writes,
        "batches": args.batches,
        "batch_keys": BATCH,
        "value": "a 160-character string",
        "runs": args.runs,
        "servers": servers,
        "workloads": args.workloads.split(","),
        "label": args.label,
    }
    what = "API writes: sequential PUT and PATCH of 100 keys"
    # cluster3 alone: the replication cost (docs/benchmarks.md), kept apart from the rest
    name = "replication" if servers == ["cluster3"] else "writes"
    path = write_result(name, what, params, runs, extra)
    print(f"written {path}")


if __name__ == "__main__":
    main()
