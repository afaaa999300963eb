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
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from typing import Any

from quart import Response, g, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from gossipmgr.api.bodies import JSON_MIMETYPE, MAX_BODY_BYTES
from gossipmgr.api.context import current_context
from gossipmgr.core.tokens import ApiToken, TokenTable, match_bearer, may_call
from gossipmgr.errors import Forbidden, GossipmgrError, RequestError, StoreError, Unauthorized
from gossipmgr.runtime.actor import set_asked_by

log = logging.getLogger("gossipmgr.api")

#: The one route that answers without a token (load balancers and probes call it).
OPEN_PATH = "/health"
#: The web console's static files (docs/console.md) are served without a token too: they
#: hold no data, and the page sends the token with every request it makes.
CONSOLE_PREFIX = "/ui/"


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, content_type=JSON_MIMETYPE)


def error_response(status: int, text: str) -> Response:
    """The body of every refusal: ``{"error": text}``; a 401 also says how to authenticate."""
    resp = json_response({"error": text}, status)
    if status == 401:
        resp.headers["WWW-Authenticate"] = 'Bearer realm="gossipmgr"'
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
    """``before_request``: raise Unauthorized (401) unless the bearer is one of the tokens
    (``gossipmgr.core.tokens``), Forbidden (403) when its role may not make this request
    (a read token mutating). Names the token for the request (``runtime.actor``), so the
    job record and the node history it writes say who asked."""
    ctx = current_context()
    set_asked_by("")
    g.api_token = None
    named: TokenTable | None = getattr(ctx, "tokens", None)
    if (not ctx.token and named is None) or request.path == OPEN_PATH:
        return
    console = request.path.startswith(CONSOLE_PREFIX) or request.path == CONSOLE_PREFIX[:-1]
    if console and request.method in ("GET", "HEAD"):
        return
    got = request.headers.get("Authorization", "")
    scheme, _, cred = got.partition(" ")
    # Hashed, then compared with every token by compare_digest (core.tokens.match_bearer).
    token = match_bearer(cred.strip(), ctx.token, named) if scheme.lower() == "bearer" else None
    if token is None:
        raise Unauthorized("missing or invalid bearer token")
    set_asked_by(token.name)
    g.api_token = token
    if not may_call(token, request.method):
        raise Forbidden(
            f'token "{token.name}" has the role {token.role}: it may read and watch, not '
            f"{request.method} {request.path} (that needs an admin token)"
        )


def current_token() -> ApiToken | None:
    """The token of the request being served (None: the agent serves without auth)."""
    token: ApiToken | None = g.get("api_token")
    return token


async def request_error(exc: RequestError) -> Response:
    return error_response(exc.status_hint, str(exc))


async def store_error(exc: StoreError) -> Response:
    # Not acknowledged: nothing was applied (Replica.commit), the client may retry.
    log.error("%s: write refused by the store: %s", current_context().replica.name, exc)
    return error_response(503, f"write not acknowledged: the data directory refused it: {exc}")


async def http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    text = {
        404: f"no such route: {request.method} {request.path}",
        405: f"method {request.method} is not allowed on {request.path}",
        413: f"request body is larger than {MAX_BODY_BYTES} bytes",
    }.get(code, exc.description or exc.name)
    resp = error_response(code, text)
    if code == 413:
        # The unread rest of the body is still on the wire, so the server closes the
        # connection; say so, or a keep-alive client reuses it and its next request
        # fails with "server disconnected".
        resp.headers["Connection"] = "close"
    return resp


async def other_error(exc: GossipmgrError) -> Response:
    name = current_context().replica.name
    log.error("%s: %s %s failed: %r", name, request.method, request.path, exc)
    return error_response(500, f"internal error: {exc}")


def install_boundary(app: QuartTrio) -> None:
    """Put the token check and the error translation on ``app`` (every blueprint's routes)."""
    app.before_request(check_token)
    app.register_error_handler(RequestError, request_error)
    app.register_error_handler(StoreError, store_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(GossipmgrError, other_error)
