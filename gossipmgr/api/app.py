"""The REST API: clusterm's routes (contract §3) on Quart-Trio, served by hypercorn.

Shape (h11's habit: errors raised once, translated once, at the boundary):

* Handlers parse and type-check the request body themselves (``_body_untrusted`` and the
  ``_field_*`` helpers) and raise :class:`~gossipmgr.errors.RequestError` subclasses; ONE
  ``errorhandler`` turns any ``RequestError`` into ``{"error": "<text>"}`` with its
  ``status_hint`` (400/401/404/409/413/422/503). werkzeug's own HTTP errors (unknown path 404,
  405, 413 body too large) get the same JSON body. clusterm answered every error with 500
  and plain text; its Go client prints any non-200 body, so the same texts with honest
  codes stay compatible with it.
* Values are checked where a handler reads them (``check_value_untrusted``, the codec's
  rule: 413 for a record too large to gossip, 422 over another limit) and again, per
  record, by :meth:`Replica.commit`: what the API acknowledges replicates.
* Reads are served from the local replica. Writes of replicated settings (globals, node
  extra-vars, the ansible config) commit locally through :meth:`Replica.commit`, which
  returns once the delta is durable on this instance's disk; only then does the handler
  answer.
* Job-running requests (commission/decommission/update/discover, job cancel, monitor
  events, host-group changes) must run on the lease holder. A non-holder FORWARDS them to
  the holder's API with the same body and ``Authorization`` header, and relays its status
  and body. A forwarded request carries ``X-Gossipmgr-Forwarded: <instance>``; a receiver
  that is not the holder either (the lease moved in between) answers 503 instead of
  forwarding again, so a request never loops.
* Log streams (``GET /info/logs/{job}``) of a job that ran on another instance are proxied
  from that instance's API.

Security: with a token (the agent's default: it creates one at first start), every route
but ``/health`` needs ``Authorization: Bearer <token>`` (compared in constant time,
``hmac.compare_digest``). :func:`check_listen_policy` is the rule the agent applies before
binding: no token (``--no-auth``) on a non-loopback address also needs ``--insecure``.
Every route that sets an extra-var refuses, with 403 naming it, a name an API client may
not set (``gossipmgr.runtime.ansible.refused_client_vars``; docs/security.md section 3).

Who owns what: :func:`create_app` keeps no state of its own besides the app; the context
(:class:`ApiContext`) owns the replica, the job manager and the peers view. :func:`serve`
runs hypercorn in the caller's nursery and returns when ``shutdown_trigger`` returns or the
caller cancels it.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from gossipmgr.config import ANSIBLE_CONFIG_KEYS
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import MAX_KEY_PART, check_value
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.inventory import get_node, node_json
from gossipmgr.core.inventory_import import check_import_entries as inv_check_import_entries
from gossipmgr.core.lease import Lease
from gossipmgr.core.lease import reset as reset_lease
from gossipmgr.core.state import LEASE_KEY, ClusterState, global_key
from gossipmgr.errors import (
    BadPacket,
    BadRequest,
    ConfigError,
    Forbidden,
    GossipmgrError,
    NotFound,
    RequestError,
    StoreError,
    Unauthorized,
    Unavailable,
    ValueRefused,
    ValueTooLarge,
)
from gossipmgr.runtime.replica import Replica

log = logging.getLogger("gossipmgr.api")

#: Largest request body accepted (413 beyond). The biggest legitimate body is a discover
#: or commission of a few thousand nodes with extra-vars: well under 1 MiB.
MAX_BODY_BYTES = 1024 * 1024
#: Header a forwarding instance adds; its value is the forwarder's name (loop guard).
FORWARDED_HEADER = "X-Gossipmgr-Forwarded"
#: Forwarding: connecting to the holder must be quick (it is on the LAN); a job POST
#: returns once the job is launched (validation + one durable write), so 30 s is generous.
FORWARD_TIMEOUT = httpx.Timeout(30.0, connect=3.0)
#: A proxied log stream may be silent for as long as a playbook task runs.
STREAM_TIMEOUT = httpx.Timeout(None, connect=3.0)
#: The sections of the ansible config a POST /config may carry (contract §5).
ANSIBLE_CONFIG_FIELDS = frozenset(ANSIBLE_CONFIG_KEYS)
JSON_MIMETYPE = "application/json"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LOG_CONTENT_TYPE = "text/plain; charset=utf-8"


# --------------------------------------------------------------------------- the context


class JobsLike(Protocol):
    """What the API needs of ``gossipmgr.runtime.jobs.JobManager`` (structural, so tests and the
    agent may pass the real one). Methods raise RequestError subclasses with the
    contract's texts, and Unavailable when this instance is not the lease holder."""

    def commission(self, nodes: list[str], host_group: str, extra_vars: dict[str, Any]) -> Any: ...
    def decommission(self, nodes: list[str], extra_vars: dict[str, Any]) -> Any: ...
    def update(self, nodes: list[str], host_group: str, extra_vars: dict[str, Any]) -> Any: ...
    def discover(self, addrs: list[str], extra_vars: dict[str, Any]) -> Any: ...
    def cancel(self) -> Any: ...
    def set_monitor_event(self, name: str, nodes: list[dict[str, Any]]) -> Any: ...
    def set_host_group(self, node: str, host_group: str) -> Any: ...
    def set_node_vars(self, node: str, variables: Mapping[str, Any]) -> Any: ...
    def set_node_var(self, node: str, var: str, value: Any) -> Any: ...
    def remove_node_var(self, node: str, var: str) -> Any: ...
    def import_inventory(self, entries: Any, dry_run: bool = False) -> Any: ...
    def forget_node(self, name: str, force: bool = False) -> Any: ...
    def job(self, label: str) -> Any: ...
    def jobs(self) -> Any: ...
    def follow(self, job_id: str) -> AsyncIterator[str]: ...


