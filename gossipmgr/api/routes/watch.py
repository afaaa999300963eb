"""The change feed: ``GET /watch``, every change committed to this instance's replica as
Server-Sent Events (docs/api.md, "Watching changes"; ``gossipmgr.runtime.watch``)."""

from __future__ import annotations

from quart import Response, request

from gossipmgr.api.context import current_context
from gossipmgr.api.openapi import ApiBlueprint

bp = ApiBlueprint("watch", __name__)

EVENT_STREAM = "text/event-stream; charset=utf-8"


@bp.operation(
    "GET",
    "/watch",
    "Server-Sent Events of every change committed here (?prefix=, ?since= or Last-Event-ID)",
    (200, 400, 401),
    query={
        "prefix": "only keys starting with this text (e.g. globals/ or nodes/NAME/)",
        "since": "resume after this event id (the header Last-Event-ID, when sent, wins)",
    },
)
async def watch() -> Response:
    # An EventSource reconnects to the URL it was given (with its ?since=) and sends the
    # id of the last event it saw as Last-Event-ID: the header is the newer of the two.
    since = request.headers.get("Last-Event-ID") or request.args.get("since") or None
    stream = current_context().feed.open(request.args.get("prefix", ""), since)
    resp = Response(
        stream.frames(),
        status=200,
        content_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    # Quart ends a response after RESPONSE_TIMEOUT (60 s) unless the response says otherwise.
    resp.timeout = None
    return resp
