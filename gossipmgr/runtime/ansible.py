"""The ansible bridge: clusterm's workflows as sequences of playbook runs, driven from trio.

:func:`run_playbook` runs one ``ansible_runner.run`` in a worker thread and streams its
stdout lines back to the trio thread; :func:`run_workflow` sequences the runs the way
clusterm did (docs/ansible.md, "Sequences"), failure and cancel paths included. Below it:
:mod:`~gossipmgr.runtime.ansible_vars` (pure: settings, hosts, the client-variable policy,
precedence) and :mod:`~gossipmgr.runtime.proctree` (stopping ansible-playbook's whole
process tree). The rest of gossipmgr imports the bridge from here (``__all__``).

Who owns what:

* The caller owns ``work_root``: each run creates one private directory under it (mode
  0700, it holds the extra-vars, which may be secrets) and leaves it there with its
  ``artifacts/`` for post-mortems. Deleting old ones is the caller's job.
* The caller owns ``cancel``; this module only reads it. A run started here is always
  finished here: when :func:`run_playbook` returns (or raises, e.g. trio ``Cancelled``),
  the ansible-playbook process tree has exited.
* ``log`` is called on the trio thread, one call per stdout line, while the run goes on.

See docs/ansible.md for the precedence rule and cancel semantics in prose.
"""

import json
import logging
import math
import os
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import trio

from gossipmgr.core.confirm import CONFIRM_ENV, REFUSED
from gossipmgr.errors import JobError
from gossipmgr.runtime.ansible_vars import (
    FENCE_VARS,
    AnsibleSettings,
    Host,
    RunInputs,
    build_extra_vars,
    build_inventory,
    check_client_inputs,
    check_client_var,
    client_overrides,
    client_vars_error,
    mark_node_fields,
    mark_unsafe,
    merge_extra_vars,
    parse_extra_vars,
    refused_client_vars,
    split_config_vars,
    unsafe_inputs,
)
from gossipmgr.runtime.proctree import find_child, kill_process_tree

__all__ = [
    "CANCELLED_ERROR",
    "FENCE_VARS",
    "RC_NOT_RUN",
    "AnsibleSettings",
    "Host",
    "PlaybookResult",
    "RunInputs",
    "WorkflowResult",
    "build_extra_vars",
    "build_inventory",
    "check_client_var",
    "client_overrides",
    "client_vars_error",
    "discover_hosts",
    "mark_unsafe",
    "merge_extra_vars",
    "parse_extra_vars",
    "refused_client_vars",
    "run_playbook",
    "run_workflow",
    "split_config_vars",
    "workflow_plan",
]

logger = logging.getLogger("gossipmgr.ansible")  # the name it logged under before the move

# How often ansible-runner's pexpect loop calls our cancel callback. Its default is 5 s,
# which is how late a cancel or timeout would be noticed; 0.2 s costs nothing measurable.
PEXPECT_TIMEOUT_S: Final = 0.2
# rc reported for a step that never started (missing playbook, cancelled before start,
# ansible-runner refused its input). ansible-runner itself reports 254 for a cancelled run.
RC_NOT_RUN: Final = -1
# clusterm's discover inventory: one group, aliases node1..N.
DISCOVER_GROUP: Final = "cluster-node"
# clusterm's job error text for a cancelled job (its Jobs API).
CANCELLED_ERROR: Final = "job was cancelled"
WORKFLOWS: Final = ("commission", "decommission", "update", "discover")
#: How the gossipmgr_fence module's failure message starts; a step that failed with it
#: reports that message as its error.
FENCED_PREFIX: Final = "fenced: "
#: The shipped role (and its module) that operators' playbooks can use by name: gossipmgr
#: puts this directory first on ANSIBLE_ROLES_PATH for every run.
ROLES_DIR: Final = Path(__file__).resolve().parents[1] / "playbooks" / "roles"
# ansible's own default roles_path, kept after ours when the environment sets none.
_DEFAULT_ROLES_PATH: Final = "~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles"


