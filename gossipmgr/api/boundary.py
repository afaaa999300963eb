"""Where HTTP meets the rest of gossipmgr: who may call, how a refusal becomes a response,
how an answer becomes JSON.

h11's habit: errors are raised once, anywhere below a route, and translated once, here.
ONE ``errorhandler`` turns any :class:`~gossipmgr.errors.RequestError` into
``{"error": "<text>"}`` with its ``status_hint`` (400/401/403/404/409/413/415/422/503).
werkzeug's own HTTP errors (unknown path 404, 405, 413 body too large) get the same JSON
body. clusterm answered every error with 500 and plain text; its Go client prints any
non-200 body, so the same texts with honest codes stay compatible with it.

Security: with a token (the agent's default: it creates one at first start), every route
but ``/health`` and the console's static files (``/ui/``, they hold no data) needs
``Authorization: Bearer <token>``, compared in constant time (``hmac.compare_digest``).
Named tokens (``api_tokens_file``) carry a role: ``read`` tokens get 403 for anything but
GET/HEAD/OPTIONS. The tokens are read from the context on every
request: the agent swaps them on a SIGHUP reload.

The check and the translation themselves need no request: they live in ``api.policy``
(Quart-free, so that the front, ``api.front``, answers with them before Quart is loaded);
this module puts them on Quart's app.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from gossipmgr.api.bodies import JSON_MIMETYPE
from gossipmgr.api.context import current_context
from gossipmgr.api.policy import (
    CONSOLE_PREFIX,
    OPEN_PATH,
    WWW_AUTHENTICATE,
    authorize,
    error_headers,
    json_body,
    refusal,
    status_refusal,
)
from gossipmgr.core.tokens import ApiToken
from gossipmgr.errors import GossipmgrError

# The rules without Quart (``api.policy``: the front calls them too), under the names the
# rest of the API imports from here.
__all__ = [
    "CONSOLE_PREFIX",
    "OPEN_PATH",
    "WWW_AUTHENTICATE",
    "authorize",
    "check_token",
    "current_token",
    "error_headers",
    "error_response",
    "http_refusal",
    "install_boundary",
    "json_body",
    "json_response",
    "jsonable",
    "maybe_await",
    "refusal",
]


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json_body(obj), status=status, content_type=JSON_MIMETYPE)


def error_response(status: int, text: str) -> Response:
    """The body of every refusal: ``{"error": text}``; a 401 also says how to authenticate."""
    resp = json_response({"error": text}, status)
    resp.headers.update(error_headers(status))
    return resp


async def maybe_await(v: Any) -> Any:
    """A job manager method's answer, awaited when it is awaitable."""
    return await v if inspect.isawaitable(v) else v


def jsonable(v: Any) -> Any:
    """Job manager answers may be dataclasses or objects with ``as_json``; JSON them."""
    if hasattr(v, "as_json"):
        return v.as_json()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return dataclasses.asdict(v)
    return v


async def check_token() -> None:
    """``before_request``: :func:`authorize` the request; keeps its token for
    :func:`current_token`."""
    g.api_token = None
    auth = request.headers.get("Authorization", "")
    g.api_token = authorize(current_context(), request.method, request.path, auth)


def current_token() -> ApiToken | None:
    """The token of the request being served (None: the agent serves without auth)."""
    token: ApiToken | None = g.get("api_token")
    return token


async def gossipmgr_error(exc: GossipmgrError) -> Response:
    name = current_context().replica.name
    return error_response(*refusal(exc, name, request.method, request.path))


def http_refusal(exc: HTTPException, method: str, path: str) -> tuple[int, str, dict[str, str]]:
    """werkzeug's HTTP errors (unknown path 404, 405, 413, 500 for an unexpected exception)
    as a status, a text and extra headers (``policy.status_refusal``)."""
    return status_refusal(exc.code or 500, exc.description or exc.name, method, path)


async def http_error(exc: HTTPException) -> Response:
    code, text, headers = http_refusal(exc, request.method, request.path)
    resp = error_response(code, text)
    resp.headers.update(headers)
    return resp


def install_boundary(app: QuartTrio) -> None:
    """Put the token check and the error translation on ``app`` (every blueprint's routes)."""
    app.before_request(check_token)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(GossipmgrError, gossipmgr_error)
