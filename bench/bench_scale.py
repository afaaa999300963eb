"""Thirty instances: write -> visible on all others, and idle gossip traffic per instance.

N real agents (``gossipmgr.localcluster``: one ``gossipmgr agent`` process and one embedded
``serf agent`` each, loopback, free ports, fsync on, the ``local`` Serf profile), started
one after the other and joined through the first one's Serf. Once every instance lists N
peers and a probe write has reached all of them:

* idle: ``gossipmgr_gossip_bytes_total{dir="sent"}`` (sealed bytes, every message type) of
  every instance from its ``/metrics``, read twice ``--idle`` seconds apart while nothing is
  written: bytes/s per instance (mean, median and max over the instances; the lease holder
  sends the renewals, so it is the max). Serf's own traffic is not in it.
* write -> visible: ``--writes`` single-key writes (``PUT /globals/{key}``), each at the
  next instance in turn, one at a time; the N-1 others are polled (``GET /globals/{key}``,
  one thread per instance, every 5 ms) until each returns the value. Per write: the time
  from sending the PUT until the last of the N-1 has it (``all``), and until each has it
  (``each``); p50/p99/max over the writes. Polling, not the change feed (``/watch``, not on
  this tree's main yet): the figures include up to one poll interval and a GET's own time.

Every process is stopped at the end, even on failure (``LocalCluster.close``).

    .venv/bin/python bench/bench_scale.py [--instances 30] [--idle 30] [--writes 40]

Prints a table and writes bench/results/scale<N>.json (``--out`` to name it otherwise).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench._util import pct, print_table, write_result  # noqa: E402
from gossipmgr.localcluster import LocalCluster, wait_for  # noqa: E402

POLL_S = 0.005
_SENT = re.compile(r'^gossipmgr_gossip_bytes_total\{dir="sent",type="(\w+)"\} (\S+)$')


def sent_bytes(cl: LocalCluster, name: str, client: httpx.Client) -> dict[str, int]:
    """Sealed bytes sent so far by message type, from the instance's /metrics."""
    r = client.get(f"{cl.instances[name].url}/metrics", headers=cl.headers, timeout=30)
    r.raise_for_status()
    lines = r.text.splitlines()
    return {m.group(1): int(float(m.group(2))) for line in lines if (m := _SENT.match(line))}


def start(cl: LocalCluster, n: int) -> list[str]:
    names = [f"s{i:02d}" for i in range(n)]
    for name in names:
        cl.add_instance(name)
    for name in names:
        cl.wait_ready(name, timeout=300)

    def all_listed() -> bool:
        return all(len(cl.get(x, "/info/peers", timeout=30)["peers"]) == n for x in names)

    wait_for(all_listed, 300, f"every instance to list {n} peers", interval=1.0)
    return names


def idle(cl: LocalCluster, names: list[str], seconds: float) -> dict[str, Any]:
    with httpx.Client() as c:
        t0 = time.monotonic()
        before = {x: sent_bytes(cl, x, c) for x in names}
        time.sleep(seconds)
        after = {x: sent_bytes(cl, x, c) for x in names}
        span = time.monotonic() - t0
    rates = [(sum(after[x].values()) - sum(before[x].values())) / span for x in names]
    kinds = {k for x in names for k in after[x]}
    by_type = {
        f"idle_bytes_per_s_mean_{k}": sum(after[x].get(k, 0) - before[x].get(k, 0) for x in names)
        / span
        / len(names)
        for k in sorted(kinds)
    }
    return {
        **by_type,
        "idle_bytes_per_s_mean": statistics.mean(rates),
        "idle_bytes_per_s_median": statistics.median(rates),
        "idle_bytes_per_s_max": max(rates),
        "idle_kbit_per_s_mean": statistics.mean(rates) * 8 / 1000,
        "idle_seconds": span,
    }


