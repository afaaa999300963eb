"""Jobs: clusterm's workflows run on the lease holder, replicated and fenced.

Where jobs run. Only the lease holder accepts a workflow request and runs its job; the API
layer forwards a request that reaches another instance to the holder over HTTP, and every
request method here raises :class:`~gossipmgr.errors.Unavailable` ("not the lease holder;
holder is <name>") when called elsewhere. Requests are serialised by one ``trio.Lock``
(``gossipmgr.runtime.holder``), so two concurrent requests cannot both pass the
one-active-job check.

A request's life::

    parse extra_vars (BadRequest)          nothing written yet
    lock; holder? (Unavailable)
    active job? (Conflict)
    checks (CheckFailed) + transitions (Conflict), computed as ONE delta:
        node statuses -> ``during``, host-groups, job record {status: Running, epoch}
    commit (durable when it returns); start the run in our nursery; answer the request

A rejected request writes nothing (clusterm's bug: its rejected requests became "last" jobs).
A request that asks to wait (:meth:`JobManager.submit` with ``queue``) while a job is
active is written Queued instead of refused, and started later by the service loop through
the same entry point (``gossipmgr.runtime.jobqueue``).
The job record and its status machine are ``gossipmgr.core.job``; the run itself (playbooks,
fencing, log tail, end) is ``gossipmgr.runtime.jobrun``; logs are
``gossipmgr.runtime.joblog``.

Orphans (jobs still active whose runner lost the lease, crashed or restarted) are ended by
the holder's scan (:meth:`JobManager.reconcile_orphans`); cancel is clusterm issue #63
(:meth:`JobManager.cancel`). docs/workflows.md tells the whole job model.

The JobManager is also the runtime's one entry point for the API and the agent: monitoring
events (``gossipmgr.runtime.health``), inventory import and forget
(``gossipmgr.runtime.nodeadmin``) and node settings (``gossipmgr.runtime.nodesettings``)
are reached through its methods.

Ownership: the JobManager owns its nursery (opened by :meth:`run`), every ansible run and
log file under ``work_dir``; the caller owns the Replica and its lifetime. When ``run`` is
cancelled, a running job's process tree is killed and its record is left Running, for the
next holder to end as an orphan.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import trio

from gossipmgr.core import checkmode
from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.job import ACTIVE as ACTIVE  # the readers' vocabulary, re-exported
from gossipmgr.core.job import RUNNING, JobRecord, make_job_id
from gossipmgr.core.joblog import DEFAULT_MAX_BYTES, TOTAL_CAPS, d_trim_logs
from gossipmgr.core.orders import JOB, LEASE
from gossipmgr.core.state import ClusterState, combine, host_group_key, job_key
from gossipmgr.errors import (
    BadRequest,
    Conflict,
    GossipmgrError,
    JobError,
    Unavailable,
)
from gossipmgr.runtime import nodesettings
from gossipmgr.runtime.actor import asked_by
from gossipmgr.runtime.ansible import AnsibleSettings, Host, RunInputs, parse_extra_vars
from gossipmgr.runtime.health import HealthEvents
from gossipmgr.runtime.holder import HolderGate
from gossipmgr.runtime.joblog import Run
from gossipmgr.runtime.jobqueue import JobQueue
from gossipmgr.runtime.jobreads import JobReads, job_info
from gossipmgr.runtime.jobrun import Executor, check_record_room
from gossipmgr.runtime.nodeadmin import NodeAdmin
from gossipmgr.runtime.queuestart import claim, launch_id
from gossipmgr.runtime.replica import Replica
from gossipmgr.runtime.upgrade import Upgrade, Upgrades

log = logging.getLogger("gossipmgr.jobs")

#: Log writes (chunks and the record's tail, one commit): at most five a second per job.
LOG_FLUSH_S: Final = 0.2
#: Job records kept (older ones are removed with tombstones, with their local files).
HISTORY: Final = 100
#: How often the holder re-scans for orphans without a replica change (a lease can expire
#: or be renewed into our hands with no record changing).
ORPHAN_SCAN_S: Final = 1.0
#: The namespaces whose changes wake the service's scans: job records and the lease.
WAKES_ON: Final = frozenset({JOB, LEASE})


class JobManager(JobReads):
    """Runs clusterm's workflows as replicated, fenced jobs on the lease holder.

    ``settings`` is called at each job start (so a changed ansible config reaches the next
    run: clusterm's bug was that it never did). ``work_dir`` holds ``jobs/<id>.log`` and
    ``runs/<id>/`` (ansible-runner's private dirs); it is created when needed.
    """

    queue: JobQueue

    def __init__(
        self,
        replica: Replica,
        settings: Callable[[], AnsibleSettings],
        work_dir: Path,
        *,
        reconfigure_on_reappear: bool = False,
        log_flush_s: float = LOG_FLUSH_S,
        job_log_max_bytes: int = DEFAULT_MAX_BYTES,
        job_queue: bool = False,
        job_queue_max: int = 10,
    ) -> None:
        self.replica = replica
        self.job_log_max_bytes = job_log_max_bytes
        self.settings = settings
        self.work_dir = Path(work_dir)
        self.gate = HolderGate(replica)
        self.counters = self.gate.counters
        self.executor = Executor(self.gate, self.work_dir, log_flush_s)
        self.health = HealthEvents(
            self.gate, self._reconfigure, reconfigure_on_reappear=reconfigure_on_reappear
        )
        self.admin = NodeAdmin(self.gate)
        self.upgrades = Upgrades(self.executor, settings, self.log_path, job_log_max_bytes)
        self._nursery: trio.Nursery | None = None
        self._counter = 0
        self.queue = JobQueue(
            self.gate, self._entry_point, self._new_id, enabled=job_queue, limit=job_queue_max
        )
        self._wake = trio.Event()
        replica.on_local_write(self._changed)
        replica.on_remote_write(self._changed)

    # ------------------------------------------------------------------ service
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The background service: runs jobs and, while holder, ends orphaned jobs."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            try:
                task_status.started()
                while True:
                    self._wake = trio.Event()  # a change during the scans runs them again
                    await self._scan_orphans()
                    await self._start_queued()
                    with trio.move_on_after(ORPHAN_SCAN_S):
                        await self._wake.wait()
            finally:
                self._nursery = None

    def _changed(self, novel: LWWMap) -> None:
        """A local or remote change: wake the scans if it touched a job or the lease (a
        write of globals or node records, most of a cluster's writes, does not)."""
        if not self._wake.is_set() and any(key[0] in WAKES_ON for key, _ in novel.items()):
            self._wake.set()

    async def _scan_orphans(self) -> None:
        if not self.replica.is_holder():
            return
        try:
            await self.reconcile_orphans()
        except GossipmgrError as exc:
            # Disk trouble, the lease moving on mid-commit, or an orphan (gossiped by a key
            # holder) too big to end: retry at the next wake; the service goes on.
            log.error("%s: orphan reconciliation failed: %s", self.replica.name, exc)

    async def _start_queued(self) -> None:
        try:
            await self.queue.start_next()  # gossipmgr.runtime.jobqueue
        except GossipmgrError as exc:
            # Ending a queued job whose start was refused failed (the lease moving on
            # mid-commit, disk trouble, a forged record too big to end): retry at the next
            # wake; the service goes on (an exception here would stop the whole agent).
            log.error("%s: starting a queued job failed: %s", self.replica.name, exc)

    @property
    def running_job_id(self) -> str | None:
        """The id of the job this instance is running now (its process tree may be alive)."""
        return self.gate.run.job_id if self.gate.run is not None else None

    @property
    def reconfigure_on_reappear(self) -> bool:
        return self.health.reconfigure_on_reappear

    @reconfigure_on_reappear.setter
    def reconfigure_on_reappear(self, on: bool) -> None:
        self.health.reconfigure_on_reappear = on

    # ------------------------------------------------------------------ helpers
    def _entry_point(self, op: str) -> Any:
        """The request method named ``op`` (one of ``core.jobqueue.QUEUEABLE``), or None."""
        return getattr(self, op, None)

    def _new_id(self) -> str:
        self._counter += 1
        return make_job_id(self.replica.now_ms(), self._counter, self.replica.name)

    def _history_trim(self, state: ClusterState, ts: Timestamp) -> tuple[LWWMap, list[str]]:
        """Tombstones for the records past HISTORY and their logs, and for the oldest kept
        logs past the budget (``gossipmgr.core.joblog.d_trim_logs``)."""
        ids = sorted(i for i, j in state.jobs().items() if not j.active)  # never a Queued one
        cut = max(0, len(ids) - (HISTORY - 1))
        old, kept = ids[:cut], ids[cut:][::-1]
        budget = (TOTAL_CAPS - 1) * self.job_log_max_bytes  # room for the new job's log
        logs = d_trim_logs(state.map.get, old, kept, budget, ts)
        return combine(*(state.d_remove(job_key(i), ts) for i in old), logs), old

    def _hosts(self, state: ClusterState, names: Sequence[str], group: str = "") -> list[Host]:
        hosts = []
        for n in names:
            rec = state.node(n)
            if rec is None:
                raise JobError(f"node {n} vanished from the inventory")
            group_of = group or inv.host_group_of(rec)
            hosts.append(Host(alias=n, addr=rec.addr, name=n, group=group_of, vars=dict(rec.vars)))
        return hosts

    # ------------------------------------------------------------------ requests
    async def submit(
        self, op: str, args: Mapping[str, Any], queue: bool | None = None
    ) -> dict[str, Any]:
        """A workflow request: ``op`` (an entry point below) with ``args``, run now or
        queued (:meth:`gossipmgr.runtime.jobqueue.JobQueue.submit`)."""
        return await self.queue.submit(op, args, queue)

    async def commission(
        self, nodes: Sequence[str], host_group: str, extra_vars: object = None, check: bool = False
    ) -> dict[str, Any]:
        """Commission nodes. Raises BadRequest, Unavailable, Conflict, CheckFailed."""
        return await self._workflow("commission", nodes, host_group, extra_vars, check)

    async def decommission(
        self, nodes: Sequence[str], extra_vars: object = None, check: bool = False
    ) -> dict[str, Any]:
        """Decommission nodes. Raises like :meth:`commission`."""
        return await self._workflow("decommission", nodes, "", extra_vars, check)

    async def update(
        self,
        nodes: Sequence[str],
        host_group: str = "",
        extra_vars: object = None,
        check: bool = False,
    ) -> dict[str, Any]:
        """Update nodes (optionally to a new host-group). Raises like :meth:`commission`."""
        return await self._workflow("update", nodes, host_group, extra_vars, check)

    async def discover(self, addrs: Sequence[str], extra_vars: object = None) -> dict[str, Any]:
        """Run the configure playbook on new addresses (group cluster-node, node1..N).

        Raises BadRequest, Unavailable, Conflict, CheckFailed (address already a node's)."""
        request_vars = parse_extra_vars(extra_vars)
        async with self.gate.lock:
            epoch = self.gate.epoch()
            self.gate.check_idle()
            addr_list = inv.check_discover(self.replica.state, list(addrs))
            hosts = [Host(alias=a, addr=a, name="", group="cluster-node") for a in addr_list]
            desc = f"discover addrs {inv.go_list(addr_list)}"
            return await self._launch(
                "discover", desc, [], epoch, hosts, request_vars, None, addr_list
            )

    async def upgrade(self, nodes: object, all_: object = None, **opts: Any) -> dict[str, Any]:
        """A rolling upgrade (:meth:`Upgrades.start`). Raises like :meth:`commission`."""
        return await self.upgrades.start(self._launch, nodes, all_, **opts)

    async def _workflow(
        self, kind: str, nodes: Sequence[str], host_group: str, extra_vars: object, check: bool
    ) -> dict[str, Any]:
        if isinstance(nodes, str) or not isinstance(nodes, Sequence):
            raise BadRequest(f'"nodes" must be a list of node names, got {nodes!r}')
        if not isinstance(host_group, str):
            raise BadRequest(f'"host_group" must be a string, got {host_group!r}')
        if not isinstance(check, bool):
            raise BadRequest(f'"check" must be true or false, got {check!r}')
        request_vars = parse_extra_vars(extra_vars)
        async with self.gate.lock:
            epoch = self.gate.epoch()
            self.gate.check_idle()
            state = self.replica.state
            names = inv.check_workflow(state, kind, list(nodes), host_group)
            path = inv.STATUS_PATHS[kind]
            assert path is not None
            # Checked here so that a refused transition is reported even when the service
            # is down; _launch moves the statuses for real in its one commit.
            inv.check_moves(state, names, path.during)
            hosts = self._hosts(state, names, host_group)
            desc = checkmode.job_desc(kind, names, host_group, check)
            return await self._launch(
                kind, desc, names, epoch, hosts, request_vars, host_group, check=check
            )

    async def _reconfigure(self, names: list[str], epoch: int) -> None:
        """The reconfigure job of Allocated nodes that came back (lock held)."""
        desc = f"reconfigure nodes {inv.go_list(names)} (reappeared)"
        hosts = self._hosts(self.replica.state, names)
        await self._launch("reconfigure", desc, names, epoch, hosts, {}, None)

    async def _launch(
        self,
        kind: str,
        desc: str,
        names: list[str],
        epoch: int,
        hosts: list[Host],
        request_vars: Mapping[str, Any],
        host_group: str | None,
        addrs: Sequence[str] | None = None,
        check: bool = False,  # core.checkmode: no status move, no host-group
        upgrade: Upgrade | None = None,
    ) -> dict[str, Any]:
        """Commit statuses + job record (``host_group``, ``addrs``, ``upgrade`` as given) in
        one delta, then start the run; lock held. The moves are computed in ``make``: a refused
        one (Conflict) raises before anything is written: a partial move is never committed."""
        nursery = self._nursery
        if nursery is None:
            raise Unavailable("the job manager is not running")
        settings = self.settings()  # read once per job: a config change reaches the next one
        job_id, me, asked = launch_id(self._new_id), self.replica.name, asked_by()
        dropped: list[str] = []
        status_path = checkmode.status_path(kind, check)
        made: list[JobRecord] = []

        def make(state: ClusterState, ts: Timestamp) -> LWWMap:
            self.gate.fence(epoch, f"start of job {job_id}")
            parts: list[LWWMap] = []
            if status_path is not None:
                moved = inv.move_statuses(state, names, status_path.during, epoch, ts)
                parts.append(self.gate.noted(state, moved, ts, epoch, job=job_id, reason=desc))
            if host_group and not check:
                parts += [state.d_set(host_group_key(n), host_group, ts) for n in names]
            trim, old = self._history_trim(state, ts)
            dropped[:] = old
            parts.append(trim)
            record = JobRecord(
                id=job_id,
                desc=desc,
                task=kind,
                workflow=kind,
                nodes=tuple(names),
                status=RUNNING,
                error="",
                epoch=epoch,
                runner=me,
                created_ms=claim(state, job_id, ts.ms),  # a queued job's, if Queued still
                started_ms=ts.ms,
                host_group=host_group or None,
                addrs=tuple(addrs) if addrs is not None else None,
                requested_by=asked,
                check=check,
                upgrade=upgrade,
            )
            check_record_room(record, ts)
            made[:] = [record]
            parts.append(state.d_set(job_key(job_id), record.to_value(), ts))
            return combine(*parts)

        run = Run(job_id, kind, epoch, self.log_path(job_id), max_bytes=self.job_log_max_bytes)
        await self.gate.start_run(run, make)
        self.counters["jobs_started"] += 1
        # Started before anything else can raise here (a cancel of this request): a
        # committed job that never ran would hold the job slot (gate.run) for good.
        globals_ = self.replica.state.globals()
        inputs = RunInputs(hosts, settings, globals_, dict(request_vars), check=check)
        nursery.start_soon(self.executor.execute, run, inputs)
        log.info("%s: job %s started (%s), epoch %d", me, job_id, desc, epoch)
        if dropped:
            try:
                with trio.CancelScope(shield=True):  # a few unlinks; not left half done
                    await trio.to_thread.run_sync(self._remove_files, dropped)
            except OSError as exc:  # the job is accepted; stale files are only litter
                log.warning("%s: could not remove files of old jobs: %s", me, exc)
        return job_info(self.replica.state.job(job_id) or made[0])

    def _remove_files(self, job_ids: Sequence[str]) -> None:
        for j in job_ids:
            self.log_path(j).unlink(missing_ok=True)
            shutil.rmtree(self.work_dir / "runs" / j, ignore_errors=True)

    # ------------------------------------------------------------------ cancel / orphans
    async def cancel(self, job_id: str | None = None) -> dict[str, Any]:
        """Cancel the running job (clusterm issue #63), or job ``job_id``: a queued one ends
        Cancelled at once (``JobQueue.cancel``). Returns its record (a running one is still
        Running: the cancel path runs, then it ends Cancelled). Raises Unavailable, and
        Conflict ``job is not Running`` when no job runs."""
        if job_id is not None and (queued := await self.queue.cancel(job_id)) is not None:
            return queued
        async with self.gate.lock:
            self.gate.epoch()
            run = self.gate.run
            if run is not None and not run.done and job_id in (None, run.job_id):
                run.cancel.set()
                run.line(f"gossipmgr: job {run.job_id}: cancel requested")
                rec = self.replica.state.job(run.job_id)
                if rec is not None:
                    return job_info(rec)
                # its record was overtaken (see HolderGate.check_idle): answer as for others
            rec = self.active_record() if job_id is None else self.replica.state.job(job_id)
            if rec is None or rec.status != RUNNING:
                if job_id is not None and rec is not None:  # ended since queue.cancel looked
                    raise Conflict(f'job "{job_id}" is not active (it ended {rec.status})')
                raise Conflict("job is not Running")
        # Active but not ours: an orphan; end it now rather than at the next scan.
        await self.reconcile_orphans()
        self.upgrades.cancel_resumed(rec.id)  # an upgrade the scan resumed: it ends Cancelled
        return job_info(self.replica.state.job(rec.id) or rec)

    async def reconcile_orphans(self) -> list[str]:
        """End every Running job this holder is not running (Queued ones wait their turn:
        ``gossipmgr.runtime.jobqueue``). Returns their ids.

        Each is marked Errored with the reason, and its nodes still in the workflow's
        ``during`` status take its failure path, in one commit under our epoch."""
        if not any(j.status == RUNNING for j in self.replica.state.active_jobs()):
            return []  # every write wakes the scan: cheap then; Queued ones wait their turn
        async with self.gate.lock:
            try:
                epoch = self.gate.epoch()
            except Unavailable:
                return []
            mine = self.running_job_id
            active = self.replica.state.active_jobs()
            ids = [j.id for j in active if j.status == RUNNING and j.id != mine]
            ids = await self.upgrades.resume(ids, epoch, self._nursery)  # resumed, not ended
            if not ids:
                return []
            me = self.replica.name

            def make(state: ClusterState, ts: Timestamp) -> LWWMap:
                self.gate.fence(epoch, "orphan reconciliation")
                return combine(*(self.gate.d_end_orphan(state, i, epoch, ts) for i in ids))

            await self.replica.commit(make)
            self.counters["orphans"] += len(ids)
            log.warning("%s: ended orphaned jobs %s (epoch %d)", me, ids, epoch)
            return ids

    # ------------------------------------------------------------------ monitoring
    async def set_monitor_event(self, name: str, nodes: Sequence[Any]) -> dict[str, Any]:
        """clusterm's POST /monitor/event (:meth:`HealthEvents.set_monitor_event`)."""
        return await self.health.set_monitor_event(name, nodes)

    async def apply_node_event(
        self, kind: str, name: str, label: str, serial: str, addr: str
    ) -> bool:
        """One Serf health event (:meth:`HealthEvents.apply_node_event`)."""
        return await self.health.apply_node_event(kind, name, label, serial, addr)

    async def reconcile(
        self,
        alive_nodes: Mapping[str, tuple[str, str, str]],
        unsettled: Collection[str] = (),
    ) -> dict[str, Any]:
        """The inventory made to agree with Serf (:meth:`HealthEvents.reconcile`)."""
        return await self.health.reconcile(alive_nodes, unsettled)

    # ------------------------------------------------------------------ inventory
    async def import_inventory(self, entries: Any, dry_run: bool = False) -> dict[str, Any]:
        """``gossipmgr import clusterm`` (:meth:`NodeAdmin.import_inventory`)."""
        return await self.admin.import_inventory(entries, dry_run)

    async def forget_node(self, name: str, force: bool = False) -> dict[str, Any]:
        """``gossipmgr node forget`` (:meth:`NodeAdmin.forget_node`)."""
        return await self.admin.forget_node(name, force)

    async def set_host_group(self, node: str, host_group: str) -> None:
        """No lease needed (:func:`gossipmgr.runtime.nodesettings.set_host_group`)."""
        await nodesettings.set_host_group(self.replica, node, host_group)

    async def set_node_vars(self, node: str, variables: Mapping[str, Any]) -> None:
        await nodesettings.set_node_vars(self.replica, node, variables)

    async def set_node_var(self, node: str, var: str, value: Any) -> None:
        await nodesettings.set_node_var(self.replica, node, var, value)

    async def remove_node_var(self, node: str, var: str) -> None:
        await nodesettings.remove_node_var(self.replica, node, var)
