"""Test helpers: real ``serf agent`` processes on free loopback ports.

Every agent started here is tracked by its :class:`AgentPool`; ``pool.stop_all()`` (called by
the fixtures in teardown) kills whatever is still running, so a failing test leaks nothing.
Ports are probed on 127.0.0.1 (TCP and UDP both free, never 7946/7373).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import pytest

from gossipmgr.localcluster import LocalCluster
from gossipmgr.localcluster import free_port as free_port  # re-exported for the tests
from gossipmgr.serf.process import serf_agent_argv

SERF = shutil.which("serf") or "/usr/bin/serf"

needs_serf = pytest.mark.skipif(not os.path.exists(SERF), reason="serf binary not installed")


def rpc_ready(port: int, auth: str | None = None, host: str = "127.0.0.1") -> bool:
    """True if a blocking handshake on the agent's RPC port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(msgpack.packb({"Command": "handshake", "Seq": 1}, use_bin_type=True))
            s.sendall(msgpack.packb({"Version": 1}, use_bin_type=True))
            unp = msgpack.Unpacker(raw=False)
            while True:
                data = s.recv(4096)
                if not data:
                    return False
                unp.feed(data)
                for obj in unp:
                    return isinstance(obj, dict) and obj.get("Error") == ""
    except OSError:
        return False


@dataclass
class Agent:
    name: str
    bind_port: int
    rpc_port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path
    args: list[str] = field(default_factory=list)

    @property
    def bind(self) -> str:
        return f"127.0.0.1:{self.bind_port}"

    def log(self) -> str:
        try:
            return (self.data_dir / "agent.log").read_text(errors="replace")
        except OSError:
            return ""

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)

    def stop(self) -> None:
        """SIGINT (graceful leave), SIGKILL after 5 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill9()


class AgentPool:
    """Starts agents and guarantees they are all killed by :meth:`stop_all`."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.agents: list[Agent] = []

    def start(
        self,
        name: str,
        *,
        tags: Mapping[str, str] | None = None,
        join: Sequence[Agent] = (),
        profile: str = "local",
        config: Mapping[str, object] | None = None,
        bind_port: int | None = None,
        rpc_port: int | None = None,
        wait: bool = True,
    ) -> Agent:
        data = self.tmp / name
        data.mkdir(parents=True, exist_ok=True)
        bind_port = bind_port or free_port()
        rpc_port = rpc_port or free_port()
        config_file = None
        if config:
            config_file = data / "config.json"
            config_file.write_text(json.dumps(dict(config)))
        args = serf_agent_argv(
            name,
            f"127.0.0.1:{bind_port}",
            f"127.0.0.1:{rpc_port}",
            binary=SERF,
            profile=profile,
            tags=tags,
            log_level="debug",
            config_file=config_file,
            retry_join=[other.bind for other in join],
            retry_interval_s=1,
        )
        logf = open(data / "agent.log", "ab")  # the child keeps its own copy
        try:
            proc = subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            logf.close()
        agent = Agent(name, bind_port, rpc_port, proc, data, args)
        self.agents.append(agent)
        if wait:
            auth = str(config["rpc_auth"]) if config and "rpc_auth" in config else None
            self.wait_ready(agent, auth)
        return agent

    def restart(self, agent: Agent, **kw: object) -> Agent:
        """Start a new process with the same args (and ports) as a dead ``agent``."""
        assert agent.proc.poll() is not None, "restart needs a dead agent"
        logf = open(agent.data_dir / "agent.log", "ab")
        try:
            agent.proc = subprocess.Popen(
                agent.args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        finally:
            logf.close()
        self.wait_ready(agent)
        return agent

    @staticmethod
    def wait_ready(agent: Agent, auth: str | None = None, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if agent.proc.poll() is not None:
                raise RuntimeError(f"serf agent {agent.name} exited:\n{agent.log()}")
            if rpc_ready(agent.rpc_port):
                return
            time.sleep(0.02)
        raise RuntimeError(f"serf agent {agent.name} RPC not ready:\n{agent.log()}")

    def stop_all(self) -> None:
        for agent in self.agents:
            with contextlib.suppress(Exception):
                agent.kill9()
            if agent.proc.poll() is None:  # pragma: no cover - last resort
                agent.proc.kill()
                agent.proc.wait()


@contextlib.contextmanager
def agent_pool(tmp: Path) -> Iterator[AgentPool]:
    pool = AgentPool(tmp)
    try:
        yield pool
    finally:
        pool.stop_all()


@contextlib.contextmanager
def local_cluster(
    root: Path, lease_ttl_ms: int, extra_args: tuple[str, ...] = ()
) -> Iterator[LocalCluster]:
    """A LocalCluster for one test: on failure its instances' log tails are printed; it is
    closed whatever happens, and every instance must then be stopped. ``extra_args``: more
    options for every agent."""
    c = LocalCluster(root, lease_ttl_ms=lease_ttl_ms, extra_args=extra_args)
    try:
        yield c
    except BaseException:
        for inst in c.instances.values():
            print(f"--- {inst.name} log tail ---\n{inst.log()[-4000:]}")
        raise
    finally:
        c.close()
    for inst in c.instances.values():
        assert not inst.alive
