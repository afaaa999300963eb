"""A rolling upgrade's request checks (``gossipmgr.core.upgrade``). Pure.

Apart from the progress record because that one is part of a job record, which the
cluster state reads: these checks read the cluster state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gossipmgr.core.inventory import go_list, resolve_nodes
from gossipmgr.core.node import ALLOCATED, DISCOVERED
from gossipmgr.core.state import ClusterState
from gossipmgr.errors import BadRequest, CheckFailed, Conflict

NO_ALLOCATED: Final = "there is no Allocated node to upgrade"


def check_upgrade(state: ClusterState, nodes: object, all_: object) -> list[str]:
    """The nodes an upgrade request names, checked before anything is written.

    Exactly one of ``nodes`` (names or addresses) and ``all_`` (every Allocated node, in
    name order). Raises BadRequest for a malformed request, CheckFailed (422) for an
    unknown node, none at all, or a node not Discovered (clusterm's texts), and Conflict
    (409) for a node that is not Allocated, naming it and its status."""
    if all_ is not None and not isinstance(all_, bool):
        raise BadRequest(f'"all" must be true or false, got {all_!r}')
    if all_ and nodes:
        raise BadRequest('give either "nodes" or "all": true, not both')
    if all_:
        names = sorted(r.name for r in state.nodes() if r.inventory.status == ALLOCATED)
        if not names:
            raise CheckFailed(NO_ALLOCATED)
    else:
        if nodes is None:
            nodes = []
        if isinstance(nodes, str) or not isinstance(nodes, Sequence):
            raise BadRequest(f'"nodes" must be a list of node names, got {nodes!r}')
        names = resolve_nodes(state, list(nodes))
    recs = {n: state.node(n) for n in names}
    down = [n for n, r in recs.items() if r is None or r.inventory.state != DISCOVERED]
    if down:
        raise CheckFailed(
            "one or more nodes are not in discovered state, please check their network "
            f"reachability. Non-discovered nodes: {go_list(down)}"
        )
    other = [f"{n} is {r.inventory.status}" for n, r in recs.items() if r is not None]
    other = [t for t in other if not t.endswith(f" is {ALLOCATED}")]
    if other:
        raise Conflict(f"only Allocated nodes can be upgraded: {', '.join(other)}")
    return names
