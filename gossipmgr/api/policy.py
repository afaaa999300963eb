"""Who may call, and how a refusal reads, without the web stack.

The token check (:func:`authorize`), the one translation of an error into a status and a
text (:func:`refusal`, :func:`status_refusal`), and the bytes of a JSON answer
(:func:`json_body`). ``api.boundary`` puts them on Quart's app (``before_request``, the
error handlers); the front (``api.front``) and the fast path call them directly, so every
path answers alike. Quart-free on purpose: the front serves before Quart is imported.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from gossipmgr.api.values import MAX_BODY_BYTES
from gossipmgr.core.tokens import ApiToken, TokenTable, match_bearer, may_call
from gossipmgr.errors import Forbidden, GossipmgrError, RequestError, StoreError, Unauthorized
from gossipmgr.runtime.actor import set_asked_by

if TYPE_CHECKING:
    from gossipmgr.api.context import ApiContext

log = logging.getLogger("gossipmgr.api")

#: The one route that answers without a token (load balancers and probes call it).
OPEN_PATH = "/health"
#: The web console's static files (docs/console.md) are served without a token too: they
#: hold no data, and the page sends the token with every request it makes.
CONSOLE_PREFIX = "/ui/"
#: What a 401 says about how to authenticate (RFC 6750).
WWW_AUTHENTICATE = 'Bearer realm="gossipmgr"'
#: werkzeug's ``InternalServerError.description``: the text of a 500 for an unexpected
#: exception (``tests/test_front.py`` checks it is still werkzeug's).
INTERNAL_ERROR_TEXT = (
    "The server encountered an internal error and was unable to complete your request. "
    "Either the server is overloaded or there is an error in the application."
)


def json_body(obj: Any) -> bytes:
    """The bytes of every JSON answer (Quart's routes', the fast path's and the front's)."""
    return json.dumps(obj).encode()


def error_headers(status: int) -> dict[str, str]:
    """Headers a refusal carries besides its JSON content type: a 401 says how to
    authenticate."""
    return {"WWW-Authenticate": WWW_AUTHENTICATE} if status == 401 else {}


def authorize(ctx: ApiContext, method: str, path: str, authorization: str) -> ApiToken | None:
    """The token check of one request (``authorization``: its Authorization header, ""
    when absent): raise Unauthorized (401) unless the bearer is one of the tokens
    (``gossipmgr.core.tokens``), Forbidden (403) when its role may not make this request
    (a read token mutating). Names the token for the request (``runtime.actor``), so the
    job record and the node history it writes say who asked. Returns the token (None: no
    token needed). Quart's routes (``boundary.check_token``), the fast path and the front
    call it."""
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


def refusal(exc: GossipmgrError, name: str, method: str, path: str) -> tuple[int, str]:
    """The one translation of an error raised below a route into a status and a text
    (Quart's error handlers, the fast path and the front call it; ``name``: the
    instance's, for the log). The most specific class decides, as Quart's handler lookup
    does."""
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


def status_refusal(
    code: int, description: str, method: str, path: str
) -> tuple[int, str, dict[str, str]]:
    """An HTTP error (werkzeug's: unknown path 404, 405, 413, 500 for an unexpected
    exception, with its ``description``) as a status, a text and extra headers."""
    text = {
        404: f"no such route: {method} {path}",
        405: f"method {method} is not allowed on {path}",
        413: f"request body is larger than {MAX_BODY_BYTES} bytes",
    }.get(code, description)
    # The unread rest of a too large body is still on the wire, so the server closes the
    # connection; say so, or a keep-alive client reuses it and its next request fails
    # with "server disconnected".
    return code, text, ({"Connection": "close"} if code == 413 else {})
