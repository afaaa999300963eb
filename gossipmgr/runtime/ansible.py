"""The ansible bridge: clusterm's workflows as sequences of playbook runs, driven from trio.

Layers, bottom up:

* Pure: :func:`parse_extra_vars`, :func:`merge_extra_vars`, :func:`build_inventory`,
  :func:`build_extra_vars` and :func:`workflow_plan` turn a request into ansible's inputs.
  They never touch the disk.
* Processes: :func:`kill_process_tree` stops ansible-playbook *and every descendant*.
  ansible-runner's own cancel only ``killpg``\\ s ansible-playbook's process group, but
  ansible-core 2.19 workers call ``setsid()``, so their modules (and the modules' children)
  would keep running. We walk ``/proc/<pid>/stat`` ppid links instead (no psutil).
* trio: :func:`run_playbook` runs one ``ansible_runner.run`` in a worker thread and streams
  its stdout lines back to the trio thread; :func:`run_workflow` sequences the runs the way
  clusterm did (contract §2), including the failure and cancel paths.

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

from __future__ import annotations

import json
import logging
import math
import os
import select
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import trio

from gossipmgr.errors import BadRequest, JobError

logger = logging.getLogger(__name__)

# How often ansible-runner's pexpect loop calls our cancel callback. Its default is 5 s,
# which is how late a cancel or timeout would be noticed; 0.2 s costs nothing measurable.
PEXPECT_TIMEOUT_S: Final = 0.2
# Between SIGTERM and SIGKILL when stopping a tree: long enough for ansible and python
# modules to exit on SIGTERM, short enough that a cancel answers in about a second.
KILL_GRACE_S: Final = 1.0
# After SIGKILL, how long to wait for the kernel to finish the processes off.
KILL_REAP_S: Final = 2.0
# rc reported for a step that never started (missing playbook, cancelled before start,
# ansible-runner refused its input). ansible-runner itself reports 254 for a cancelled run.
RC_NOT_RUN: Final = -1
# clusterm's discover inventory: one group, aliases node1..N.
DISCOVER_GROUP: Final = "cluster-node"
# clusterm's job error text for a cancelled job (contract §2, Jobs).
CANCELLED_ERROR: Final = "job was cancelled"
WORKFLOWS: Final = ("commission", "decommission", "update", "discover")
#: Extra-vars the product sets on every run of a job, after every client layer (so none
#: can override them) and that no client may set: the lease epoch the job runs under, the
#: holder running it and the job's id. The gossipmgr_fence role compares the epoch on each
#: node (docs/ansible.md, "Fencing at the node").
FENCE_VARS: Final = ("gossipmgr_epoch", "gossipmgr_holder", "gossipmgr_job")
#: How the gossipmgr_fence module's failure message starts; a step that failed with it
#: reports that message as its error.
FENCED_PREFIX: Final = "fenced: "
#: The shipped role (and its module) that operators' playbooks can use by name: gossipmgr
#: puts this directory first on ANSIBLE_ROLES_PATH for every run.
ROLES_DIR: Final = Path(__file__).resolve().parents[1] / "playbooks" / "roles"
# ansible's own default roles_path, kept after ours when the environment sets none.
_DEFAULT_ROLES_PATH: Final = "~/.ansible/roles:/usr/share/ansible/roles:/etc/ansible/roles"

_EXTRA_VARS_ERROR = '"extra_vars" should be a valid json. Error: '


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Host:
    """One node of a request: inventory alias, ssh address, node name, host-group, own vars."""

    alias: str
    addr: str
    name: str
    group: str
    vars: Mapping[str, Any] = field(default_factory=dict)  # the node's own extra-vars


@dataclass(frozen=True)
class AnsibleSettings:
    """The config's ansible section, as the runner needs it (contract §5)."""

    playbook_dir: Path
    configure_playbook: str = "site.yml"
    cleanup_playbook: str = "cleanup.yml"
    upgrade_playbook: str = "rolling-upgrade.yml"
    user: str = ""  # --user when non-empty
    priv_key_file: str = ""  # --private-key when non-empty
    extra_variables: Mapping[str, Any] = field(default_factory=dict)  # lowest precedence
    # Added to every host before anything else, e.g. ansible_connection=local for the demo.
    host_vars: Mapping[str, Any] = field(default_factory=dict)
    # Per playbook run; 0 (the default) is no limit, as clusterm had none: a site.yml on a
    # big cluster may run for hours, and a cancel (POST /job/cancel) stops a hung one.
    timeout_s: float = 0
    # After a discover playbook succeeds, the job waits this long for every discovered
    # address to show up as a Discovered node (its Serf agent joined); then it fails with
    # the addresses that did not (clusterm issue #157). 0: do not wait.
    discover_join_timeout_s: float = 120.0
    # Config-layer extra-vars set through the API (POST /config), on top of
    # ``extra_variables`` (the operator's file). Client values: checked and marked unsafe.
    client_extra_variables: Mapping[str, Any] = field(default_factory=dict)
    # Names the operator lets API clients set although :func:`refused_client_vars` would
    # refuse them (config file ``[ansible] allow_client_vars``; never settable by the API).
    allowed_client_vars: frozenset[str] = frozenset()


