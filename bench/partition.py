"""Partition suite: real gossipmgr agents and real Serf in network namespaces, cut for real.

Run (root is needed: it creates network namespaces, veths and bridges):

    sudo .venv/bin/python bench/partition.py [--quick] [--seed N] [--schedules a,b,...]
    sudo .venv/bin/python bench/partition.py --cleanup      # remove a dead run's leftovers

Every schedule runs against one cluster (``bench/netns.py``: 5 hosts, 3 with ``--quick``,
plus two simulated nodes). During each fault, one client per instance writes through that
instance's API, so every side of a partition takes writes: globals with unique keys, globals
contended by every instance (LWW), one "session" key per writer (its last acknowledged
value must win), node extra-vars (unique and contended) and host-groups (contended). One
simulated node is killed (SIGKILL of its serf) during the fault. After the heal the checker
(:func:`check`) requires, within a deadline:

* every acknowledged write (HTTP 200) present; contended keys hold one acknowledged value,
  the same everywhere; a session key holds its writer's last acknowledged value;
* identical replicas: GET /info/nodes, /info/globals and /info/jobs equal on every instance
  (there is no digest endpoint, so the full JSON is compared);
* health: the killed node Disappeared everywhere, the live one Discovered everywhere, and
  the killed one never flapped back to Discovered on any instance;
* the lease: sampled on every instance every ~100 ms; reported, not failed: the overlap
  window (time with >1 holder overall, expected while sides are cut), the overlap inside one
  connected group (should be ~0), takeover time after a holder crash/isolation, and the time
  from heal to one agreed holder (which must happen: failed otherwise).

Jobs schedules (``job-split``, ``job-holder-isolated``, half of the random ones) also run
real playbooks on a simulated node while the fault lasts, a job acting when it starts and
every instance asked to act on the same node; their checker
(``bench/partition_jobs.py``) fails the schedule for a node action applied out of epoch
order and reports actions by a side without a majority and the jobs' outcomes.

A failed schedule prints its seed and the command that replays it. Results: a table on
stdout and JSON in bench/results/partition.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import platform
import random
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.netns import (  # noqa: E402
    ApiClient,
    HarnessError,
    NetnsCluster,
    cleanup_leftovers,
    install_signal_teardown,
    node_name,
    unavailable_reason,
    wait_for,
)
from bench.partition_jobs import JobDriver, start_first_job, write_config  # noqa: E402

SCHEDULES = (
    "isolate-one",
    "split-2-3",
    "flap",
    "send-only",
    "holder-isolated",
    "holder-crash",
    "long",
    "job-split",
    "job-holder-isolated",
    "random",
)
#: Left out of ``--quick`` (it keeps one jobs schedule, job-split).
NOT_QUICK = ("long", "job-holder-isolated")
WRITE_PACE_S = 0.25
SAMPLE_EVERY_S = 0.1
CONVERGE_TIMEOUT_S = 75.0  # > the holder's 30 s periodic reconcile, plus Serf's reconnect


# --------------------------------------------------------------------------- workload
@dataclass
class Write:
    kind: str  # unique | contended | session | nvar | nvar-contended | host-group
    inst: str
    key: str
    node: str | None
    value: Any
    seq: int
    status: int  # HTTP status, 0 = no answer (indeterminate)
    t0: float
    t1: float

    @property
    def acked(self) -> bool:
        return self.status == 200


class Workload:
    """One writer thread per instance, each with its own client, until :meth:`stop`."""

    def __init__(
        self,
        c: NetnsCluster,
        tag: str,
        node_contended: str,
        nodes: Sequence[str],
        instances: Sequence[str],
        t_base: float,
    ) -> None:
        self.c, self.tag, self.t_base = c, tag, t_base
        self.node_contended, self.nodes = node_contended, list(nodes)
        self.writes: list[Write] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(n,), daemon=True) for n in instances
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> list[Write]:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self.writes

    def _one(self, cl: ApiClient, inst: str, i: int) -> Write:
        tag, kind = (
            self.tag,
            ("unique", "contended", "session", "nvar", "nvar-contended", "host-group")[i % 6],
        )
        node: str | None = None
        value: Any
        if kind == "unique":
            key, value = f"u_{tag}_{inst}_{i}", f"{inst}:{i}"
            method, path, body = "PUT", f"/globals/{key}", {"value": value}
        elif kind == "contended":
            key, value = f"c_{tag}_{i % 3}", f"{inst}:{i}"
            method, path, body = "PUT", f"/globals/{key}", {"value": value}
        elif kind == "session":
            key, value = f"s_{tag}_{inst}", i
            method, path, body = "PUT", f"/globals/{key}", {"value": value}
        elif kind == "nvar":
            node = self.nodes[i % len(self.nodes)]
            key, value = f"x_{tag}_{inst}_{i}", f"{inst}:{i}"
            method, path, body = "PUT", f"/node/{node}/extra_vars/{key}", {"value": value}
        elif kind == "nvar-contended":
            node = self.node_contended
            key, value = f"cv_{tag}", f"{inst}:{i}"
            method, path, body = "PUT", f"/node/{node}/extra_vars/{key}", {"value": value}
        else:
            node = self.node_contended
            key = "host_group"
            value = ("service-worker", "service-master")[(i // 6) % 2]
            method, path, body = "POST", f"/node/{node}/host_group", {"host_group": value}
        t0 = time.monotonic() - self.t_base
        try:
            status, _ = cl.request(method, path, body)
        except OSError:
            status = 0
        except Exception:  # http.client errors: the write may or may not have landed
            status = 0
        return Write(kind, inst, key, node, value, i, status, t0, time.monotonic() - self.t_base)

    def _run(self, inst: str) -> None:
        cl = self.c.client(inst, timeout=5.0)
        i = 0
        try:
            while not self._stop.is_set():
                w = self._one(cl, inst, i)
                with self._lock:
                    self.writes.append(w)
                i += 1
                self._stop.wait(WRITE_PACE_S)
        finally:
            cl.close()


class Sampler:
    """Polls /info/lease on every instance (~100 ms) and the watched nodes' inventory
    state (~300 ms). Samples are ``(t, inst, is_holder, holder, epoch, valid)`` and
    ``(t, inst, node, state)``; an instance that does not answer gives no sample."""

    def __init__(self, c: NetnsCluster, watch_nodes: Sequence[str], t_base: float) -> None:
        self.c, self.watch, self.t_base = c, list(watch_nodes), t_base
        self.lease: list[tuple[float, str, bool, str | None, int, bool]] = []
        self.ticks: list[float] = []
        self.states: list[tuple[float, str, str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        clients = {n: self.c.client(n, timeout=1.0) for n in self.c.instances}
        k = 0
        try:
            while not self._stop.is_set():
                t = time.monotonic() - self.t_base
                self.ticks.append(t)
                for n, cl in clients.items():
                    if not self.c.instances[n].alive:
                        continue
                    try:
                        body = cl.get("/info/lease")
                        lease = body.get("lease") or {}
                        self.lease.append(
                            (
                                t,
                                n,
                                bool(body.get("is_holder")),
                                lease.get("holder"),
                                int(lease.get("epoch") or 0),
                                bool(lease.get("valid")),
                            )
                        )
                        if k % 3 == 0:
                            for node in self.watch:
                                st, rec = cl.request("GET", f"/info/node/{node}")
                                if st == 200:
                                    self.states.append(
                                        (t, n, node, rec["inventory_state"]["state"])
                                    )
                    except Exception:
                        continue
                k += 1
                self._stop.wait(SAMPLE_EVERY_S)
        finally:
            for cl in clients.values():
                cl.close()


# --------------------------------------------------------------------------- state reads
def snapshot(cl: ApiClient) -> dict[str, Any]:
    jobs = cl.get("/info/jobs")
    return {
        "nodes": cl.get("/info/nodes"),
        "globals": cl.get("/info/globals")["extra_vars"],
        "jobs": jobs,
    }


def snapshots(c: NetnsCluster, clients: dict[str, ApiClient]) -> dict[str, dict[str, Any]]:
    return {n: snapshot(cl) for n, cl in clients.items() if c.instances[n].alive}


def canon(x: Any) -> str:
    return json.dumps(x, sort_keys=True)


def _keyed(x: Any) -> Any:
    """A list of records keyed by their id/name (so a diff names the record, not an index)."""
    if isinstance(x, list) and x and all(isinstance(e, dict) for e in x):
        for k in ("id", "name", "job_id"):
            if all(k in e for e in x):
                return {str(e[k]): e for e in x}
    return x


def gossip_diagnostics(c: NetnsCluster) -> dict[str, Any]:
    """Per instance: its peers as it sees them and its gossip/HLC/fencing counters (from
    /metrics), so a divergence can be told apart from a stalled protocol."""
    out: dict[str, Any] = {}
    for n in c.instances:
        if not c.instances[n].alive:
            continue
        cl = c.client(n, timeout=5.0)
        try:
            _, text = cl.request("GET", "/metrics")
            lines = text.splitlines() if isinstance(text, str) else []
            keep = ("gossipmgr_gossip", "gossipmgr_hlc", "gossipmgr_fenced", "gossipmgr_entries")
            out[n] = {
                "peers": cl.get("/info/peers"),
                "metrics": [ln for ln in lines if ln.startswith(keep)],
            }
        except Exception as exc:  # a diagnostic: never fail the run on it
            out[n] = {"error": repr(exc)}
        finally:
            cl.close()
    return out


def replica_diff(snaps: dict[str, Any], limit: int = 12) -> list[str]:
    """Where replicas differ: ``path: inst=value ...`` for each differing leaf (at most
    ``limit``), so a failure names the keys, their values and timestamps per replica."""
    out: list[str] = []

    def walk(path: str, vals: dict[str, Any]) -> None:
        if len(out) >= limit or len({canon(v) for v in vals.values()}) == 1:
            return
        vals = {n: _keyed(v) for n, v in vals.items()}
        if all(isinstance(v, dict) for v in vals.values()):
            keys = sorted(set().union(*(v.keys() for v in vals.values())))
            for k in keys:
                walk(f"{path}/{k}", {n: v.get(k, "<absent>") for n, v in vals.items()})
            return
        out.append(f"{path}: " + " | ".join(f"{n}={canon(v)[:300]}" for n, v in vals.items()))

    walk("", snaps)
    return out


def missing_writes(state: dict[str, Any], writes: Sequence[Write]) -> list[str]:
    """Problems with acknowledged writes in one replica's state (empty = all present)."""
    g, nodes = state["globals"], state["nodes"]
    out: list[str] = []
    groups: dict[tuple[str, str | None, str], list[Write]] = {}
    for w in writes:
        groups.setdefault(
            (w.kind if w.kind != "session" else f"session:{w.inst}", w.node, w.key), []
        ).append(w)

    def value_of(node: str | None, key: str) -> Any:
        if node is None:
            return g.get(key, "<absent>")
        conf = nodes.get(node, {}).get("configuration_state", {})
        if key == "host_group":
            return conf.get("host_group", "<absent>")
        return conf.get("inventory_vars", {}).get(key, "<absent>")

    for (kind, node, key), ws in groups.items():
        acked = [w for w in ws if w.acked]
        maybe = [w for w in ws if w.status == 0]
        if not acked:
            continue
        have = value_of(node, key)
        where = f"{node}/{key}" if node else key
        if kind in ("unique", "nvar"):
            if have != acked[0].value:
                out.append(f"acked write lost: {where} = {have!r}, acked {acked[0].value!r}")
        elif kind.startswith("session"):
            last = max(acked, key=lambda w: w.seq)
            ok = {last.value} | {w.value for w in maybe if w.seq > last.seq}
            if have not in ok:
                out.append(f"session order broken: {where} = {have!r}, last acked {last.value!r}")
        else:
            if have not in {w.value for w in acked} | {w.value for w in maybe}:
                out.append(f"LWW winner not an acked value: {where} = {have!r}")
    return out


