#!/usr/bin/python
"""gossipmgr_fence: refuse a playbook run whose lease epoch is older than one that acted here.

An ansible module (it runs on the node), shipped in gossipmgr's ``gossipmgr_fence`` role.
Under an exclusive ``flock`` on ``<dir>/lock`` it reads the highest epoch recorded on this
node (``<dir>/epoch.json``), and

* if ``epoch`` is lower, fails with ``fenced: epoch N is older than M (job J by H)``,
  where M, J and H are the recorded epoch and the job and holder that recorded it;
* otherwise records ``{epoch, holder, job}`` (temp file, fsync, rename, fsync of the
  directory), so the record survives a crash whole or not at all.

In ansible's check mode (a gossipmgr check job) it compares the same way, and fails the same
way, but records nothing and creates nothing on the node: ``changed`` then says whether a
real run would have recorded its epoch. A check job acts on nothing, so it must not move the
node's epoch order either.

Pure apart from :func:`fence` (the file work) and :func:`main` (ansible's glue), so the
rule can be tested without ansible. Only the standard library and ansible's module_utils:
the file is shipped to the node on its own. See docs/ansible.md.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from typing import Any

DEFAULT_DIR = "/var/lib/gossipmgr/fence"
RECORD = "epoch.json"
LOCK = "lock"

DOCUMENTATION = r"""
module: gossipmgr_fence
short_description: Refuse a gossipmgr job whose lease epoch is older than one that acted here
description:
  - Compares O(epoch) with the highest epoch recorded on the node, under a lock; records it
    if not lower, fails with C(fenced: epoch N is older than M (job J by H)) if lower.
  - In check mode it compares and fails alike, but records and creates nothing.
options:
  epoch: {description: The lease epoch of the job (gossipmgr_epoch)., type: int, required: true}
  holder: {description: The holder running the job (gossipmgr_holder)., type: str, required: true}
  job: {description: The job id (gossipmgr_job)., type: str, required: true}
  dir: {description: The record's directory., type: path, default: /var/lib/gossipmgr/fence}
"""


class Fenced(Exception):
    """The run's epoch is older than the one recorded on the node."""


class BadRecord(Exception):
    """The node's record cannot be read as one (refuse rather than guess)."""


def decide(recorded: dict[str, Any] | None, epoch: int, holder: str, job: str) -> dict[str, Any]:
    """The record to keep after a run under ``(epoch, holder, job)``; raises Fenced.

    Equal epochs pass (a job's several playbooks, and its hosts, share one epoch); the
    newest run of an epoch is what the record names.
    """
    if recorded is not None and epoch < int(recorded["epoch"]):
        raise Fenced(
            f"fenced: epoch {epoch} is older than {recorded['epoch']} "
            f"(job {recorded.get('job', '?')} by {recorded.get('holder', '?')})"
        )
    return {"epoch": epoch, "holder": holder, "job": job}


def parse_record(text: str) -> dict[str, Any]:
    """A record file's content; raises BadRecord unless it holds an integer ``epoch``."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise BadRecord(f"not JSON: {exc}") from None
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("epoch"), int)
        or isinstance(value.get("epoch"), bool)
    ):
        raise BadRecord(f"no integer epoch in {text[:200]!r}")
    return value


def _write_atomically(directory: str, record: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".epoch-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(directory, RECORD))
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_record(directory: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(directory, RECORD)) as f:
            return parse_record(f.read())
    except FileNotFoundError:
        return None


def _open_lock(directory: str, check: bool) -> int | None:
    """The node's lock, held: exclusive to record; shared to only compare (``check``),
    which creates nothing, so a node without a fence directory has no lock to take."""
    if check:
        try:
            fd = os.open(os.path.join(directory, LOCK), os.O_RDONLY)
        except FileNotFoundError:
            return None
    else:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH if check else fcntl.LOCK_EX)  # released at close
    except BaseException:
        os.close(fd)
        raise
    return fd


def fence(directory: str, epoch: int, holder: str, job: str, check: bool = False) -> dict[str, Any]:
    """Check and record under the node's lock. Returns ``{changed, previous, record}``.

    ``check`` (ansible's check mode): compare only; nothing is written or created, and
    ``changed`` says whether the record would have changed. Raises Fenced (nothing
    written), BadRecord, OSError."""
    lock_fd = _open_lock(directory, check)
    try:
        previous = _read_record(directory)
        record = decide(previous, epoch, holder, job)
        changed = previous != record
        if changed and not check:
            _write_atomically(directory, record)
        return {"changed": changed, "previous": previous, "record": record}
    finally:
        if lock_fd is not None:
            os.close(lock_fd)


def main() -> None:
    from ansible.module_utils.basic import AnsibleModule  # type: ignore[import-untyped]

    module = AnsibleModule(
        argument_spec={
            "epoch": {"type": "int", "required": True},
            "holder": {"type": "str", "required": True},
            "job": {"type": "str", "required": True},
            "dir": {"type": "path", "default": DEFAULT_DIR},
        },
        # Check mode compares (a stale check job is refused too) and records nothing.
        supports_check_mode=True,
    )
    p = module.params
    try:
        out = fence(p["dir"], p["epoch"], p["holder"], p["job"], module.check_mode)
    except Fenced as exc:
        module.fail_json(msg=str(exc), fenced=True)
    except BadRecord as exc:
        module.fail_json(msg=f"gossipmgr_fence: bad record in {p['dir']}/{RECORD}: {exc}")
    except OSError as exc:
        module.fail_json(msg=f"gossipmgr_fence: {p['dir']}: {exc}")
    module.exit_json(**out)


if __name__ == "__main__":
    main()
