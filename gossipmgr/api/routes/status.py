"""This instance and its peers: liveness and health (the one route open without a token),
the gossipmgr instances it knows, and its metrics."""

from __future__ import annotations

from quart import Response

from gossipmgr.api.boundary import OPEN_PATH, json_response
from gossipmgr.api.context import current_context
from gossipmgr.api.hot import health_json, lease_json
from gossipmgr.api.openapi import ApiBlueprint
from gossipmgr.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE

bp = ApiBlueprint("status", __name__)


@bp.operation("GET", OPEN_PATH, "Liveness and health, no auth", (200,), public=True)
async def health() -> Response:
    return json_response(health_json(current_context()))


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
