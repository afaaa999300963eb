"""Request bodies: reading them, and checking each field a route reads.

Everything here handles a client's bytes, so it raises :class:`~gossipmgr.errors.RequestError`
subclasses only (turned into ``{"error": ...}`` responses in one place,
:mod:`gossipmgr.api.boundary`):

* :func:`body_untrusted` reads the body as a JSON object (400, 415; 413 is werkzeug's, for a
  body over :data:`MAX_BODY_BYTES`).
* The ``field_*`` helpers type-check one field, with the texts clusterm's clients know.
* :func:`check_value_untrusted` is the API side of the one value rule (``codec.check_value``):
  what a route accepts can be replicated, or it is refused with 413/422 naming the limit.
* :func:`client_vars` and :func:`check_client_vars` apply the extra-vars policy: 403 naming
  any variable an API client may not set (docs/security.md section 3).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import Any

from quart import request
from werkzeug.http import parse_options_header

from gossipmgr.api.context import ApiContext, current_context
from gossipmgr.core.codec import MAX_KEY_PART, MAX_VALUE_DEPTH, check_value
from gossipmgr.errors import (
    BadPacket,
    BadRequest,
    Forbidden,
    RequestError,
    ValueRefused,
    ValueTooLarge,
)
from gossipmgr.runtime.ansible import client_vars_error, parse_extra_vars, refused_client_vars

#: Largest request body accepted (413 beyond). The biggest legitimate body is a discover
#: or commission of a few thousand nodes with extra-vars: well under 1 MiB.
MAX_BODY_BYTES = 1024 * 1024
JSON_MIMETYPE = "application/json"
#: RFC 7396's type for a JSON merge patch (``PATCH /globals`` takes it, or plain JSON).
MERGE_PATCH_MIMETYPE = "application/merge-patch+json"
#: The value rule's nesting limit, as error texts name it.
DEPTH_TEXT = f"{MAX_VALUE_DEPTH} levels"


class UnsupportedMediaType(RequestError):
    status_hint = 415


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


def mimetype_of(content_type: str) -> str:
    """A Content-Type header's media type, lower case, without parameters (werkzeug's
    ``Request.mimetype``, for a request read without Quart: ``api.fastpath``)."""
    return parse_options_header(content_type)[0].lower()


def parse_body_untrusted(
    data: bytes,
    mimetype: str,
    *,
    required: bool = True,
    mimetypes: tuple[str, ...] = (JSON_MIMETYPE,),
) -> dict[str, Any]:
    """``data``, a request body whose Content-Type is ``mimetype``, as a JSON object: the
    rule of :func:`body_untrusted` (which raises the same) without Quart."""
    if not data and not required:
        return {}
    if mimetype not in mimetypes:
        raise UnsupportedMediaType(
            f"Content-Type must be {' or '.join(mimetypes)}, got {mimetype or 'none'!r}"
        )
    if not data:
        raise BadRequest("request body is empty: expected a JSON object")

    def reject_constant(name: str) -> Any:
        raise ValueError(f"invalid JSON constant {name}")

    try:
        obj = json.loads(data, parse_constant=reject_constant)
    except RecursionError:
        raise ValueRefused(f"request body is nested too deeply (values: at most {DEPTH_TEXT})")
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"request body is not valid JSON: {exc}")
    if not isinstance(obj, dict):
        raise BadRequest(f"request body must be a JSON object, got {json_type(obj)}")
    return obj


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


def json_type(v: Any) -> str:
    """The JSON name of a decoded value's type, for error texts."""
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


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


def check_value_untrusted(v: Any, what: str) -> Any:
    """The API side of the one value rule (``codec.check_value``: encoded size, depth,
    items, integer range, finite numbers, encodable strings), applied where a request's
    value is read, so that job routes refuse what could not be replicated too. Raises
    ValueTooLarge (413) or ValueRefused (422) naming ``what`` and the limit. A commit checks
    each record again (``replica.check_writable``)."""
    try:
        check_value(v)
    except BadPacket as exc:
        cls = ValueTooLarge if exc.reason == "too_large" else ValueRefused
        raise cls(f"{what}: {exc.detail}") from None
    except RecursionError:
        raise ValueRefused(f"{what}: value nested too deeply") from None
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


def field_value(body: Mapping[str, Any]) -> Any:
    """The required ``value`` of a PUT, checked against the value rule."""
    if "value" not in body:
        raise BadRequest('"value" is required')
    return check_value_untrusted(body["value"], '"value"')


def check_key(kind: str, key: str) -> None:
    """A name that becomes part of a record's key: not empty, not over ``MAX_KEY_PART``."""
    if not key:
        raise BadRequest(f"{kind} name must not be empty")
    if len(key) > MAX_KEY_PART:
        raise ValueRefused(
            f"{kind} name is {len(key)} characters, more than the limit of {MAX_KEY_PART}"
        )


def check_client_vars(
    variables: Mapping[str, Any], where: str, ctx: ApiContext | None = None
) -> None:
    """403 naming any variable an API client may not set (docs/security.md), unless the
    context's ``allowed_client_vars`` (the operator's config) allows it. ``ctx``: the
    context (default: the current request's)."""
    allowed: Collection[str] = getattr(ctx or current_context(), "allowed_client_vars", frozenset())
    bad = refused_client_vars(variables, allowed)
    if bad:
        raise Forbidden(client_vars_error(bad, where))


def client_vars(body: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The body's ``extra_vars`` field, parsed, checked and allowed for an API client."""
    ev = field_extra_vars(body)
    check_client_vars(ev, where)
    return ev
