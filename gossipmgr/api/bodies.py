"""Request bodies: reading them, and checking each field a route reads.

Everything here handles a client's bytes, so it raises :class:`~gossipmgr.errors.RequestError`
subclasses only (turned into ``{"error": ...}`` responses in one place,
:mod:`gossipmgr.api.boundary`):

* :func:`body_untrusted` reads the body as a JSON object (400, 415; 413 is werkzeug's, for a
  body over :data:`MAX_BODY_BYTES`).
* The ``field_*`` helpers type-check one field, with the texts clusterm's clients know.
* :func:`check_value_untrusted` is the API side of the one value rule (``codec.check_value``):
  what a route accepts can be replicated, or it is refused with 413/422 naming the limit.
* The rules that need no request live in ``api.values`` (Quart-free: the front calls them
  before the web stack is loaded) and are imported from here by the routes.
* :func:`client_vars` and :func:`check_client_vars` apply the extra-vars policy: 403 naming
  any variable an API client may not set (docs/security.md section 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import request

from gossipmgr.api.context import ApiContext, current_context
from gossipmgr.api.values import (
    DEPTH_TEXT,
    JSON_MIMETYPE,
    MAX_BODY_BYTES,
    MERGE_PATCH_MIMETYPE,
    UnsupportedMediaType,
    check_client_vars_of,
    check_key,
    check_value_untrusted,
    field_value,
    json_type,
    mimetype_of,
    parse_body_untrusted,
)
from gossipmgr.core.codec import MAX_KEY_PART
from gossipmgr.errors import BadRequest, ValueRefused
from gossipmgr.runtime.ansible import parse_extra_vars

# The rules that need no request (``api.values``, Quart-free: the front calls them too),
# under the names the routes import from here.
__all__ = [
    "DEPTH_TEXT",
    "JSON_MIMETYPE",
    "MAX_BODY_BYTES",
    "MERGE_PATCH_MIMETYPE",
    "UnsupportedMediaType",
    "body_untrusted",
    "check_client_vars",
    "check_key",
    "check_value_untrusted",
    "client_vars",
    "field_extra_vars",
    "field_flag",
    "field_str",
    "field_str_list",
    "field_value",
    "is_empty",
    "json_type",
    "mimetype_of",
    "parse_body_untrusted",
]


async def body_untrusted(
    *, required: bool = True, mimetypes: tuple[str, ...] = (JSON_MIMETYPE,)
) -> dict[str, Any]:
    """The request body as a JSON object. Raises BadRequest (400), UnsupportedMediaType
    (415), ValueRefused (422, nested too deeply), or werkzeug's 413.

    ``required=False`` lets an empty body (no Content-Type needed) mean ``{}``;
    ``mimetypes``: the Content-Types accepted.
    """
    data = await request.get_data(cache=True, as_text=False, parse_form_data=False)
    return parse_body_untrusted(data, request.mimetype, required=required, mimetypes=mimetypes)


def is_empty(v: Any) -> bool:
    """A Go zero value decoded from JSON: null, "", 0, false, or a map/list of such.

    Iterative: a hostile section nested hundreds deep must not exhaust the stack (a 500)."""
    stack = [v]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
        elif x not in (None, "", 0, False):
            return False
    return True


def field_str_list(body: Mapping[str, Any], name: str) -> list[str]:
    """An optional array of strings (absent or null: ``[]``)."""
    v = body.get(name)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRequest(f'"{name}" must be an array of strings')
    return list(v)


def field_str(body: Mapping[str, Any], name: str) -> str:
    """An optional string (absent or null: ``""``)."""
    v = body.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise BadRequest(f'"{name}" must be a string, got {json_type(v)}')
    return v


def field_flag(body: Mapping[str, Any], name: str) -> bool:
    """An optional boolean (absent: false)."""
    v = body.get(name, False)
    if not isinstance(v, bool):
        raise BadRequest(f'"{name}" must be true or false, got {json_type(v)}')
    return v


def field_extra_vars(body: Mapping[str, Any], name: str = "extra_vars") -> dict[str, Any]:
    """clusterm's wire form (a string holding a JSON object) or a plain JSON object."""
    try:
        ev = parse_extra_vars(body.get(name))
    except RecursionError:
        raise ValueRefused(f'"{name}" is nested too deeply (at most {DEPTH_TEXT})') from None
    for var, v in ev.items():
        if len(var) > MAX_KEY_PART:
            check_key(f'"{name}" variable', var)
        # The name becomes part of a record's key: it must encode too (a lone surrogate
        # does not, and would fail in the commit as a 500).
        check_value_untrusted(var, f'"{name}" variable name {var[:40]!r}')
        check_value_untrusted(v, f'"{name}" variable "{var[:40]}"')
    return ev


def check_client_vars(
    variables: Mapping[str, Any], where: str, ctx: ApiContext | None = None
) -> None:
    """403 naming any variable an API client may not set (docs/security.md), unless the
    context's ``allowed_client_vars`` (the operator's config) allows it. ``ctx``: the
    context (default: the current request's)."""
    check_client_vars_of(ctx or current_context(), variables, where)


def client_vars(body: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The body's ``extra_vars`` field, parsed, checked and allowed for an API client."""
    ev = field_extra_vars(body)
    check_client_vars(ev, where)
    return ev
