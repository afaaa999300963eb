"""Global extra-vars: replicated settings any instance writes (LWW, no lease needed).

A write commits locally through :meth:`Replica.commit`, which returns once the delta is
durable on this instance's disk; only then does the route answer. Replacing the whole map
(clusterm's POST /globals) writes the new variables and tombstones the others. A batch
(PATCH /globals, a JSON merge patch of the globals: ``{name: value | null}``) sets and
removes many in one delta: one record, one fsync, one answer, all of it or nothing.
"""

from __future__ import annotations

from typing import Any

from quart import Response

from gossipmgr.api.bodies import (
    JSON_MIMETYPE,
    MERGE_PATCH_MIMETYPE,
    body_untrusted,
    check_client_vars,
    check_key,
    check_value_untrusted,
    client_vars,
)
from gossipmgr.api.boundary import json_response
from gossipmgr.api.context import current_context, current_replica
from gossipmgr.api.hot import delete_one, get_one, globals_json, put_one
from gossipmgr.api.openapi import (
    EXTRA_VARS_REQUEST,
    VALUE_REQUEST,
    WRITE_CODES,
    ApiBlueprint,
    Schema,
)
from gossipmgr.core.codec import MAX_BATCH_BYTES, MAX_BATCH_KEYS
from gossipmgr.errors import ValueTooLarge
from gossipmgr.runtime.ansible import check_client_var

bp = ApiBlueprint("globals", __name__)


#: The ``{key}`` of ``/globals/{key}``, as the OpenAPI document describes it.
KEY_PARAM = {
    "key": "the variable's name, percent-encoded or not: the rest of the path, '/' included "
    "(leading, trailing or doubled ones too); not empty, at most 256 characters"
}


@bp.operation("POST", "/globals", "Replace every global extra-var", WRITE_CODES, EXTRA_VARS_REQUEST)
async def globals_replace() -> Response:
    b = await body_untrusted()
    new = client_vars(b, "globals")
    rep = current_replica()
    await rep.commit(lambda s, ts: s.d_replace_globals(new, ts))
    return json_response({"extra_vars": rep.state.globals()})


#: The body of PATCH /globals: a JSON merge patch (RFC 7396) of the globals, one level deep.
PATCH_REQUEST = Schema(
    "GlobalsPatch",
    {
        "type": "object",
        "description": "variable name -> its new value (any JSON), or null to remove it",
        "additionalProperties": {},
        "maxProperties": MAX_BATCH_KEYS,
    },
)


def checked_patch(body: dict[str, Any]) -> dict[str, Any]:
    """Every name and value of a batch checked before anything is written, with the rules
    and texts of PUT /globals/{key}: 413 over ``MAX_BATCH_KEYS`` variables, 400/422 for a
    name, 403/400 for one an API client may not set, 413/422 for a value."""
    if len(body) > MAX_BATCH_KEYS:
        raise ValueTooLarge(
            f"the batch changes {len(body)} variables, more than the limit of {MAX_BATCH_KEYS}"
        )
    for name, v in body.items():
        check_key("extra-var", name)
        check_client_var(name)
        check_value_untrusted(name, f"variable name {name[:40]!r}")
        if v is not None:
            check_value_untrusted(v, f'"{name[:40]}"')
    check_client_vars(body, "globals")
    return body


@bp.operation(
    "PATCH",
    "/globals",
    "Set and remove several global extra-vars in one write",
    WRITE_CODES,
    PATCH_REQUEST,
)
async def globals_patch() -> Response:
    changes = checked_patch(await body_untrusted(mimetypes=(JSON_MIMETYPE, MERGE_PATCH_MIMETYPE)))
    rep = current_replica()
    novel = await rep.commit(
        lambda s, ts: s.d_patch_globals(changes, ts), max_bytes=MAX_BATCH_BYTES
    )
    deleted = sum(1 for _, e in novel.items() if e.deleted)
    return json_response({"set": len(novel) - deleted, "deleted": deleted})


# The single-key routes and GET /info/globals are written once, over the context, in
# ``api.hot`` (Quart-free): the views below, the fast path and the front call the same
# functions, so all apply the
# same checks, in the same order, with the same texts.


@bp.operation(
    "GET", "/globals/<key:key>", "One global extra-var", (200, 401, 404), params=KEY_PARAM
)
async def global_get(key: str) -> Response:
    return json_response(await get_one(current_context(), key))


@bp.operation(
    "PUT",
    "/globals/<key:key>",
    "Set one global extra-var",
    WRITE_CODES,
    VALUE_REQUEST,
    params=KEY_PARAM,
)
async def global_put(key: str) -> Response:
    return json_response(await put_one(current_context(), key, body_untrusted))


@bp.operation(
    "DELETE",
    "/globals/<key:key>",
    "Remove one global extra-var",
    (200, 401, 404, 503),
    params=KEY_PARAM,
)
async def global_delete(key: str) -> Response:
    return json_response(await delete_one(current_context(), key))


@bp.operation("GET", "/info/globals", "Global extra-vars", (200, 401))
async def info_globals() -> Response:
    return json_response(globals_json(current_context()))
