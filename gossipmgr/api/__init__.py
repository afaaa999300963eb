"""The REST API: every instance serves all of it (Quart-Trio on hypercorn).

The names below are the package's public surface; the rest of gossipmgr imports them from
here, so the modules inside may be rearranged freely.
"""

from gossipmgr.api.app import (
    FORWARDED_HEADER,
    MAX_BODY_BYTES,
    OPENAPI,
    ApiContext,
    check_listen_policy,
    create_app,
    lease_json,
    rule_paths,
    serve,
    spec_paths,
)

__all__ = [
    "FORWARDED_HEADER",
    "MAX_BODY_BYTES",
    "OPENAPI",
    "ApiContext",
    "check_listen_policy",
    "create_app",
    "lease_json",
    "rule_paths",
    "serve",
    "spec_paths",
]
