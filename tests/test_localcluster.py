"""The local cluster harness's port picking (every Serf/loopback test depends on it)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from gossipmgr import localcluster
from gossipmgr.localcluster import FORBIDDEN_PORTS, free_port


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() -> None:
    lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)  # never handed out twice
    for p in ports:
        assert not lo <= p <= hi, p  # an outgoing connection cannot steal it meanwhile
        assert p not in FORBIDDEN_PORTS
    for p in ports[:20]:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", p))


def test_pytest_xdist_workers_pick_from_disjoint_pools(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """``./dev test`` runs 2 workers, each with its own ``_HANDED_OUT``: their pools must not
    overlap, or one could hand out a port the other probed but has not bound yet."""
    pools = []
    for name in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", name)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        pools.append(set(localcluster._port_pool()))
    assert all(pools)
    assert not pools[0] & pools[1] and not pools[0] & pools[2] and not pools[1] & pools[2]
    monkeypatch.delenv("PYTEST_XDIST_WORKER")
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT")
    assert set(localcluster._port_pool()) == pools[0] | pools[1] | pools[2]


def test_a_port_held_by_a_listener_or_udp_socket_is_never_picked(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # A window of 3 ports this test holds all but one of: the probe must find the last.
    for base in range(20_000, 30_000, 7):
        window = range(base, base + 3)
        socks = []
        try:
            for port, kind in zip(window[:2], (socket.SOCK_STREAM, socket.SOCK_DGRAM), strict=True):
                s = socket.socket(socket.AF_INET, kind)
                socks.append(s)
                s.bind(("127.0.0.1", port))
                if kind == socket.SOCK_STREAM:
                    s.listen()
        except OSError:
            for s in socks:
                s.close()
            continue
        try:
            monkeypatch.setattr(localcluster, "_port_pool", lambda window=window: window)
            monkeypatch.setattr(localcluster, "_HANDED_OUT", set())
            try:
                got = localcluster.free_port()
            except RuntimeError:
                continue  # the free one was taken by someone else meanwhile: next window
            assert got == window[2]
            return
        finally:
            for s in socks:
                s.close()
    raise AssertionError("no window of 3 bindable ports found")


def test_kill_marked_stops_what_the_marked_process_started() -> None:
    """A marked shell (the tag in its command line) forked an unmarked ``sleep``, in a
    process group of their own (as an ansible worker's module runs): ``kill_marked`` stops
    both. (It stopped only the shell: the agent tests that SIGKILL a runner mid-job left
    its ``sleep 300`` and ansible-playbook processes running for minutes.)"""
    tag = f"kill-marked-{os.getpid()}-{time.monotonic_ns()}"
    shell = subprocess.Popen(
        ["sh", "-c", f"sleep 300; echo {tag}"], start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        sleep = localcluster.wait_for(
            lambda: next(iter(_children(shell.pid)), None), 10, "the shell to start its sleep"
        )
        localcluster.kill_marked(tag)
        shell.wait(10)
        localcluster.wait_for(lambda: not _alive(sleep), 10, "the unmarked sleep to be stopped")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(10)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
