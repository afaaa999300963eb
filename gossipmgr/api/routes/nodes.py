"""Nodes: reading the inventory, a node's own settings (extra-vars, host-group), and the
fenced inventory writes (import, forget) that run on the lease holder.

Every node route takes ``<path:name>``: a node name may hold "/" (a label from Serf tags or
a monitor event); it is still addressed by name (or by address, ``inventory.get_node``).
A node's settings are plain LWW entries: any instance writes them, no lease needed, so
they are not forwarded. Inventory records are epoch-fenced: written by the holder under
its lease epoch, so import and forget are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quart import Response, request

from gossipmgr.api.bodies import (
    body_untrusted,
    check_client_vars,
    check_key,
    client_vars,
    field_flag,
    field_str,
    field_value,
)
from gossipmgr.api.boundary import json_response, maybe_await
from gossipmgr.api.context import current_context, current_replica
from gossipmgr.api.openapi import (
    EXTRA_VARS_REQUEST,
    JOB_CODES,
    VALUE_REQUEST,
    WRITE_CODES,
    ApiBlueprint,
    Schema,
)
from gossipmgr.api.routes.jobs import on_holder
from gossipmgr.core.history import DEFAULT_LIMIT
from gossipmgr.core.inventory import find_node, get_node, node_json, node_missing
from gossipmgr.core.inventory_import import check_import_entries
from gossipmgr.core.node import NodeRecord
from gossipmgr.errors import BadRequest, NotFound

bp = ApiBlueprint("nodes", __name__)

HOST_GROUP_REQUEST = Schema(
    "HostGroupRequest",
    {
        "type": "object",
        "properties": {"host_group": {"type": "string"}},
        "required": ["host_group"],
    },
)
_IMPORT_ENTRY = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "status": {"type": "string"},
        "host_group": {"type": "string"},
    },
    "required": ["name", "status"],
}
IMPORT_REQUEST = Schema(
    "ImportRequest",
    {
        "type": "object",
        "properties": {
            "nodes": {"type": "array", "items": _IMPORT_ENTRY},
            "dry_run": {"type": "boolean"},
        },
        "required": ["nodes"],
    },
)


def node_response(ident: str) -> Response:
    """The node named (or addressed) ``ident`` as JSON; NotFound (404) when unknown."""
    return json_response(node_json(get_node(current_replica().state, ident)))


async def write_node(ident: str, write: Callable[[NodeRecord], Any]) -> Response:
    """Resolve the node ``ident`` (NotFound, 404), write one of its settings with
    ``write(record)`` (its job manager call) and answer the node as it is then."""
    rec = get_node(current_replica().state, ident)
    await maybe_await(write(rec))
    return node_response(rec.name)


@bp.operation("GET", "/info/node/<path:name>", "One node", (200, 401, 404))
async def info_node(name: str) -> Response:
    return node_response(name)


@bp.operation(
    "GET",
    "/info/node/<path:name>/history",
    "A node's history, newest first (?limit=N, at most node_history_limit)",
    (200, 400, 401, 404),
    query={"limit": "how many entries, newest first: 1 to node_history_limit (the default)"},
)
async def info_node_history(name: str) -> Response:
    bound = int(getattr(current_context(), "history_limit", DEFAULT_LIMIT))
    limit = _limit(request.args.get("limit"), bound)
    state = current_replica().state
    rec = find_node(state, name)  # by name or management address; forgotten: by name
    node = rec.name if rec is not None else name
    if rec is None and not state.has_history(node):
        raise NotFound(node_missing(name))
    return json_response({"name": node, "limit": limit, "history": state.history(node, limit)})


def _limit(text: str | None, bound: int) -> int:
    """``?limit=``: 1 to ``bound`` (default ``bound``). Raises BadRequest."""
    if text is None:
        return max(bound, 1)
    # ASCII digits only, and few: str.isdigit() also takes "²" (int() refuses it) and
    # int() refuses more than 4,300 digits; either would be a 500
    ok = text.isascii() and text.isdigit() and len(text) <= 6
    if not ok or not 1 <= int(text) <= max(bound, 1):
        raise BadRequest(f"limit must be a whole number from 1 to {max(bound, 1)}, not {text!r}")
    return int(text)


@bp.operation("GET", "/info/nodes", "Every node, by name", (200, 401))
async def info_nodes() -> Response:
    return json_response({rec.name: node_json(rec) for rec in current_replica().state.nodes()})


@bp.operation(
    "POST",
    "/node/<path:name>/host_group",
    "Set a node's host-group (holder)",
    JOB_CODES,
    HOST_GROUP_REQUEST,
)
async def node_host_group(name: str) -> Response:
    # A host-group is a plain LWW entry (jobs.JobManager.set_host_group): any instance
    # may write it, no lease needed, so it is not forwarded.
    b = await body_untrusted()
    if "host_group" not in b:
        raise BadRequest('"host_group" is required')
    hg = field_str(b, "host_group")
    return await write_node(name, lambda rec: current_context().jobs.set_host_group(rec.name, hg))


@bp.operation(
    "POST",
    "/node/<path:name>/extra_vars",
    "Replace a node's own extra-vars",
    WRITE_CODES,
    EXTRA_VARS_REQUEST,
)
async def node_vars_replace(name: str) -> Response:
    b = await body_untrusted()
    new = client_vars(b, f"node {name}")
    return await write_node(name, lambda rec: current_context().jobs.set_node_vars(rec.name, new))


@bp.operation(
    "PUT",
    "/node/<path:name>/extra_vars/<key>",
    "Set one of a node's extra-vars",
    WRITE_CODES,
    VALUE_REQUEST,
)
async def node_var_put(name: str, key: str) -> Response:
    check_key("extra-var", key)
    v = field_value(await body_untrusted())
    check_client_vars({key: v}, f"node {name}")
    return await write_node(name, lambda rec: current_context().jobs.set_node_var(rec.name, key, v))


@bp.operation(
    "DELETE",
    "/node/<path:name>/extra_vars/<key>",
    "Remove one of a node's extra-vars",
    (200, 401, 404, 503),
)
async def node_var_delete(name: str, key: str) -> Response:
    def remove(rec: NodeRecord) -> Any:
        if key not in rec.vars:
            raise NotFound(f'node "{rec.name}" has no extra-var "{key}"')
        return current_context().jobs.remove_node_var(rec.name, key)

    return await write_node(name, remove)


@bp.operation(
    "POST",
    "/node/<path:name>/forget",
    "Remove a node from the inventory (holder, fenced)",
    JOB_CODES,
)
async def node_forget(name: str) -> Response:
    b = await body_untrusted(required=False)
    force = field_flag(b, "force")
    return await on_holder(
        lambda: current_context().jobs.forget_node(name, force=force), needs_serf=False
    )


@bp.operation(
    "POST",
    "/inventory/import",
    "Set imported node statuses and host-groups (holder, fenced)",
    JOB_CODES,
    IMPORT_REQUEST,
)
async def inventory_import() -> Response:
    b = await body_untrusted()
    entries = b.get("nodes")
    check_import_entries(entries)  # a 400 here, before any forwarding
    dry_run = field_flag(b, "dry_run")
    return await on_holder(
        lambda: current_context().jobs.import_inventory(entries, dry_run=dry_run),
        needs_serf=False,
    )