class ApiContext(Protocol):
    """Everything the API reads or calls; the agent (or :class:`StandaloneContext`) owns it.

    Optional attribute read with ``getattr``: ``forward_verify`` (httpx ``verify=``: an
    ``ssl.SSLContext`` or a bool) used when forwarding to / proxying from a
    peer over https.
    """

    replica: Replica
    jobs: Any  # a JobsLike (gossipmgr.runtime.jobs.JobManager)
    token: str | None

    def peers(self) -> list[dict[str, Any]]: ...
    def serf_healthy(self) -> bool: ...
    def health(self) -> dict[str, Any]: ...
    def metrics_text(self) -> str: ...
    def config(self) -> dict[str, Any]: ...
    async def set_ansible_config(self, cfg: dict[str, Any]) -> None: ...
    def holder_api_url(self) -> str | None: ...
    def instance_api_url(self, name: str) -> str | None: ...


def check_listen_policy(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve the API without a token on a non-loopback address.

    Raises ConfigError unless ``host`` is a loopback address (or ``localhost``), a token is
    set, or ``insecure`` is true. An empty host or ``0.0.0.0``/``::`` listen everywhere and
    so count as non-loopback.
    """
    if token or insecure:
        return
    h = host.strip("[]")
    if h == "localhost":
        return
    try:
        if ipaddress.ip_address(h).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(
        f"refusing to serve the API on {host or 'all addresses'} without a token: "
        "drop --no-auth (a token is then required) or also pass --insecure"
    )


# --------------------------------------------------------------------------- node JSON


def lease_json(lease: Lease | None, now_ms: int) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {
        "holder": lease.holder,
        "epoch": lease.epoch,
        "expires": datetime.fromtimestamp(lease.expires_ms / 1000, UTC).isoformat(),
        "expires_ms": lease.expires_ms,
        "valid": now_ms < lease.expires_ms,
    }


# --------------------------------------------------------------------------- body parsing


async def _body_untrusted(*, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object. Raises BadRequest (400), or werkzeug's 413/415.

    ``required=False`` lets an empty body (no Content-Type needed) mean ``{}``.
    """
    data = await request.get_data(cache=True)
    if not data and not required:
        return {}
    if request.mimetype != JSON_MIMETYPE:
        raise _UnsupportedMediaType(
            f"Content-Type must be {JSON_MIMETYPE}, got {request.mimetype or 'none'!r}"
        )
    if not data:
        raise BadRequest("request body is empty: expected a JSON object")

    def reject_constant(name: str) -> Any:
        raise ValueError(f"invalid JSON constant {name}")

    try:
        obj = json.loads(data, parse_constant=reject_constant)
    except RecursionError:
        raise ValueRefused(f"request body is nested too deeply (values: at most {_DEPTH})")
    except ValueError as exc:  # UnicodeDecodeError is a ValueError
        raise BadRequest(f"request body is not valid JSON: {exc}")
    if not isinstance(obj, dict):
        raise BadRequest(f"request body must be a JSON object, got {_json_type(obj)}")
    return obj


class _UnsupportedMediaType(RequestError):
    status_hint = 415


def _empty(v: Any) -> bool:
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


def _json_type(v: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(v), type(v).__name__)


def _field_str_list(body: Mapping[str, Any], name: str) -> list[str]:
    v = body.get(name)
    if v is None:
        return []
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise BadRequest(f'"{name}" must be an array of strings')
    return list(v)


def _field_str(body: Mapping[str, Any], name: str) -> str:
    v = body.get(name)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise BadRequest(f'"{name}" must be a string, got {_json_type(v)}')
    return v


_DEPTH = "32 levels"


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


def _field_extra_vars(body: Mapping[str, Any], name: str = "extra_vars") -> dict[str, Any]:
    """clusterm's wire form (a string holding a JSON object) or a plain JSON object."""
    from gossipmgr.runtime.ansible import parse_extra_vars

    try:
        ev = parse_extra_vars(body.get(name))
    except RecursionError:
        raise ValueRefused(f'"{name}" is nested too deeply (at most {_DEPTH})') from None
    for var, v in ev.items():
        if len(var) > MAX_KEY_PART:
            _check_key(f'"{name}" variable', var)
        # The name becomes part of a record's key: it must encode too (a lone surrogate
        # does not, and would fail in the commit as a 500).
        check_value_untrusted(var, f'"{name}" variable name {var[:40]!r}')
        check_value_untrusted(v, f'"{name}" variable "{var[:40]}"')
    return ev


def _field_value(body: Mapping[str, Any]) -> Any:
    if "value" not in body:
        raise BadRequest('"value" is required')
    return check_value_untrusted(body["value"], '"value"')


def _check_key(kind: str, key: str) -> None:
    if not key:
        raise BadRequest(f"{kind} name must not be empty")
    if len(key) > MAX_KEY_PART:
        raise ValueRefused(
            f"{kind} name is {len(key)} characters, more than the limit of {MAX_KEY_PART}"
        )


# --------------------------------------------------------------------------- OpenAPI

_ERR = {"$ref": "#/components/responses/Error"}


def _op(summary: str, codes: tuple[int, ...], body: str | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "responses": {str(c): ({"description": "OK"} if c < 300 else _ERR) for c in codes},
    }
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {JSON_MIMETYPE: {"schema": {"$ref": f"#/components/schemas/{body}"}}},
        }
    return op


