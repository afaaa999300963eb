"""Node settings that need no lease: a node's host-group and its own extra-vars.

Each is a plain LWW entry of the replicated map (not fenced), so any instance may write
one, at any time, without the lease holder.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gossipmgr.core import inventory as inv
from gossipmgr.core.state import host_group_key, node_var_key
from gossipmgr.errors import BadRequest
from gossipmgr.runtime.ansible import check_client_var
from gossipmgr.runtime.replica import Replica


async def set_host_group(replica: Replica, node: str, host_group: str) -> None:
    """Set a node's host-group without a job. Raises NotFound, CheckFailed."""
    inv.check_host_group(host_group)
    rec = inv.get_node(replica.state, node)
    await replica.commit(lambda st, ts: st.d_set(host_group_key(rec.name), host_group, ts))


async def set_node_vars(replica: Replica, node: str, variables: Mapping[str, Any]) -> None:
    """Replace a node's own extra-vars. Raises NotFound, BadRequest."""
    if not isinstance(variables, Mapping):
        raise BadRequest(f"node extra-vars must be an object, got {variables!r}")
    for k in variables:
        check_var_name(k)
    rec = inv.get_node(replica.state, node)
    await replica.commit(lambda st, ts: st.d_replace_node_vars(rec.name, variables, ts))


async def set_node_var(replica: Replica, node: str, var: str, value: Any) -> None:
    """Set one of a node's extra-vars. Raises NotFound, BadRequest."""
    check_var_name(var)
    rec = inv.get_node(replica.state, node)
    await replica.commit(lambda st, ts: st.d_set(node_var_key(rec.name, var), value, ts))


async def remove_node_var(replica: Replica, node: str, var: str) -> None:
    """Remove one of a node's extra-vars (a tombstone). Raises NotFound."""
    rec = inv.get_node(replica.state, node)
    if var in rec.vars:
        await replica.commit(lambda st, ts: st.d_remove(node_var_key(rec.name, var), ts))


def check_var_name(var: object) -> None:
    """Raise BadRequest for a name a client may not give a node extra-var."""
    if not isinstance(var, str) or not var:
        raise BadRequest(f"a node extra-var name must be a non-empty string, got {var!r}")
    if var in ("node_name", "node_addr"):
        raise BadRequest(f'"{var}" is set by gossipmgr from the node\'s name and address')
    check_client_var(var)