@dataclass
class PlaybookResult:
    """The outcome of one playbook run. ``error`` is empty for a successful run."""

    playbook: str
    rc: int
    status: str  # "successful" | "failed" | "canceled" | "timeout"
    error: str = ""


@dataclass
class WorkflowResult:
    """The outcome of a workflow; ``steps`` lists every playbook run, failure path included."""

    ok: bool
    cancelled: bool
    error: str
    steps: list[PlaybookResult]


# --------------------------------------------------------------------------- client vars

#: ansible's magic variables without the ``ansible_`` prefix (ansible-core 2.19's
#: ``constants.INTERNAL_STATIC_VARS`` plus ``omit`` and ``delegated_vars``): ansible sets
#: them itself, and ``inventory_hostname`` is the ssh connection's fallback address.
MAGIC_VARS: Final = frozenset(
    {
        "delegated_vars",
        "group_names",
        "groups",
        "hostvars",
        "inventory_dir",
        "inventory_file",
        "inventory_hostname",
        "inventory_hostname_short",
        "omit",
        "play_hosts",
        "playbook_dir",
        "role_name",
        "role_names",
        "role_path",
        "role_uuid",
    }
)
#: Prefixes of names ansible treats specially. Every connection, privilege-escalation,
#: shell and interpreter setting ansible reads from variables is ``ansible_*`` (its
#: MAGIC_VARIABLE_MAPPING and every plugin's documented ``vars:``, including patterns
#: such as ``ansible_<x>_interpreter``); ``_ansible_*`` are internal, ``__ansible_*``
#: are the tags of ansible's JSON form (``__ansible_unsafe``, ``__ansible_vault``).
RESERVED_PREFIXES: Final = ("ansible_", "_ansible_", "__ansible_")
#: gossipmgr's own settings that only the operator may set: a client that pointed a job at
#: another fence directory would take it out of the per-node epoch order.
OPERATOR_VARS: Final = frozenset({"gossipmgr_fence_dir"})


def refused_client_vars(variables: Mapping[str, Any], allowed: Collection[str] = ()) -> list[str]:
    """The names in ``variables`` an API client may not set, sorted (docs/security.md).

    Refused: a top-level name starting with ``ansible_`` (or ``_ansible_``), compared
    case-insensitively, or one of :data:`MAGIC_VARS` or :data:`OPERATOR_VARS`, unless it is
    in ``allowed`` (exact name, the operator's ``[ansible] allow_client_vars``); and, at any
    depth, a mapping key starting with ``__ansible_`` (it would change how ansible decodes
    the value), named as a path ``top.key``. The check is on names only: values are passed
    to ansible marked unsafe (:func:`mark_unsafe`), so no value is ever templated.
    """
    bad: list[str] = []

    def nested(path: str, value: Any) -> None:
        # Iterative: a deeply nested hostile value must not exhaust the Python stack.
        stack = [(path, value)]
        while stack:
            p, v = stack.pop()
            if isinstance(v, Mapping):
                for k, sub in v.items():
                    if isinstance(k, str) and k.lower().startswith("__ansible_"):
                        bad.append(f"{p}.{k}")
                    stack.append((f"{p}.{k}", sub))
            elif isinstance(v, list | tuple):
                stack.extend((f"{p}[{i}]", sub) for i, sub in enumerate(v))

    for name, value in variables.items():
        low = str(name).lower()
        reserved = low.startswith(RESERVED_PREFIXES) or low in MAGIC_VARS or low in OPERATOR_VARS
        if name not in allowed and reserved:
            bad.append(str(name))
        nested(str(name), value)
    return sorted(set(bad))