_JOB_CODES = (200, 400, 401, 404, 409, 413, 415, 422, 503)
_WRITE_CODES = (200, 400, 401, 404, 413, 415, 422, 503)

#: The whole API as data; ``tests/test_api.py`` checks it matches the registered routes.
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "gossipmgr", "version": "1", "description": "See docs/api.md."},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "responses": {
            "Error": {
                "description": "refused; the body says why",
                "content": {
                    JSON_MIMETYPE: {
                        "schema": {
                            "type": "object",
                            "properties": {"error": {"type": "string"}},
                            "required": ["error"],
                        }
                    }
                },
            }
        },
        "schemas": {
            "ExtraVars": {
                "description": "a string holding a JSON object (clusterm) or a JSON object",
                "oneOf": [{"type": "string"}, {"type": "object"}],
            },
            "NodesRequest": {
                "type": "object",
                "properties": {
                    "nodes": {"type": "array", "items": {"type": "string"}},
                    "host_group": {"type": "string"},
                    "extra_vars": {"$ref": "#/components/schemas/ExtraVars"},
                },
            },
            "DiscoverRequest": {
                "type": "object",
                "properties": {
                    "addrs": {"type": "array", "items": {"type": "string"}},
                    "extra_vars": {"$ref": "#/components/schemas/ExtraVars"},
                },
            },
            "ExtraVarsRequest": {
                "type": "object",
                "properties": {"extra_vars": {"$ref": "#/components/schemas/ExtraVars"}},
            },
            "ValueRequest": {
                "type": "object",
                "properties": {"value": {}},
                "required": ["value"],
            },
            "HostGroupRequest": {
                "type": "object",
                "properties": {"host_group": {"type": "string"}},
                "required": ["host_group"],
            },
            "MonitorEventRequest": {
                "type": "object",
                "properties": {
                    "monitor_event": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "enum": ["discovered", "disappeared"]},
                            "nodes": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "label": {"type": "string"},
                                        "serial": {"type": "string"},
                                        "addr": {"type": "string"},
                                    },
                                },
                            },
                        },
                    }
                },
            },
            "ImportRequest": {
                "type": "object",
                "properties": {
                    "nodes": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "name": {"type": "string"},
                                "status": {"type": "string"},
                                "host_group": {"type": "string"},
                            },
                            "required": ["name", "status"],
                        },
                    },
                    "dry_run": {"type": "boolean"},
                },
                "required": ["nodes"],
            },
            "ConfigRequest": {
                "type": "object",
                "properties": {"config": {"type": "object"}},
                "required": ["config"],
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/commission/nodes": {
            "post": _op(
                "Commission nodes (runs a job on the lease holder)", _JOB_CODES, "NodesRequest"
            )
        },
        "/decommission/nodes": {
            "post": _op("Decommission nodes (job)", _JOB_CODES, "NodesRequest")
        },
        "/update/nodes": {"post": _op("Update nodes (job)", _JOB_CODES, "NodesRequest")},
        "/discover/nodes": {
            "post": _op("Discover nodes by address (job)", _JOB_CODES, "DiscoverRequest")
        },
        "/globals": {
            "post": _op("Replace every global extra-var", _WRITE_CODES, "ExtraVarsRequest")
        },
        "/globals/{key}": {
            "get": _op("One global extra-var", (200, 401, 404)),
            "put": _op("Set one global extra-var", _WRITE_CODES, "ValueRequest"),
            "delete": _op("Remove one global extra-var", (200, 401, 404, 503)),
        },
        "/monitor/event": {
            "post": _op(
                "Inject a discovered/disappeared event (holder)", _JOB_CODES, "MonitorEventRequest"
            )
        },
        "/config": {
            "get": _op("Current configuration", (200, 401)),
            "post": _op("Change the ansible section", _WRITE_CODES, "ConfigRequest"),
        },
        "/info/node/{name}": {"get": _op("One node", (200, 401, 404))},
        "/info/nodes": {"get": _op("Every node, by name", (200, 401))},
        "/info/globals": {"get": _op("Global extra-vars", (200, 401))},
        "/info/job/{job}": {"get": _op("A job: active, last or an id", (200, 400, 401, 404))},
        "/info/jobs": {"get": _op("Job history", (200, 401))},
        "/info/logs/{job}": {
            "get": _op("A job's log, streamed live while it runs", (200, 400, 401, 404, 503))
        },
        "/info/peers": {"get": _op("gossipmgr instances and the lease", (200, 401))},
        "/info/lease": {"get": _op("The lease", (200, 401))},
        "/lease/reset": {
            "post": _op(
                "Vacate the lease one epoch up (body optional: {force})",
                (200, 400, 401, 409, 415, 503),
            )
        },
        "/job/cancel": {"post": _op("Cancel the active job (holder)", _JOB_CODES)},
        "/node/{name}/extra_vars": {
            "post": _op("Replace a node's own extra-vars", _WRITE_CODES, "ExtraVarsRequest")
        },
        "/node/{name}/extra_vars/{key}": {
            "put": _op("Set one of a node's extra-vars", _WRITE_CODES, "ValueRequest"),
            "delete": _op("Remove one of a node's extra-vars", (200, 401, 404, 503)),
        },
        "/node/{name}/host_group": {
            "post": _op("Set a node's host-group (holder)", _JOB_CODES, "HostGroupRequest")
        },
        "/inventory/import": {
            "post": _op(
                "Set imported node statuses and host-groups (holder, fenced)",
                _JOB_CODES,
                "ImportRequest",
            )
        },
        "/node/{name}/forget": {
            "post": _op("Remove a node from the inventory (holder, fenced)", _JOB_CODES)
        },
        "/health": {"get": {**_op("Liveness and health, no auth", (200,)), "security": []}},
        "/metrics": {"get": _op("Prometheus metrics", (200, 401))},
        "/openapi.json": {"get": _op("This document", (200, 401))},
    },
}


