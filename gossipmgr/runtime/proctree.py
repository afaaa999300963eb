"""Stopping a process and every descendant: ansible-playbook's whole tree.

ansible-runner's own cancel only ``killpg``\\ s ansible-playbook's process group, but
ansible-core 2.19 workers call ``setsid()``, so their modules (and the modules' children)
would keep running. :func:`kill_process_tree` walks ``/proc/<pid>/stat`` ppid links instead
(no psutil), freezes what it finds, and signals through pidfds so a recycled pid is never
hit. Blocking: call it from a thread. Linux only.
"""

import logging
import os
import select
import signal
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

logger = logging.getLogger("gossipmgr.ansible")

# modules to exit on SIGTERM, short enough that a cancel answers in about a second.
KILL_GRACE_S: Final = 1.0
# After SIGKILL, how long to wait for the kernel to finish the processes off.
KILL_REAP_S: Final = 2.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime) of a live process from /proc/<pid>/stat; None if gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: split after the *last* ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19])  # fields 4 (ppid) and 22 (starttime) of proc(5)


def _process_table() -> dict[int, tuple[int, int]]:
    table: dict[int, tuple[int, int]] = {}
    with os.scandir("/proc") as entries:
        for entry in entries:
            if entry.name.isdigit():
                st = _stat(int(entry.name))
                if st is not None:
                    table[int(entry.name)] = st
    return table


def process_tree(root: int) -> dict[int, int]:
    """``{pid: starttime}`` of ``root`` and all its live descendants, by ppid links."""
    table = _process_table()
    if root not in table:
        return {}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    tree: dict[int, int] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree[pid] = table[pid][1]
        todo.extend(children.get(pid, ()))
    return tree


def _open_pidfd(pid: int, starttime: int) -> int | None:
    """A pidfd for ``pid`` if it is still the process we walked (same starttime)."""
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return None
    # The pidfd pins the process; checking starttime *after* opening it rules out pid reuse.
    st = _stat(pid)
    if st is None or st[1] != starttime:
        os.close(fd)
        return None
    return fd


def _send(fds: Mapping[int, int], sig: signal.Signals) -> None:
    for fd in fds.values():
        try:
            signal.pidfd_send_signal(fd, sig)
        except ProcessLookupError:
            pass


def _wait_exit(fds: dict[int, int], timeout_s: float) -> None:
    """Wait until every pidfd reports exit (readable) or the timeout; drops exited ones."""
    deadline = time.monotonic() + timeout_s
    while fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        poller = select.poll()
        by_fd = {fd: pid for pid, fd in fds.items()}
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(left * 1000):
            os.close(fd)
            del fds[by_fd[fd]]


def _freeze_new(root: int, fds: dict[int, int]) -> bool:
    """SIGSTOP the members of ``root``'s tree not in ``fds`` yet, adding their pidfds;
    False when the walk found none."""
    new = {p: s for p, s in process_tree(root).items() if p not in fds}
    for pid, starttime in new.items():
        fd = _open_pidfd(pid, starttime)
        if fd is None:
            continue
        fds[pid] = fd
        _send({pid: fd}, signal.SIGSTOP)
    return bool(new)


def kill_process_tree(
    root: int, grace_s: float = KILL_GRACE_S, reap_s: float = KILL_REAP_S
) -> list[int]:
    """Stop ``root`` and all its descendants; return the pids that were signalled.

    Blocking (call it from a thread). The tree is frozen first (SIGSTOP, walking again
    until no new member shows up) so that nothing forks or gets re-parented to init
    between the walk and the kill; then SIGTERM + SIGCONT, ``grace_s`` to exit, SIGKILL
    for the rest. Signals go through pidfds, so a recycled pid is never hit. Prior art:
    ansible-runner's ``Runner.handle_termination`` (killpg only, which misses setsid()
    workers) and psutil's ``Process.children(recursive=True)`` (same ppid walk).
    """
    fds: dict[int, int] = {}
    try:
        for _ in range(100):  # bounded: a fork bomb must not keep us here
            if not _freeze_new(root, fds):
                break
        signalled = sorted(fds)
        _send(fds, signal.SIGTERM)
        _send(fds, signal.SIGCONT)  # a stopped process acts on SIGTERM only once continued
        _wait_exit(fds, grace_s)
        if fds:
            logger.info("ansible: SIGKILL for %s after %.1f s grace", sorted(fds), grace_s)
            _send(fds, signal.SIGKILL)
            _wait_exit(fds, reap_s)
        if fds:
            logger.warning("ansible: processes %s survived SIGKILL", sorted(fds))
        return signalled
    finally:
        for fd in fds.values():
            os.close(fd)


def find_child(needle: str) -> int | None:
    """Our own child process whose command line contains ``needle`` (the run's private dir)."""
    me = os.getpid()
    for pid, (ppid, _) in _process_table().items():
        if ppid != me:
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() in cmdline:
            return pid
    return None
