"""Jobs: the workflows that run playbooks on the lease holder, and reading jobs and logs.

A workflow request is checked here in full (a 4xx never depends on where the lease is),
then run on the holder: here when this instance holds the lease, else forwarded to it
(:mod:`gossipmgr.api.forwarding`). Reads are served here, job logs too: every instance
holds every job's log in replicated chunks (``gossipmgr.runtime.joblog``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

from quart import Response, request

from gossipmgr.api.bodies import (
    body_untrusted,
    client_vars,
    field_flag,
    field_str,
    field_str_list,
)
from gossipmgr.api.boundary import json_response, jsonable, maybe_await
from gossipmgr.api.context import current_context
from gossipmgr.api.forwarding import forward, must_hold
from gossipmgr.api.openapi import EXTRA_VARS_REF, JOB_CODES, ApiBlueprint, Schema
from gossipmgr.errors import BadRequest

bp = ApiBlueprint("jobs", __name__)

LOG_CONTENT_TYPE = "text/plain; charset=utf-8"

NODES_REQUEST = Schema(
    "NodesRequest",
    {
        "type": "object",
        "properties": {
            "nodes": {"type": "array", "items": {"type": "string"}},
            "host_group": {"type": "string"},
            "extra_vars": EXTRA_VARS_REF,
            # check mode: show what the playbooks would change, change nothing (workflows.md)
            "check": {"type": "boolean", "default": False},
        },
    },
)
DISCOVER_REQUEST = Schema(
    "DiscoverRequest",
    {
        "type": "object",
        "properties": {
            "addrs": {"type": "array", "items": {"type": "string"}},
            "extra_vars": EXTRA_VARS_REF,
        },
    },
)
_MONITOR_NODE = {
    "type": "object",
    "properties": {
        "label": {"type": "string"},
        "serial": {"type": "string"},
        "addr": {"type": "string"},
    },
}
MONITOR_EVENT_REQUEST = Schema(
    "MonitorEventRequest",
    {
        "type": "object",
        "properties": {
            "monitor_event": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": ["discovered", "disappeared"]},
                    "nodes": {"type": "array", "items": _MONITOR_NODE},
                },
            }
        },
    },
)


async def run_job(call: Callable[[], Any]) -> Response:
    """Run a job manager call here; a job id answers as ``{"job": id}``."""
    res = jsonable(await maybe_await(call()))
    if isinstance(res, dict):
        return json_response(res)
    if isinstance(res, str):
        return json_response({"job": res})
    return json_response({})


async def on_holder(call: Callable[[], Any], *, needs_serf: bool = True) -> Response:
    """Run a checked request's job manager call (:func:`run_job`) when this instance holds
    the lease (and, with ``needs_serf``, reaches Serf); else forward it to the holder."""
    if not must_hold(needs_serf=needs_serf):
        return await forward()
    return await run_job(call)


def _nodes_request(b: dict[str, Any]) -> tuple[list[str], str, dict[str, Any]]:
    """A commission/update body, checked in this order: nodes, host_group, extra_vars."""
    return field_str_list(b, "nodes"), field_str(b, "host_group"), client_vars(b, "extra_vars")


@bp.operation(
    "POST",
    "/commission/nodes",
    "Commission nodes (runs a job on the lease holder)",
    JOB_CODES,
    NODES_REQUEST,
)
async def commission() -> Response:
    b = await body_untrusted()
    (nodes, hg, ev), check = _nodes_request(b), field_flag(b, "check")
    return await on_holder(lambda: current_context().jobs.commission(nodes, hg, ev, check=check))


@bp.operation("POST", "/decommission/nodes", "Decommission nodes (job)", JOB_CODES, NODES_REQUEST)
async def decommission() -> Response:
    b = await body_untrusted()
    nodes, ev = field_str_list(b, "nodes"), client_vars(b, "extra_vars")
    check = field_flag(b, "check")
    return await on_holder(lambda: current_context().jobs.decommission(nodes, ev, check=check))


@bp.operation("POST", "/update/nodes", "Update nodes (job)", JOB_CODES, NODES_REQUEST)
async def update() -> Response:
    b = await body_untrusted()
    (nodes, hg, ev), check = _nodes_request(b), field_flag(b, "check")
    return await on_holder(lambda: current_context().jobs.update(nodes, hg, ev, check=check))


@bp.operation(
    "POST", "/discover/nodes", "Discover nodes by address (job)", JOB_CODES, DISCOVER_REQUEST
)
async def discover() -> Response:
    b = await body_untrusted()
    addrs, ev = field_str_list(b, "addrs"), client_vars(b, "extra_vars")
    return await on_holder(lambda: current_context().jobs.discover(addrs, ev))


@bp.operation("POST", "/job/cancel", "Cancel the active job (holder)", JOB_CODES)
async def job_cancel() -> Response:
    await body_untrusted(required=False)
    return await on_holder(lambda: current_context().jobs.cancel(), needs_serf=False)


@bp.operation(
    "POST",
    "/monitor/event",
    "Inject a discovered/disappeared event (holder)",
    JOB_CODES,
    MONITOR_EVENT_REQUEST,
)
async def monitor_event() -> Response:
    b = await body_untrusted()
    ev = b.get("monitor_event")
    if not isinstance(ev, dict):
        raise BadRequest('"monitor_event" must be an object {"name", "nodes"}')
    name = field_str(ev, "name")
    nodes = ev.get("nodes") or []
    if not isinstance(nodes, list) or not all(
        isinstance(n, dict) and all(isinstance(v, str) for v in n.values()) for n in nodes
    ):
        raise BadRequest(
            '"monitor_event.nodes" must be an array of {"label", "serial", "addr"} strings'
        )
    return await on_holder(
        lambda: current_context().jobs.set_monitor_event(name, nodes), needs_serf=False
    )


@bp.operation("GET", "/info/job/<job>", "A job: active, last or an id", (200, 400, 401, 404))
async def info_job(job: str) -> Response:
    return json_response(jsonable(await maybe_await(current_context().jobs.job(job))))


@bp.operation("GET", "/info/jobs", "Job history", (200, 401))
async def info_jobs() -> Response:
    res = jsonable(await maybe_await(current_context().jobs.jobs()))
    if isinstance(res, dict):
        res = list(res.values())
    return json_response({"jobs": [jsonable(j) for j in res]})


def log_offset() -> int:
    """The ``offset`` query parameter: the number of the first line wanted (0-based, the
    count of lines a client already has). Raises BadRequest for anything else."""
    raw = request.args.get("offset", "0")
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest(f'"offset" must be a line number (0 or more), not {raw!r}')
    return int(raw)


@bp.operation(
    "GET",
    "/info/logs/<job>",
    "A job's log from the replicated chunks, streamed live while it runs; "
    "?offset=N starts at line N (0-based)",
    (200, 400, 401, 404, 409),
    query={"offset": "the number of the first line wanted, 0-based (default 0)"},
)
async def info_logs(job: str) -> Any:
    ctx = current_context()
    offset = log_offset()
    # follow() validates eagerly: 400 bad label, 404 unknown id, 409 "job is not
    # Running" for "active" when none is (clusterm's answer).
    lines = ctx.jobs.follow(job, offset)
    info = jsonable(await maybe_await(ctx.jobs.job(job)))
    job_id = str(info.get("id") or job) if isinstance(info, dict) else job
    headers = {
        "Content-Type": LOG_CONTENT_TYPE,
        "X-Job-Id": job_id,
        "X-Log-Offset": str(offset),
        "Cache-Control": "no-cache",
    }
    return _encoded(lines), 200, headers


async def _encoded(lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for line in lines:
        yield (line.rstrip("\n") + "\n").encode()
