"""Crash workload and checker over real agents (used by tests/test_crash_agent.py and
bench/crash.py; not a test itself).

One *repetition* on a running :class:`~gossipmgr.localcluster.LocalCluster`:

1. (re)start the victim instance, with ``GOSSIPMGR_TEST_CRASH_AT=<point>:<n>`` in its
   environment when the mode is a named crash point (``gossipmgr/runtime/store.py``
   ``CRASH_POINTS``: the agent SIGKILLs itself the n-th time it passes that point, e.g.
   inside a compaction), and ``GOSSIPMGR_TEST_COMPACT_BYTES`` small so that it compacts
   every few dozen writes;
2. ``WRITERS`` threads PUT unique keys ``/globals/<tag>-<w>-<i>`` to the victim over real
   HTTP; every 200 is recorded as acknowledged, with its value;
3. the crash: ``kill9`` (SIGKILL once a seeded random number of writes was acknowledged),
   ``sigint`` (a clean stop at such a moment) or ``point:<name>`` (wait until the agent
   killed itself);
4. restart the victim without hooks, then the checker: every acknowledged key must be
   readable with its value on the victim at once, and on every peer within a deadline.

Anything but 200 or 503 (a refused write: the disk) from the API is a failure too.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from gossipmgr.localcluster import LocalCluster, wait_for
from gossipmgr.runtime.store import CRASH_POINTS

WRITERS = 8
#: Compact after this many log bytes: a PUT's record is ~100 B, so every ~40 writes.
COMPACT_BYTES = 4096
#: How many passes before a crash point fires, per point (small for compaction points:
#: one compaction per ~40 writes; larger for the per-commit points).
POINT_RANGE = {
    "flush.after-write": (20, 400),
    "flush.after-fsync": (20, 400),
    "compact.after-rotate": (1, 6),
    "compact.after-snapshot": (1, 6),
    "compact.mid-delete": (1, 6),
}
assert set(POINT_RANGE) == set(CRASH_POINTS)
#: kill9/sigint: crash once this many writes (uniform in the range) were acknowledged.
ACKED_BEFORE_CRASH = (100, 800)
MODES = ["kill9", "sigint", *(f"point:{p}" for p in CRASH_POINTS)]


@contextlib.contextmanager
def environ(**kv: str) -> Iterator[None]:
    """Set environment variables for processes started inside (LocalCluster.start copies
    os.environ), then put them back."""
    old = {k: os.environ.get(k) for k in kv}
    os.environ.update(kv)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Load:
    """``WRITERS`` threads writing unique keys to one instance until stopped."""

    def __init__(self, url: str, tag: str, headers: dict[str, str], writers: int = WRITERS) -> None:
        self.url, self.tag, self.headers = url, tag, headers
        self.acked: dict[str, int] = {}
        self.refused = 0  # 503: not acknowledged, allowed
        self.unexpected: list[str] = []  # any other status: a failure
        self.conn_errors = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(w,)) for w in range(writers)]

    def _run(self, w: int) -> None:
        with httpx.Client(timeout=10, headers=self.headers) as client:
            i = 0
            while not self._stop.is_set():
                key, i = f"{self.tag}-{w}-{i}", i + 1
                try:
                    r = client.put(f"{self.url}/globals/{key}", json={"value": i})
                except httpx.HTTPError:
                    # Not acknowledged (the instance died or is stopping under us).
                    with self._lock:
                        self.conn_errors += 1
                    self._stop.wait(0.02)  # do not spin against a dead port
                    continue
                with self._lock:
                    if r.status_code == 200:
                        self.acked[key] = i
                    elif r.status_code == 503:
                        self.refused += 1
                    else:
                        self.unexpected.append(f"{key}: {r.status_code} {r.text[:200]}")

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)


@dataclass
class RepResult:
    rep: int
    mode: str
    n: int = 0  # crash point pass count
    acked: int = 0
    lost_on_victim: list[str] = field(default_factory=list)
    lost_on_peers: dict[str, list[str]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    refused: int = 0
    compactions_seen: int = 0  # /metrics of the victim just before a timed crash
    exit_code: int | None = None
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return len(self.lost_on_victim) + sum(len(v) for v in self.lost_on_peers.values())

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d["lost"] = self.lost
        for k in ("lost_on_victim", "unexpected"):
            d[k] = d[k][:10]
        d["lost_on_peers"] = {p: v[:10] for p, v in self.lost_on_peers.items()}
        return d


def compactions(c: LocalCluster, name: str) -> int:
    try:
        text = httpx.get(f"{c.instances[name].url}/metrics", headers=c.headers, timeout=5).text
    except httpx.HTTPError:
        return 0
    m = re.search(r"^gossipmgr_store_compactions_total (\S+)", text, re.M)
    return int(float(m.group(1))) if m else 0


def globals_of(c: LocalCluster, name: str) -> dict[str, Any]:
    return c.get(name, "/info/globals", timeout=30)["extra_vars"]  # type: ignore[no-any-return]


def run_rep(
    c: LocalCluster,
    victim: str,
    rep: int,
    mode: str,
    rng: random.Random,
    tag: str,
    acked_before_crash: tuple[int, int] = ACKED_BEFORE_CRASH,
    point_range: dict[str, tuple[int, int]] | None = None,
) -> RepResult:
    """One repetition (module docstring). The victim may be stopped or running (started by
    the previous repetition, with small compactions and no crash point) on entry; it is
    running so on return."""
    t0 = time.monotonic()
    res = RepResult(rep, mode)
    inst = c.instances[victim]
    hooks = {"GOSSIPMGR_TEST_COMPACT_BYTES": str(COMPACT_BYTES)}
    if mode.startswith("point:"):
        point = mode.split(":", 1)[1]
        res.n = rng.randint(*(point_range or POINT_RANGE)[point])
        hooks["GOSSIPMGR_TEST_CRASH_AT"] = f"{point}:{res.n}"
        if inst.alive:
            c.stop(victim)  # to start it again with the crash point armed
    if not inst.alive:
        with environ(**hooks):
            c.start(victim)
    c.wait_ready(victim, timeout=60)
    with Load(inst.url, f"{tag}r{rep}", c.headers) as load:
        if mode.startswith("point:"):
            wait_for(lambda: not inst.alive, 60, f"{victim} to reach {mode}:{res.n}")
        else:
            # The crash moment is random in acknowledged writes (not in seconds, so that a
            # loaded machine still crashes the victim under a real load).
            target = rng.randint(*acked_before_crash)
            wait_for(lambda: len(load.acked) >= target, 120, f"{target} acknowledged writes")
            res.compactions_seen = compactions(c, victim)
            if mode == "kill9":
                c.kill9(victim)
            else:
                c.stop(victim)
    assert inst.proc is not None
    res.exit_code = inst.proc.returncode
    res.acked, res.refused, res.unexpected = len(load.acked), load.refused, load.unexpected
    with environ(GOSSIPMGR_TEST_COMPACT_BYTES=str(COMPACT_BYTES)):
        c.start(victim)
    c.wait_ready(victim, timeout=60)
    got = globals_of(c, victim)
    res.lost_on_victim = sorted(k for k, v in load.acked.items() if got.get(k) != v)
    for peer in c.instances:
        if peer == victim:
            continue

        def missing(peer: str = peer) -> list[str]:
            g = globals_of(c, peer)
            return sorted(k for k, v in load.acked.items() if g.get(k) != v)

        try:
            wait_for(lambda: not missing(), 60, f"{peer} to hold every acked write")
        except TimeoutError:
            res.lost_on_peers[peer] = missing(peer)
    res.seconds = time.monotonic() - t0
    return res


def expected_exit(mode: str, code: int | None) -> bool:
    if mode == "sigint":
        return code == 0
    return code == -signal.SIGKILL
