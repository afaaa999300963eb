"""The app: every resource's blueprint, the boundary (auth, errors) and the context, on one
Quart-Trio app; and the OpenAPI document built from the blueprints' declarations."""

from __future__ import annotations

from typing import Any

from quart import Response
from quart_trio import QuartTrio

from gossipmgr.api.bodies import MAX_BODY_BYTES
from gossipmgr.api.boundary import install_boundary, json_response
from gossipmgr.api.context import ApiContext, install_context
from gossipmgr.api.fastpath import FastPath, match
from gossipmgr.api.openapi import (
    CONVERTERS,
    ApiBlueprint,
    document,
    operations_of,
    spec_paths_of,
)
from gossipmgr.api.routes import BLUEPRINTS

_spec = ApiBlueprint("openapi", __name__)


@_spec.operation("GET", "/openapi.json", "This document", (200, 401))
async def openapi_json() -> Response:
    return json_response(OPENAPI)


#: Every blueprint an app serves: the resources' and the document's own.
ALL_BLUEPRINTS: tuple[ApiBlueprint, ...] = (*BLUEPRINTS, _spec)

#: The whole API as data, from the routes' own declarations; ``tests/test_deploy_files.py``
#: checks it matches the registered routes, and docs/api.md against it.
OPENAPI: dict[str, Any] = document(operations_of(ALL_BLUEPRINTS))


def spec_paths() -> set[tuple[str, str]]:
    """Every (OpenAPI path, method) :data:`OPENAPI` documents."""
    return spec_paths_of(OPENAPI)


class GossipmgrApp(QuartTrio):
    """Quart-Trio with the fast path in front (``api.fastpath``): the single-key routes of
    ``/globals`` are answered before Quart's request machinery when ``fast_path`` is set
    (:func:`create_app` sets it; ``None`` sends every request through Quart)."""

    fast_path: FastPath | None = None

    async def asgi_app(self, scope: Any, receive: Any, send: Any) -> None:
        req = match(scope) if self.fast_path is not None else None
        if req is not None and self.fast_path is not None:
            await self.fast_path(req, receive, send)
        else:
            await super().asgi_app(scope, receive, send)


def create_app(ctx: ApiContext, *, fast_path: bool = True) -> GossipmgrApp:
    """Build the Quart-Trio app over ``ctx``. Serve it with :func:`gossipmgr.api.serve` (or
    test it with ``app.test_client()``). The app keeps no state of its own; ``ctx`` owns
    the replica, the job manager and the peers view, and is not touched until a request.
    ``fast_path=False`` leaves out the fast path (the tests compare both)."""
    app = GossipmgrApp("gossipmgr")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    # Quart's default of 5 s makes test_app() wait 5 s on exit for a background task that
    # runs forever (docs/api.md, "Serving").
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = None
    app.config["JSON_SORT_KEYS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.url_map.converters.update(CONVERTERS)  # before any rule that names one
    install_context(app, ctx)
    install_boundary(app)
    for bp in ALL_BLUEPRINTS:
        app.register_blueprint(bp)
    if fast_path:
        app.fast_path = FastPath(ctx)
    return app