# --------------------------------------------------------------------------- schedules
@dataclass
class Schedule:
    name: str
    seed: int
    #: (offset s from the fault phase start, action, argument)
    steps: list[tuple[float, str, Any]] = field(default_factory=list)
    #: Jobs act on a node during the fault (bench/partition_jobs.py).
    jobs: bool = False


def build(name: str, seed: int, hosts: Sequence[str], quick: bool) -> Schedule:
    """The fault steps of a schedule. ``holder`` in an argument is resolved at run time."""
    rng = random.Random(seed)
    p = 12.0 if quick else 20.0
    second = hosts[1]
    minority = list(hosts[-2:]) if len(hosts) >= 5 else [hosts[-1]]
    s = Schedule(name, seed)
    if name == "isolate-one":
        s.steps = [(0, "isolate", "nonholder"), (p / 3, "kill_node", None), (p, "heal", None)]
    elif name == "split-2-3":
        majority = [h for h in hosts if h not in minority]
        s.steps = [
            (0, "partition", [majority, minority]),
            (p / 3, "kill_node", None),
            (p, "heal", None),
        ]
    elif name == "flap":
        t = 0.0
        while t < p:
            s.steps += [(t, "link_down", second), (t + 2.0, "link_up", second)]
            t += 3.5
        s.steps += [(p / 3, "kill_node", None), (p, "heal", None)]
    elif name == "send-only":
        s.steps = [(0, "block_ingress", "nonholder"), (p / 3, "kill_node", None), (p, "heal", None)]
    elif name == "holder-isolated":
        s.steps = [(0, "isolate", "holder"), (p / 3, "kill_node", None), (p, "heal", None)]
    elif name == "holder-crash":
        s.steps = [(0, "crash", "holder"), (p / 3, "kill_node", None), (p, "restart", None)]
    elif name == "long":
        s.steps = [(0, "isolate", "nonholder"), (10, "kill_node", None), (45.0, "heal", None)]
    elif name == "job-split":  # the jobs' node stays with the majority (group 0)
        majority = [h for h in hosts if h not in minority]
        s.steps = [
            (0, "partition", [majority, minority]),
            (p / 3, "kill_node", None),
            (1.5 * p, "heal", None),  # longer: a job takes ~15 s to reach a loaded node
        ]
        s.jobs = True
    elif name == "job-holder-isolated":
        s.steps = [(0, "isolate", "holder"), (p / 3, "kill_node", None), (1.5 * p, "heal", None)]
        s.jobs = True
    elif name == "random":
        t = 0.0
        for phase in range(rng.randint(1, 3)):
            kind = rng.choice(["isolate", "split", "flap", "send-only"])
            dur = rng.uniform(5, 20 if not quick else 10)
            victim = rng.choice(list(hosts))
            if kind == "isolate":
                s.steps.append((t, "isolate", victim))
            elif kind == "split":
                k = rng.randint(1, len(hosts) // 2)
                side = rng.sample(list(hosts), k)
                s.steps.append((t, "partition", [[h for h in hosts if h not in side], side]))
            elif kind == "send-only":
                s.steps.append((t, "block_ingress", victim))
            else:
                f = t
                while f < t + dur:
                    s.steps += [(f, "link_down", victim), (f + 1.5, "link_up", victim)]
                    f += rng.uniform(2.0, 4.0)
            if phase == 0:
                s.steps.append((t + dur / 2, "kill_node", None))
            t += dur
            s.steps.append((t, "heal", None))
            t += rng.uniform(0, 3)
        s.steps.sort(key=lambda x: x[0])
        s.jobs = rng.random() < 0.5  # drawn last: the fault steps of a seed stay the same
    else:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    s.steps.sort(key=lambda x: x[0])
    return s


# --------------------------------------------------------------------------- running one
def agreed_holder(clients: dict[str, ApiClient]) -> str | None:
    seen = set()
    for cl in clients.values():
        body = cl.get("/info/lease")
        lease = body.get("lease") or {}
        if not lease.get("valid"):
            return None
        seen.add(lease["holder"])
    return seen.pop() if len(seen) == 1 else None


def prepare(c: NetnsCluster, nodes: Sequence[str], timeout: float = 120.0) -> str:
    """Back to a healthy baseline: every process up, one holder, nodes Discovered, replicas
    identical. Returns the holder. Raises HarnessError."""
    want = list(nodes)
    for h in c.hosts:
        if not h.alive:
            c.start(h.name)
            if h.kind == "instance":
                c.wait_ready(h.name, 60)
    c.wait_instances_see_each_other(timeout)
    clients = {n: c.client(n) for n in c.instances}
    try:

        def ok() -> str | None:
            holder = agreed_holder(clients)
            if holder is None:
                return None
            snaps = snapshots(c, clients)
            if len({canon(s) for s in snaps.values()}) != 1:
                return None
            nodes = next(iter(snaps.values()))["nodes"]
            for n in want:
                if nodes.get(n, {}).get("inventory_state", {}).get("state") != "Discovered":
                    return None
            return holder

        try:
            holder = wait_for(ok, timeout, "a healthy baseline (one holder, nodes Discovered)", 0.3)
        except HarnessError as exc:
            try:
                diff = replica_diff(snapshots(c, clients))
            except Exception as rexc:  # the diagnostic must not hide the timeout
                diff = [f"(could not read the replicas: {rexc})"]
            path = c.root / f"diag-{int(time.time())}.json" if c.root else None
            if path is not None:
                path.write_text(json.dumps(gossip_diagnostics(c), indent=1, default=str))
            raise HarnessError(f"{exc}; replicas differ at: {diff}; diagnostics: {path}") from exc
        assert holder is not None
        return holder
    finally:
        for cl in clients.values():
            cl.close()


def run_schedule(c: NetnsCluster, s: Schedule, log: Callable[[str], None]) -> dict[str, Any]:
    nodes = [node_name(h) for h in c.nodes.values()]
    victim_host = next(iter(c.nodes))  # n1 dies in every schedule; n2 stays up
    victim, live = nodes[0], nodes[1]
    holder0 = prepare(c, nodes)
    first_job = start_first_job(c, holder0) if s.jobs else None  # acting when the fault starts
    tag = f"{s.name}{s.seed}".replace("-", "")
    t_base = time.monotonic()
    sampler = Sampler(c, [victim, live], t_base)
    work = Workload(c, tag, live, nodes, list(c.instances), t_base)
    sampler.start()
    work.start()
    driver = None if first_job is None else JobDriver(c, holder0, t_base, first_job)
    events: list[tuple[float, str, Any]] = []
    comps: list[tuple[float, list[set[str]]]] = [(0.0, c.components())]
    crashed: list[str] = []
    result: dict[str, Any] = {"schedule": s.name, "seed": s.seed, "holder_before": holder0}
    failures: list[str] = []
    lead = 2.0  # writes and samples before the first fault
    t_heal: float | None = None
    try:
        if driver is not None:
            driver.start()  # every instance asks to act on the jobs' node
        for idx, (off, action, arg) in enumerate(s.steps):
            delay = lead + off - (time.monotonic() - t_base)
            if delay > 0:
                time.sleep(delay)
            if arg == "holder":
                arg = holder0
            elif arg == "nonholder":
                arg = [h for h in c.instances if h != holder0][-1]
            is_last = idx == len(s.steps) - 1
            if is_last:
                work.stop()  # writes end at the heal, so convergence has a fixed target
                if driver is not None:
                    driver.stop()
            if action == "isolate":
                c.isolate(arg)
            elif action == "partition":
                c.partition(arg)
            elif action == "heal":
                c.heal()
            elif action == "link_down":
                c.link_down(arg)
            elif action == "link_up":
                c.link_up(arg)
            elif action == "block_ingress":
                c.block_ingress(arg)
            elif action == "kill_node":
                c.kill9(victim_host)
            elif action == "crash":
                c.kill9(arg)
                crashed.append(arg)
            elif action == "restart":
                for name in crashed:
                    c.start(name)
                for name in crashed:
                    c.wait_ready(name, 60)
            t = time.monotonic() - t_base
            events.append((t, action, arg))
            comps.append((t, c.components()))
            if is_last:
                t_heal = t
        assert t_heal is not None
        writes = work.writes
        # ---- convergence after the heal
        clients = {n: c.client(n) for n in c.instances}
        t_conv = t_health = None
        last_problem = ""
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                try:
                    snaps = snapshots(c, clients)
                except Exception as exc:
                    last_problem = f"read failed: {exc}"
                    time.sleep(0.25)
                    continue
                now = time.monotonic() - t_base
                same = len({canon(v) for v in snaps.values()}) == 1 and len(snaps) == len(
                    c.instances
                )
                state = next(iter(snaps.values()))
                miss = (
                    missing_writes(state, writes)
                    if same
                    else ["replicas differ at: " + "; ".join(replica_diff(snaps, 6))]
                )
                if same and not miss and t_conv is None:
                    t_conv = now
                st = {
                    n: state["nodes"].get(n, {}).get("inventory_state", {}).get("state")
                    for n in (victim, live)
                }
                idle = not any(j["status"] in ("Queued", "Running") for j in state["jobs"]["jobs"])
                if (
                    same
                    and not miss
                    and st == {victim: "Disappeared", live: "Discovered"}
                    and idle  # a job still running changes /info/jobs
                ):
                    t_health = now
                    break
                last_problem = "; ".join(miss[:3]) if miss else f"node states {st}"
                time.sleep(0.25)
            if t_conv is None or t_health is None:
                result["diagnostics"] = gossip_diagnostics(c)
            if t_conv is None:
                failures.append(f"no convergence within {CONVERGE_TIMEOUT_S:.0f} s: {last_problem}")
            elif t_health is None:
                failures.append(
                    f"health not settled within {CONVERGE_TIMEOUT_S:.0f} s: {last_problem}"
                )
            # Stays converged (nothing flaps back) for a few seconds.
            time.sleep(3.0)
            try:
                try:
                    snaps = snapshots(c, clients)
                except (OSError, http.client.HTTPException):  # a keep-alive the server closed
                    snaps = snapshots(c, clients)  # (the client redials)
                if len({canon(v) for v in snaps.values()}) != 1:
                    failures.append(
                        "replicas drifted apart after converging: " + "; ".join(replica_diff(snaps))
                    )
                else:
                    failures += missing_writes(next(iter(snaps.values())), writes)
            except Exception as exc:
                failures.append(f"final read failed: {exc}")
        finally:
            for cl in clients.values():
                cl.close()
    finally:
        sampler.stop()
        work.stop()
        if driver is not None:
            driver.stop()
    t_end = time.monotonic() - t_base
    kill_t = next((t for t, a, _ in events if a == "kill_node"), None)
    fault_t = events[0][0] if events else lead
    lease = lease_figures(
        sampler,
        comps,
        fault_t,
        t_heal,
        t_end,
        holder0,
        takeover=s.name in ("holder-isolated", "holder-crash", "job-holder-isolated"),
    )
    if driver is not None:
        result["node_actions"], job_failures = driver.finish(comps, fault_t, t_heal)
        failures += job_failures
    flaps = health_flaps(sampler, victim, kill_t)
    lease_tl: dict[str, list[tuple[float, bool, str | None, int, bool]]] = {}
    for t, n, is_h, h, e, v in sampler.lease:
        lseq = lease_tl.setdefault(n, [])
        if not lseq or lseq[-1][1:] != (is_h, h, e, v):
            lseq.append((round(t, 2), is_h, h, e, v))
    timeline: dict[str, dict[str, list[tuple[float, str]]]] = {}
    for t, n, nd, nst in sampler.states:
        seq = timeline.setdefault(nd, {}).setdefault(n, [])
        if not seq or seq[-1][1] != nst:
            seq.append((round(t, 2), nst))
    failures += flaps
    if lease["heal_to_one_holder_s"] is None:
        failures.append("no single agreed holder after the heal")
    acked = [w for w in writes if w.acked]
    result.update(
        {
            "ok": not failures,
            "failures": failures,
            "steps": [(round(t, 2), a, a_arg) for t, a, a_arg in events],
            "writes": {
                "attempted": len(writes),
                "acked": len(acked),
                "indeterminate": sum(1 for w in writes if w.status == 0),
                "refused": sum(1 for w in writes if w.status not in (0, 200)),
                "by_instance": {n: sum(1 for w in acked if w.inst == n) for n in c.instances},
            },
            "fault_s": round(t_heal - fault_t, 2),
            "heal_to_convergence_s": None if t_conv is None else round(t_conv - t_heal, 2),
            "heal_to_health_s": None if t_health is None else round(t_health - t_heal, 2),
            "lease": lease,
            "samples": len(sampler.ticks),
            "node_state_timeline": timeline,
            "killed_node": victim,
            "lease_timeline": lease_tl,
        }
    )
    return result


def lease_figures(
    sm: Sampler,
    comps: list[tuple[float, list[set[str]]]],
    t_fault: float,
    t_heal: float,
    t_end: float,
    holder0: str,
    takeover: bool,
) -> dict[str, Any]:
    """Overlap windows, takeover and heal-to-one-holder from the lease samples."""
    by_tick: dict[float, dict[str, tuple[bool, str | None, int, bool]]] = {}
    for t, n, is_h, h, e, v in sm.lease:
        by_tick.setdefault(t, {})[n] = (is_h, h, e, v)
    ticks = sorted(by_tick)
    overlap = in_group = 0.0
    takeover_s = heal_one = None
    max_epoch = 0
    holders_seen: set[str] = set()
    for i, t in enumerate(ticks):
        dt = (ticks[i + 1] if i + 1 < len(ticks) else t_end) - t
        view = by_tick[t]
        holding = {n for n, (is_h, _, _, _) in view.items() if is_h}
        holders_seen |= holding
        max_epoch = max([max_epoch, *(e for _, _, e, _ in view.values())])
        if len(holding) > 1:
            overlap += dt
        groups = next((g for tc, g in reversed(comps) if tc <= t), comps[0][1])
        if any(len(holding & g) > 1 for g in groups):
            in_group += dt
        if takeover and takeover_s is None and t > t_fault and holding - {holder0}:
            takeover_s = round(t - t_fault, 2)
        if heal_one is None and t >= t_heal:
            agreed = {h for _, h, _, v in view.values() if v}
            if len(holding) == 1 and len(agreed) == 1 and all(v for *_, v in view.values()):
                heal_one = round(t - t_heal, 2)
    return {
        "overlap_s": round(overlap, 2),
        "in_group_overlap_s": round(in_group, 2),
        "takeover_s": takeover_s,
        "heal_to_one_holder_s": heal_one,
        "holders_seen": sorted(holders_seen),
        "max_epoch": max_epoch,
    }


def health_flaps(sm: Sampler, node: str, t_kill: float | None) -> list[str]:
    """The killed node must go Disappeared at most once per instance and never come back."""
    out = []
    per: dict[str, list[str]] = {}
    for t, n, nd, st in sm.states:
        if nd == node and (t_kill is None or t >= t_kill):
            seq = per.setdefault(n, [])
            if not seq or seq[-1] != st:
                seq.append(st)
    for n, seq in per.items():
        downs = sum(
            1 for a, b in itertools.pairwise(seq) if b == "Disappeared" and a != "Disappeared"
        )
        if "Disappeared" in seq and seq.index("Disappeared") < len(seq) - 1:
            out.append(f"{node} flapped on {n}: {' -> '.join(seq)}")
        elif downs > 1:
            out.append(f"{node} went Disappeared {downs} times on {n}")
    return out


# --------------------------------------------------------------------------- main
def median(xs: Sequence[float | None]) -> float | None:
    v = [x for x in xs if x is not None]
    return round(statistics.median(v), 2) if v else None


def table(results: Sequence[dict[str, Any]]) -> str:
    hdr = (
        f"{'schedule':<20}{'seed':>6} {'ok':<4}{'fault s':>8}{'acked':>7}{'conv s':>8}"
        f"{'health s':>9}{'1-holder s':>11}{'overlap s':>10}{'in-grp s':>9}{'takeover':>9}"
        f"{'acts':>6}{'ooo':>5}{'minor':>6}{'fenced':>7}"
    )
    rows = [hdr, "-" * len(hdr)]

    def f(x: Any) -> str:
        return "-" if x is None else f"{x}"

    for r in results:
        le = r.get("lease", {})
        na = r.get("node_actions", {})
        rows.append(
            f"{r['schedule']:<20}{r['seed']:>6} {'yes' if r['ok'] else 'NO':<4}"
            f"{f(r.get('fault_s')):>8}{f(r.get('writes', {}).get('acked')):>7}"
            f"{f(r.get('heal_to_convergence_s')):>8}{f(r.get('heal_to_health_s')):>9}"
            f"{f(le.get('heal_to_one_holder_s')):>11}{f(le.get('overlap_s')):>10}"
            f"{f(le.get('in_group_overlap_s')):>9}{f(le.get('takeover_s')):>9}"
            f"{f(na.get('actions')):>6}{f(na.get('out_of_order')):>5}"
            f"{f(na.get('minority_actions')):>6}{f(na.get('jobs', {}).get('fenced')):>7}"
        )
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Partition suite for gossipmgr on real hosts (network namespaces) with "
        "real Serf. Needs root (creates namespaces, veths, bridges); cleans up on exit, "
        "Ctrl-C and SIGTERM."
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="3 hosts, 12 s faults, no 'long' or 'job-holder-isolated' schedule",
    )
    ap.add_argument(
        "--seed",
        type=int,
        default=1,
        help="seed of the random schedules "
        "(random schedule i uses seed+i); printed on failure for replay",
    )
    ap.add_argument("--random-count", type=int, default=2, help="how many random schedules")
    ap.add_argument(
        "--schedules", default="", help=f"comma list from: {', '.join(SCHEDULES)} (default: all)"
    )
    ap.add_argument("--hosts", type=int, default=0, help="instances (default 5, quick 3)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/partition.json")
    ap.add_argument("--keep", action="store_true", help="keep data dirs and logs")
    ap.add_argument(
        "--cleanup",
        action="store_true",
        help="remove namespaces/links left by dead runs, then exit",
    )
    a = ap.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    if a.cleanup:
        gone = cleanup_leftovers()
        print("removed: " + (", ".join(gone) if gone else "nothing"))
        return 0
    names = [x.strip() for x in a.schedules.split(",") if x.strip()] or [
        n for n in SCHEDULES if not (a.quick and n in NOT_QUICK)
    ]
    for n in names:
        if n not in SCHEDULES:
            ap.error(f"unknown schedule {n!r}; known: {', '.join(SCHEDULES)}")
    n_hosts = a.hosts or (3 if a.quick else 5)
    hosts = [f"h{i}" for i in range(1, n_hosts + 1)]
    plan: list[Schedule] = []
    for n in names:
        if n == "random":
            plan += [build(n, a.seed + i, hosts, a.quick) for i in range(a.random_count)]
        else:
            plan.append(build(n, a.seed, hosts, a.quick))
    install_signal_teardown()
    results: list[dict[str, Any]] = []
    t0 = time.monotonic()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", flush=True)

    c = NetnsCluster(n_hosts, 3, keep=a.keep)  # n3: the jobs' node (bench/partition_jobs.py)
    assert c.root is not None
    c.agent_args = ["--config", str(write_config(c.root))]
    log(f"run prefix {c.prefix}, data in {c.root}")
    try:
        c.setup()
        log(f"{n_hosts} instances + 3 nodes up")
        for s in plan:
            log(f"schedule {s.name} (seed {s.seed}): {len(s.steps)} steps")
            try:
                r = run_schedule(c, s, log)
            except HarnessError as exc:
                r = {"schedule": s.name, "seed": s.seed, "ok": False, "failures": [str(exc)]}
            results.append(r)
            if r["ok"]:
                log(
                    f"  ok: converged {r['heal_to_convergence_s']} s after heal, health "
                    f"{r['heal_to_health_s']} s, lease {r['lease']}"
                )
            else:
                log(f"  FAILED (seed {s.seed}): {r['failures']}")
                log(
                    f"  replay: python bench/partition.py --schedules {s.name} --seed {s.seed}"
                    + (" --random-count 1" if s.name == "random" else "")
                    + (" --quick" if a.quick else "")
                )
    finally:
        c.close()
        log("torn down")
    ok = [r for r in results if r.get("ok")]
    # Figures come from every schedule that measured them, passed or failed.
    got = [r for r in results if "lease" in r]
    summary = {
        "median_heal_to_convergence_s": median([r.get("heal_to_convergence_s") for r in got]),
        "median_heal_to_health_s": median([r.get("heal_to_health_s") for r in got]),
        "median_heal_to_one_holder_s": median([r["lease"]["heal_to_one_holder_s"] for r in got]),
        "median_overlap_s": median([r["lease"]["overlap_s"] for r in got]),
        "max_in_group_overlap_s": max(
            [r["lease"]["in_group_overlap_s"] for r in got], default=None
        ),
        "takeover_s": {
            r["schedule"]: r["lease"]["takeover_s"]
            for r in got
            if r["lease"]["takeover_s"] is not None
        },
        "node_actions_out_of_order": sum(
            r["node_actions"]["out_of_order"] for r in got if "node_actions" in r
        ),
        "node_actions_by_minority": sum(
            r["node_actions"]["minority_actions"] for r in got if "node_actions" in r
        ),
        "passed": len(ok),
        "failed": len(results) - len(ok),
    }
    print()
    print(table(results))
    print()
    print(json.dumps(summary, indent=1))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(
        json.dumps(
            {
                "machine": {
                    "python": platform.python_version(),
                    "kernel": platform.release(),
                    "cpus": __import__("os").cpu_count(),
                },
                "args": {"quick": a.quick, "seed": a.seed, "hosts": n_hosts, "schedules": names},
                "summary": summary,
                "results": results,
            },
            indent=1,
            default=str,
        )
        + "\n"
    )
    print(f"wrote {a.out}")
    return 0 if len(ok) == len(results) else 1


__all__ = [
    "Sampler",
    "Schedule",
    "Workload",
    "Write",
    "build",
    "main",
    "missing_writes",
    "run_schedule",
    "snapshot",
]

if __name__ == "__main__":
    sys.exit(main())
