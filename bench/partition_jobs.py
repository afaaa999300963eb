"""Jobs during partitions: the partition suite's job driver and its node-action checker.

A jobs schedule (``bench/partition.py``, ``Schedule.jobs``) runs real playbooks with real
ansible (``ansible_connection=local``) on one simulated node, ``n3``, whose "node" is a
directory, ``<cluster root>/nodes/<node>/``, on the machine's one filesystem: every side
of a partition reaches it (as a management network separate from the cut one would). The
agents run this directory's playbooks (``partition_playbooks/``): the ``gossipmgr_fence``
role first, as in the shipped playbooks, then each step of the action as docs/ansible.md
tells operators to write it (``step.yml``: a 1 s pause, ``gossipmgr_confirm``, then
``partition_action``, which appends one line to the node's action log ``actions.jsonl``
under the fence lock: ``{"t", "epoch", "holder", "job", "action", "step",
"node_epoch", "confirmed_at"}``; ``confirmed_at``: when that step's confirm said yes).

* :func:`start_first_job`: before the schedule's clock starts, a long job (12 confirmed
  steps, ~2-3 s apart on the 2-core machine) on the holder, and a wait for its first
  action on the node (ansible takes seconds to start on a loaded machine), so a job is
  acting when the partition starts.
* :class:`JobDriver`: from the schedule's start until the heal, one
  thread per instance asks *that* instance to act on the node every 1.5 s (update when the
  node is Allocated there, commission when Unallocated/Decommissioned), so both sides of a
  partition try to act on the same node. A request to a non-holder is forwarded to the
  holder of its side, or answered 503.
* :func:`check_actions` (pure): per node, actions applied out of epoch order (a line whose
  epoch is lower than an earlier line's: must be 0, it fails the schedule), each marked
  "in flight" when the node had recorded a newer epoch by then (the run passed the fence
  before the newer epoch arrived: the fence's documented limit); actions by a holder on
  a side without a majority while a side with a strict majority of the instances existed
  (reported; the goal is 0 once the majority rule lands); epochs under which two holders
  acted on one node.
* :func:`job_outcomes` (pure): each driven job's end, fenced failures with their reason.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.netns import ApiClient, HarnessError, NetnsCluster, node_name, wait_for

PLAYBOOKS = Path(__file__).resolve().parent / "partition_playbooks"
#: The simulated node the jobs act on: the cluster's third node (n1 is killed, n2 is the
#: workload's contended node).
JOB_NODE_HOST = "n3"
FIRST_JOB_STEPS = 12  # 12 confirmed steps (a pause, a confirm, an action): through the fault
JOB_STEPS = 3
JOB_PACE_S = 1.5
IDLE_TIMEOUT_S = 90.0
DETAIL = 10  # detail entries kept per figure


def write_config(root: Path) -> Path:
    """The agents' config file: this directory's playbooks, local hosts, and per node a
    fence directory and an action log under ``root/nodes/<node>/``."""
    nodes = root / "nodes"
    text = "\n".join(
        [
            f"playbook_dir = {json.dumps(str(PLAYBOOKS))}",
            "[ansible]",
            "timeout_s = 300.0",
            "[ansible.host_vars]",
            'ansible_connection = "local"',
            'ansible_python_interpreter = "{{ ansible_playbook_python }}"',
            f"partition_node_dir = {json.dumps(f'{nodes}/{{{{ inventory_hostname }}}}')}",
            f"gossipmgr_fence_dir = {json.dumps(f'{nodes}/{{{{ inventory_hostname }}}}/fence')}",
        ]
    )
    path = root / "agent.toml"
    path.write_text(text + "\n")
    return path


# --------------------------------------------------------------------------- the checker
@dataclass(frozen=True)
class Action:
    """One line of a node's action log; ``t`` in seconds from the schedule's start."""

    node: str
    t: float
    epoch: int
    holder: str
    job: str
    action: str
    step: int
    node_epoch: int | None
    #: when the step's gossipmgr_confirm said yes (seconds from the schedule's start; None:
    #: not recorded)
    confirmed_t: float | None = None


def parse_actions(node: str, text: str, wall0: float) -> list[Action]:
    """A node's ``actions.jsonl`` in log order; ``wall0`` is the wall-clock time of t=0."""
    out = []
    for raw in text.splitlines():
        if not raw.strip():
            continue
        d = json.loads(raw)
        out.append(
            Action(
                node,
                round(float(d["t"]) - wall0, 2),
                int(d["epoch"]),
                str(d["holder"]),
                str(d["job"]),
                str(d["action"]),
                int(d["step"]),
                None if d.get("node_epoch") is None else int(d["node_epoch"]),
                None
                if d.get("confirmed_at") is None
                else round(float(d["confirmed_at"]) - wall0, 2),
            )
        )
    return out