# --------------------------------------------------------------------------- the app


async def _maybe_await(v: Any) -> Any:
    return await v if inspect.isawaitable(v) else v


def _jsonable(v: Any) -> Any:
    """Job manager answers may be dataclasses or objects with ``as_json``; JSON them."""
    if hasattr(v, "as_json"):
        return v.as_json()
    if hasattr(v, "__dataclass_fields__"):
        import dataclasses

        return dataclasses.asdict(v)
    return v


def create_app(ctx: ApiContext) -> QuartTrio:
    """Build the Quart-Trio app over ``ctx``. Serve it with :func:`serve` (or test it with
    ``app.test_client()``)."""
    app = QuartTrio("gossipmgr")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # stack-notes trap 2: with the default 5 s, test_app() waits 5 s for a forever task.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = None
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]

    def current_token() -> bytes | None:
        # Read on every request: the agent swaps ctx.token on a SIGHUP reload.
        return ctx.token.encode() if ctx.token else None

    rep = ctx.replica

    def now_ms() -> int:
        return rep.now_ms()

    # ------------------------------------------------------------ extra-vars policy
    def check_vars(variables: Mapping[str, Any], where: str) -> None:
        """403 naming any variable an API client may not set (docs/security.md)."""
        from gossipmgr.runtime.ansible import client_vars_error, refused_client_vars

        allowed: Collection[str] = getattr(ctx, "allowed_client_vars", frozenset())
        bad = refused_client_vars(variables, allowed)
        if bad:
            raise Forbidden(client_vars_error(bad, where))

    def client_vars(body: Mapping[str, Any], where: str) -> dict[str, Any]:
        ev = _field_extra_vars(body)
        check_vars(ev, where)
        return ev

    # ------------------------------------------------------------ auth and errors
    @app.before_request
    async def _auth() -> None:
        token_b = current_token()
        if token_b is None or request.path == "/health":
            return
        got = request.headers.get("Authorization", "")
        scheme, _, cred = got.partition(" ")
        # compare_digest on bytes of possibly different length is still constant-time in
        # the secret's length (it does not leak where the first difference is).
        if scheme.lower() != "bearer" or not hmac.compare_digest(cred.strip().encode(), token_b):
            raise Unauthorized("missing or invalid bearer token")

    def error(status: int, text: str) -> Response:
        resp = Response(json.dumps({"error": text}), status=status, content_type=JSON_MIMETYPE)
        if status == 401:
            resp.headers["WWW-Authenticate"] = 'Bearer realm="gossipmgr"'
        return resp

    @app.errorhandler(RequestError)
    async def _request_error(exc: RequestError) -> Response:
        return error(exc.status_hint, str(exc))

    @app.errorhandler(StoreError)
    async def _store_error(exc: StoreError) -> Response:
        # Not acknowledged: nothing was applied (Replica.commit), the client may retry.
        log.error("%s: write refused by the store: %s", rep.name, exc)
        return error(503, f"write not acknowledged: the data directory refused it: {exc}")

    @app.errorhandler(HTTPException)
    async def _http_error(exc: HTTPException) -> Response:
        code = exc.code or 500
        text = {
            404: f"no such route: {request.method} {request.path}",
            405: f"method {request.method} is not allowed on {request.path}",
            413: f"request body is larger than {MAX_BODY_BYTES} bytes",
        }.get(code, exc.description or exc.name)
        resp = error(code, text)
        if code == 413:
            # The unread rest of the body is still on the wire, so the server closes the
            # connection; say so, or a keep-alive client reuses it and its next request
            # fails with "server disconnected".
            resp.headers["Connection"] = "close"
        return resp

    @app.errorhandler(GossipmgrError)
    async def _other_error(exc: GossipmgrError) -> Response:
        log.error("%s: %s %s failed: %r", rep.name, request.method, request.path, exc)
        return error(500, f"internal error: {exc}")

    # ------------------------------------------------------------ forwarding helpers
    def verify() -> Any:
        return getattr(ctx, "forward_verify", True)

    def fwd_headers() -> dict[str, str]:
        h = {FORWARDED_HEADER: rep.name}
        for name in ("Authorization", "Content-Type"):
            v = request.headers.get(name)
            if v:
                h[name] = v
        return h

    async def forward() -> Response:
        """Relay this request to the lease holder. Raises Unavailable (503)."""
        if request.headers.get(FORWARDED_HEADER):
            raise Unavailable(
                f"{rep.name} is not the lease holder (the lease moved while the request "
                f"was forwarded by {request.headers[FORWARDED_HEADER]}); retry"
            )
        url = ctx.holder_api_url()
        if url is None:
            raise Unavailable(
                "no lease holder is known: jobs cannot run now (the lease is vacant or "
                "being taken over); retry in a few seconds"
            )
        body = await request.get_data(cache=True)
        target = url.rstrip("/") + request.path
        try:
            async with httpx.AsyncClient(verify=verify(), timeout=FORWARD_TIMEOUT) as c:
                r = await c.request(request.method, target, content=body, headers=fwd_headers())
        except httpx.HTTPError as exc:
            raise Unavailable(
                f"the lease holder at {url} cannot be reached: {exc or type(exc).__name__}"
            )
        return Response(
            r.content,
            status=r.status_code,
            content_type=r.headers.get("content-type", JSON_MIMETYPE),
        )

    def must_hold(*, needs_serf: bool = True) -> bool:
        """True: run here. False: forward. Raises Unavailable when Serf is down here."""
        if not rep.is_holder():
            return False
        if needs_serf and not ctx.serf_healthy():
            raise Unavailable(
                f"the Serf agent of the lease holder ({rep.name}) is not reachable: node "
                "membership is unknown, so jobs cannot run now"
            )
        return True

    async def run_job(call: Callable[[], Any]) -> Response:
        res = _jsonable(await _maybe_await(call()))
        if isinstance(res, dict):
            return _json(res)
        if isinstance(res, str):
            return _json({"job": res})
        return _json({})

    # ------------------------------------------------------------ workflows (holder)
    @app.post("/commission/nodes")
    async def commission() -> Response:
        b = await _body_untrusted()
        nodes, hg, ev = (
            _field_str_list(b, "nodes"),
            _field_str(b, "host_group"),
            client_vars(b, "extra_vars"),
        )
        if not must_hold():
            return await forward()
        return await run_job(lambda: ctx.jobs.commission(nodes, hg, ev))

    @app.post("/decommission/nodes")
    async def decommission() -> Response:
        b = await _body_untrusted()
        nodes, ev = _field_str_list(b, "nodes"), client_vars(b, "extra_vars")
        if not must_hold():
            return await forward()
        return await run_job(lambda: ctx.jobs.decommission(nodes, ev))

    @app.post("/update/nodes")
    async def update() -> Response:
        b = await _body_untrusted()
        nodes, hg, ev = (
            _field_str_list(b, "nodes"),
            _field_str(b, "host_group"),
            client_vars(b, "extra_vars"),
        )
        if not must_hold():
            return await forward()
        return await run_job(lambda: ctx.jobs.update(nodes, hg, ev))

    @app.post("/discover/nodes")
    async def discover() -> Response:
        b = await _body_untrusted()
        addrs, ev = _field_str_list(b, "addrs"), client_vars(b, "extra_vars")
        if not must_hold():
            return await forward()
        return await run_job(lambda: ctx.jobs.discover(addrs, ev))

    @app.post("/job/cancel")
    async def job_cancel() -> Response:
        await _body_untrusted(required=False)
        if not must_hold(needs_serf=False):
            return await forward()
        return await run_job(lambda: ctx.jobs.cancel())

    @app.post("/monitor/event")
    async def monitor_event() -> Response:
        b = await _body_untrusted()
        ev = b.get("monitor_event")
        if not isinstance(ev, dict):
            raise BadRequest('"monitor_event" must be an object {"name", "nodes"}')
        name = _field_str(ev, "name")
        nodes = ev.get("nodes") or []
        if not isinstance(nodes, list) or not all(
            isinstance(n, dict) and all(isinstance(v, str) for v in n.values()) for n in nodes
        ):
            raise BadRequest(
                '"monitor_event.nodes" must be an array of {"label", "serial", "addr"} strings'
            )
        if not must_hold(needs_serf=False):
            return await forward()
        return await run_job(lambda: ctx.jobs.set_monitor_event(name, nodes))

    @app.post("/node/<path:name>/host_group")
    async def node_host_group(name: str) -> Response:
        # A host-group is a plain LWW entry (jobs.JobManager.set_host_group): any instance
        # may write it, no lease needed, so it is not forwarded.
        b = await _body_untrusted()
        if "host_group" not in b:
            raise BadRequest('"host_group" is required')
        hg = _field_str(b, "host_group")
        rec = get_node(rep.state, name)
        await _maybe_await(ctx.jobs.set_host_group(rec.name, hg))
        return _node_response(rec.name)

    @app.post("/node/<path:name>/forget")
    async def node_forget(name: str) -> Response:
        b = await _body_untrusted(required=False)
        force = b.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest(f'"force" must be true or false, got {_json_type(force)}')
        if not must_hold(needs_serf=False):
            return await forward()
        return _json(_jsonable(await _maybe_await(ctx.jobs.forget_node(name, force=force))))

    @app.post("/inventory/import")
    async def inventory_import() -> Response:
        # Inventory records are epoch-fenced: written by the holder under its lease epoch.
        b = await _body_untrusted()
        entries = b.get("nodes")
        inv_check_import_entries(entries)  # a 400 here, before any forwarding
        dry_run = b.get("dry_run", False)
        if not isinstance(dry_run, bool):
            raise BadRequest(f'"dry_run" must be true or false, got {_json_type(dry_run)}')
        if not must_hold(needs_serf=False):
            return await forward()
        return _json(
            _jsonable(await _maybe_await(ctx.jobs.import_inventory(entries, dry_run=dry_run)))
        )

    # ------------------------------------------------------------ replicated settings
    def _node_response(ident: str) -> Response:
        return _json(node_json(get_node(rep.state, ident)))

    async def commit(make: Callable[[ClusterState, Timestamp], LWWMap]) -> None:
        await rep.commit(make)

    @app.post("/globals")
    async def globals_replace() -> Response:
        b = await _body_untrusted()
        new = client_vars(b, "globals")
        await commit(lambda s, ts: s.d_replace_globals(new, ts))
        return _json({"extra_vars": rep.state.globals()})

    @app.get("/globals/<key>")
    async def global_get(key: str) -> Response:
        g = rep.state.globals()
        if key not in g:
            raise NotFound(f'global extra-var "{key}" doesn\'t exist')
        return _json({"key": key, "value": g[key]})

    @app.put("/globals/<key>")
    async def global_put(key: str) -> Response:
        from gossipmgr.runtime.ansible import check_client_var

        _check_key("extra-var", key)
        check_client_var(key)
        v = _field_value(await _body_untrusted())
        check_vars({key: v}, "globals")
        await commit(lambda s, ts: s.d_set(global_key(key), v, ts))
        return _json({"key": key, "value": v})

    @app.delete("/globals/<key>")
    async def global_delete(key: str) -> Response:
        if key not in rep.state.globals():
            raise NotFound(f'global extra-var "{key}" doesn\'t exist')
        await commit(lambda s, ts: s.d_remove(global_key(key), ts))
        return _json({"key": key, "deleted": True})

    @app.post("/node/<path:name>/extra_vars")
    async def node_vars_replace(name: str) -> Response:
        b = await _body_untrusted()
        new = client_vars(b, f"node {name}")
        name = get_node(rep.state, name).name
        await _maybe_await(ctx.jobs.set_node_vars(name, new))
        return _node_response(name)

    @app.put("/node/<path:name>/extra_vars/<key>")
    async def node_var_put(name: str, key: str) -> Response:
        _check_key("extra-var", key)
        v = _field_value(await _body_untrusted())
        check_vars({key: v}, f"node {name}")
        name = get_node(rep.state, name).name
        await _maybe_await(ctx.jobs.set_node_var(name, key, v))
        return _node_response(name)

    @app.delete("/node/<path:name>/extra_vars/<key>")
    async def node_var_delete(name: str, key: str) -> Response:
        rec = get_node(rep.state, name)
        name = rec.name
        if key not in rec.vars:
            raise NotFound(f'node "{name}" has no extra-var "{key}"')
        await _maybe_await(ctx.jobs.remove_node_var(name, key))
        return _node_response(name)

    @app.get("/config")
    async def config_get() -> Response:
        return _json(ctx.config())

    @app.post("/config")
    async def config_post() -> Response:
        b = await _body_untrusted()
        cfg = b.get("config")
        if not isinstance(cfg, dict):
            raise BadRequest('"config" must be an object')
        current = ctx.config()
        for section in cfg:
            # The Go clusterctl always sends every section, the ones it did not read from
            # the file as zero values ({"Addr": "", "AuthKey": "", "Timeout": 0}, {},
            # {"addr": ""}): an empty section means "unchanged".
            if section == "ansible" or _empty(cfg[section]):
                continue
            if cfg[section] != current.get(section):
                raise BadRequest(
                    f'"{section}" configuration can\'t be changed. '
                    "Only changes to ansible configuration are allowed."
                )
        if "ansible" in cfg:
            ans = cfg["ansible"]
            if not isinstance(ans, dict):
                raise BadRequest('"ansible" configuration must be an object')
            unknown = sorted(set(ans) - ANSIBLE_CONFIG_FIELDS)
            if unknown:
                raise BadRequest(f"unknown ansible configuration key(s): {', '.join(unknown)}")
            for k, v in ans.items():
                if k != "extra_variables" and not isinstance(v, str):
                    raise BadRequest(f'ansible configuration "{k}" must be a string')
            if "extra_variables" in ans:
                new_ev = _field_extra_vars(ans, "extra_variables")
                try:
                    old_ev = _field_extra_vars(current.get("ansible") or {}, "extra_variables")
                except BadRequest:
                    old_ev = {}
                # Only what this request changes is the client's: a section read with GET
                # and posted back carries the operator's file values unchanged.
                missing = object()
                changed_ev = {k: v for k, v in new_ev.items() if old_ev.get(k, missing) != v}
                check_vars(changed_ev, "config extra_variables")
            # An empty value is "unchanged" (clusterm merged the posted config with mergo,
            # which skips empty values; the Go clusterctl sends every key).
            changed = {k: v for k, v in ans.items() if v != ""}
            if changed:
                await ctx.set_ansible_config(changed)
        return _json(ctx.config())

    # ------------------------------------------------------------ reads
    # <path:...> on every node route: a node name may hold "/" (a label from Serf tags or a
    # monitor event); it is still addressed by name.
    @app.get("/info/node/<path:name>")
    async def info_node(name: str) -> Response:
        return _node_response(name)

    @app.get("/info/nodes")
    async def info_nodes() -> Response:
        return _json({rec.name: node_json(rec) for rec in rep.state.nodes()})

    @app.get("/info/globals")
    async def info_globals() -> Response:
        return _json({"extra_vars": rep.state.globals()})

    @app.get("/info/job/<job>")
    async def info_job(job: str) -> Response:
        return _json(_jsonable(await _maybe_await(ctx.jobs.job(job))))

    @app.get("/info/jobs")
    async def info_jobs() -> Response:
        res = _jsonable(await _maybe_await(ctx.jobs.jobs()))
        if isinstance(res, dict):
            res = list(res.values())
        return _json({"jobs": [_jsonable(j) for j in res]})

    @app.get("/info/logs/<job>")
    async def info_logs(job: str) -> Any:
        # follow() validates eagerly: 400 bad label, 404 unknown id, 409 "job is not
        # Running" for "active" when none is (clusterm's answer).
        local = ctx.jobs.follow(job)
        info = _jsonable(await _maybe_await(ctx.jobs.job(job)))
        job_id = str(info.get("id") or job) if isinstance(info, dict) else job
        runner = _job_runner(info)
        headers = {
            "Content-Type": LOG_CONTENT_TYPE,
            "X-Job-Id": job_id,
            "Cache-Control": "no-cache",
        }
        note = ""
        if runner and runner != rep.name and not request.headers.get(FORWARDED_HEADER):
            # The full log is a file on the runner; here we only have the replicated tail
            # (the last lines of each update). Proxy the runner's stream when we can.
            url = ctx.instance_api_url(runner)
            if url is not None:
                try:
                    return await _proxy_stream(url.rstrip("/") + f"/info/logs/{job_id}", headers)
                except Unavailable as exc:
                    note = f"[gossipmgr: {exc}; showing the replicated log tail]"
            else:
                note = f"[gossipmgr: the API of {runner} is unknown; showing the replicated tail]"

        async def lines() -> AsyncIterator[bytes]:
            if note:
                yield (note + "\n").encode()
            async for line in local:
                yield (line.rstrip("\n") + "\n").encode()

        return lines(), 200, headers

    async def _proxy_stream(target: str, headers: dict[str, str]) -> Any:
        client = httpx.AsyncClient(verify=verify(), timeout=STREAM_TIMEOUT)
        try:
            req = client.build_request("GET", target, headers=fwd_headers())
            r = await client.send(req, stream=True)
        except httpx.HTTPError as exc:
            await client.aclose()
            raise Unavailable(f"the job's instance at {target} cannot be reached: {exc}")
        if r.status_code != 200:
            body = await r.aread()
            await r.aclose()
            await client.aclose()
            return Response(
                body,
                status=r.status_code,
                content_type=r.headers.get("content-type", JSON_MIMETYPE),
            )

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in r.aiter_raw():
                    yield chunk
            except httpx.HTTPError as exc:
                yield f"\n[gossipmgr: log stream from {target} broke: {exc}]\n".encode()
            finally:
                await r.aclose()
                await client.aclose()

        return relay(), 200, headers

    @app.get("/info/peers")
    async def info_peers() -> Response:
        return _json(
            {
                "self": rep.name,
                "peers": ctx.peers(),
                "lease": lease_json(rep.lease(), now_ms()),
            }
        )

    @app.get("/info/lease")
    async def info_lease() -> Response:
        lj = lease_json(rep.lease(), now_ms())
        return _json({"lease": lj, "self": rep.name, "is_holder": rep.is_holder()})

    @app.post("/lease/reset")
    async def lease_reset() -> Response:
        """The operator's way out of a forged or stuck lease (docs/design.md)."""
        b = await _body_untrusted(required=False)
        force = b.get("force", False)
        if not isinstance(force, bool):
            raise BadRequest('"force" must be true or false')
        before = rep.lease()
        new = reset_lease(before, rep.candidates, now_ms(), rep.state.max_record_epoch, force)
        value = new.as_value()
        await commit(lambda s, ts: s.d_set(LEASE_KEY, value, ts))
        log.warning(
            "%s: lease reset by an API client: %s -> vacant at epoch %d",
            rep.name,
            f"{before.holder!r} epoch {before.epoch}" if before else "none",
            new.epoch,
        )
        return _json({"lease": lease_json(new, now_ms()), "previous": lease_json(before, now_ms())})

    @app.get("/health")
    async def health() -> Response:
        body: dict[str, Any] = {
            "status": "serving",
            "name": rep.name,
            "serf": {"healthy": ctx.serf_healthy()},
            "lease": lease_json(rep.lease(), now_ms()),
            "is_holder": rep.is_holder(),
            "durability": {
                "data_dir": str(rep.data_dir) if rep.data_dir is not None else None,
                "writes": rep.counters.get("writes", 0),
                "write_errors": rep.counters.get("write_errors", 0),
            },
        }
        for key, value in ctx.health().items():
            # The context adds detail; nested sections merge instead of replacing ours.
            if isinstance(value, dict) and isinstance(body.get(key), dict):
                body[key] = {**body[key], **value}
            else:
                body[key] = value
        return _json(body)

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(ctx.metrics_text(), status=200, content_type=METRICS_CONTENT_TYPE)

    @app.get("/openapi.json")
    async def openapi() -> Response:
        return _json(OPENAPI)

    return app