def client_vars_error(names: Sequence[str], where: str) -> str:
    """The refusal text for :func:`refused_client_vars`' ``names`` found in ``where``."""
    quoted = ", ".join(f'"{n}"' for n in names)
    return (
        f"{where}: extra-var {quoted} may not be set by an API client: ansible reads "
        "such variables to decide how, where or as whom it runs commands (the operator "
        "can allow a name in the agent's config file, [ansible] allow_client_vars)"
    )


def mark_unsafe(value: Any) -> Any:
    """``value`` with every string wrapped as ``{"__ansible_unsafe": s}``.

    That is ansible's JSON form of ``!unsafe``: ansible-core 2.19 decodes it (extra-vars
    files given as ``-e @file`` and JSON inventories alike) to a string it never templates,
    so ``{{ lookup('pipe', ...) }}`` in a client's value reaches the play as literal text.
    Mapping keys are left as they are (ansible does not template keys); numbers, booleans
    and null pass unchanged.
    """
    if isinstance(value, str):
        return {"__ansible_unsafe": value}
    if isinstance(value, Mapping):
        return {k: mark_unsafe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mark_unsafe(v) for v in value]
    return value


def split_config_vars(
    file_vars: Mapping[str, Any], config_vars: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split the config layer into (operator's, client's) extra-vars.

    The operator's are the config file's, all of them, as the file says now. POST /config
    stores only what clients set over them (:func:`client_overrides`); a stored name whose
    value equals the file's (a copy, as records of earlier versions hold) is the
    operator's. The client's are marked unsafe and checked (docs/security.md) and win over
    the file's for the names they set; a client cannot remove an operator's name.
    """
    client = client_overrides(file_vars, config_vars)
    operator = {k: v for k, v in file_vars.items() if k not in client}
    return operator, client


def client_overrides(
    file_vars: Mapping[str, Any], config_vars: Mapping[str, Any]
) -> dict[str, Any]:
    """The entries of ``config_vars`` that are not the config file's value for that name."""
    missing = object()
    return {k: v for k, v in config_vars.items() if file_vars.get(k, missing) != v}


def check_client_inputs(
    hosts: Iterable[Host],
    settings: AnsibleSettings,
    globals_: Mapping[str, Any],
    request_vars: Mapping[str, Any],
) -> None:
    """Defence in depth at run time: raise JobError naming any refused client variable.

    The API refuses them on the way in; this catches records that arrived by gossip from
    an older or hostile instance (globals, node vars, the replicated config section).
    """
    allowed = settings.allowed_client_vars
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("config extra_variables (POST /config)", settings.client_extra_variables),
        ("globals", globals_),
        ("request extra_vars", request_vars),
    ]
    layers += [(f"node {h.name or h.addr} extra_vars", h.vars) for h in hosts]
    for where, layer in layers:
        bad = refused_client_vars(layer, allowed)
        if bad:
            raise JobError(f"refused to run: {client_vars_error(bad, where)}")


def _unsafe_inputs(
    hosts: Sequence[Host],
    settings: AnsibleSettings,
    globals_: Mapping[str, Any],
    request_vars: Mapping[str, Any],
) -> tuple[list[Host], AnsibleSettings, dict[str, Any], dict[str, Any]]:
    """The client layers marked unsafe; the operator's (file extra_variables, host_vars)
    stay templatable."""
    marked_hosts = [replace(h, vars=mark_unsafe(dict(h.vars))) for h in hosts]
    config_layer = {**settings.extra_variables, **mark_unsafe(settings.client_extra_variables)}
    marked_settings = replace(settings, extra_variables=config_layer, client_extra_variables={})
    return (
        marked_hosts,
        marked_settings,
        mark_unsafe(dict(globals_)),
        mark_unsafe(dict(request_vars)),
    )


