"""The lease: who runs jobs now, and the operator's way out of a forged or stuck one."""

from __future__ import annotations

import logging

from quart import Response

from gossipmgr.api.bodies import body_untrusted
from gossipmgr.api.boundary import json_response
from gossipmgr.api.context import current_replica
from gossipmgr.api.hot import lease_json
from gossipmgr.api.openapi import ApiBlueprint
from gossipmgr.core.codec import MAX_KEY_PART
from gossipmgr.core.lease import reset as reset_lease
from gossipmgr.core.lease import take as take_lease
from gossipmgr.core.state import LEASE_KEY
from gossipmgr.errors import BadRequest, Conflict

log = logging.getLogger("gossipmgr.api")

bp = ApiBlueprint("lease", __name__)


@bp.operation("GET", "/info/lease", "The lease", (200, 401))
async def info_lease() -> Response:
    rep = current_replica()
    lj = lease_json(rep.lease(), rep.now_ms())
    return json_response(
        {
            "lease": lj,
            "self": rep.name,
            "is_holder": rep.is_holder(),
            "quorum": rep.quorum.as_json(),
        }
    )


@bp.operation(
    "POST",
    "/lease/reset",
    "Vacate the lease one epoch up (body optional: {force})",
    (200, 400, 401, 409, 415, 503),
)
async def lease_reset() -> Response:
    """The operator's way out of a forged or stuck lease (docs/design.md)."""
    rep = current_replica()
    b = await body_untrusted(required=False)
    force = b.get("force", False)
    if not isinstance(force, bool):
        raise BadRequest('"force" must be true or false')
    before = rep.lease()
    new = reset_lease(before, rep.candidates, rep.now_ms(), rep.state.max_record_epoch, force)
    value = new.as_value()
    await rep.commit(lambda s, ts: s.d_set(LEASE_KEY, value, ts))
    log.warning(
        "%s: lease reset by an API client: %s -> vacant at epoch %d",
        rep.name,
        f"{before.holder!r} epoch {before.epoch}" if before else "none",
        new.epoch,
    )
    now_ms = rep.now_ms()
    return json_response({"lease": lease_json(new, now_ms), "previous": lease_json(before, now_ms)})


@bp.operation(
    "POST",
    "/lease/take",
    "Hold the lease here without a majority (body: {force: true, by})",
    (200, 400, 401, 409, 415, 503),
)
async def lease_take() -> Response:
    """The operator's override of the majority rule (docs/design.md, "The lease"): this
    instance holds the lease one epoch above everything seen, recording who forced it."""
    rep = current_replica()
    b = await body_untrusted(required=False)
    force, by = b.get("force", False), b.get("by", "")
    if not isinstance(force, bool):
        raise BadRequest('"force" must be true or false')
    if not isinstance(by, str) or len(by) > MAX_KEY_PART:
        raise BadRequest(f'"by" must be a string of at most {MAX_KEY_PART} characters')
    if not force:
        raise Conflict(
            f"taking the lease overrides the majority rule ({rep.quorum.describe()}); "
            "pass force to take it anyway"
        )
    before = rep.lease()
    new = take_lease(
        rep.name,
        before,
        rep.candidates,
        rep.now_ms(),
        rep.lease_cfg,
        by,
        rep.state.max_record_epoch,
    )
    value = new.as_value()
    await rep.commit(lambda s, ts: s.d_set(LEASE_KEY, value, ts))
    log.warning(
        "%s: lease taken by force (by %s; %s): %s -> epoch %d",
        rep.name,
        new.forced_by,
        rep.quorum.describe(),
        f"{before.holder!r} epoch {before.epoch}" if before else "none",
        new.epoch,
    )
    now_ms = rep.now_ms()
    return json_response({"lease": lease_json(new, now_ms), "previous": lease_json(before, now_ms)})
