"""The REST API: clusterm's routes (docs/api.md) on Quart-Trio, served by hypercorn behind
a lean front of our own for the hottest routes; every instance serves all of it.

How a request goes through the package:

==================== ===================================================================
``front``            the listening socket's server (plain HTTP), from the bind: answers
                     ``GET /health`` and ``GET|PUT|DELETE /globals/{key}`` inline, hands
                     any other connection, with its bytes, to hypercorn + Quart
``wire``             the front's strict request-head parser; hypercorn's response bytes
``hot``              those routes over the context, without the web stack: the front,
                     the fast path and Quart's views call them (the same answers)
``policy``           the token check and ONE translation of every error into
                     ``{"error": text}`` with its status (Quart-free)
``values``           the body, name and value rules (Quart-free; 4xx with the reason)
``context``          the :class:`ApiContext` protocol, the API's only view of the agent;
                     routes reach it per request (``current_context()``)
``boundary``         ``policy`` on Quart's app (``before_request``, error handlers); the
                     JSON helpers
``bodies``           reading a body and checking each field (4xx with the reason)
``routes/``          one blueprint per resource; each route declares its OpenAPI entry
``fastpath``         ``GET|PUT|DELETE /globals/{key}`` answered before Quart's machinery
                     on a connection hypercorn serves (handed over, or TLS)
``forwarding``       job writes run on the lease holder; logs proxied from the runner
``openapi``          the document, built from the routes' declarations
``app``              :func:`create_app`: the blueprints, the boundary and a context
``server``           :func:`serve` (hypercorn, trio), :func:`connection_handler`
                     (hypercorn on the connections the front hands over)
``listen``           the listening socket, bound before the rest is imported;
                     :func:`check_listen_policy`
==================== ===================================================================

* Reads are served from the local replica. Writes of replicated settings (globals, node
  extra-vars, the ansible config) commit locally through ``Replica.commit``, which returns
  once the delta is durable on this instance's disk; only then does the route answer.
* Values are checked where a route reads them (the codec's rule: 413 for a record too large
  to gossip, 422 over another limit) and again, per record, by ``Replica.commit``: what the
  API acknowledges replicates.
* Every route that sets an extra-var refuses, with 403 naming it, a name an API client may
  not set (``gossipmgr.runtime.ansible.refused_client_vars``; docs/security.md section 3).
* With a token (the agent's default), every route but ``/health`` needs
  ``Authorization: Bearer <token>``. :func:`check_listen_policy` is the rule the agent
  applies before binding: no token (``--no-auth``) on a non-loopback address also needs
  ``--insecure``.

The names below are the package's public surface; the rest of gossipmgr imports them from
here, so the modules inside may be rearranged freely.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gossipmgr.api.listen import bind_listener, check_listen_policy, listener_url

if TYPE_CHECKING:
    from gossipmgr.api.app import OPENAPI, create_app, spec_paths
    from gossipmgr.api.bodies import MAX_BODY_BYTES, check_value_untrusted
    from gossipmgr.api.context import ApiContext, JobsLike, ReplicaView
    from gossipmgr.api.forwarding import FORWARDED_HEADER
    from gossipmgr.api.front import Front
    from gossipmgr.api.hot import lease_json
    from gossipmgr.api.openapi import rule_paths
    from gossipmgr.api.server import connection_handler, serve

#: Where each public name lives. Loaded at first use (PEP 562), so that the agent can bind
#: its address (``api.listen``) before Quart, flask, werkzeug, jinja2 and hypercorn are
#: imported: they are most of the daemon's import time (docs/design.md, "Start and stop").
_LAZY = {
    "OPENAPI": "gossipmgr.api.app",
    "create_app": "gossipmgr.api.app",
    "spec_paths": "gossipmgr.api.app",
    "MAX_BODY_BYTES": "gossipmgr.api.bodies",
    "check_value_untrusted": "gossipmgr.api.bodies",
    "ApiContext": "gossipmgr.api.context",
    "JobsLike": "gossipmgr.api.context",
    "ReplicaView": "gossipmgr.api.context",
    "FORWARDED_HEADER": "gossipmgr.api.forwarding",
    "Front": "gossipmgr.api.front",
    "rule_paths": "gossipmgr.api.openapi",
    "lease_json": "gossipmgr.api.hot",
    "serve": "gossipmgr.api.server",
    "connection_handler": "gossipmgr.api.server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "FORWARDED_HEADER",
    "MAX_BODY_BYTES",
    "OPENAPI",
    "ApiContext",
    "Front",
    "JobsLike",
    "ReplicaView",
    "bind_listener",
    "check_listen_policy",
    "check_value_untrusted",
    "connection_handler",
    "create_app",
    "lease_json",
    "listener_url",
    "rule_paths",
    "serve",
    "spec_paths",
]