#: Host vars gossipmgr sets from a node's record. Their values come from Serf tags
#: (NodeAddr, NodeLabel, NodeSerial: any Serf key holder, managed nodes included), from
#: POST /monitor/event and from discover's addresses: client values too.
NODE_FIELDS: Final = ("ansible_host", "ansible_ssh_host", "node_addr", "node_name")


def _mark_node_fields(inventory: dict[str, Any]) -> dict[str, Any]:
    """The inventory with :data:`NODE_FIELDS` marked unsafe (in place; returned)."""
    for group in inventory["all"]["children"].values():
        for host_vars in group["hosts"].values():
            for k in NODE_FIELDS:
                if isinstance(host_vars.get(k), str):
                    host_vars[k] = mark_unsafe(host_vars[k])
    return inventory


# --------------------------------------------------------------------------- pure logic


def check_client_var(name: object) -> None:
    """Refuse (BadRequest, naming it) an extra-var a client may not set: FENCE_VARS."""
    if name in FENCE_VARS:
        raise BadRequest(
            f'"{name}" is set by gossipmgr on every run (the lease epoch, holder and job '
            "it runs under, for fencing at the node); a client cannot set it"
        )


def parse_extra_vars(text_or_obj: object) -> dict[str, Any]:
    """Parse a request's ``extra_vars``: a string holding a JSON object (clusterm's wire form).

    ``None`` and ``""`` mean ``{}``; a mapping is copied. Anything else, including JSON that
    is not an object and the non-standard constants NaN/Infinity, raises
    :class:`~gossipmgr.errors.BadRequest` with clusterm's text
    ``"extra_vars" should be a valid json. Error: ...``; so does a key in FENCE_VARS
    (:func:`check_client_var`).
    """
    if text_or_obj is None or text_or_obj == "":
        return {}
    if isinstance(text_or_obj, Mapping):
        for name in text_or_obj:
            check_client_var(name)
        return dict(text_or_obj)
    if not isinstance(text_or_obj, str):
        raise BadRequest(
            f"{_EXTRA_VARS_ERROR}expected a string holding a JSON object, "
            f"got {type(text_or_obj).__name__}"
        )

    def reject_constant(name: str) -> Any:
        # Python's json accepts NaN/Infinity; JSON (and clusterm's Go decoder) does not.
        raise ValueError(f"invalid JSON constant {name}")

    try:
        value = json.loads(text_or_obj, parse_constant=reject_constant)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise BadRequest(f"{_EXTRA_VARS_ERROR}{exc}")
    if not isinstance(value, dict):
        raise BadRequest(f"{_EXTRA_VARS_ERROR}expected a JSON object, got {type(value).__name__}")
    for name in value:
        check_client_var(name)
    return value


