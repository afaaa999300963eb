"""What the ansible bridge gives ansible, and what it refuses: pure, no disk, no processes.

* Settings and hosts: :class:`AnsibleSettings` (the config's ansible section, as the runner
  needs it), :class:`Host` (one node of a request).
* The client-variable policy (docs/security.md): :func:`refused_client_vars` names what an
  API client may not set, :func:`check_client_var` refuses the product's own FENCE_VARS,
  :func:`mark_unsafe` wraps every client string so ansible never templates it.
* Precedence (docs/ansible.md): :func:`parse_extra_vars`, :func:`merge_extra_vars`,
  :func:`build_inventory` and :func:`build_extra_vars` turn a request into ansible's inputs;
  :func:`unsafe_inputs` and :func:`mark_node_fields` mark the client layers in them.
"""

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from gossipmgr.errors import BadRequest, JobError

#: Extra-vars the product sets on every run of a job, after every client layer (so none
#: can override them) and that no client may set: the lease epoch the job runs under, the
#: holder running it and the job's id. The gossipmgr_fence role compares the epoch on each
#: node (docs/ansible.md, "Fencing at the node").
FENCE_VARS: Final = ("gossipmgr_epoch", "gossipmgr_holder", "gossipmgr_job")

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
    """The config's ansible section, as the runner needs it (docs/operations.md)."""

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
    # After each batch of a rolling upgrade, how long its nodes may take to be Discovered
    # again (Serf); a node not back by then counts as failed (gossipmgr.runtime.upgrade).
    upgrade_wait_s: float = 300.0
    # Config-layer extra-vars set through the API (POST /config), on top of
    # ``extra_variables`` (the operator's file). Client values: checked and marked unsafe.
    client_extra_variables: Mapping[str, Any] = field(default_factory=dict)
    # Names the operator lets API clients set although :func:`refused_client_vars` would
    # refuse them (config file ``[ansible] allow_client_vars``; never settable by the API).
    allowed_client_vars: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class RunInputs:
    """What a run's inventory and extra-vars are made of: its ``hosts`` (each with its node's
    own vars), the operator's ``settings``, the global extra-vars and the request's; and
    ``check``: run in ansible's check and diff modes (a check job, ``core.checkmode``)."""

    hosts: Sequence[Host]
    settings: AnsibleSettings
    globals_: Mapping[str, Any]
    request_vars: Mapping[str, Any]
    check: bool = False


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


def _tagged_keys(path: str, value: Any) -> list[str]:
    """The paths (``top.key``, ``top[0].key``) of the mapping keys in ``value``, at any
    depth, that start with ``__ansible_`` (case-insensitively)."""
    found: list[str] = []
    # Iterative: a deeply nested hostile value must not exhaust the Python stack.
    stack = [(path, value)]
    while stack:
        p, v = stack.pop()
        if isinstance(v, list | tuple):
            stack.extend((f"{p}[{i}]", sub) for i, sub in enumerate(v))
        if not isinstance(v, Mapping):
            continue
        for k, sub in v.items():
            if isinstance(k, str) and k.lower().startswith("__ansible_"):
                found.append(f"{p}.{k}")
            stack.append((f"{p}.{k}", sub))
    return found


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
    for name, value in variables.items():
        low = str(name).lower()
        reserved = low.startswith(RESERVED_PREFIXES) or low in MAGIC_VARS or low in OPERATOR_VARS
        if name not in allowed and reserved:
            bad.append(str(name))
        bad += _tagged_keys(str(name), value)
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


def check_client_inputs(inputs: RunInputs) -> None:
    """Defence in depth at run time: raise JobError naming any refused client variable.

    The API refuses them on the way in; this catches records that arrived by gossip from
    an older or hostile instance (globals, node vars, the replicated config section).
    """
    allowed = inputs.settings.allowed_client_vars
    layers: list[tuple[str, Mapping[str, Any]]] = [
        ("config extra_variables (POST /config)", inputs.settings.client_extra_variables),
        ("globals", inputs.globals_),
        ("request extra_vars", inputs.request_vars),
    ]
    layers += [(f"node {h.name or h.addr} extra_vars", h.vars) for h in inputs.hosts]
    for where, layer in layers:
        bad = refused_client_vars(layer, allowed)
        if bad:
            raise JobError(f"refused to run: {client_vars_error(bad, where)}")


def unsafe_inputs(inputs: RunInputs) -> RunInputs:
    """The client layers marked unsafe; the operator's (file extra_variables, host_vars)
    stay templatable."""
    settings = inputs.settings
    marked_hosts = [replace(h, vars=mark_unsafe(dict(h.vars))) for h in inputs.hosts]
    config_layer = {**settings.extra_variables, **mark_unsafe(settings.client_extra_variables)}
    marked_settings = replace(settings, extra_variables=config_layer, client_extra_variables={})
    return RunInputs(
        marked_hosts,
        marked_settings,
        mark_unsafe(dict(inputs.globals_)),
        mark_unsafe(dict(inputs.request_vars)),
    )


#: Host vars gossipmgr sets from a node's record. Their values come from Serf tags
#: (NodeAddr, NodeLabel, NodeSerial: any Serf key holder, managed nodes included), from
#: POST /monitor/event and from discover's addresses: client values too.
NODE_FIELDS: Final = ("ansible_host", "ansible_ssh_host", "node_addr", "node_name")


def mark_node_fields(inventory: dict[str, Any]) -> dict[str, Any]:
    """The inventory with :data:`NODE_FIELDS` marked unsafe (in place; returned)."""
    for group in inventory["all"]["children"].values():
        for host_vars in group["hosts"].values():
            for k in NODE_FIELDS:
                if isinstance(host_vars.get(k), str):
                    host_vars[k] = mark_unsafe(host_vars[k])
    return inventory


# --------------------------------------------------------------------------- precedence


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


def build_inventory(inputs: RunInputs) -> dict[str, Any]:
    """Build ansible's YAML/JSON inventory structure for the request's hosts (and only them).

    One group per host-group under ``all.children``; each host carries, later wins:
    ``settings.host_vars``; ``ansible_host``/``ansible_ssh_host``/``node_addr`` = addr and
    ``node_name`` (omitted when empty, as clusterm's discover did); then its fully merged
    extra-vars ``config < globals < node < request``. Raises
    :class:`~gossipmgr.errors.JobError` for a duplicate alias or an empty group or alias.
    """
    settings = inputs.settings
    children: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for host in inputs.hosts:
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
            merge_extra_vars(
                _config_layer(settings), inputs.globals_, host.vars, inputs.request_vars
            )
        )
        group = children.setdefault(host.group, {"hosts": {}})
        group["hosts"][host.alias] = host_vars
    return {"all": {"children": children}}


def build_extra_vars(inputs: RunInputs) -> dict[str, Any]:
    """The run's ``--extra-vars``: ``config < globals < request`` minus node-overridden keys.

    ansible has one extra-vars dict for all hosts, and extra-vars outrank inventory host
    vars. A key that some node sets (and the request does not) therefore must not be in
    it, or it would clobber that node's value; such keys travel only as host vars, where
    :func:`build_inventory` already put each host's fully merged value. Keys the request
    sets stay: the request beats a node's own vars anyway.
    """
    node_keys: set[str] = set()
    for host in inputs.hosts:
        node_keys.update(host.vars)
    overridden = node_keys - set(inputs.request_vars)
    merged = merge_extra_vars(_config_layer(inputs.settings), inputs.globals_, inputs.request_vars)
    return {k: v for k, v in merged.items() if k not in overridden}
