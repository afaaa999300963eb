"""The rolling upgrade: ``POST /upgrade/nodes`` (docs/api.md, "Rolling upgrade").

The body is checked here in full (as every workflow's: a 4xx never depends on where the
lease is), then the job runs on the holder (``JobManager.upgrade``), here or forwarded.
"""

from __future__ import annotations

from quart import Response

from gossipmgr.api.bodies import body_untrusted, client_vars, field_flag, field_str_list
from gossipmgr.api.openapi import EXTRA_VARS_REF, JOB_CODES, ApiBlueprint, Schema
from gossipmgr.api.routes.jobs import submit
from gossipmgr.core.upgrade import batch_size, check_max_fail
from gossipmgr.errors import BadRequest

bp = ApiBlueprint("upgrade", __name__)

UPGRADE_REQUEST = Schema(
    "UpgradeRequest",
    {
        "type": "object",
        "properties": {
            "nodes": {"type": "array", "items": {"type": "string"}},
            "all": {"type": "boolean", "description": "every Allocated node (not with nodes)"},
            "batch": {
                "description": "nodes per batch: N, or P% of the nodes (default 1)",
                "oneOf": [{"type": "integer", "minimum": 1}, {"type": "string"}],
            },
            "max_fail": {"type": "integer", "minimum": 0, "description": "default 0"},
            "extra_vars": EXTRA_VARS_REF,
            "queue": {"type": "boolean", "description": "wait in the job queue while a job runs"},
        },
    },
)


@bp.operation(
    "POST",
    "/upgrade/nodes",
    "Rolling upgrade of Allocated nodes in batches (job)",
    JOB_CODES,
    UPGRADE_REQUEST,
)
async def upgrade() -> Response:
    b = await body_untrusted()
    if field_flag(b, "check"):  # a dry run must never become a real upgrade
        raise BadRequest('"check" (check mode) is not offered for an upgrade')
    nodes, all_ = field_str_list(b, "nodes"), field_flag(b, "all")
    batch, max_fail = b.get("batch"), check_max_fail(b.get("max_fail"))
    batch_size(batch, 1)  # its form (N or P%), checked before forwarding
    ev = client_vars(b, "extra_vars")
    # run now, or queued (``"queue": true``) like every workflow: the options ride along
    return await submit(
        b, "upgrade", nodes=nodes, all_=all_, batch=batch, max_fail=max_fail, extra_vars=ev
    )
