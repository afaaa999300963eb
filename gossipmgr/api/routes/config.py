"""The runtime configuration: read it whole, change its ansible section (clusterm's
POST /config, docs/api.md); every other section is fixed at the agent's start."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from quart import Response

from gossipmgr.api.bodies import body_untrusted, check_client_vars, field_extra_vars, is_empty
from gossipmgr.api.boundary import json_response
from gossipmgr.api.context import current_context
from gossipmgr.api.openapi import WRITE_CODES, ApiBlueprint, Schema
from gossipmgr.config import ANSIBLE_CONFIG_KEYS
from gossipmgr.errors import BadRequest

bp = ApiBlueprint("config", __name__)

#: The keys of the ansible section a POST /config may carry (docs/migrating-from-clusterm.md,
#: "Configuration").
ANSIBLE_CONFIG_FIELDS = frozenset(ANSIBLE_CONFIG_KEYS)

CONFIG_REQUEST = Schema(
    "ConfigRequest",
    {
        "type": "object",
        "properties": {"config": {"type": "object"}},
        "required": ["config"],
    },
)


@bp.operation("GET", "/config", "Current configuration", (200, 401))
async def config_get() -> Response:
    return json_response(current_context().config())


@bp.operation("POST", "/config", "Change the ansible section", WRITE_CODES, CONFIG_REQUEST)
async def config_post() -> Response:
    ctx = current_context()
    b = await body_untrusted()
    cfg = b.get("config")
    if not isinstance(cfg, dict):
        raise BadRequest('"config" must be an object')
    current = ctx.config()
    _check_fixed_sections(cfg, current)
    if "ansible" in cfg:
        ans = cfg["ansible"]
        _check_ansible_section(ans, current)
        # An empty value is "unchanged" (clusterm merged the posted config with mergo,
        # which skips empty values; the Go clusterctl sends every key).
        changed = {k: v for k, v in ans.items() if v != ""}
        if changed:
            await ctx.set_ansible_config(changed)
    return json_response(ctx.config())


def _check_fixed_sections(cfg: Mapping[str, Any], current: Mapping[str, Any]) -> None:
    """BadRequest unless every section but ansible is empty or unchanged."""
    for section in cfg:
        # The Go clusterctl always sends every section, the ones it did not read from
        # the file as zero values ({"Addr": "", "AuthKey": "", "Timeout": 0}, {},
        # {"addr": ""}): an empty section means "unchanged".
        if section == "ansible" or is_empty(cfg[section]):
            continue
        if cfg[section] != current.get(section):
            raise BadRequest(
                f'"{section}" configuration can\'t be changed. '
                "Only changes to ansible configuration are allowed."
            )


def _check_ansible_section(ans: Any, current: Mapping[str, Any]) -> None:
    """BadRequest for a malformed ansible section, Forbidden (403) for a variable an API
    client may not set among the extra variables it changes."""
    if not isinstance(ans, dict):
        raise BadRequest('"ansible" configuration must be an object')
    unknown = sorted(set(ans) - ANSIBLE_CONFIG_FIELDS)
    if unknown:
        raise BadRequest(f"unknown ansible configuration key(s): {', '.join(unknown)}")
    for k, v in ans.items():
        if k != "extra_variables" and not isinstance(v, str):
            raise BadRequest(f'ansible configuration "{k}" must be a string')
    if "extra_variables" not in ans:
        return
    new_ev = field_extra_vars(ans, "extra_variables")
    try:
        old_ev = field_extra_vars(current.get("ansible") or {}, "extra_variables")
    except BadRequest:
        old_ev = {}
    # Only what this request changes is the client's: a section read with GET and posted
    # back carries the operator's file values unchanged.
    missing = object()
    changed_ev = {k: v for k, v in new_ev.items() if old_ev.get(k, missing) != v}
    check_client_vars(changed_ev, "config extra_variables")