def groups_at(comps: Sequence[tuple[float, list[set[str]]]], t: float) -> list[set[str]]:
    """The connected groups of instances (as the harness wired them) at time ``t``."""
    return next((g for tc, g in reversed(comps) if tc <= t), comps[0][1])


def check_actions(
    actions: Sequence[Action],
    comps: Sequence[tuple[float, list[set[str]]]],
    n_instances: int,
) -> dict[str, Any]:
    """The node-action figures of a schedule (see the module docstring).

    ``actions`` in each node's log order; ``comps`` the ``(t, groups)`` timeline of the
    harness's wiring; ``n_instances`` the instances of the cluster (a crashed one counts)."""
    top: dict[str, int] = {}
    ooo: list[dict[str, Any]] = []
    minority: list[dict[str, Any]] = []
    holders: dict[tuple[str, int], set[str]] = {}
    for a in actions:
        seen = top.get(a.node, 0)
        if a.epoch < seen:
            ooo.append(
                {
                    **asdict(a),
                    "after_epoch": seen,
                    "in_flight": a.node_epoch is not None and a.node_epoch > a.epoch,
                }
            )
        top[a.node] = max(seen, a.epoch)
        holders.setdefault((a.node, a.epoch), set()).add(a.holder)
        groups = groups_at(comps, a.t)
        major = [g for g in groups if 2 * len(g) > n_instances]
        if major and a.holder not in major[0]:
            # confirmed while its holder was still on a majority side: the cut came in the
            # window between the confirm and the action (docs/ansible.md)
            then = [] if a.confirmed_t is None else groups_at(comps, a.confirmed_t)
            window = any(a.holder in g and 2 * len(g) > n_instances for g in then)
            minority.append({**asdict(a), "majority": sorted(major[0]), "in_window": window})
    two = [
        {"node": n, "epoch": e, "holders": sorted(hs)}
        for (n, e), hs in sorted(holders.items())
        if len(hs) > 1
    ]
    return {
        "actions": len(actions),
        "by_holder": {
            h: sum(1 for a in actions if a.holder == h) for h in sorted({a.holder for a in actions})
        },
        "jobs_acting": len({a.job for a in actions}),
        "out_of_order": len(ooo),
        "out_of_order_in_flight": sum(1 for x in ooo if x["in_flight"]),
        "out_of_order_detail": ooo[:DETAIL],
        "minority_actions": len(minority),
        "minority_in_window": sum(1 for x in minority if x["in_window"]),
        "minority_detail": minority[:DETAIL],
        "epochs_with_two_holders": two,
    }


@dataclass
class JobRequest:
    """One workflow request of the driver: HTTP status (0: no answer) and the job, if any."""

    t: float
    inst: str
    kind: str
    status: int
    job_id: str = ""
    epoch: int = 0
    runner: str = ""
    error: str = ""


