"""Check mode: a job that shows what its workflow would change and changes nothing. Pure.

A commission, update or decommission request with ``check: true`` is accepted exactly like
the real one (the same checks and status transitions are checked, so a request a real run
would refuse is refused with the same answer), then runs the workflow's playbooks with
ansible's check and diff modes (``ansible-playbook --check --diff``). Its job record says
``check: true`` and its desc ends with :data:`CHECK_SUFFIX`. It writes nothing else: no node
status moves at its start, at its end or when it is ended as an orphan (it has no status
path: :func:`status_path`), no host-group, no node variables, and so no node history entry
(history notes what changed on a node; a check job changed nothing). docs/workflows.md,
"Check mode", tells the whole contract and its limits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from gossipmgr.core.inventory import STATUS_PATHS, StatusPath, go_list

#: Appended to a check job's desc.
CHECK_SUFFIX: Final = " (check)"


def status_path(kind: str, check: bool) -> StatusPath | None:
    """The status path a job of workflow ``kind`` moves its nodes along: the workflow's
    (``inventory.STATUS_PATHS``), or none at all for a check job, which acts on nothing."""
    return None if check else STATUS_PATHS.get(kind)


def job_desc(kind: str, names: Sequence[str], host_group: str, check: bool) -> str:
    """The desc of a workflow's job (clusterm's text: ``commission nodes [a b] host-group
    service-master``); a check job's ends with :data:`CHECK_SUFFIX`."""
    desc = f"{kind} nodes {go_list(names)}"
    if host_group:
        desc += f" host-group {host_group}"
    return desc + CHECK_SUFFIX if check else desc
