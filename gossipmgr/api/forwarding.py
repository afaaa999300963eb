"""Requests that must run on another instance: job writes on the lease holder.

* Job-running requests (commission/decommission/update/discover, job cancel, monitor
  events, inventory import, node forget) must run on the lease holder. A non-holder
  FORWARDS them to the holder's API with the same body and ``Authorization`` header, and
  relays its status and body (:func:`forward`). A forwarded request carries
  ``X-Gossipmgr-Forwarded: <instance>``; a receiver that is not the holder either (the
  lease moved in between) answers 503 instead of forwarding again, so a request never
  loops.
* Job logs are not among them: every instance serves them from the replicated chunks
  (``gossipmgr.runtime.joblog``).

Over https, the context's optional ``forward_verify`` (httpx ``verify=``) checks the peer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from quart import Response, request

from gossipmgr.api.bodies import JSON_MIMETYPE
from gossipmgr.api.context import current_context
from gossipmgr.errors import Unavailable

if TYPE_CHECKING:
    import httpx

#: Header a forwarding instance adds; its value is the forwarder's name (loop guard).
FORWARDED_HEADER = "X-Gossipmgr-Forwarded"
#: Forwarding: connecting to the holder must be quick (it is on the LAN); a job POST
#: returns once the job is launched (validation + one durable write), so 30 s is generous.
FORWARD_TIMEOUT = (30.0, 3.0)


#: What httpx raises for a peer it cannot reach, including a URL it refuses before
#: connecting (a control character, a host label over 63 characters: from a Serf ``api``
#: tag, i.e. ``--advertise-api``), which are not ``httpx.HTTPError``s.
def _unreachable() -> tuple[type[BaseException], ...]:
    import httpx  # lazy: a heavy import (~0.1 s) only a forwarded request needs

    return (httpx.HTTPError, httpx.InvalidURL, UnicodeError)


def _client(timeout: tuple[float | None, float]) -> httpx.AsyncClient:
    """An httpx client with (total, connect) ``timeout``; httpx is imported on first use."""
    import httpx  # lazy: a heavy import (~0.1 s) only a forwarded request needs

    return httpx.AsyncClient(
        verify=_verify(), timeout=httpx.Timeout(timeout[0], connect=timeout[1])
    )


def _verify() -> Any:
    return getattr(current_context(), "forward_verify", True)


def _forward_headers() -> dict[bytes, bytes]:
    """The headers a forwarded (or proxied) request carries, as bytes: httpx encodes a str
    value as ASCII, and refused (a 500) an instance name or a client's header outside it."""
    # Our name as UTF-8 (any name without spaces is valid); the client's headers as the
    # bytes it sent (the server decoded them as latin-1).
    h = {FORWARDED_HEADER.encode(): current_context().replica.name.encode()}
    for name in ("Authorization", "Content-Type"):
        v = request.headers.get(name)
        if v:
            h[name.encode()] = v.encode("latin-1")
    return h


def was_forwarded() -> bool:
    """True when another instance forwarded (or proxied) this request here."""
    return bool(request.headers.get(FORWARDED_HEADER))


def _forwarder() -> str:
    """The name of the instance that forwarded this request (sent as UTF-8)."""
    return request.headers[FORWARDED_HEADER].encode("latin-1").decode("utf-8", "replace")


def forwarded_path(path: str) -> str:
    """The decoded ``path`` of a request, encoded again so that the holder routes it to the
    same view with the same parameters.

    A node name holding "?", "#", "%" or a space must be encoded, or the holder sees another
    path ("/node/rack?1/forget" is "/node/rack"); a "." or ".." segment (a name such as
    "dc/../r7") too, or the HTTP client removes it ("/node/dc/../r7/forget" is sent as
    "/node/r7/forget", which forgets another node). ``%2E`` is a dot the holder decodes."""
    return "/".join(
        "%2E" * len(seg) if seg in (".", "..") else quote(seg, safe="") for seg in path.split("/")
    )


def must_hold(*, needs_serf: bool = True) -> bool:
    """True: run here. False: forward. Raises Unavailable when Serf is down here."""
    ctx = current_context()
    if not ctx.replica.is_holder():
        return False
    if needs_serf and not ctx.serf_healthy():
        raise Unavailable(
            f"the Serf agent of the lease holder ({ctx.replica.name}) is not reachable: node "
            "membership is unknown, so jobs cannot run now"
        )
    return True


async def forward() -> Response:
    """Relay this request to the lease holder. Raises Unavailable (503)."""
    ctx = current_context()
    if was_forwarded():
        raise Unavailable(
            f"{ctx.replica.name} is not the lease holder (the lease moved while the request "
            f"was forwarded by {_forwarder()}); retry"
        )
    url = ctx.holder_api_url()
    if url is None:
        raise Unavailable(
            "no lease holder is known: jobs cannot run now (the lease is vacant or "
            "being taken over); retry in a few seconds"
        )
    body = await request.get_data(cache=True)
    target = url.rstrip("/") + forwarded_path(request.path)
    try:
        async with _client(FORWARD_TIMEOUT) as c:
            r = await c.request(request.method, target, content=body, headers=_forward_headers())
    except _unreachable() as exc:
        raise Unavailable(
            f"the lease holder at {url} cannot be reached: {exc or type(exc).__name__}"
        )
    return Response(
        r.content,
        status=r.status_code,
        content_type=r.headers.get("content-type", JSON_MIMETYPE),
    )
