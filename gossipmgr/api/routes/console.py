"""The web console (docs/console.md): its static files under ``/ui/``, served without a
token (they hold no data; every read the page makes carries the operator's token), and
``GET /whoami``, which tells the page the name and role of its token."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from quart import Response

from gossipmgr.api.boundary import current_token, json_response
from gossipmgr.api.context import current_context
from gossipmgr.api.openapi import ApiBlueprint
from gossipmgr.core.tokens import ADMIN
from gossipmgr.errors import NotFound

bp = ApiBlueprint("console", __name__)

#: The console's files: one flat directory of the package (package data in the wheel).
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]*\.(html|js|css|svg)")
_TYPES = {
    "html": "text/html; charset=utf-8",
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
}
#: The page loads nothing but its own files and talks only to this instance.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@cache
def _asset(name: str) -> bytes | None:
    m = _NAME_RE.fullmatch(name)
    if m is None:
        return None
    f = files("gossipmgr.api").joinpath("ui", name)
    return f.read_bytes() if f.is_file() else None


def _serve(name: str) -> Response:
    body = _asset(name)
    if body is None:
        raise NotFound(f"the console has no file {name!r}")
    kind = name.rsplit(".", 1)[1]
    return Response(body, status=200, content_type=_TYPES[kind], headers=_HEADERS)


@bp.operation(
    "GET", "/ui/", "The web console's page (no token: it holds no data)", (200,), public=True
)
async def console_page() -> Response:
    return _serve("index.html")


@bp.operation(
    "GET",
    "/ui/<asset>",
    "A file of the web console (no token)",
    (200, 404),
    public=True,
    params={"asset": "a file name: index.html, app.js, console.css, ..."},
)
async def console_asset(asset: str) -> Response:
    return _serve(asset)


@bp.operation("GET", "/whoami", "The name and role of the token that asks", (200, 401))
async def whoami() -> Response:
    token = current_token()
    if token is None:  # an agent without auth (--no-auth): anyone may do anything
        auth = bool(current_context().token) or getattr(current_context(), "tokens", None)
        return json_response({"name": "", "role": ADMIN, "auth": bool(auth)})
    return json_response({"name": token.name, "role": token.role, "auth": True})