@dataclass
class PlaybookResult:
    """The outcome of one playbook run. ``error`` is empty for a successful run."""

    playbook: str
    rc: int
    status: str  # "successful" | "failed" | "canceled" | "timeout"
    error: str = ""
    #: ansible's recap (the playbook_on_stats event's data: failures, dark, processed, ...
    #: by host); empty when the run never got that far
    stats: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class WorkflowResult:
    """The outcome of a workflow; ``steps`` lists every playbook run, failure path included."""

    ok: bool
    cancelled: bool
    error: str
    steps: list[PlaybookResult]


@dataclass(frozen=True)
class WorkflowStep:
    """One playbook of a workflow and the playbooks to run if it fails or times out."""

    playbook: str
    on_failure: tuple[str, ...]  # run after this step fails or times out


@dataclass(frozen=True)
class WorkflowPlan:
    """What a workflow runs: ``steps`` in order, each with its failure path, and what a
    cancel runs after the current step was stopped (``on_cancel``)."""

    steps: tuple[WorkflowStep, ...]
    on_cancel: tuple[str, ...]


def workflow_plan(kind: str, settings: AnsibleSettings) -> WorkflowPlan:
    """clusterm's playbook sequences (docs/ansible.md, "Sequences"). Raises JobError for an
    unknown kind.

    commission: configure, on failure cleanup. decommission: cleanup. update: cleanup then
    configure, on configure failure cleanup again (a failed first cleanup ends the job, as in
    clusterm). discover: configure. A cancel runs cleanup for commission and update (undo a
    half-configured node) and nothing more for decommission and discover.
    """
    configure, cleanup = settings.configure_playbook, settings.cleanup_playbook
    if kind == "commission":
        return WorkflowPlan((WorkflowStep(configure, (cleanup,)),), (cleanup,))
    if kind == "decommission":
        return WorkflowPlan((WorkflowStep(cleanup, ()),), ())
    if kind == "update":
        steps = (WorkflowStep(cleanup, ()), WorkflowStep(configure, (cleanup,)))
        return WorkflowPlan(steps, (cleanup,))
    if kind == "discover":
        return WorkflowPlan((WorkflowStep(configure, ()),), ())
    raise JobError(f"unknown workflow {kind!r}; expected one of {', '.join(WORKFLOWS)}")


def discover_hosts(hosts: Iterable[Host]) -> list[Host]:
    """Hosts as clusterm's discover inventory has them: group cluster-node, aliases node1..N,
    and ``node_name`` = the alias (clusterm's discover set both to ``node<i>``)."""
    return [
        Host(
            alias=f"node{i}",
            addr=h.addr,
            name=h.name or f"node{i}",
            group=DISCOVER_GROUP,
            vars=h.vars,
        )
        for i, h in enumerate(hosts, start=1)
    ]


# --------------------------------------------------------------------------- one run


class _RunControl:
    """State shared between the trio task and ansible-runner's thread for one run.

    ansible-runner calls :meth:`poll` from its pexpect loop every PEXPECT_TIMEOUT_S. When
    the run must stop, poll kills the whole tree *before* answering True: once it answers,
    ansible-runner SIGKILLs ansible-playbook's group, after which the setsid() workers are
    orphans that no ppid walk can find any more.
    """

    def __init__(self, private_dir: Path, timeout_s: float) -> None:
        self.private_dir = private_dir
        self.stop = threading.Event()
        self.deadline = time.monotonic() + timeout_s if timeout_s > 0 else math.inf
        self.outcome = ""  # "" | "canceled" | "timeout", written only by poll

    def poll(self) -> bool:
        if self.outcome:
            return True
        if self.stop.is_set():
            self.outcome = "canceled"
        elif time.monotonic() >= self.deadline:
            self.outcome = "timeout"
        else:
            return False
        pid = find_child(str(self.private_dir))
        if pid is not None:
            killed = kill_process_tree(pid)
            logger.info("ansible: %s run in %s, stopped pids %s", self.outcome, pid, killed)
        return True