def job_outcomes(
    records: Mapping[str, Mapping[str, Any]], requests: Sequence[JobRequest]
) -> dict[str, Any]:
    """How the driven jobs ended (``records``: job id -> record as GET /info/jobs lists
    it, read after the heal), with each fenced failure's reason, and the requests'
    answers by status."""
    ids = list(dict.fromkeys(r.job_id for r in requests if r.job_id))
    status: dict[str, int] = {}
    fenced: list[dict[str, Any]] = []
    other: list[dict[str, Any]] = []
    for i in ids:
        rec = records.get(i)
        st = "missing" if rec is None else str(rec.get("status"))
        status[st] = status.get(st, 0) + 1
        if rec is None or st == "Complete":
            continue
        err = str(rec.get("error", ""))
        entry = {"id": i, "runner": rec.get("runner"), "epoch": rec.get("epoch"), "error": err}
        (fenced if "fenced" in err else other).append(entry)
    answers: dict[str, int] = {}
    for r in requests:
        answers[str(r.status)] = answers.get(str(r.status), 0) + 1
    return {
        "accepted": len(ids),
        "accepted_by": {
            inst: sum(1 for r in requests if r.job_id and r.inst == inst)
            for inst in sorted({r.inst for r in requests})
        },
        "answers": answers,
        "ended": status,
        "fenced": len(fenced),
        "fenced_detail": fenced[:DETAIL],
        "failed_otherwise": other[:DETAIL],
    }


# --------------------------------------------------------------------------- the driver
def _job_kind(cl: ApiClient, node: str) -> str | None:
    """update, commission, or None (a job holds the node) from ``node``'s status there."""
    st, rec = cl.request("GET", f"/info/node/{node}")
    if st != 200:
        return None
    status = rec["inventory_state"]["status"]
    if status == "Allocated":
        return "update"
    if status in ("Unallocated", "Decommissioned"):
        return "commission"
    return None


def _post_job(cl: ApiClient, inst: str, node: str, steps: int, t: float) -> JobRequest | None:
    kind = _job_kind(cl, node)
    if kind is None:
        return None
    body: dict[str, Any] = {
        "nodes": [node],
        "host_group": "service-master",
        "extra_vars": json.dumps({"partition_steps": steps}),
    }
    try:
        st, ans = cl.request("POST", f"/{kind}/nodes", body)
    except Exception:  # http.client errors: the job may or may not have started
        return JobRequest(t, inst, kind, 0)
    r = JobRequest(t, inst, kind, st)
    if st == 200 and isinstance(ans, dict):
        r.job_id, r.epoch, r.runner = str(ans["id"]), int(ans["epoch"]), str(ans["runner"])
    elif isinstance(ans, dict):
        r.error = str(ans.get("error", ""))[:200]
    return r


def action_log(c: NetnsCluster, node: str) -> Path:
    assert c.root is not None
    return c.root / "nodes" / node / "actions.jsonl"


@dataclass
class FirstJob:
    """The job started by :func:`start_first_job`, and where the node's action log stood
    before it (the log is the run's: earlier schedules' lines are not this schedule's)."""

    request: JobRequest
    log_offset: int


def start_first_job(c: NetnsCluster, holder: str, timeout: float = 90.0) -> FirstJob:
    """Start the long job on ``holder`` and return once its first action is on the node.
    Raises HarnessError if it is refused or does not act in time."""
    node = node_name(c.nodes[JOB_NODE_HOST])
    path = action_log(c, node)
    offset = path.stat().st_size if path.exists() else 0
    cl = c.client(holder, timeout=10.0)
    last: list[Any] = []

    def accepted() -> JobRequest | None:
        r = _post_job(cl, holder, node, FIRST_JOB_STEPS, 0.0)
        if r is None:  # a job holds the node, or the holder's record of it is not settled
            last[:] = [cl.request("GET", f"/info/node/{node}")]
            return None
        last[:] = [r]
        return r if r.status == 200 else None

    try:
        r = wait_for(accepted, 60.0, f"{holder} to accept a job on {node}", 1.0)
    except HarnessError as exc:
        raise HarnessError(f"the pre-fault job was refused: {exc}; last answer: {last}") from None
    finally:
        cl.close()
    assert r is not None
    wait_for(
        lambda: path.exists() and f'"job": "{r.job_id}"' in path.read_text(),
        timeout,
        f"the first action of job {r.job_id} on {node}",
        0.2,
    )
    return FirstJob(r, offset)