def merge_extra_vars(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Merge extra-vars layers: later layers win, top-level keys overwrite, no deep merge.

    This is clusterm's rule (config < globals < request); a nested dict in a later layer
    replaces the earlier one whole, exactly as ansible's own ``--extra-vars`` would.
    """
    merged: dict[str, Any] = {}
    for layer in layers:
        merged.update(layer)
    return merged


def _config_layer(settings: AnsibleSettings) -> dict[str, Any]:
    return {**settings.extra_variables, **settings.client_extra_variables}


def build_inventory(
    hosts: Iterable[Host],
    settings: AnsibleSettings,
    globals_: Mapping[str, Any],
    request_vars: Mapping[str, Any],
) -> dict[str, Any]:
    """Build ansible's YAML/JSON inventory structure for the request's hosts (and only them).

    One group per host-group under ``all.children``; each host carries, later wins:
    ``settings.host_vars``; ``ansible_host``/``ansible_ssh_host``/``node_addr`` = addr and
    ``node_name`` (omitted when empty, as clusterm's discover did); then its fully merged
    extra-vars ``config < globals < node < request``. Raises
    :class:`~gossipmgr.errors.JobError` for a duplicate alias or an empty group or alias.
    """
    children: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for host in hosts:
        if not host.alias or not host.group:
            raise JobError(f"host {host!r} needs a non-empty alias and host-group")
        if host.alias in seen:
            raise JobError(f"duplicate inventory alias {host.alias!r}")
        seen.add(host.alias)
        host_vars: dict[str, Any] = dict(settings.host_vars)
        host_vars["ansible_host"] = host.addr
        host_vars["ansible_ssh_host"] = host.addr  # clusterm's name; pre-2.0 playbooks read it
        host_vars["node_addr"] = host.addr
        if host.name:
            host_vars["node_name"] = host.name
        # User extra-vars come last: under clusterm they were --extra-vars and beat
        # every inventory variable, so they must here too.
        host_vars.update(
            merge_extra_vars(_config_layer(settings), globals_, host.vars, request_vars)
        )
        group = children.setdefault(host.group, {"hosts": {}})
        group["hosts"][host.alias] = host_vars
    return {"all": {"children": children}}


def build_extra_vars(
    hosts: Iterable[Host],
    settings: AnsibleSettings,
    globals_: Mapping[str, Any],
    request_vars: Mapping[str, Any],
) -> dict[str, Any]:
    """The run's ``--extra-vars``: ``config < globals < request`` minus node-overridden keys.

    ansible has one extra-vars dict for all hosts, and extra-vars outrank inventory host
    vars. A key that some node sets (and the request does not) therefore must not be in
    it, or it would clobber that node's value; such keys travel only as host vars, where
    :func:`build_inventory` already put each host's fully merged value. Keys the request
    sets stay: the request beats a node's own vars anyway.
    """
    node_keys: set[str] = set()
    for host in hosts:
        node_keys.update(host.vars)
    overridden = node_keys - set(request_vars)
    merged = merge_extra_vars(_config_layer(settings), globals_, request_vars)
    return {k: v for k, v in merged.items() if k not in overridden}


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
    """clusterm's playbook sequences (contract §2). Raises JobError for an unknown kind.

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


# --------------------------------------------------------------------------- process trees


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime) of a live process from /proc/<pid>/stat; None if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the *last* ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19])  # fields 4 (ppid) and 22 (starttime) of proc(5)


def _process_table() -> dict[int, tuple[int, int]]:
    table: dict[int, tuple[int, int]] = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                st = _stat(int(entry.name))
                if st is not None:
                    table[int(entry.name)] = st
    return table


def process_tree(root: int) -> dict[int, int]:
    """``{pid: starttime}`` of ``root`` and all its live descendants, by ppid links."""
    table = _process_table()
    if root not in table:
        return {}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree[pid] = table[pid][1]
        todo.extend(children.get(pid, ()))
    return tree


