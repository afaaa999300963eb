"""What a request's bytes must be, without the web stack: the body's limits and its JSON,
a name's and a value's checks, the extra-vars policy for one context.

Quart-free on purpose (the standard library and gossipmgr's lower layers only): the front
(``api.front``) answers its routes with these before Quart, flask, werkzeug, jinja2 and
hypercorn are imported, and Quart's views call the same functions (through ``api.bodies``),
so both paths refuse the same requests with the same texts. Everything here handles a
client's bytes, so it raises :class:`~gossipmgr.errors.RequestError` subclasses only.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

from gossipmgr.core.codec import MAX_KEY_PART, MAX_VALUE_DEPTH, check_value
from gossipmgr.errors import (
    BadPacket,
    BadRequest,
    Forbidden,
    RequestError,
    ValueRefused,
    ValueTooLarge,
)
from gossipmgr.runtime.ansible import client_vars_error, refused_client_vars

if TYPE_CHECKING:
    from gossipmgr.api.context import ApiContext

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


def mimetype_of(content_type: str) -> str:
    """A Content-Type header's media type, lower case, without parameters: werkzeug's
    ``Request.mimetype`` (``parse_options_header(value)[0].lower()``, whose media type is
    the part before the first ";", stripped of spaces and tabs);
    ``tests/test_front.py`` compares them."""
    return content_type.partition(";")[0].strip(" \t").lower()


def parse_body_untrusted(
    data: bytes,
    mimetype: str,
    *,
    required: bool = True,
    mimetypes: tuple[str, ...] = (JSON_MIMETYPE,),
) -> dict[str, Any]:
    """``data``, a request body whose Content-Type is ``mimetype``, as a JSON object: the
    rule of ``bodies.body_untrusted`` (which reads Quart's request and calls this). Raises
    BadRequest (400), UnsupportedMediaType (415), ValueRefused (422, nested too deeply).
    ``required=False`` lets an empty body (no Content-Type needed) mean ``{}``;
    ``mimetypes``: the Content-Types accepted."""
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


def check_client_vars_of(ctx: ApiContext, variables: Mapping[str, Any], where: str) -> None:
    """403 naming any variable an API client may not set (docs/security.md), unless the
    context's ``allowed_client_vars`` (the operator's config) allows it."""
    allowed: Collection[str] = getattr(ctx, "allowed_client_vars", frozenset())
    bad = refused_client_vars(variables, allowed)
    if bad:
        raise Forbidden(client_vars_error(bad, where))