@dataclass
class JobDriver:
    """Asks every instance to act on the node until :meth:`stop` (``first``: the job
    started by :func:`start_first_job`). Owns its threads (joined by ``stop``) and their
    clients."""

    c: NetnsCluster
    holder: str
    t_base: float
    first: FirstJob
    node: str = ""
    requests: list[JobRequest] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.node = self.node or node_name(self.c.nodes[JOB_NODE_HOST])
        #: wall-clock time of t=0 (the action log is stamped with time.time()).
        self.wall0 = time.time() - (time.monotonic() - self.t_base)
        self.first.request.t = round(-self.now(), 2)  # started before t=0
        self.requests.append(self.first.request)

    def now(self) -> float:
        return time.monotonic() - self.t_base

    def start(self) -> None:
        for inst in self.c.instances:
            t = threading.Thread(target=self._run, args=(inst,), daemon=True)
            self._threads.append(t)
            t.start()

    def stop(self) -> list[JobRequest]:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        return self.requests

    def _run(self, inst: str) -> None:
        cl = self.c.client(inst, timeout=5.0)
        try:
            while not self._stop.wait(JOB_PACE_S):
                if not self.c.instances[inst].alive:
                    continue
                try:
                    r = _post_job(cl, inst, self.node, JOB_STEPS, self.now())
                except Exception:  # the status read failed: the instance is cut or busy
                    continue
                if r is not None:
                    with self._lock:
                        self.requests.append(r)
        finally:
            cl.close()

    # ------------------------------------------------------------------ after the heal
    def wait_idle(self, timeout: float = IDLE_TIMEOUT_S) -> dict[str, Any]:
        """Waits until no instance lists an active job; returns the job records by id."""
        clients = {n: self.c.client(n) for n in self.c.instances if self.c.instances[n].alive}
        try:

            def idle() -> dict[str, Any]:  # empty (falsy) while a job is active
                recs: dict[str, Any] = {}
                for cl in clients.values():
                    for j in cl.get("/info/jobs")["jobs"]:
                        if j["status"] in ("Queued", "Running"):
                            return {}
                        recs[j["id"]] = j
                return recs

            return wait_for(idle, timeout, "every driven job to end", 0.5)
        finally:
            for cl in clients.values():
                cl.close()

    def actions(self) -> list[Action]:
        path = action_log(self.c, self.node)
        with open(path, "rb") as f:  # this schedule's lines only
            f.seek(self.first.log_offset)
            text = f.read().decode()
        return parse_actions(self.node, text, self.wall0)

    def finish(
        self, comps: Sequence[tuple[float, list[set[str]]]], t_fault: float, t_heal: float
    ) -> tuple[dict[str, Any], list[str]]:
        """The schedule's job figures and its failures (call after the heal)."""
        failures: list[str] = []
        try:
            records = self.wait_idle()
        except HarnessError as exc:
            records, failures = {}, [str(exc)]
        acts = self.actions()
        out = check_actions(acts, comps, len(self.c.instances))
        mine = [a.t for a in acts if a.job == self.first.request.job_id]
        out["first_job_spans_fault"] = bool(mine) and min(mine) < t_fault < max(mine)
        out["jobs"] = job_outcomes(records, self.requests)
        out["requests"] = [
            (r.t, r.inst, r.kind, r.status, r.job_id or r.error) for r in self.requests
        ]
        out["actions_during_fault"] = sum(1 for a in acts if t_fault <= a.t < t_heal)
        if out["out_of_order"]:
            failures.append(
                f"{out['out_of_order']} node action(s) out of epoch order: "
                f"{out['out_of_order_detail'][:2]}"
            )
        if not acts:
            failures.append(f"no action recorded on {self.node} (the jobs did not run)")
        return out, failures


__all__ = [
    "Action",
    "FirstJob",
    "JobDriver",
    "JobRequest",
    "check_actions",
    "groups_at",
    "job_outcomes",
    "parse_actions",
    "start_first_job",
    "write_config",
]