def _json(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, content_type=JSON_MIMETYPE)


def _job_runner(info: Any) -> str | None:
    """Which instance runs/ran a job (jobs.py names it ``runner``; ``holder`` tolerated)."""
    if not isinstance(info, dict):
        return None
    for k in ("runner", "instance", "holder"):
        v = info.get(k)
        if isinstance(v, str) and v:
            return v
    return None


def rule_paths(app: QuartTrio) -> set[tuple[str, str]]:
    """Every (OpenAPI path, method) the app serves (HEAD/OPTIONS and static left out)."""
    out: set[tuple[str, str]] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        for m in rule.methods or ():
            if m not in ("HEAD", "OPTIONS"):
                out.add((path, m.lower()))
    return out


def spec_paths() -> set[tuple[str, str]]:
    return {(p, m) for p, ops in OPENAPI["paths"].items() for m in ops}


# --------------------------------------------------------------------------- serving


class _ShieldedSend:
    """ASGI wrapper shielding ``send`` (stack-notes trap 1).

    Without it, hypercorn's trio worker loses the idle timer of a keep-alive connection after
    its first request (the cancel of a send half-way leaves the connection in a state where
    no timeout applies), and shutdown then waits ``graceful_timeout`` for idle clients.
    Shielding costs a few percent of requests/s; it makes shutdown take ~0.1 s.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def shielded_send(message: Any) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await self.app(scope, receive, shielded_send)


async def serve(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 2.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn until ``shutdown_trigger`` returns (or cancellation).

    Calls ``task_status.started(url)`` with the bound base URL (``http://127.0.0.1:PORT``,
    ``https://...`` with TLS), so ``port=0`` works. TLS is on when both ``certfile`` and
    ``keyfile`` are given; one without the other raises ConfigError. The caller owns the
    nursery and so the server's lifetime.
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve as hyper_serve

    if (certfile is None) != (keyfile is None):
        raise ConfigError("TLS needs both a certificate file and a key file")
    cfg = Config()
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    cfg.bind = [f"{h}:{port}"]
    cfg.certfile = certfile
    cfg.keyfile = keyfile
    cfg.graceful_timeout = graceful_timeout
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("gossipmgr.api.hypercorn")
    cfg.keep_alive_timeout = 5.0

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await hyper_serve(
            _ShieldedSend(app),
            cfg,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
            mode="asgi",
        )

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        task_status.started(binds[0])


# --------------------------------------------------------------------------- standalone