class Pollers:
    """One thread per instance polling ``GET /globals/{key}`` for the current write."""

    def __init__(self, cl: LocalCluster, names: list[str]) -> None:
        self.cl = cl
        self.want: tuple[str, str, str] | None = None  # key, value, writer
        self.seen: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(x,), daemon=True) for x in names]
        for t in self.threads:
            t.start()

    def _run(self, name: str) -> None:
        url = self.cl.instances[name].url
        with httpx.Client(headers=self.cl.headers, timeout=10) as c:
            while not self.stop.is_set():
                want = self.want
                if want is None or want[2] == name or name in self.seen:
                    time.sleep(POLL_S)
                    continue
                key, value, _ = want
                try:
                    r = c.get(f"{url}/globals/{key}")
                except httpx.HTTPError:
                    time.sleep(POLL_S)
                    continue
                if r.status_code == 200 and r.json().get("value") == value:
                    with self.lock:
                        if self.want == want:
                            self.seen.setdefault(name, time.perf_counter())
                else:
                    time.sleep(POLL_S)

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)


def write_visible(cl: LocalCluster, names: list[str], writes: int) -> dict[str, Any]:
    pollers = Pollers(cl, names)
    all_ms: list[float] = []
    each_ms: list[float] = []
    missed: list[str] = []
    others = len(names) - 1
    try:
        with httpx.Client(headers=cl.headers, timeout=30) as c:
            for i in range(writes):
                writer = names[i % len(names)]
                key, value = f"scale{i:04d}", f"v{i}-{time.time()}"
                with pollers.lock:
                    pollers.seen = {}
                    pollers.want = (key, value, writer)
                t0 = time.perf_counter()
                r = c.put(f"{cl.instances[writer].url}/globals/{key}", json={"value": value})
                r.raise_for_status()
                try:
                    wait_for(lambda: len(pollers.seen) >= others, 60, f"write {i}", 0.002)
                except TimeoutError:
                    pass
                with pollers.lock:
                    times = [(t - t0) * 1000 for t in pollers.seen.values()]
                    late = sorted(set(names) - set(pollers.seen) - {writer})
                    pollers.want = None
                if late:  # not seen within 60 s: reported, not folded into the percentiles
                    try:
                        view = c.get(f"{cl.instances[late[0]].url}/info/peers", timeout=30).text
                    except httpx.HTTPError as exc:
                        view = repr(exc)
                    missed.append(
                        f"write {i} at {writer}: not seen on {', '.join(late)}; "
                        f"{late[0]}'s /info/peers: {view[:3000]}"
                    )
                    print(missed[-1], flush=True)
                    continue
                all_ms.append(max(times))
                each_ms += times
                time.sleep(0.05)
    finally:
        pollers.close()
    if not all_ms:
        return {"writes": writes, "writes_missed": len(missed), "missed": missed}
    return {
        "writes_missed": len(missed),
        "missed": missed,
        "visible_all_p50_ms": pct(all_ms, 50),
        "visible_all_p99_ms": pct(all_ms, 99),
        "visible_all_max_ms": max(all_ms),
        "visible_each_p50_ms": pct(each_ms, 50),
        "visible_each_p99_ms": pct(each_ms, 99),
        "writes": writes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--instances", type=int, default=30)
    ap.add_argument("--idle", type=float, default=30.0, help="seconds of idle measurement")
    ap.add_argument("--writes", type=int, default=40)
    ap.add_argument("--label", default="", help="a note stored with the result")
    ap.add_argument("--out", default="", help="result name (default scale<N>)")
    args = ap.parse_args()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        cl = LocalCluster(Path(tmp), local_ansible=False)
        try:
            names = start(cl, args.instances)
            started_s = time.monotonic() - t_start
            print(
                f"{args.instances} instances serving and listing each other after "
                f"{started_s:.0f} s",
                flush=True,
            )
            time.sleep(5)  # the start's catch-ups and lease claims settle
            res: dict[str, Any] = {"instances": args.instances, "start_s": started_s}
            res.update(idle(cl, names, args.idle))
            print(f"idle: {res['idle_bytes_per_s_mean']:.0f} B/s per instance", flush=True)
            res.update(write_visible(cl, names, args.writes))
        finally:
            cl.close()
    print_table(f"{args.instances} instances ({args.label or 'this tree'})", sorted(res.items()))
    out = write_result(
        args.out or f"scale{args.instances}",
        f"{args.instances} real agents on loopback: idle gossip bytes/s per instance, "
        "write -> visible on all others (polled)",
        {
            "instances": args.instances,
            "idle_s": args.idle,
            "writes": args.writes,
            "poll_ms": POLL_S * 1000,
            "label": args.label,
        },
        [res],
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
