"""gossipmgr_confirm: before a task changes a node, ask the job's instance whether its lease
holder still has a majority *now*.

An ansible action plugin: it runs in ansible's controller, on the instance that runs the
job (never on the node), shipped with gossipmgr's ``gossipmgr_fence`` role (which runs it
before its epoch check). It connects to the job's confirm socket, named by the
``GOSSIPMGR_CONFIRM_SOCKET`` environment variable that gossipmgr sets for a job's ansible
runs only, and sends ``{"epoch", "job", "host"}``; the instance answers after a fresh round
trip to its peers over gossip (gossipmgr/runtime/confirm.py, core/confirm.py).

* yes: the task is ``ok``, its ``msg`` the instance's reason (``majority: 3 of 5 ...``),
  ``confirmed_at`` the controller's wall-clock time of the answer (register it to log it);
* no: the task fails with the instance's ``no majority: ...`` (``confirm_refused: true``),
  so the play stops before the next task and the job takes its failure path with it;
* the socket cannot be reached (the run or its instance is gone): it fails the same way;
* a run not started by a gossipmgr job (no ``gossipmgr_epoch``, or no socket in the
  environment: a playbook run by hand) is skipped, not confirmed, as the fence skips it.

Arguments (all optional): ``epoch`` and ``job`` (default: the run's ``gossipmgr_epoch``
and ``gossipmgr_job``), ``timeout`` (seconds to wait for the answer, default 30: the
instance itself answers within about a second). Only the standard library and ansible.
"""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

from ansible.plugins.action import ActionBase  # type: ignore[import-untyped]

ENV = "GOSSIPMGR_CONFIRM_SOCKET"
REFUSED = "no majority: "
MAX_ANSWER = 65_536


def ask(path: str, question: dict[str, Any], timeout: float) -> dict[str, Any]:
    """One confirm over the unix socket at ``path``; raises OSError or ValueError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    dfd = -1
    try:
        where = path
        if len(path.encode()) >= 100:  # beyond a unix socket's path limit: via the directory
            dfd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
            where = f"/proc/self/fd/{dfd}/{os.path.basename(path)}"
        sock.connect(where)
        sock.sendall((json.dumps(question) + "\n").encode())
        data = b""
        while b"\n" not in data and len(data) < MAX_ANSWER:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
        if dfd >= 0:
            os.close(dfd)
    answer = json.loads(data.split(b"\n", 1)[0])
    if not isinstance(answer, dict) or not isinstance(answer.get("reason"), str):
        raise ValueError(f"not a confirm answer: {data[:200]!r}")
    return answer


class ActionModule(ActionBase):  # type: ignore[misc]
    """The ``gossipmgr_confirm`` action (see the module)."""

    TRANSFERS_FILES = False
    _supports_check_mode = True  # a check job is confirmed like a real one
    _supports_async = False

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result: dict[str, Any] = super().run(tmp, task_vars)
        task_vars = task_vars or {}
        args = self._task.args
        epoch = args.get("epoch", task_vars.get("gossipmgr_epoch"))
        job = args.get("job", task_vars.get("gossipmgr_job"))
        path = os.environ.get(ENV, "")
        if epoch is None or job is None or not path:
            result.update(
                skipped=True,
                changed=False,
                msg="not confirmed: not a run of a gossipmgr job (no gossipmgr_epoch, or no "
                f"{ENV} in the environment)",
            )
            return result
        host = str(task_vars.get("inventory_hostname", ""))
        question = {"epoch": int(str(epoch)), "job": str(job), "host": host}
        try:
            answer = ask(path, question, float(args.get("timeout", 30)))
        except (OSError, ValueError) as exc:
            answer = {
                "ok": False,
                "reason": f"{REFUSED}the job's gossipmgr instance did not answer ({path}: {exc})",
            }
        reason = str(answer["reason"])
        if answer.get("ok") is True:
            result.update(changed=False, confirmed=True, confirmed_at=time.time(), msg=reason)
        else:
            if not reason.startswith(REFUSED):
                reason = REFUSED + reason
            result.update(failed=True, changed=False, confirm_refused=True, msg=reason)
        return result