def _write_private_files(private_dir: Path, extravars: Mapping[str, Any]) -> None:
    env = private_dir / "env"
    env.mkdir(mode=0o700)
    # ansible-runner 2.4 ignores the settings= kwarg unless env/settings exists in the
    # private data dir, so the settings go in that file.
    (env / "settings").write_text(json.dumps({"pexpect_timeout": PEXPECT_TIMEOUT_S}))
    # Extra-vars go to a 0600 file that ansible-runner passes as `-e @env/extravars`.
    # With suppress_env_files=True the extravars= kwarg would instead be put on the
    # command line: visible to every local user in /proc/*/cmdline, and ansible-runner
    # 2.4.3 formats it as '"<key>":<json>' without escaping the key.
    fd = os.open(env / "extravars", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(extravars), f)


def _cmdline(settings: AnsibleSettings, check: bool) -> str:
    args: list[str] = ["--check", "--diff"] if check else []  # a check job: changes nothing
    if settings.user:
        args += ["--user", settings.user]
    if settings.priv_key_file:
        args += ["--private-key", settings.priv_key_file]
    # ansible-runner shlex.split()s this string into argv; no shell ever sees it.
    return shlex.join(args)


def _envvars(private_dir: Path, confirm_socket: Path | None) -> dict[str, str]:
    roles_path = os.environ.get("ANSIBLE_ROLES_PATH") or _DEFAULT_ROLES_PATH
    # the job's confirm (runtime.confirm), for the role's gossipmgr_confirm action only
    confirm = {CONFIRM_ENV: str(confirm_socket)} if confirm_socket is not None else {}
    return confirm | {
        # `roles: [gossipmgr_fence]` works in any playbook we run. An environment variable
        # beats ansible.cfg, so a roles_path set there is lost (docs/ansible.md); roles/
        # next to the playbook is always searched.
        "ANSIBLE_ROLES_PATH": f"{ROLES_DIR}{os.pathsep}{roles_path}",
        # ansible-runner looks ansible-playbook up on PATH; a venv that is not activated
        # would give rc 127 (command not found), so our interpreter's bin dir goes first.
        "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", os.defpath),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOST_KEY_CHECKING": "False",  # as clusterm ran it
        # clusterm's group names (service-master, cluster-node) have dashes; keep them as
        # they are and do not warn about it on every run.
        "ANSIBLE_TRANSFORM_INVALID_GROUP_CHARS": "ignore",
        "ANSIBLE_LOCAL_TEMP": str(private_dir / "tmp"),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
    }


