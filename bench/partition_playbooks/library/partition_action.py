#!/usr/bin/python
"""partition_action: the partition suite's simulated node action (bench/partition_jobs.py).

An ansible module, run by the suite's playbooks after the ``gossipmgr_fence`` role, against
``ansible_connection=local`` hosts whose "node" is a directory. It performs one action,
step ``step`` of the run (the playbooks include ``step.yml`` once per step: a pause, the
``gossipmgr_confirm`` action, then this module): under the node's fence lock
(``<fence_dir>/lock``, the lock the fence module takes) it reads the epoch the fence
recorded (``<fence_dir>/epoch.json``) and appends one JSON line to
``<node_dir>/actions.jsonl``: ``{"t", "epoch", "holder", "job", "action", "step",
"node_epoch", "confirmed_at"}`` (``confirmed_at``: when the controller's
``gossipmgr_confirm`` said yes, wall clock, or null). It does not check the epoch
itself: the fence role did, once, at the start of the run (as in a real playbook), so a
line whose ``epoch`` is lower than an earlier line's is an action applied out of epoch
order, and ``node_epoch`` tells whether a newer epoch had passed the fence meanwhile.
Only the standard library and ansible's module_utils.
"""

from __future__ import annotations

import fcntl
import json
import os
import time

DOCUMENTATION = r"""
module: partition_action
short_description: Append the partition suite's action lines to a simulated node's log
options:
  node_dir: {description: The node's directory., type: path, required: true}
  fence_dir: {description: The fence directory (gossipmgr_fence_dir)., type: path, required: true}
  epoch: {description: gossipmgr_epoch., type: int, required: true}
  holder: {description: gossipmgr_holder., type: str, required: true}
  job: {description: gossipmgr_job., type: str, required: true}
  action: {description: configure, cleanup or upgrade., type: str, required: true}
  step: {description: The step of the run this action is., type: int, default: 0}
  confirmed_at: {description: When gossipmgr_confirm said yes (wall clock)., type: float}
"""


def act(p: dict[str, object], step: int) -> dict[str, object]:
    """One action under the fence lock; returns the line written."""
    fence_dir, node_dir = str(p["fence_dir"]), str(p["node_dir"])
    os.makedirs(fence_dir, mode=0o700, exist_ok=True)
    os.makedirs(node_dir, exist_ok=True)
    lock_fd = os.open(os.path.join(fence_dir, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        try:
            with open(os.path.join(fence_dir, "epoch.json")) as f:
                node_epoch = json.load(f).get("epoch")
        except (OSError, ValueError):
            node_epoch = None
        line = {
            "t": time.time(),
            "epoch": p["epoch"],
            "holder": p["holder"],
            "job": p["job"],
            "action": p["action"],
            "step": step,
            "node_epoch": node_epoch,
            "confirmed_at": p.get("confirmed_at"),
        }
        with open(os.path.join(node_dir, "actions.jsonl"), "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return line
    finally:
        os.close(lock_fd)


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule  # type: ignore[import-untyped]

    module = AnsibleModule(
        argument_spec={
            "node_dir": {"type": "path", "required": True},
            "fence_dir": {"type": "path", "required": True},
            "epoch": {"type": "int", "required": True},
            "holder": {"type": "str", "required": True},
            "job": {"type": "str", "required": True},
            "action": {"type": "str", "required": True},
            "step": {"type": "int", "default": 0},
            "confirmed_at": {"type": "float", "default": None},
        },
        supports_check_mode=False,
    )
    p = module.params
    try:
        line = act(p, p["step"])
    except OSError as exc:
        module.fail_json(msg=f"partition_action: {exc}")
    module.exit_json(changed=True, line=line)


if __name__ == "__main__":
    main()
