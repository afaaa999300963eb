"""The hottest routes, written once over the context and without the web stack:
``GET|PUT|DELETE /globals/{key}``, ``GET /info/globals`` and ``GET /health``.

Three callers: Quart's views (``routes.global_vars``, ``routes.status``), the fast path in
front of Quart's machinery (``api.fastpath``, under hypercorn: the single-key routes only)
and the front server that answers them all before hypercorn (``api.front``). They apply
the same checks, in the same order, with the same texts, and :func:`answer` makes the
same response from them: the status, the body and the headers Quart's
``json_response``/``error_response`` carry.
Quart-free on purpose (``tests/test_startup.py`` checks it): the front serves from the
moment the agent's socket is bound, before Quart, flask, werkzeug, jinja2 and hypercorn
are imported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gossipmgr.api.policy import (
    INTERNAL_ERROR_TEXT,
    OPEN_PATH,
    authorize,
    error_headers,
    json_body,
    refusal,
    status_refusal,
)
from gossipmgr.api.values import (
    JSON_MIMETYPE,
    check_client_vars_of,
    check_key,
    field_value,
    mimetype_of,
    parse_body_untrusted,
)
from gossipmgr.core.lease import Lease
from gossipmgr.core.state import global_key
from gossipmgr.errors import GossipmgrError, NotFound
from gossipmgr.runtime.ansible import check_client_var

if TYPE_CHECKING:
    from gossipmgr.api.context import ApiContext

log = logging.getLogger("gossipmgr.api")

#: The path the single-key routes share; the rest of the path is the key.
PREFIX = "/globals/"
#: The ``<key:key>`` converter's regex (``openapi.AnyPathConverter``): the rest of the path,
#: "/" included. werkzeug compiles a rule's regex without flags: a key holding a newline is
#: not matched (Quart answers 404).
KEY_REGEX = ".+"
KEY = re.compile(KEY_REGEX)
HEALTH = OPEN_PATH
#: Every global extra-var at once (a restarted instance's catch-up, operators' scripts).
INFO_GLOBALS = "/info/globals"

#: A response: its status, its body and its headers (lower-case names, as Quart sends them).
Answer = tuple[int, bytes, list[tuple[bytes, bytes]]]
#: The request body as a JSON object, read once the key has passed its checks.
ReadBody = Callable[[], Awaitable[dict[str, Any]]]
_JSON = JSON_MIMETYPE.encode()


class BodyTooLarge(Exception):
    """The body is over ``MAX_BODY_BYTES``: raised when the route reads it, as Quart's
    request raises its 413 (after the key's checks)."""


def _unknown(key: str) -> NotFound:
    return NotFound(f'global extra-var "{key}" doesn\'t exist')


async def get_one(ctx: ApiContext, key: str) -> dict[str, Any]:
    """GET /globals/{key}: 404 for a variable that does not exist."""
    state = ctx.replica.state
    if not state.has_global(key):
        raise _unknown(key)
    return {"key": key, "value": state.global_value(key)}


async def put_one(ctx: ApiContext, key: str, read_body: ReadBody) -> dict[str, Any]:
    """PUT /globals/{key}: the key's checks, then the body's, then one durable commit."""
    check_key("extra-var", key)
    check_client_var(key)
    v = field_value(await read_body())
    check_client_vars_of(ctx, {key: v}, "globals")
    await ctx.replica.commit(lambda s, ts: s.d_set(global_key(key), v, ts))
    return {"key": key, "value": v}


async def delete_one(ctx: ApiContext, key: str) -> dict[str, Any]:
    """DELETE /globals/{key}: 404 for a variable that does not exist."""
    rep = ctx.replica
    if not rep.state.has_global(key):
        raise _unknown(key)
    await rep.commit(lambda s, ts: s.d_remove(global_key(key), ts))
    return {"key": key, "deleted": True}


def globals_json(ctx: ApiContext) -> dict[str, Any]:
    """GET /info/globals: every global extra-var (the view reads no query parameter)."""
    return {"extra_vars": ctx.replica.state.globals()}


def lease_json(lease: Lease | None, now_ms: int) -> dict[str, Any] | None:
    """The lease as the API shows it (``expires`` as an ISO date); None for no lease."""
    if lease is None:
        return None
    out: dict[str, Any] = {
        "holder": lease.holder,
        "epoch": lease.epoch,
        "expires": datetime.fromtimestamp(lease.expires_ms / 1000, UTC).isoformat(),
        "expires_ms": lease.expires_ms,
        "valid": now_ms < lease.expires_ms,
    }
    if lease.forced_by:
        out["forced_by"] = lease.forced_by
    return out


def health_json(ctx: ApiContext) -> dict[str, Any]:
    """GET /health: this instance's liveness, lease, majority and durability, and the
    context's detail (what has not started yet, warnings)."""
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
    return body


def json_answer(status: int, obj: Any, headers: dict[str, str]) -> Answer:
    """One JSON response, as ``boundary.json_response`` (and ``error_response``) has it:
    the same headers, in the same order, and the same body."""
    body = json_body(obj)
    raw = [(b"content-type", _JSON), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return status, body, raw


async def answer(
    ctx: ApiContext,
    method: str,
    path: str,
    authorization: str,
    content_type: str,
    data: bytes | BodyTooLarge,
) -> Answer:
    """The answer to ``method path`` (GET /health, GET /info/globals, or GET, PUT or
    DELETE of a key under :data:`PREFIX` that :data:`KEY` matches), as Quart's view and
    error handlers make it: the token check first, then the route, any error translated
    by ``api.policy``.
    ``data``: the request body (a PUT's), or :class:`BodyTooLarge`."""
    try:
        obj = await _route(ctx, method, path, authorization, content_type, data)
    except GossipmgrError as exc:
        status, text = refusal(exc, ctx.replica.name, method, path)
        return json_answer(status, {"error": text}, error_headers(status))
    except BodyTooLarge:
        return _status_answer(413, "", method, path)
    except Exception:
        log.exception("%s: %s %s failed", ctx.replica.name, method, path)
        return _status_answer(500, INTERNAL_ERROR_TEXT, method, path)
    return json_answer(200, obj, {})


def _status_answer(code: int, text: str, method: str, path: str) -> Answer:
    """The error answer Quart's handler gives for an HTTP error ``code`` (``api.policy``)."""
    status, text, extra = status_refusal(code, text, method, path)
    return json_answer(status, {"error": text}, {**error_headers(status), **extra})


async def _route(
    ctx: ApiContext,
    method: str,
    path: str,
    authorization: str,
    content_type: str,
    data: bytes | BodyTooLarge,
) -> dict[str, Any]:
    authorize(ctx, method, path, authorization)
    if path == HEALTH:
        return health_json(ctx)
    if path == INFO_GLOBALS:
        return globals_json(ctx)
    key = path[len(PREFIX) :]
    if method == "GET":
        return await get_one(ctx, key)
    if method == "DELETE":
        return await delete_one(ctx, key)

    async def body() -> dict[str, Any]:
        if isinstance(data, BodyTooLarge):
            raise data
        return parse_body_untrusted(data, mimetype_of(content_type))

    return await put_one(ctx, key, body)