def _run_inputs(
    inputs: RunInputs, product_vars: Mapping[str, Any] | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(inventory, extra-vars) of one run. Every value from an API client goes to ansible
    marked unsafe (never templated); ``product_vars`` come last and beat every layer."""
    marked = unsafe_inputs(inputs)
    inventory = mark_node_fields(build_inventory(marked))
    extravars = build_extra_vars(marked)
    extravars.update(product_vars or {})  # last: they beat every other layer
    return inventory, extravars


def _fence_refusal(event: Mapping[str, Any]) -> str | None:
    """The gossipmgr_fence module's ``fenced: ...`` message, or the gossipmgr_confirm
    action's ``no majority: ...``, if ``event`` is its failure."""
    if event.get("event") != "runner_on_failed":
        return None
    res = (event.get("event_data") or {}).get("res") or {}
    msg = res.get("msg") if isinstance(res, Mapping) else None
    ok = isinstance(msg, str) and msg.startswith(FENCED_PREFIX) and res.get("fenced")
    ok = ok or (isinstance(msg, str) and msg.startswith(REFUSED) and res.get("confirm_refused"))
    return msg if ok else None


class _Events:
    """ansible-runner's ``event_handler`` for one run. Called in ansible-runner's thread,
    once per callback event and once per plain stdout chunk ("verbose" events), as ansible
    writes them: relays the stdout lines to ``log`` on the trio thread and keeps the first
    fence refusal."""

    def __init__(self, log: Callable[[str], None], token: trio.lowlevel.TrioToken) -> None:
        self.log = log
        self.token = token
        self.fenced: list[str] = []  # the first fence refusal, as the module said it
        self.stats: dict[str, Any] = {}  # the recap's per-host counts (PlaybookResult.stats)

    def _emit(self, lines: list[str]) -> None:
        for line in lines:
            self.log(line)

    def __call__(self, event: Mapping[str, Any]) -> bool:
        refusal = _fence_refusal(event)
        if refusal is not None and not self.fenced:
            self.fenced.append(refusal)
        if event.get("event") == "playbook_on_stats":
            self.stats = dict(event.get("event_data") or {})
        text = event.get("stdout")
        if text:
            try:
                trio.from_thread.run_sync(self._emit, text.splitlines(), trio_token=self.token)
            except Exception:  # a broken log sink must not kill the run
                logger.exception("ansible: log callback failed")
        return True  # keep ansible-runner's own job_events artifacts


async def _run_runner(
    run_kwargs: Mapping[str, Any], control: _RunControl, cancel: trio.Event, path: Path
) -> tuple[int, str, str]:
    """``ansible_runner.run(**run_kwargs)`` in a worker thread, stopped (the whole tree)
    when ``cancel`` is set or the calling task is cancelled: ``(rc, status, error)``."""

    def run() -> Any:
        # Imported here, in the worker thread: the first import takes ~0.3 s and must not
        # block the trio loop; nothing pays for it unless a playbook runs.
        import ansible_runner

        return ansible_runner.run(**run_kwargs)

    async def relay_cancel() -> None:
        try:
            await cancel.wait()
        finally:  # also when trio cancels us: the thread must not outlive the task
            control.stop.set()

    error = ""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(relay_cancel)
        try:
            runner = await trio.to_thread.run_sync(run)
            rc, status = int(runner.rc), str(runner.status)
        except Exception as exc:  # ansible-runner refused its input: a failed step
            logger.exception("ansible: ansible-runner failed for %s", path)
            rc, status, error = RC_NOT_RUN, "failed", f"ansible-runner failed: {exc!r}"
        finally:
            nursery.cancel_scope.cancel()
    return rc, status, error


async def run_playbook(
    playbook: str,
    inputs: RunInputs,
    *,
    log: Callable[[str], None],
    cancel: trio.Event,
    work_root: Path,
    product_vars: Mapping[str, Any] | None = None,
    confirm_socket: Path | None = None,
) -> PlaybookResult:
    """Run ``settings.playbook_dir / playbook`` on ``inputs.hosts`` and wait for it to finish.

    ``product_vars`` (a job's FENCE_VARS) are added to the extra-vars after every other
    layer, so nothing a client or operator set can override them. A step that the
    gossipmgr_fence module failed reports the module's ``fenced: ...`` message as its error
    (gossipmgr_confirm's ``no majority: ...`` alike; ``confirm_socket``: ``CONFIRM_ENV``).

    Never raises for the run's own outcome: a missing playbook file, a playbook failure,
    a cancel (``cancel`` set: status "canceled") and ``settings.timeout_s`` (status
    "timeout") are all reported in the result. Raises JobError for a bad host list
    (see :func:`build_inventory`). If the calling task is cancelled by trio, the run is
    stopped like a cancel and trio's Cancelled propagates. Either way the ansible-playbook
    process tree has exited when this returns.
    """
    hosts, settings = inputs.hosts, inputs.settings
    playbook_dir = settings.playbook_dir.resolve()
    path = playbook_dir / playbook
    if cancel.is_set():
        return PlaybookResult(playbook, RC_NOT_RUN, "canceled", "cancelled before it started")
    if not path.is_file():
        error = f"playbook file not found: {path}"
        log(f"gossipmgr: {error}")
        return PlaybookResult(playbook, RC_NOT_RUN, "failed", error)
    inventory, extravars = _run_inputs(inputs, product_vars)
    work_root.mkdir(parents=True, exist_ok=True)
    private_dir = Path(tempfile.mkdtemp(prefix=f"{path.stem}-", dir=work_root))  # mode 0700
    _write_private_files(private_dir, extravars)
    control = _RunControl(private_dir, settings.timeout_s)
    events = _Events(log, trio.lowlevel.current_trio_token())
    run_kwargs: dict[str, Any] = dict(
        private_data_dir=str(private_dir),
        project_dir=str(playbook_dir),  # cwd: an ansible.cfg there is honoured
        playbook=playbook,
        inventory=inventory,
        envvars=_envvars(private_dir, confirm_socket),
        cmdline=_cmdline(settings, inputs.check),
        suppress_env_files=True,  # nothing leaks between runs through env/ files
        quiet=True,  # stdout goes to `log`, not to our own stdout
        event_handler=events,
        cancel_callback=control.poll,
    )
    mode = " in check mode (--check --diff)" if inputs.check else ""
    log(f"gossipmgr: running {path}{mode} on {', '.join(h.alias for h in hosts)}")
    rc, status, error = await _run_runner(run_kwargs, control, cancel, path)
    if control.outcome:
        status = control.outcome
    if status == "timeout":
        error = f"timed out after {settings.timeout_s:g} s"
    elif status == "canceled":
        error = "cancelled"
    elif status != "successful" and events.fenced:
        error = events.fenced[0]
        log(f"gossipmgr: {playbook}: {error}")
    elif status != "successful" and not error:
        error = f"ansible-playbook exited with rc {rc}"
    log(f"gossipmgr: {playbook}: {status} (rc {rc})")
    return PlaybookResult(playbook, rc, status, error, events.stats)


# --------------------------------------------------------------------------- workflows


def _describe(step: PlaybookResult) -> str:
    text = f'playbook "{step.playbook}" failed (rc {step.rc})'
    if (
        step.status == "failed"
        and step.rc != RC_NOT_RUN
        and not step.error.startswith((FENCED_PREFIX, REFUSED))
    ):
        return text  # step.error would only repeat the rc
    return f"{text}: {step.error}"


async def run_workflow(
    kind: str,
    inputs: RunInputs,
    *,
    log: Callable[[str], None],
    cancel: trio.Event,
    work_root: Path,
    product_vars: Mapping[str, Any] | None = None,
    confirm_socket: Path | None = None,
) -> WorkflowResult:
    """Run workflow ``kind`` ("commission", "decommission", "update", "discover").

    See :func:`workflow_plan` for the sequences. For "discover" the hosts only need
    ``addr``; they are put in group cluster-node as node1..N. On cancel the current
    playbook is stopped (tree and all), the cancel path runs, and the result has
    ``cancelled=True``, ``ok=False``, ``error="job was cancelled"``. The failure and
    cancel paths themselves ignore ``cancel`` (it is already set) but not
    ``settings.timeout_s`` nor trio cancellation. ``product_vars`` go to every run (see
    :func:`run_playbook`); a step refused by the fence fails like any other and its error
    is the fence's message. Raises JobError for an unknown kind,
    no hosts, or a bad host list; playbook failures are reported, not raised.
    """
    plan = workflow_plan(kind, inputs.settings)
    if kind == "discover":
        inputs = replace(inputs, hosts=discover_hosts(inputs.hosts))
    if not inputs.hosts:
        raise JobError(f"{kind}: no hosts given")
    build_inventory(inputs)  # fail early on bad hosts
    check_client_inputs(inputs)
    steps: list[PlaybookResult] = []
    common: dict[str, Any] = {"log": log, "work_root": work_root}
    common |= {"product_vars": product_vars, "confirm_socket": confirm_socket}

    async def run_path(playbooks: Sequence[str]) -> list[PlaybookResult]:
        # The failure/cancel path must run even though `cancel` is set, so it gets an
        # event of its own that nobody sets.
        done = []
        for pb in playbooks:
            log(f"gossipmgr: {kind}: running failure path {pb}")
            result = await run_playbook(pb, inputs, cancel=trio.Event(), **common)
            steps.append(result)
            done.append(result)
        return done

    for step in plan.steps:
        result = await run_playbook(step.playbook, inputs, cancel=cancel, **common)
        if result.status == "canceled" and result.rc == RC_NOT_RUN and not steps:
            # Cancelled before anything ran: nothing to undo.
            return WorkflowResult(False, True, CANCELLED_ERROR, steps)
        steps.append(result)
        if result.status == "canceled":
            await run_path(plan.on_cancel)
            return WorkflowResult(False, True, CANCELLED_ERROR, steps)
        if result.status != "successful":
            error = f"{kind} failed: {_describe(result)}"
            for cleanup in await run_path(step.on_failure):
                if cleanup.status != "successful":
                    error += f"; then {_describe(cleanup)}"
            return WorkflowResult(False, False, error, steps)
    return WorkflowResult(True, False, "", steps)
