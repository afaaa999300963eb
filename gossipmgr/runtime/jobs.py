"""Jobs: clusterm's workflows run on the lease holder, replicated and fenced.

Where jobs run. Only the lease holder accepts a workflow request and runs its job; the API
layer forwards a request that reaches another instance to the holder over HTTP, and every
request method here raises :class:`~gossipmgr.errors.Unavailable` ("not the lease holder;
holder is <name>") when called elsewhere. Requests are serialised by one ``trio.Lock``, so
two concurrent requests cannot both pass the one-active-job check.

A request's life::

    parse extra_vars (BadRequest)          nothing written yet
    lock; holder? (Unavailable)
    active job? (Conflict)
    checks (CheckFailed) + transitions (Conflict), computed as ONE delta:
        node statuses -> ``during``, host-groups, job record {status: Running, epoch}
    commit (durable when it returns); start the run in our nursery; answer the request

A rejected request writes nothing (clusterm's bug: its rejected requests became "last" jobs).

The job record (``("j", id)``, epoch-fenced, see ``gossipmgr.core.state``)::

    id          "<ms:013>-<counter:06>-<instance>": sorts by creation time
    desc, task  clusterm's fields; task is the workflow ("commission", ...)
    nodes       node names (discover: [] and ``addrs``)
    status      Queued -> Running -> Complete | Errored | Cancelled (JOB_TRANSITIONS)
    error       "" or why it failed ("job was cancelled" for a cancel)
    epoch       the lease epoch it was started under; every write of it carries it
    runner      the instance that runs it; its full log is work_dir/jobs/<id>.log there
    created_ms, started_ms, ended_ms
    log_count   lines logged so far; log_tail: the last LOG_TAIL_LINES of them, each cut
                to LOG_LINE_CHARS (replicated at most every LOG_FLUSH_S while running)

Fencing at the node. Every playbook run of a job carries ``gossipmgr_epoch`` (the job's
epoch), ``gossipmgr_holder`` (this instance) and ``gossipmgr_job`` as extra-vars, set after
every client layer; the shipped ``gossipmgr_fence`` role refuses the run on a node where a
newer epoch already acted, and the job takes its failure path with the fence's message
(docs/ansible.md).

Fencing. Before every write of a run (log tail, final statuses) the run checks, inside the
commit's ``make`` (so nothing can change between the check and the write),
``check_fence(lease, job_epoch, me)``; a watcher task does the same on every replica change
and, when the lease moved on, kills the run (trio cancellation: ansible's whole process
tree is stopped) without running any further playbook. Refused writes are counted in
``counters["fenced"]``. Even a write that slipped through would lose on every replica: job
and inventory records merge epoch-first.

Orphans. While this instance holds the lease, ``run`` scans for jobs still Queued/Running
that it is not running itself (their runner lost the lease, crashed, or restarted) and ends
them as Errored, moving their nodes along the workflow's failure path, in one commit under
its own epoch. Nothing stays in Provisioning forever.

Cancel (clusterm issue #63): sets the run's cancel event; the ansible bridge kills the tree
and runs the workflow's cancel path; the job ends Cancelled with "job was cancelled" and
its nodes take the failure path. (clusterm's contract said Errored; a distinct status lets a
reader tell a cancel from a failure, and the error text is kept.)

Monitoring events (Serf health, POST /monitor/event, takeover reconciliation) are applied
here too, by the holder only, as pure deltas from :mod:`gossipmgr.core.inventory`. With
``reconfigure_on_reappear`` an Allocated node that comes back after it disappeared gets a
"reconfigure" job (configure playbook, Maintenance -> Allocated | Unallocated) when no job
is active; otherwise it is skipped with a log line (clusterm issue #123).

Ownership: the JobManager owns its nursery (opened by :meth:`run`), every ansible run and
log file under ``work_dir``; the caller owns the Replica and its lifetime. When ``run`` is
cancelled, a running job's process tree is killed and its record is left Running, for the
next holder to end as an orphan.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import trio

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import MAX_COUNTER
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.lease import check_fence
from gossipmgr.core.state import (
    ClusterState,
    combine,
    host_group_key,
    job_key,
    node_var_key,
)
from gossipmgr.errors import (
    BadRequest,
    Conflict,
    JobError,
    NotFound,
    StaleEpoch,
    StoreError,
    Unavailable,
    ValueTooLarge,
)
from gossipmgr.runtime.ansible import (
    CANCELLED_ERROR,
    AnsibleSettings,
    Host,
    WorkflowResult,
    check_client_var,
    parse_extra_vars,
    run_workflow,
)
from gossipmgr.runtime.replica import Replica, check_writable

log = logging.getLogger("gossipmgr.jobs")

# --------------------------------------------------------------------------- job statuses

QUEUED: Final = "Queued"
RUNNING: Final = "Running"
COMPLETE: Final = "Complete"
ERRORED: Final = "Errored"
CANCELLED: Final = "Cancelled"

#: The job status machine. gossipmgr writes a record Running in the same commit that
#: accepts it (a request answers only once its job is launched); Queued is kept in the
#: vocabulary for clusterm's readers and is treated as active wherever it is seen.
JOB_TRANSITIONS: Final[Mapping[str, frozenset[str]]] = {
    QUEUED: frozenset({RUNNING, ERRORED, CANCELLED}),
    RUNNING: frozenset({COMPLETE, ERRORED, CANCELLED}),
    COMPLETE: frozenset(),
    ERRORED: frozenset(),
    CANCELLED: frozenset(),
}
ACTIVE: Final = frozenset({QUEUED, RUNNING})

# --------------------------------------------------------------------------- limits

#: Lines of a job's log kept in its replicated record: enough for `job get last` to show
#: why it failed, small enough that a record stays one datagram-sized entry.
LOG_TAIL_LINES: Final = 20
LOG_LINE_CHARS: Final = 200
#: Characters of a job's error text kept in its record (the whole text is in its log).
ERROR_CHARS: Final = 1_000
#: Log-tail writes to the replicated record: at most one per second per running job.
LOG_FLUSH_S: Final = 1.0
#: Job records kept (older ones are removed with tombstones, with their local files).
HISTORY: Final = 100
#: Lines GET /info/job answers with from the runner's full log (the tail of it).
INFO_LOG_LINES: Final = 10_000
#: How often the holder re-scans for orphans without a replica change (a lease can expire
#: or be renewed into our hands with no record changing).
ORPHAN_SCAN_S: Final = 1.0

_ID_RE: Final = re.compile(r"[0-9]{13}-[0-9]{6}-[A-Za-z0-9_.-]+")
_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_.-]")


def job_status_allowed(a: str, b: str) -> bool:
    return a == b or b in JOB_TRANSITIONS.get(a, frozenset())


def make_job_id(ms: int, counter: int, instance: str) -> str:
    """``<ms:013>-<counter:06>-<instance>``: sorts by creation time, unique per instance."""
    return f"{ms:013d}-{counter % 1_000_000:06d}-{_UNSAFE.sub('_', instance) or '_'}"


def valid_job_id(job_id: str) -> bool:
    return isinstance(job_id, str) and _ID_RE.fullmatch(job_id) is not None


def job_info(record: Mapping[str, Any], logs: Sequence[str] | None = None) -> dict[str, Any]:
    """clusterm's job answer ``{desc, task, status, error, logs}`` plus gossipmgr's fields."""
    out = dict(record)
    out["logs"] = list(logs) if logs is not None else list(record.get("log_tail", []))
    return out


def _trim(line: str, limit: int = LOG_LINE_CHARS) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _encodable(text: str) -> str:
    """``text`` with any lone UTF-16 surrogate (ansible output of bytes that are not UTF-8
    arrives so) replaced: neither the log file nor msgpack can encode one."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def check_record_room(job_id: str, record: Mapping[str, Any], ts: Timestamp) -> None:
    """Refuse a new job record that leaves no room for what its run adds later: the log
    tail (LOG_TAIL_LINES of LOG_LINE_CHARS), the error text (ERROR_CHARS), the end time and
    a later epoch. Those later writes of the record cannot be refused; a record accepted
    here always fits them (``codec.MAX_ENTRY_BYTES``, ``MAX_VALUE_ITEMS``).

    Raises ValueTooLarge (413) or ValueRefused (422) naming the limit."""
    wide = "\U0010ffff"  # 4 bytes in UTF-8: the largest a character encodes to
    worst = {
        **record,
        "status": wide * 16,
        "error": wide * ERROR_CHARS,
        "epoch": MAX_COUNTER,
        "ended_ms": MAX_COUNTER,
        "log_count": MAX_COUNTER,
        "log_tail": [wide * LOG_LINE_CHARS] * LOG_TAIL_LINES,
    }
    try:
        check_writable(LWWMap({job_key(job_id): Entry(ts, worst)}))
    except ValueTooLarge as exc:
        raise ValueTooLarge(
            f"the job record leaves no room for its log tail and result ({exc}; counted "
            f"with {LOG_TAIL_LINES} log lines of {LOG_LINE_CHARS} and an error of "
            f"{ERROR_CHARS} characters)"
        ) from None


