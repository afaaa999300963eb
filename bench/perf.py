"""The whole performance suite in one command, plus the real-process and etcd figures.

Run:  .venv/bin/python bench/perf.py [--quick] [--skip-etcd]
Then: .venv/bin/python bench/report.py   (docs/benchmarks.md and docs/img/*.png)

1. runs, each as a subprocess with a time limit: bench_store.py, bench_api.py (if present),
   bench_gossip.py, bench_sim.py, bench_durability.py (``--quick`` passed on to each; the
   store and API scripts get fewer runs / seconds instead);
2. RSS per instance: a real 3-agent ``LocalCluster`` whose data dirs hold 10,000 and then
   100,000 records (one ~200 B global each, as a snapshot): VmRSS of each agent once every
   agent serves them (/proc/<pid>/status);
3. side by side with etcd (Debian's ``etcd-server`` 3.4, if ``etcd`` is on PATH), same
   workload through each system's HTTP API, 3 members on loopback, free ports, tmp data dirs:
   * write -> visible: PUT a key at member 1, poll members 2 and 3 (etcd: serializable
     range = local read, no quorum) until both return it; one write every ~20 ms;
   * catch-up: the cluster holds 10,000 keys of ~200 B; a fresh 4th member starts
     (etcd: ``member add`` then start with ``initial-cluster-state=existing``); time until
     it serves all of them locally (gossipmgr: /health "entries"; etcd: serializable count).
Every process is stopped at the end, even on failure. Writes bench/results/perf.json.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import trio

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _util import global_records, pct, print_table, rss_kib, write_result  # noqa: E402
from bench_durability import build_snapshot  # noqa: E402

from gossipmgr.localcluster import LocalCluster, free_port  # noqa: E402

PY = sys.executable


# ---------------------------------------------------------------------------- sub-benchmarks
def run_script(name: str, args: list[str], limit_s: float) -> dict[str, Any]:
    path = HERE / name
    if not path.exists():
        return {"script": name, "skipped": "not present"}
    t0 = time.perf_counter()
    print(f"== {name} {' '.join(args)}", flush=True)
    try:
        res = subprocess.run([PY, str(path), *args], timeout=limit_s, cwd=HERE.parent)
        rc: int | str = res.returncode
    except subprocess.TimeoutExpired:
        rc = f"timed out after {limit_s:.0f} s"
    return {"script": name, "args": args, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1)}


# ---------------------------------------------------------------------------- gossipmgr cluster
@contextlib.contextmanager
def agents(root: Path, n: int, records: int) -> Iterator[LocalCluster]:
    cl = LocalCluster(root, local_ansible=False)
    try:
        if records:
            seed = global_records(records)
            for i in range(n):
                trio.run(build_snapshot, cl.root / f"a{i}" / "state", seed)
        for i in range(n):
            cl.add_instance(f"a{i}")
        for i in range(n):
            cl.wait_ready(f"a{i}", timeout=120)
        yield cl
    finally:
        cl.close()


def entries(cl: LocalCluster, name: str) -> int:
    return int(cl.get(name, "/health", timeout=10)["entries"])


def rss(root: Path, records: int) -> dict[str, Any]:
    with agents(root, 3, records) as cl:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if all(entries(cl, f"a{i}") >= records for i in range(3)):
                break
            time.sleep(0.5)
        time.sleep(2)
        vals = [rss_kib(cl.instances[f"a{i}"].proc.pid) / 1024 for i in range(3)]  # type: ignore[union-attr]
    return {f"rss_{records}_mib_max": max(vals), f"rss_{records}_mib_mean": sum(vals) / len(vals)}


def gossipmgr_latency(root: Path, writes: int) -> list[float]:
    with agents(root, 3, 0) as cl:
        urls = [cl.instances[f"a{i}"].url for i in range(3)]
        time.sleep(2)  # serf membership settles, gossip peers known
        with httpx.Client(timeout=5, headers=cl.headers) as c:
            c.put(f"{urls[0]}/globals/warm", json={"value": 0}).raise_for_status()
            out = []
            for w in range(writes):
                t0 = time.perf_counter()
                c.put(f"{urls[0]}/globals/k{w}", json={"value": w}).raise_for_status()
                pending = set(urls[1:])
                deadline = t0 + 10
                while pending and time.perf_counter() < deadline:
                    for u in list(pending):
                        if c.get(f"{u}/globals/k{w}").status_code == 200:
                            pending.discard(u)
                if pending:
                    raise TimeoutError(f"gossipmgr write k{w} not visible in 10 s")
                out.append((time.perf_counter() - t0) * 1e3)
                time.sleep(0.02)
    return out


def gossipmgr_catch_up(root: Path, records: int) -> dict[str, Any]:
    with agents(root, 3, records) as cl:
        want = entries(cl, "a0")
        t0 = time.perf_counter()
        cl.add_instance("a3")
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            with contextlib.suppress(httpx.HTTPError, OSError):
                if entries(cl, "a3") >= want:
                    break
            time.sleep(0.05)
        else:
            raise TimeoutError("fresh gossipmgr agent did not catch up in 120 s")
        return {"catch_up_s": time.perf_counter() - t0, "entries": want}


# ---------------------------------------------------------------------------- etcd
def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


class Etcd:
    """3 (+1) etcd members on loopback; ``close`` stops every one of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.members: dict[str, dict[str, Any]] = {}
        self.procs: list[subprocess.Popen[bytes]] = []

    def _spec(self, name: str) -> dict[str, Any]:
        return {"name": name, "client": free_port(), "peer": free_port(), "dir": self.root / name}

    def _start(self, m: dict[str, Any], cluster: str, state: str) -> None:
        h = "127.0.0.1"
        args = [
            shutil.which("etcd") or "etcd",
            "--name",
            m["name"],
            "--data-dir",
            str(m["dir"]),
            "--listen-client-urls",
            f"http://{h}:{m['client']}",
            "--advertise-client-urls",
            f"http://{h}:{m['client']}",
            "--listen-peer-urls",
            f"http://{h}:{m['peer']}",
            "--initial-advertise-peer-urls",
            f"http://{h}:{m['peer']}",
            "--initial-cluster",
            cluster,
            "--initial-cluster-state",
            state,
            "--initial-cluster-token",
            "bench",
            "--log-level",
            "error",
        ]
        log = open(self.root / f"{m['name']}.log", "ab")
        m["proc"] = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group (bench/vs_etcd.py kills groups)
        )
        log.close()
        self.procs.append(m["proc"])

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.members[name]['client']}"

    def start3(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            self.members[f"e{i}"] = self._spec(f"e{i}")
        cluster = ",".join(f"{n}=http://127.0.0.1:{m['peer']}" for n, m in self.members.items())
        for m in self.members.values():
            self._start(m, cluster, "new")
        for n in self.members:
            self.wait_healthy(n)

    def wait_healthy(self, name: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(f"{self.url(name)}/health", timeout=1)
                if r.status_code == 200 and r.json().get("health") == "true":
                    return
            if self.members[name]["proc"].poll() is not None:
                raise RuntimeError(
                    f"etcd {name} exited: {(self.root / f'{name}.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)
        raise TimeoutError(f"etcd {name} not healthy in {timeout} s")

    def add_member(self, name: str) -> None:
        m = self._spec(name)
        # etcd answers 503 ("unhealthy cluster") to a member add until every member has been
        # connected for 5 s (strict reconfig check): retry until then.
        deadline = time.monotonic() + 30
        while True:
            r = httpx.post(
                f"{self.url('e0')}/v3/cluster/member/add",
                json={"peerURLs": [f"http://127.0.0.1:{m['peer']}"]},
                timeout=10,
            )
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        r.raise_for_status()
        self.members[name] = m
        cluster = ",".join(f"{n}=http://127.0.0.1:{x['peer']}" for n, x in self.members.items())
        self._start(m, cluster, "existing")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@contextlib.contextmanager
def etcd3(root: Path) -> Iterator[Etcd]:
    e = Etcd(root)
    try:
        e.start3()
        yield e
    finally:
        e.close()


def etcd_get_local(c: httpx.Client, url: str, key: str) -> bool:
    r = c.post(f"{url}/v3/kv/range", json={"key": b64(key), "serializable": True})
    return bool(r.json().get("kvs"))


def etcd_count_local(c: httpx.Client, url: str, prefix: str) -> int:
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    r = c.post(
        f"{url}/v3/kv/range",
        json={"key": b64(prefix), "range_end": b64(end), "serializable": True, "count_only": True},
    )
    return int(r.json().get("count", 0))


def etcd_latency(root: Path, writes: int) -> list[float]:
    with etcd3(root) as e, httpx.Client(timeout=5) as c:
        urls = [e.url(f"e{i}") for i in range(3)]
        c.post(
            f"{urls[0]}/v3/kv/put", json={"key": b64("warm"), "value": b64("0")}
        ).raise_for_status()
        out = []
        for w in range(writes):
            t0 = time.perf_counter()
            c.post(
                f"{urls[0]}/v3/kv/put", json={"key": b64(f"k{w}"), "value": b64(str(w))}
            ).raise_for_status()
            pending = set(urls[1:])
            deadline = t0 + 10
            while pending and time.perf_counter() < deadline:
                for u in list(pending):
                    if etcd_get_local(c, u, f"k{w}"):
                        pending.discard(u)
            if pending:
                raise TimeoutError(f"etcd write k{w} not visible in 10 s")
            out.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.02)
    return out


def etcd_catch_up(root: Path, records: int) -> dict[str, Any]:
    pad = "v" * 160
    with etcd3(root) as e, httpx.Client(timeout=30) as c:
        u = e.url("e0")
        for lo in range(0, records, 100):
            ops = [
                {"request_put": {"key": b64(f"g/k{i:07d}"), "value": b64(f"{i}:{pad}")}}
                for i in range(lo, min(records, lo + 100))
            ]
            c.post(f"{u}/v3/kv/txn", json={"success": ops}).raise_for_status()
        e.add_member("e3")  # timed from the start of the new member's process
        t0 = time.perf_counter()
        url3 = e.url("e3")
        deadline = t0 + 120
        while time.perf_counter() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if etcd_count_local(c, url3, "g/") >= records:
                    break
            time.sleep(0.05)
        else:
            raise TimeoutError("etcd 4th member did not catch up in 120 s")
        return {"catch_up_s": time.perf_counter() - t0, "entries": records}


# ---------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="< 5 min: one run each, 10,000 only")
    ap.add_argument("--skip-etcd", action="store_true")
    ap.add_argument("--skip-scripts", action="store_true", help="only the real-process parts")
    args = ap.parse_args()
    q = ["--quick"] if args.quick else []
    t_all = time.perf_counter()
    scripts: list[dict[str, Any]] = []
    if not args.skip_scripts:
        scripts.append(run_script("bench_store.py", ["--runs", "1" if args.quick else "3"], 300))
        scripts.append(run_script("bench_api.py", ["--seconds", "2" if args.quick else "5"], 300))
        scripts.append(run_script("bench_gossip.py", q, 200 if args.quick else 600))
        scripts.append(run_script("bench_sim.py", q, 120 if args.quick else 600))
        scripts.append(run_script("bench_durability.py", q, 200 if args.quick else 600))

    writes = 40 if args.quick else 150
    sizes = [10_000] if args.quick else [10_000, 100_000]
    out: dict[str, Any] = {}
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        root = Path(tmp)
        print("== RSS of real agents", flush=True)
        for n in sizes:
            out.update(rss(root / f"rss{n}", n))
        print("== gossipmgr: write -> visible, catch-up (3 real agents, HTTP)", flush=True)
        lat = gossipmgr_latency(root / "glat", writes)
        samples["gossipmgr_http"] = [round(x, 3) for x in lat]
        out["gossipmgr_write_visible_p50_ms"] = pct(lat, 50)
        out["gossipmgr_write_visible_p99_ms"] = pct(lat, 99)
        out["gossipmgr_catch_up_10000_s"] = gossipmgr_catch_up(root / "gcu", 10_000)["catch_up_s"]
        etcd_ok = shutil.which("etcd") is not None and not args.skip_etcd
        out["etcd_available"] = etcd_ok
        if etcd_ok:
            print("== etcd: write -> visible, catch-up (3 members, HTTP gateway)", flush=True)
            ver = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
            out["etcd_version"] = ver.splitlines()[0] if ver else ""
            lat = etcd_latency(root / "elat", writes)
            samples["etcd_http"] = [round(x, 3) for x in lat]
            out["etcd_write_visible_p50_ms"] = pct(lat, 50)
            out["etcd_write_visible_p99_ms"] = pct(lat, 99)
            out["etcd_catch_up_10000_s"] = etcd_catch_up(root / "ecu", 10_000)["catch_up_s"]
    out["total_wall_s"] = time.perf_counter() - t_all
    print_table("real processes on loopback", out.items())
    for s in scripts:
        print(s)
    path = write_result(
        "perf",
        "suite runner + real-process figures + etcd side by side (bench/perf.py)",
        {
            "quick": args.quick,
            "writes": writes,
            "record": "one ~200 B key/value (gossipmgr global, etcd key)",
            "rss_sizes": sizes,
        },
        [out],
        {"scripts": scripts, "latency_samples_ms": samples},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
