"""This instance and its peers: liveness and health (the one route open without a token),
the gossipmgr instances it knows, and its metrics."""

from __future__ import annotations

from typing import Any

from quart import Response

from gossipmgr.api.boundary import OPEN_PATH, json_response
from gossipmgr.api.context import current_context
from gossipmgr.api.openapi import ApiBlueprint
from gossipmgr.api.routes.lease import lease_json
from gossipmgr.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

bp = ApiBlueprint("status", __name__)


@bp.operation("GET", OPEN_PATH, "Liveness and health, no auth", (200,), public=True)
async def health() -> Response:
    ctx = current_context()
    rep = ctx.replica
    body: dict[str, Any] = {
        "status": "serving",
        "name": rep.name,
        "serf": {"healthy": ctx.serf_healthy()},
        "lease": lease_json(rep.lease(), rep.now_ms()),
        "is_holder": rep.is_holder(),
        # the majority rule (core/quorum.py): may this instance hold the lease?
        "quorum": rep.quorum.as_json(),
        "durability": {
            "data_dir": str(rep.data_dir) if rep.data_dir is not None else None,
            "writes": rep.counters.get("writes", 0),
            "write_errors": rep.counters.get("write_errors", 0),
        },
    }
    for key, value in ctx.health().items():
        # The context adds detail; nested sections merge instead of replacing ours.
        if isinstance(value, dict) and isinstance(body.get(key), dict):
            body[key] = {**body[key], **value}
        else:
            body[key] = value
    return json_response(body)


@bp.operation("GET", "/info/peers", "gossipmgr instances and the lease", (200, 401))
async def info_peers() -> Response:
    ctx = current_context()
    rep = ctx.replica
    return json_response(
        {
            "self": rep.name,
            "peers": ctx.peers(),
            "lease": lease_json(rep.lease(), rep.now_ms()),
            "quorum": rep.quorum.as_json(),
        }
    )


@bp.operation("GET", "/metrics", "Prometheus metrics", (200, 401))
async def metrics() -> Response:
    return Response(current_context().metrics_text(), status=200, content_type=METRICS_CONTENT_TYPE)
