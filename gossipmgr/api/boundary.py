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
from gossipmgr.api.context import ApiContext, current_context
from gossipmgr.core.tokens import ApiToken, TokenTable, match_bearer, may_call
from gossipmgr.errors import Forbidden, GossipmgrError, RequestError, StoreError, Unauthorized
from gossipmgr.runtime.actor import set_asked_by

log = logging.getLogger("gossipmgr.api")

#: The one route that answers without a token (load balancers and probes call it).
OPEN_PATH = "/health"
#: The web console's static files (docs/console.md) are served without a token too: they
#: hold no data, and the page sends the token with every request it makes.
CONSOLE_PREFIX = "/ui/"


def json_body(obj: Any) -> bytes:
    """The bytes of every JSON answer (the fast path's too: ``api.fastpath``)."""
    return json.dumps(obj).encode()


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(json_body(obj), status=status, content_type=JSON_MIMETYPE)


#: What a 401 says about how to authenticate (RFC 6750).
WWW_AUTHENTICATE = 'Bearer realm="gossipmgr"'


def error_headers(status: int) -> dict[str, str]:
    """Headers a refusal carries besides its JSON content type: a 401 says how to
    authenticate."""
    return {"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else {}


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


def authorize(ctx: ApiContext, method: str, path: str, authorization: str) -> ApiToken | None:
    """The token check of one request (``authorization``: its Authorization header, ""
    when absent): raise Unauthorized (401) unless the bearer is one of the tokens
    (``gossipmgr.core.tokens``), Forbidden (403) when its role may not make this request
    (a read token mutating). Names the token for the request (``runtime.actor``), so the
    job record and the node history it writes say who asked. Returns the token (None: no
    token needed). Quart's routes (:func:`check_token`) and the fast path call it."""
    set_asked_by("")
    named: TokenTable | None = getattr(ctx, "tokens", None)
    if (not ctx.token and named is None) or path == OPEN_PATH:
        return None
    console = path.startswith(CONSOLE_PREFIX) or path == CONSOLE_PREFIX[:-1]
    if console and method in ("GET", "HEAD"):
        return None
    scheme, _, cred = authorization.partition(" ")
    # Hashed, then compared with every token by compare_digest (core.tokens.match_bearer).
    token = match_bearer(cred.strip(), ctx.token, named) if scheme.lower() == "bearer" else None
    if token is None:
        raise Unauthorized("missing or invalid bearer token")
    set_asked_by(token.name)
    if not may_call(token, method):
        raise Forbidden(
            f'token "{token.name}" has the role {token.role}: it may read and watch, not '
            f"{method} {path} (that needs an admin token)"
        )
    return token


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


def refusal(exc: GossipmgrError, name: str, method: str, path: str) -> tuple[int, str]:
    """The one translation of an error raised below a route into a status and a text
    (Quart's error handlers and the fast path call it; ``name``: the instance's, for the
    log). The most specific class decides, as Quart's handler lookup does."""
    if isinstance(exc, RequestError):
        return exc.status_hint, str(exc)
    if isinstance(exc, StoreError):
        # Not acknowledged and not applied here; it was already sent to the peers
        # (Replica.commit), so its outcome is unknown. A retry is safe.
        log.error("%s: write refused by the store: %s", name, exc)
        return 503, (
            f"write not acknowledged: the data directory refused it: {exc} (it was sent "
            "to the peers before its fsync: it may still take effect)"
        )
    log.error("%s: %s %s failed: %r", name, method, path, exc)
    return 500, f"internal error: {exc}"


async def gossipmgr_error(exc: GossipmgrError) -> Response:
    name = current_context().replica.name
    return error_response(*refusal(exc, name, request.method, request.path))


def http_refusal(exc: HTTPException, method: str, path: str) -> tuple[int, str, dict[str, str]]:
    """werkzeug's HTTP errors (unknown path 404, 405, 413, 500 for an unexpected exception)
    as a status, a text and extra headers."""
    code = exc.code or 500
    text = {
        404: f"no such route: {method} {path}",
        405: f"method {method} is not allowed on {path}",
        413: f"request body is larger than {MAX_BODY_BYTES} bytes",
    }.get(code, exc.description or exc.name)
    # The unread rest of a too large body is still on the wire, so the server closes the
    # connection; say so, or a keep-alive client reuses it and its next request fails
    # with "server disconnected".
    return code, text, ({"Connection": "close"} if code == 413 else {})


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