@dataclass
class _Run:
    """One job this instance runs: its cancel event, log file and live followers."""

    job_id: str
    kind: str
    epoch: int
    path: Path
    cancel: trio.Event = field(default_factory=trio.Event)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    count: int = 0
    dirty: bool = False
    fenced: bool = False
    done: bool = False
    file: IO[str] | None = None
    changed: trio.Event = field(default_factory=trio.Event)

    def line(self, text: str) -> None:
        text = _encodable(text)
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()
        self.tail.append(_trim(text))
        self.count += 1
        self.dirty = True
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


class JobManager:
    """Runs clusterm's workflows as replicated, fenced jobs on the lease holder.

    ``settings`` is called at each job start (so a changed ansible config reaches the next
    run: clusterm's bug was that it never did). ``work_dir`` holds ``jobs/<id>.log`` and
    ``runs/<id>/`` (ansible-runner's private dirs); it is created when needed.
    """

    def __init__(
        self,
        replica: Replica,
        settings: Callable[[], AnsibleSettings],
        work_dir: Path,
        *,
        reconfigure_on_reappear: bool = False,
        log_flush_s: float = LOG_FLUSH_S,
    ) -> None:
        self.replica = replica
        self.settings = settings
        self.work_dir = Path(work_dir)
        self.reconfigure_on_reappear = reconfigure_on_reappear
        self.log_flush_s = log_flush_s
        self.counters: dict[str, int] = {
            "jobs_started": 0,
            "jobs_ended": 0,
            "fenced": 0,  # writes refused because the lease moved on
            "fenced_runs": 0,  # runs stopped because the lease moved on
            "orphans": 0,
            "reappear_jobs": 0,
            "reappear_skipped": 0,
        }
        self._lock = trio.Lock()
        self._nursery: trio.Nursery | None = None
        self._run: _Run | None = None
        self._counter = 0

    # ------------------------------------------------------------------ service
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background service: runs jobs and, while holder, ends orphaned jobs."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                while True:
                    if self.replica.is_holder():
                        try:
                            await self.reconcile_orphans()
                        except StoreError as exc:  # disk trouble: retry at the next wake
                            log.error(
                                "%s: orphan reconciliation failed: %s", self.replica.name, exc
                            )
                    with trio.move_on_after(ORPHAN_SCAN_S):
                        await self.replica.wait_change()
            finally:
                self._nursery = None

    @property
    def running_job_id(self) -> str | None:
        """The id of the job this instance is running now (its process tree may be alive)."""
        return self._run.job_id if self._run is not None else None

    # ------------------------------------------------------------------ helpers
    def _holder_epoch(self) -> int:
        """The lease epoch if we hold it; raises Unavailable otherwise."""
        lease = self.replica.lease()
        if lease is None or not self.replica.is_holder():
            who = lease.holder if lease is not None else "none"
            raise Unavailable(f"not the lease holder; holder is {who}")
        return lease.epoch

    def _fence(self, epoch: int, what: str) -> None:
        try:
            check_fence(self.replica.lease(), epoch, self.replica.name, what)
        except StaleEpoch:
            self.counters["fenced"] += 1
            raise

    def active_record(self) -> dict[str, Any] | None:
        """The active (Queued/Running) job record, if any."""
        active = [j for j in self.replica.state.jobs().values() if j.get("status") in ACTIVE]
        return max(active, key=lambda j: str(j.get("id", ""))) if active else None

    def _check_idle(self) -> None:
        rec = self.active_record()
        if rec is not None:
            raise Conflict(
                "there is already an active job, please try in sometime. "
                f"Job: [{rec.get('desc', rec.get('id', ''))}]"
            )
        if self._run is not None:  # our own run whose record was overtaken: still busy
            raise Conflict(
                f"there is already an active job, please try in sometime. Job: [{self._run.job_id}]"
            )

    def _new_id(self) -> str:
        self._counter += 1
        return make_job_id(self.replica.now_ms(), self._counter, self.replica.name)

    def _history_trim(self, state: ClusterState, ts: Timestamp) -> tuple[LWWMap, list[str]]:
        ids = sorted(state.jobs())
        old = ids[: max(0, len(ids) - (HISTORY - 1))]
        return combine(*(state.d_remove(job_key(i), ts) for i in old)), old

    def _hosts(self, state: ClusterState, names: Sequence[str], group: str = "") -> list[Host]:
        hosts = []
        for n in names:
            rec = state.node(n)
            if rec is None:
                raise JobError(f"node {n} vanished from the inventory")
            hosts.append(
                Host(
                    alias=n,
                    addr=inv.addr_of(rec),
                    name=n,
                    group=group or inv.host_group_of(rec),
                    vars=dict(rec.vars),
                )
            )
        return hosts

    # ------------------------------------------------------------------ requests
    async def commission(
        self, nodes: Sequence[str], host_group: str, extra_vars: object = None
    ) -> dict[str, Any]:
        """Commission nodes. Raises BadRequest, Unavailable, Conflict, CheckFailed."""
        return await self._workflow("commission", nodes, host_group, extra_vars)

    async def decommission(self, nodes: Sequence[str], extra_vars: object = None) -> dict[str, Any]:
        """Decommission nodes. Raises BadRequest, Unavailable, Conflict, CheckFailed."""
        return await self._workflow("decommission", nodes, "", extra_vars)

    async def update(
        self, nodes: Sequence[str], host_group: str = "", extra_vars: object = None
    ) -> dict[str, Any]:
        """Update nodes (optionally to a new host-group). Raises like :meth:`commission`."""
        return await self._workflow("update", nodes, host_group, extra_vars)

    async def discover(self, addrs: Sequence[str], extra_vars: object = None) -> dict[str, Any]:
        """Run the configure playbook on new addresses (group cluster-node, node1..N).

        Raises BadRequest, Unavailable, Conflict, CheckFailed (address already a node's)."""
        request_vars = parse_extra_vars(extra_vars)
        async with self._lock:
            epoch = self._holder_epoch()
            self._check_idle()
            addr_list = inv.check_discover(self.replica.state, list(addrs))
            hosts = [Host(alias=a, addr=a, name="", group="cluster-node") for a in addr_list]
            desc = f"discover addrs {inv.go_list(addr_list)}"
            return await self._launch(
                "discover", desc, [], epoch, hosts, request_vars, None, {"addrs": addr_list}
            )

    async def _workflow(
        self, kind: str, nodes: Sequence[str], host_group: str, extra_vars: object
    ) -> dict[str, Any]:
        if isinstance(nodes, str) or not isinstance(nodes, Sequence):
            raise BadRequest(f'"nodes" must be a list of node names, got {nodes!r}')
        if not isinstance(host_group, str):
            raise BadRequest(f'"host_group" must be a string, got {host_group!r}')
        request_vars = parse_extra_vars(extra_vars)
        async with self._lock:
            epoch = self._holder_epoch()
            self._check_idle()
            state = self.replica.state
            names = inv.check_workflow(state, kind, list(nodes), host_group)
            path = inv.STATUS_PATHS[kind]
            assert path is not None
            # Checked here so that a refused transition is reported even when the service
            # is down; _launch moves the statuses for real in its one commit.
            inv.check_moves(state, names, path.during)
            hosts = self._hosts(state, names, host_group)
            desc = f"{kind} nodes {inv.go_list(names)}"
            if host_group:
                desc += f" host-group {host_group}"
            extra = {"host_group": host_group} if host_group else {}
            return await self._launch(
                kind, desc, names, epoch, hosts, request_vars, host_group, extra
            )

    async def _launch(
        self,
        kind: str,
        desc: str,
        names: list[str],
        epoch: int,
        hosts: list[Host],
        request_vars: Mapping[str, Any],
        host_group: str | None,
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Commit statuses + job record in one delta, then start the run. Lock held.

        The status moves are computed inside ``make``: a refused transition (Conflict)
        raises there, before anything is written, so a partial move is never committed."""
        nursery = self._nursery
        if nursery is None:
            raise Unavailable("the job manager is not running")
        settings = self.settings()  # read once per job: a config change reaches the next one
        job_id = self._new_id()
        me = self.replica.name
        dropped: list[str] = []
        status_path = inv.STATUS_PATHS.get(kind)

        def make(state: ClusterState, ts: Timestamp) -> LWWMap:
            self._fence(epoch, f"start of job {job_id}")
            parts: list[LWWMap] = []
            if status_path is not None:
                parts.append(inv.move_statuses(state, names, status_path.during, epoch, ts))
            if host_group:
                parts += [state.d_set(host_group_key(n), host_group, ts) for n in names]
            trim, old = self._history_trim(state, ts)
            dropped[:] = old
            parts.append(trim)
            now = ts.ms
            record = {
                "id": job_id,
                "desc": desc,
                "task": kind,
                "workflow": kind,
                "nodes": list(names),
                **extra,
                "status": RUNNING,
                "error": "",
                "epoch": epoch,
                "runner": me,
                "created_ms": now,
                "started_ms": now,
                "ended_ms": 0,
                "log_count": 0,
                "log_tail": [],
            }
            check_record_room(job_id, record, ts)
            parts.append(state.d_set(job_key(job_id), record, ts))
            return combine(*parts)

        run = _Run(job_id, kind, epoch, self.log_path(job_id))
        self._run = run
        try:
            await self.replica.commit(make)
        except BaseException:
            self._run = None
            raise
        self.counters["jobs_started"] += 1
        if dropped:
            try:
                await trio.to_thread.run_sync(self._remove_files, dropped)
            except OSError as exc:  # the job is accepted; stale files are only litter
                log.warning("%s: could not remove files of old jobs: %s", me, exc)
        globals_ = self.replica.state.globals()
        nursery.start_soon(self._execute, run, hosts, settings, globals_, dict(request_vars))
        log.info("%s: job %s started (%s), epoch %d", me, job_id, desc, epoch)
        rec = self.replica.state.job(job_id)
        return job_info(rec or {"id": job_id})

    def _remove_files(self, job_ids: Sequence[str]) -> None:
        for j in job_ids:
            self.log_path(j).unlink(missing_ok=True)
            shutil.rmtree(self.work_dir / "runs" / j, ignore_errors=True)

    # ------------------------------------------------------------------ running
    async def _execute(
        self,
        run: _Run,
        hosts: list[Host],
        settings: AnsibleSettings,
        globals_: Mapping[str, Any],
        request_vars: Mapping[str, Any],
    ) -> None:
        me = self.replica.name
        result: WorkflowResult | None = None
        try:
            try:
                run.path.parent.mkdir(parents=True, exist_ok=True)
                run.file = open(run.path, "a", encoding="utf-8")  # closed in the finally below
            except OSError as exc:  # run anyway: the replicated tail still shows the log
                log.error("%s: job %s: cannot write its log file: %s", me, run.job_id, exc)
            run.line(f"gossipmgr: job {run.job_id} ({run.kind}) run by {me}, epoch {run.epoch}")
            kind = "commission" if run.kind == "reconfigure" else run.kind
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_fence, run, nursery.cancel_scope)
                nursery.start_soon(self._flush_tail, run)
                try:
                    result = await run_workflow(
                        kind,
                        hosts,
                        settings,
                        globals_=globals_,
                        request_vars=request_vars,
                        log=run.line,
                        cancel=run.cancel,
                        work_root=self.work_dir / "runs" / run.job_id,
                        # the fence's inputs, set after every client layer (docs/ansible.md)
                        product_vars={
                            "gossipmgr_epoch": run.epoch,
                            "gossipmgr_holder": me,
                            "gossipmgr_job": run.job_id,
                        },
                    )
                except JobError as exc:
                    result = WorkflowResult(False, False, str(exc), [])
                except Exception as exc:  # a bug must end the job, not leave it Running
                    log.exception("%s: job %s crashed", me, run.job_id)
                    result = WorkflowResult(False, False, f"internal error: {exc!r}", [])
                if run.kind == "discover" and result.ok and settings.discover_join_timeout_s > 0:
                    result = await self._await_join(
                        run, [h.addr for h in hosts], settings.discover_join_timeout_s, result
                    )
                nursery.cancel_scope.cancel()
            if run.fenced or result is None:
                self.counters["fenced_runs"] += 1
                run.line(f"gossipmgr: job {run.job_id} stopped: the lease moved on (fenced)")
                log.warning(
                    "%s: job %s stopped: lease moved past epoch %d", me, run.job_id, run.epoch
                )
                return
            await self._finish(run, result)
        finally:
            run.done = True
            if run.file is not None:
                run.file.close()
            run.wake()
            if self._run is run:
                self._run = None

    async def _await_join(
        self, run: _Run, addrs: Sequence[str], timeout_s: float, result: WorkflowResult
    ) -> WorkflowResult:
        """clusterm issue #157: a discover job ended when its playbook did, even when the
        node never joined Serf. Wait (bounded) until every address is a Discovered node's
        management address; a cancel ends the wait (the job ends Cancelled)."""

        def missing() -> list[str]:
            seen = {
                inv.addr_of(r)
                for r in self.replica.state.nodes()
                if inv.state_of(r) == inv.DISCOVERED
            }
            return [a for a in addrs if a not in seen]

        run.line(
            f"gossipmgr: waiting up to {timeout_s:g} s for {inv.go_list(addrs)} to join the "
            "Serf cluster"
        )
        deadline = trio.current_time() + timeout_s
        while left := missing():
            if run.cancel.is_set():
                return WorkflowResult(False, True, CANCELLED_ERROR, result.steps)
            if trio.current_time() >= deadline:
                error = (
                    f"node(s) {inv.go_list(left)} did not join the Serf cluster within "
                    f"{timeout_s:g} s of the discover playbook's end: check each node's "
                    "serf agent (running, its -join/-discover settings and encryption key, "
                    "tags NodeLabel, NodeSerial and NodeAddr=<that address>)"
                )
                run.line(f"gossipmgr: {error}")
                return WorkflowResult(False, False, error, result.steps)
            with trio.move_on_at(deadline):
                async with trio.open_nursery() as wait:
                    # whichever comes first: a replica change or a cancel
                    async def on_cancel() -> None:
                        await run.cancel.wait()
                        wait.cancel_scope.cancel()

                    wait.start_soon(on_cancel)
                    await self.replica.wait_change()
                    wait.cancel_scope.cancel()
        run.line(f"gossipmgr: {inv.go_list(addrs)} joined the Serf cluster")
        return result

    async def _watch_fence(self, run: _Run, scope: trio.CancelScope) -> None:
        while True:
            try:
                check_fence(self.replica.lease(), run.epoch, self.replica.name)
            except StaleEpoch as exc:
                run.fenced = True
                log.warning("%s: job %s: %s; stopping the run", self.replica.name, run.job_id, exc)
                scope.cancel()
                return
            await self.replica.wait_change()

    async def _flush_tail(self, run: _Run) -> None:
        while True:
            await trio.sleep(self.log_flush_s)
            if run.dirty:
                run.dirty = False
                try:
                    await self._write_job(run, {})
                except StaleEpoch:
                    pass  # the watcher stops the run; this write is simply not made
                except StoreError as exc:  # the next flush or the final write carries it
                    log.warning(
                        "%s: job %s: log tail not saved: %s", self.replica.name, run.job_id, exc
                    )

    async def _write_job(
        self, run: _Run, fields: Mapping[str, Any], extra: Callable[..., LWWMap] | None = None
    ) -> None:
        tail, count = list(run.tail), run.count

        def make(state: ClusterState, ts: Timestamp) -> LWWMap:
            self._fence(run.epoch, f"write of job {run.job_id}")
            rec = state.job(run.job_id)
            if rec is None:
                return LWWMap()  # trimmed from history meanwhile
            rec.update(fields, log_tail=tail, log_count=count, epoch=run.epoch)
            parts = [state.d_set(job_key(run.job_id), rec, ts)]
            if extra is not None:
                parts.append(extra(state, ts))
            return combine(*parts)

        await self.replica.commit(make)

    async def _finish(self, run: _Run, result: WorkflowResult) -> None:
        me = self.replica.name
        if result.ok:
            status, error = COMPLETE, ""
        elif result.cancelled:
            status, error = CANCELLED, CANCELLED_ERROR
        else:
            status, error = ERRORED, result.error or "job failed"
        run.line(f"gossipmgr: job {run.job_id} ended {status}{': ' + error if error else ''}")
        rec = self.replica.state.job(run.job_id) or {}
        names = [str(n) for n in rec.get("nodes", [])]
        path = inv.STATUS_PATHS.get(run.kind)
        skipped: list[str] = []

        def statuses(state: ClusterState, ts: Timestamp) -> LWWMap:
            if path is None:
                return LWWMap()
            to = path.success if result.ok else path.failure
            delta, skip = inv.finish_statuses(state, names, path.during, to, run.epoch, ts)
            skipped[:] = skip
            return delta

        error = _trim(_encodable(error), ERROR_CHARS)  # the whole text is in the log
        fields = {"status": status, "error": error, "ended_ms": self.replica.now_ms()}
        try:
            await self._write_job(run, fields, statuses)
        except StaleEpoch as exc:
            log.warning("%s: job %s: final write refused: %s", me, run.job_id, exc)
            return
        except StoreError as exc:
            # The record stays Running; once this run is gone the orphan scan ends it.
            log.error("%s: job %s: final write failed: %s", me, run.job_id, exc)
            return
        self.counters["jobs_ended"] += 1
        if skipped:
            log.warning(
                "%s: job %s: nodes %s had left %s; status left as is",
                me,
                run.job_id,
                skipped,
                path.during if path else "",
            )
        log.info("%s: job %s ended %s %s", me, run.job_id, status, error)

    # ------------------------------------------------------------------ cancel / orphans
    async def cancel(self) -> dict[str, Any]:
        """Cancel the active job (clusterm issue #63). Returns its record (still Running:
        the cancel path runs, then the job ends Cancelled). Raises Unavailable, and
        Conflict ``job is not Running`` when there is no active job."""
        async with self._lock:
            self._holder_epoch()
            run = self._run
            if run is not None and not run.done:
                run.cancel.set()
                run.line(f"gossipmgr: job {run.job_id}: cancel requested")
                return job_info(self.replica.state.job(run.job_id) or {"id": run.job_id})
            rec = self.active_record()
            if rec is None:
                raise Conflict("job is not Running")
        # Active but not ours: an orphan; end it now rather than at the next scan.
        await self.reconcile_orphans()
        return job_info(self.replica.state.job(str(rec.get("id"))) or rec)

    async def reconcile_orphans(self) -> list[str]:
        """End every Queued/Running job this holder is not running. Returns their ids.

        Each is marked Errored with the reason, and its nodes still in the workflow's
        ``during`` status take its failure path, in one commit under our epoch."""
        async with self._lock:
            try:
                epoch = self._holder_epoch()
            except Unavailable:
                return []
            mine = self._run.job_id if self._run is not None else None
            orphans = [
                j
                for j in self.replica.state.jobs().values()
                if j.get("status") in ACTIVE and j.get("id") != mine
            ]
            if not orphans:
                return []
            me = self.replica.name

            def make(state: ClusterState, ts: Timestamp) -> LWWMap:
                self._fence(epoch, "orphan reconciliation")
                parts: list[LWWMap] = []
                for j in orphans:
                    jid = str(j.get("id"))
                    cur = state.job(jid)
                    if cur is None or cur.get("status") not in ACTIVE:
                        continue
                    runner, jep = cur.get("runner"), cur.get("epoch")
                    if runner != me or jep != epoch:
                        why = (
                            f"runner {runner} lost the lease (epoch {jep}) "
                            "while the job was running"
                        )
                    else:
                        why = f"runner {runner} stopped (epoch {jep}) while the job was running"
                    cur.update(status=ERRORED, error=why, ended_ms=ts.ms, epoch=epoch)
                    parts.append(state.d_set(job_key(jid), cur, ts))
                    path = inv.STATUS_PATHS.get(str(cur.get("task", "")))
                    if path is not None:
                        names = [str(n) for n in cur.get("nodes", [])]
                        d, _ = inv.finish_statuses(
                            state, names, path.during, path.failure, epoch, ts
                        )
                        parts.append(d)
                return combine(*parts)

            await self.replica.commit(make)
            ids = [str(j.get("id")) for j in orphans]
            self.counters["orphans"] += len(ids)
            log.warning("%s: ended orphaned jobs %s (epoch %d)", me, ids, epoch)
            return ids

    # ------------------------------------------------------------------ monitoring
    async def set_monitor_event(self, name: str, nodes: Sequence[Any]) -> dict[str, Any]:
        """clusterm's POST /monitor/event. Raises BadRequest
        ``Invalid or empty event name specified: "<name>"`` or for a malformed node,
        Unavailable off the holder. The name is case-insensitive, as in clusterm."""
        if not isinstance(name, str) or name.lower() not in ("discovered", "disappeared"):
            raise BadRequest(f'Invalid or empty event name specified: "{name}"')
        name = name.lower()
        if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence):
            raise BadRequest(f"monitor event nodes must be a list, got {nodes!r}")
        parsed = [inv.check_monitor_node(n) for n in nodes]
        self._holder_epoch()  # an empty list must be refused off the holder too
        done: list[str] = []
        for label, serial, addr in parsed:
            nm = inv.node_name(label, serial)
            await self.apply_node_event(name, nm, label, serial, addr)
            done.append(nm)
        return {"event": name, "nodes": done}

    async def apply_node_event(
        self, kind: str, name: str, label: str, serial: str, addr: str
    ) -> bool:
        """Apply one Serf health event ("discovered" | "disappeared"). Holder only.

        Returns True if the inventory changed. Raises BadRequest for an unknown kind,
        Unavailable off the holder."""
        if kind not in ("discovered", "disappeared"):
            raise BadRequest(f'Invalid or empty event name specified: "{kind}"')
        reappear: list[str] = []
        async with self._lock:
            epoch = self._holder_epoch()
            changed = await self._apply_events(epoch, [(kind, name, label, serial, addr)], reappear)
        await self._reappeared(reappear)
        return changed

    async def reconcile(
        self,
        alive_nodes: Mapping[str, tuple[str, str, str]],
        unsettled: Collection[str] = (),
    ) -> dict[str, Any]:
        """After a takeover (and periodically): make the inventory agree with Serf.

        Every Discovered node not alive becomes Disappeared; every alive node not
        Discovered (or with changed tags) is discovered. Nodes in ``unsettled`` (whose
        Serf status just changed: the view may be mid-change, e.g. right after a heal) are
        left alone until a later round. One commit, so no event is lost in a handover.
        Returns ``{"discovered": [...], "disappeared": [...]}``."""
        reappear: list[str] = []
        async with self._lock:
            epoch = self._holder_epoch()
            state = self.replica.state
            events: list[tuple[str, str, str, str, str]] = []
            for rec in state.nodes():
                if rec.name in unsettled:
                    continue
                if inv.state_of(rec) == inv.DISCOVERED and rec.name not in alive_nodes:
                    events.append(("disappeared", rec.name, "", "", ""))
            for nm, (label, serial, addr) in sorted(alive_nodes.items()):
                if nm in unsettled:
                    continue
                known = state.node(nm)
                want = {"label": label, "serial": serial, "addr": addr}
                if (
                    known is None
                    or inv.state_of(known) != inv.DISCOVERED
                    or dict(known.monitoring) != want
                ):
                    events.append(("discovered", nm, label, serial, addr))
            await self._apply_events(epoch, events, reappear)
        await self._reappeared(reappear)
        return {
            "discovered": [e[1] for e in events if e[0] == "discovered"],
            "disappeared": [e[1] for e in events if e[0] == "disappeared"],
        }

    async def _apply_events(
        self, epoch: int, events: Sequence[tuple[str, str, str, str, str]], reappear: list[str]
    ) -> bool:
        def make(state: ClusterState, ts: Timestamp) -> LWWMap:
            self._fence(epoch, "monitoring event")
            reappear.clear()
            parts = []
            for kind, nm, label, serial, addr in events:
                if kind == "discovered":
                    if inv.reappears_allocated(state, nm):
                        reappear.append(nm)
                    parts.append(inv.d_discovered(state, nm, label, serial, addr, epoch, ts))
                else:
                    parts.append(inv.d_disappeared(state, nm, epoch, ts))
            return combine(*parts)

        return len(await self.replica.commit(make)) > 0

    async def _reappeared(self, names: Sequence[str]) -> None:
        if not names:
            return
        if not self.reconfigure_on_reappear:
            log.info(
                "%s: Allocated nodes %s came back; reconfigure_on_reappear is off",
                self.replica.name,
                list(names),
            )
            return
        async with self._lock:
            try:
                epoch = self._holder_epoch()
                self._check_idle()
            except (Unavailable, Conflict) as exc:
                self.counters["reappear_skipped"] += 1
                log.warning(
                    "%s: not reconfiguring reappeared nodes %s: %s",
                    self.replica.name,
                    list(names),
                    exc,
                )
                return
            state = self.replica.state
            ok = [
                n
                for n in names
                if (r := state.node(n)) is not None
                and inv.status_of(r) == inv.ALLOCATED
                and inv.state_of(r) == inv.DISCOVERED
            ]
            if not ok:
                return
            desc = f"reconfigure nodes {inv.go_list(ok)} (reappeared)"
            await self._launch("reconfigure", desc, ok, epoch, self._hosts(state, ok), {}, None, {})
            self.counters["reappear_jobs"] += 1

    # ------------------------------------------------------------------ import
    async def import_inventory(self, entries: Any, dry_run: bool = False) -> dict[str, Any]:
        """Set imported statuses and host-groups (``gossipmgr import clusterm``). Holder only.

        One fenced commit under our epoch (inventory records are epoch-fenced like a job's
        writes). Refused with Conflict while a job is active (its nodes are moving), with
        BadRequest for a bad entry, Unavailable off the holder. See
        :func:`gossipmgr.core.inventory.plan_import` for what is changed and what is kept."""
        parsed = inv.check_import_entries(entries)
        async with self._lock:
            epoch = self._holder_epoch()
            self._check_idle()
            plan = inv.plan_import(self.replica.state, parsed)
            if not dry_run and plan["changed"]:

                def make(state: ClusterState, ts: Timestamp) -> LWWMap:
                    self._fence(epoch, "inventory import")
                    # Planned again on the state the commit sees: the same answer unless
                    # a Serf event slipped in, and then this one is the truth.
                    again = inv.plan_import(state, parsed)
                    plan.update(again)
                    return inv.d_import(state, again["changed"], epoch, ts)

                await self.replica.commit(make)
                log.info(
                    "%s: imported %d node(s) (%d unchanged, %d kept), epoch %d",
                    self.replica.name,
                    len(plan["changed"]),
                    len(plan["unchanged"]),
                    len(plan["kept"]),
                    epoch,
                )
        return {"dry_run": dry_run, **plan}

    async def forget_node(self, name: str, force: bool = False) -> dict[str, Any]:
        """``gossipmgr node forget``: remove a node from the inventory. Holder only (a
        fenced inventory write). Refused while a job is active (Conflict), for a
        Discovered node unless ``force`` (CheckFailed), NotFound for an unknown one."""
        async with self._lock:
            epoch = self._holder_epoch()
            self._check_idle()
            rec = inv.check_forget(self.replica.state, name, force)

            def make(state: ClusterState, ts: Timestamp) -> LWWMap:
                self._fence(epoch, f"forget of node {rec.name}")
                inv.check_forget(state, rec.name, force)
                return inv.d_forget(state, rec.name, epoch, ts)

            await self.replica.commit(make)
            log.info("%s: forgot node %s (epoch %d)", self.replica.name, rec.name, epoch)
            return {"forgotten": rec.name, "status": inv.status_of(rec), "state": inv.state_of(rec)}

    # ------------------------------------------------------------------ node settings
    async def set_host_group(self, node: str, host_group: str) -> None:
        """Set a node's host-group without a job. Raises NotFound, CheckFailed.

        The host-group is a plain LWW entry (not fenced), so this needs no lease."""
        inv.check_host_group(host_group)
        rec = inv.get_node(self.replica.state, node)
        await self.replica.commit(lambda st, ts: st.d_set(host_group_key(rec.name), host_group, ts))

    async def set_node_vars(self, node: str, variables: Mapping[str, Any]) -> None:
        """Replace a node's own extra-vars. Raises NotFound, BadRequest."""
        if not isinstance(variables, Mapping):
            raise BadRequest(f"node extra-vars must be an object, got {variables!r}")
        for k in variables:
            _check_var_name(k)
        rec = inv.get_node(self.replica.state, node)
        await self.replica.commit(lambda st, ts: st.d_replace_node_vars(rec.name, variables, ts))

    async def set_node_var(self, node: str, var: str, value: Any) -> None:
        """Set one of a node's extra-vars. Raises NotFound, BadRequest."""
        _check_var_name(var)
        rec = inv.get_node(self.replica.state, node)
        await self.replica.commit(lambda st, ts: st.d_set(node_var_key(rec.name, var), value, ts))

    async def remove_node_var(self, node: str, var: str) -> None:
        """Remove one of a node's extra-vars (a tombstone). Raises NotFound."""
        rec = inv.get_node(self.replica.state, node)
        if var in rec.vars:
            await self.replica.commit(lambda st, ts: st.d_remove(node_var_key(rec.name, var), ts))

    # ------------------------------------------------------------------ reads
    def job(self, label: str) -> dict[str, Any]:
        """``active`` | ``last`` | a job id -> ``{desc, task, status, error, logs, ...}``.

        Raises BadRequest ``Invalid or empty job label specified: "<x>"`` and NotFound
        ``info for "<x>" job doesn't exist``. ``logs`` is the runner's full log (its last
        INFO_LOG_LINES) when it ran here, else the replicated tail."""
        if label not in ("active", "last") and not valid_job_id(label):
            raise BadRequest(f'Invalid or empty job label specified: "{label}"')
        rec = self._record(label)
        if rec is None:
            raise NotFound(f'info for "{label}" job doesn\'t exist')
        return job_info(rec, self._local_lines(str(rec.get("id", ""))))

    def _record(self, label: str) -> dict[str, Any] | None:
        if label == "active":
            return self.active_record()
        if label == "last":
            ended = [j for j in self.replica.state.jobs().values() if j.get("status") not in ACTIVE]
            return max(ended, key=lambda j: str(j.get("id", ""))) if ended else None
        return self.replica.state.job(label)

    def _local_lines(self, job_id: str) -> list[str] | None:
        if not valid_job_id(job_id):
            return None
        try:
            text = self.log_path(job_id).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
        return text.splitlines()[-INFO_LOG_LINES:]

    def jobs(self) -> list[dict[str, Any]]:
        """Every job record kept (at most HISTORY), newest first."""
        recs = self.replica.state.jobs()
        return [recs[k] for k in sorted(recs, reverse=True)]

    def log_path(self, job_id: str) -> Path:
        """Where the runner keeps the full log of ``job_id``. Raises BadRequest for a
        malformed id (it becomes a file name)."""
        if not valid_job_id(job_id):
            raise BadRequest(f'Invalid or empty job label specified: "{job_id}"')
        return self.work_dir / "jobs" / f"{job_id}.log"

    def follow(self, label: str) -> AsyncIterator[str]:
        """Stream a job's log: the lines so far, then live ones until it ends.

        ``label`` is a job id or ``active``. Validated eagerly: raises BadRequest/NotFound
        like :meth:`job`, and Conflict ``job is not Running`` for ``active`` when no job
        is active (clusterm's GET /info/logs/active). Where the job runs here, lines come
        from its log file; elsewhere from the replicated tail (a gap of more than
        LOG_TAIL_LINES between two updates is reported as one "lines skipped" line)."""
        if label == "active":
            rec = self.active_record()
            if rec is None:
                raise Conflict("job is not Running")
        else:
            if not valid_job_id(label):
                raise BadRequest(f'Invalid or empty job label specified: "{label}"')
            rec = self.replica.state.job(label)
            if rec is None:
                raise NotFound(f'info for "{label}" job doesn\'t exist')
        job_id = str(rec.get("id", ""))
        run = self._run if self._run is not None and self._run.job_id == job_id else None
        if run is not None or self.log_path(job_id).exists():
            return self._follow_file(job_id, run)
        return self._follow_record(job_id)

    async def _follow_file(self, job_id: str, run: _Run | None) -> AsyncIterator[str]:
        path = self.log_path(job_id)
        pos = 0
        partial = ""
        while True:
            # Read before checking done: the last lines are written before done is set.
            changed = run.changed if run is not None else None
            done = run is None or run.done
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    f.seek(pos)
                    chunk = f.read()
                    pos = f.tell()
            except FileNotFoundError:
                chunk = ""
            text = partial + chunk
            *lines, partial = text.split("\n")
            for line in lines:
                yield line
            if done:
                if partial:
                    yield partial
                return
            assert changed is not None
            await changed.wait()

    async def _follow_record(self, job_id: str) -> AsyncIterator[str]:
        seen = 0
        while True:
            rec = self.replica.state.job(job_id)
            if rec is None:
                return
            tail = [str(x) for x in rec.get("log_tail", [])]
            count = int(rec.get("log_count", len(tail)))
            first = count - len(tail)  # index of tail[0]
            if count > seen:
                if first > seen:
                    yield f"... {first - seen} lines skipped ..."
                    seen = first
                for line in tail[seen - first :]:
                    yield line
                seen = count
            if rec.get("status") not in ACTIVE:
                return
            await self.replica.wait_change()


def _check_var_name(var: object) -> None:
    if not isinstance(var, str) or not var:
        raise BadRequest(f"a node extra-var name must be a non-empty string, got {var!r}")
    if var in ("node_name", "node_addr"):
        raise BadRequest(f'"{var}" is set by gossipmgr from the node\'s name and address')
    check_client_var(var)
