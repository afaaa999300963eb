"""The fast path: ``GET``, ``PUT`` and ``DELETE /globals/{key}`` answered in front of Quart.

A single-key write is the API's hottest request, and most of its CPU went to Quart's
machinery around the route (request and app contexts pushed and popped, the URL adapter,
``before_request``, the response object, the dispatch: about a third of the server's busy
time in a py-spy profile of 2,000 sequential PUTs), not to the route. Here, an ASGI callable
that the app consults before Quart (``app.GossipmgrApp``) answers those three routes itself,
calling the SAME functions Quart's views call, in the same order (``api.hot.answer``,
which the front server, ``api.front``, calls too):

* the token check, ``policy.authorize`` (Quart's ``before_request`` calls it too);
* the body: ``values.parse_body_untrusted`` (``bodies.body_untrusted`` is it over
  Quart's request), with the Content-Type's media type read as werkzeug reads it;
* the route itself: ``hot.get_one``, ``put_one``, ``delete_one``;
* the error translation: ``policy.refusal`` (Quart's error handlers call it too)
  and ``policy.status_refusal`` for an unexpected exception.

With the front in place it answers these routes on a plain-HTTP listener before any of
this runs; the fast path still serves them on a connection the front handed over to
hypercorn, and under TLS (hypercorn's own listener).

So the answers are the same bytes (``tests/test_fastpath.py`` compares both paths over
generated keys, values, tokens and bodies). A body over ``MAX_BODY_BYTES`` gets Quart's
413 at the point Quart would raise it (after the key's checks), with its closing of the
connection. Anything unusual goes to Quart unchanged: another method (HEAD, OPTIONS), a key
the route's converter would not match, a body on a GET or DELETE, a ``root_path``.
The OpenAPI document is untouched: the routes are still Quart's, declared as before.

One difference, on purpose: Quart cancels a request whose client disconnects while it is
served; the fast path reads the whole body first and then finishes a write it has started
(acknowledged to nobody, durable and replicated like any other write).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from gossipmgr.api.bodies import MAX_BODY_BYTES
from gossipmgr.api.context import ApiContext
from gossipmgr.api.hot import KEY, PREFIX, BodyTooLarge, answer

_METHODS = frozenset(("GET", "PUT", "DELETE"))

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class _Request:
    """What the fast path reads of a request: its method, key, the headers it uses and the
    declared length of its body (None: not declared)."""

    __slots__ = ("authorization", "content_type", "length", "method", "path")

    def __init__(
        self, method: str, path: str, authorization: str, content_type: str, length: int | None
    ) -> None:
        self.method = method
        self.path = path
        self.authorization = authorization
        self.content_type = content_type
        self.length = length


def match(scope: Scope) -> _Request | None:
    """The request, when the fast path answers it; None sends it to Quart."""
    if scope["type"] != "http" or scope.get("root_path"):
        return None
    method: str = scope["method"]
    path: str = scope["path"]
    if method not in _METHODS or not path.startswith(PREFIX):
        return None
    if KEY.fullmatch(path, len(PREFIX)) is None:
        return None
    authorization = content_type = length = None
    chunked = False
    for name, value in scope["headers"]:
        name = name.lower()
        if name == b"authorization":
            authorization = value if authorization is None else authorization
        elif name == b"content-type":
            content_type = value if content_type is None else content_type
        elif name == b"content-length":
            if length is not None or not value.strip().isdigit():
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = True
    # Quart ignores the body of a GET or DELETE, reading it all the same: one there is
    # left to Quart.
    if method != "PUT" and (chunked or length):
        return None
    return _Request(
        method,
        path,
        (authorization or b"").decode("latin1"),
        (content_type or b"").decode("latin1"),
        length,
    )


async def read_body(receive: Receive, length: int | None) -> bytes | BodyTooLarge | None:
    """The request body, at most ``MAX_BODY_BYTES`` of it (None: the client went away
    first). Over the limit (declared or sent), nothing more is read: the answer closes
    the connection (``policy.status_refusal``), as Quart's does."""
    if length is not None and length > MAX_BODY_BYTES:
        return BodyTooLarge()
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return BodyTooLarge()
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


class FastPath:
    """Answers :func:`match`-ed requests over ``ctx``; see the module docstring."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def __call__(self, req: _Request, receive: Receive, send: Send) -> None:
        data: bytes | BodyTooLarge = b""
        if req.method == "PUT":
            got = await read_body(receive, req.length)
            if got is None:
                return
            data = got
        status, body, headers = await answer(
            self.ctx, req.method, req.path, req.authorization, req.content_type, data
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})
