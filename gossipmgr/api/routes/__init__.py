"""The API's routes, one blueprint per resource; each route is declared with its
OpenAPI summary and status codes (:meth:`gossipmgr.api.openapi.ApiBlueprint.operation`).

=============== ==================================================================
``jobs``        workflows run on the lease holder (forwarded), jobs, job logs
``upgrade``     the rolling upgrade (a workflow, run like the others)
``nodes``       the inventory, a node's settings, import and forget (fenced)
``global_vars`` global extra-vars
``config``      the runtime configuration (its ansible section is writable)
``lease``       the lease, and resetting it
``status``      health (no token), peers, metrics
``watch``       the change feed (Server-Sent Events)
``console``     the web console's static files (``/ui/``) and ``/whoami``
=============== ==================================================================
"""

from gossipmgr.api.openapi import ApiBlueprint
from gossipmgr.api.routes import (
    config,
    console,
    global_vars,
    jobs,
    lease,
    nodes,
    status,
    upgrade,
    watch,
)

#: Every resource's blueprint, in the order the document lists them.
BLUEPRINTS: tuple[ApiBlueprint, ...] = (
    jobs.bp,
    upgrade.bp,
    nodes.bp,
    global_vars.bp,
    config.bp,
    lease.bp,
    status.bp,
    watch.bp,
    console.bp,
)