def _open_pidfd(pid: int, starttime: int) -> int | None:
    """A pidfd for ``pid`` if it is still the process we walked (same starttime)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    # The pidfd pins the process; checking starttime *after* opening it rules out pid reuse.
    st = _stat(pid)
    if st is None or st[1] != starttime:
        os.close(fd)
        return None
    return fd


def _send(fds: Mapping[int, int], sig: signal.Signals) -> None:
    for fd in fds.values():
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass


def _wait_exit(fds: dict[int, int], timeout_s: float) -> None:
    """Wait until every pidfd reports exit (readable) or the timeout; drops exited ones."""
    deadline = time.monotonic() + timeout_s
    while fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        poller = select.poll()
        by_fd = {fd: pid for pid, fd in fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(left * 1000):
            os.close(fd)
            del fds[by_fd[fd]]


def kill_process_tree(
    root: int, grace_s: float = KILL_GRACE_S, reap_s: float = KILL_REAP_S
) -> list[int]:
    """Stop ``root`` and all its descendants; return the pids that were signalled.

    Blocking (call it from a thread). The tree is frozen first (SIGSTOP, walking again
    until no new member shows up) so that nothing forks or gets re-parented to init
    between the walk and the kill; then SIGTERM + SIGCONT, ``grace_s`` to exit, SIGKILL
    for the rest. Signals go through pidfds, so a recycled pid is never hit. Prior art:
    ansible-runner's ``Runner.handle_termination`` (killpg only, which misses setsid()
    workers) and psutil's ``Process.children(recursive=True)`` (same ppid walk).
    """
    fds: dict[int, int] = {}
    try:
        for _ in range(100):  # bounded: a fork bomb must not keep us here
            new = {p: s for p, s in process_tree(root).items() if p not in fds}
            if not new:
                break
            for pid, starttime in new.items():
                fd = _open_pidfd(pid, starttime)
                if fd is not None:
                    fds[pid] = fd
                    try:
                        signal.pidfd_send_signal(fd, signal.SIGSTOP)
                    except ProcessLookupError:
                        pass
        signalled = sorted(fds)
        _send(fds, signal.SIGTERM)
        _send(fds, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        _wait_exit(fds, grace_s)
        if fds:
            logger.info("ansible: SIGKILL for %s after %.1f s grace", sorted(fds), grace_s)
            _send(fds, signal.SIGKILL)
            _wait_exit(fds, reap_s)
        if fds:
            logger.warning("ansible: processes %s survived SIGKILL", sorted(fds))
        return signalled
    finally:
        for fd in fds.values():
            os.close(fd)


def _find_child(needle: str) -> int | None:
    """Our own child process whose command line contains ``needle`` (the run's private dir)."""
    me = os.getpid()
    for pid, (ppid, _) in _process_table().items():
        if ppid != me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            return pid
    return None


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
        pid = _find_child(str(self.private_dir))
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


def _cmdline(settings: AnsibleSettings) -> str:
    args: list[str] = []
    if settings.user:
        args += ["--user", settings.user]
    if settings.priv_key_file:
        args += ["--private-key", settings.priv_key_file]
    # ansible-runner shlex.split()s this string into argv; no shell ever sees it.
    return shlex.join(args)


def _envvars(private_dir: Path) -> dict[str, str]:
    roles_path = os.environ.get("ANSIBLE_ROLES_PATH") or _DEFAULT_ROLES_PATH
    return {
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


async def run_playbook(
    playbook: str,
    hosts: Iterable[Host],
    settings: AnsibleSettings,
    *,
    globals_: Mapping[str, Any],
    request_vars: Mapping[str, Any],
    log: Callable[[str], None],
    cancel: trio.Event,
    work_root: Path,
    product_vars: Mapping[str, Any] | None = None,
) -> PlaybookResult:
    """Run ``settings.playbook_dir / playbook`` on ``hosts`` and wait for it to finish.

    ``product_vars`` (a job's FENCE_VARS) are added to the extra-vars after every other
    layer, so nothing a client or operator set can override them. A step that the
    gossipmgr_fence module failed reports the module's ``fenced: ...`` message as its error.

    Never raises for the run's own outcome: a missing playbook file, a playbook failure,
    a cancel (``cancel`` set: status "canceled") and ``settings.timeout_s`` (status
    "timeout") are all reported in the result. Raises JobError for a bad host list
    (see :func:`build_inventory`). If the calling task is cancelled by trio, the run is
    stopped like a cancel and trio's Cancelled propagates. Either way the ansible-playbook
    process tree has exited when this returns.
    """
    hosts = list(hosts)
    playbook_dir = settings.playbook_dir.resolve()
    path = playbook_dir / playbook
    if cancel.is_set():
        return PlaybookResult(playbook, RC_NOT_RUN, "canceled", "cancelled before it started")
    if not path.is_file():
        error = f"playbook file not found: {path}"
        log(f"gossipmgr: {error}")
        return PlaybookResult(playbook, RC_NOT_RUN, "failed", error)
    # Every value from an API client goes to ansible marked unsafe (never templated).
    u_hosts, u_settings, u_globals, u_request = _unsafe_inputs(
        hosts, settings, globals_, request_vars
    )
    inventory = _mark_node_fields(build_inventory(u_hosts, u_settings, u_globals, u_request))
    extravars = build_extra_vars(u_hosts, u_settings, u_globals, u_request)
    extravars.update(product_vars or {})  # last: they beat every other layer

    work_root.mkdir(parents=True, exist_ok=True)
    private_dir = Path(tempfile.mkdtemp(prefix=f"{path.stem}-", dir=work_root))  # mode 0700
    _write_private_files(private_dir, extravars)
    control = _RunControl(private_dir, settings.timeout_s)
    token = trio.lowlevel.current_trio_token()

    def emit(lines: list[str]) -> None:
        for line in lines:
            log(line)

    fenced: list[str] = []  # the first fence refusal, as the module said it

    def on_event(event: Mapping[str, Any]) -> bool:
        # Runs in ansible-runner's thread, once per callback event and once per plain
        # stdout chunk ("verbose" events), as ansible writes them.
        if event.get("event") == "runner_on_failed" and not fenced:
            res = (event.get("event_data") or {}).get("res") or {}
            msg = res.get("msg") if isinstance(res, Mapping) else None
            if isinstance(msg, str) and msg.startswith(FENCED_PREFIX) and res.get("fenced"):
                fenced.append(msg)
        text = event.get("stdout")
        if text:
            try:
                trio.from_thread.run_sync(emit, text.splitlines(), trio_token=token)
            except Exception:  # a broken log sink must not kill the run
                logger.exception("ansible: log callback failed")
        return True  # keep ansible-runner's own job_events artifacts

    run_kwargs: dict[str, Any] = dict(
        private_data_dir=str(private_dir),
        project_dir=str(playbook_dir),  # cwd: an ansible.cfg there is honoured
        playbook=playbook,
        inventory=inventory,
        envvars=_envvars(private_dir),
        cmdline=_cmdline(settings),
        suppress_env_files=True,  # nothing leaks between runs through env/ files
        quiet=True,  # stdout goes to `log`, not to our own stdout
        event_handler=on_event,
        cancel_callback=control.poll,
    )

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

    names = ", ".join(h.alias for h in hosts)
    log(f"gossipmgr: running {path} on {names}")
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
    if control.outcome:
        status = control.outcome
    if status == "timeout":
        error = f"timed out after {settings.timeout_s:g} s"
    elif status == "canceled":
        error = "cancelled"
    elif status != "successful" and fenced:
        error = fenced[0]
        log(f"gossipmgr: {playbook}: {error}")
    elif status != "successful" and not error:
        error = f"ansible-playbook exited with rc {rc}"
    log(f"gossipmgr: {playbook}: {status} (rc {rc})")
    return PlaybookResult(playbook, rc, status, error)


# --------------------------------------------------------------------------- workflows


def _describe(step: PlaybookResult) -> str:
    text = f'playbook "{step.playbook}" failed (rc {step.rc})'
    if (
        step.status == "failed"
        and step.rc != RC_NOT_RUN
        and not step.error.startswith(FENCED_PREFIX)
    ):
        return text  # step.error would only repeat the rc
    return f"{text}: {step.error}"


async def run_workflow(
    kind: str,
    hosts: Iterable[Host],
    settings: AnsibleSettings,
    *,
    globals_: Mapping[str, Any],
    request_vars: Mapping[str, Any],
    log: Callable[[str], None],
    cancel: trio.Event,
    work_root: Path,
    product_vars: Mapping[str, Any] | None = None,
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
    plan = workflow_plan(kind, settings)
    host_list: Sequence[Host] = discover_hosts(hosts) if kind == "discover" else list(hosts)
    if not host_list:
        raise JobError(f"{kind}: no hosts given")
    build_inventory(host_list, settings, globals_, request_vars)  # fail early on bad hosts
    check_client_inputs(host_list, settings, globals_, request_vars)
    steps: list[PlaybookResult] = []
    common: dict[str, Any] = {
        "globals_": globals_,
        "request_vars": request_vars,
        "log": log,
        "work_root": work_root,
        "product_vars": product_vars,
    }

    async def run_path(playbooks: Sequence[str]) -> list[PlaybookResult]:
        # The failure/cancel path must run even though `cancel` is set, so it gets an
        # event of its own that nobody sets.
        done = []
        for pb in playbooks:
            log(f"gossipmgr: {kind}: running failure path {pb}")
            result = await run_playbook(pb, host_list, settings, cancel=trio.Event(), **common)
            steps.append(result)
            done.append(result)
        return done

    for step in plan.steps:
        result = await run_playbook(step.playbook, host_list, settings, cancel=cancel, **common)
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
