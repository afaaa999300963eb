"""A cluster of real gossipmgr agents and simulated nodes on loopback, for the demo,
the integration tests and the benchmarks.

Each instance is a ``gossipmgr agent`` subprocess with its own embedded ``serf agent``;
each simulated node is a plain ``serf agent`` carrying clusterm's ``NodeLabel``,
``NodeSerial`` and ``NodeAddr`` tags. Everything binds 127.0.0.1 on free ports (never
Serf's defaults), and :meth:`LocalCluster.close` stops every process it started, even
after a failure (use it as a context manager).
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from gossipmgr.gossip.crypto import generate_key
from gossipmgr.serf.process import serf_agent_argv

T = TypeVar("T")
FORBIDDEN_PORTS = {7946, 7373, 9007}
HOST = "127.0.0.1"


#: Ports this process has handed out: never handed out twice, even if free again.
_HANDED_OUT: set[int] = set()


def _port_pool() -> range:
    """Ports outside the kernel's ephemeral range (``ip_local_port_range``).

    A port taken with ``bind(0)`` comes *from* the ephemeral range, so any outgoing
    connection opened between our probe and the real bind (an agent's long-lived Serf RPC
    connection, memberlist's TCP push-pull, an HTTP client) can take it as its source
    port and keep it: serf then cannot bind and the instance never comes up (CI saw this
    once). Below the ephemeral range only listeners compete, and the probe sees them.
    Each pytest-xdist worker (``./dev test`` runs 2) keeps its share of the pool
    (``p % workers == its number``): two never hand out one port between probe and bind.
    """
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        lo, hi = (int(x) for x in text.split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999
    if lo - 10_000 >= 5_000:
        pool = range(10_000, lo)
    elif hi < 60_000:
        pool = range(hi + 1, 65_536)
    else:
        return range(0)  # no room outside: fall back to bind(0)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:]
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")
    index, n = (int(worker), max(int(count), 1)) if (worker + count).isdigit() else (0, 1)
    return range(pool.start + (index - pool.start) % n, pool.stop, n)


def _bindable(host: str, port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_port(host: str = HOST) -> int:
    """A port free for both TCP and UDP on ``host`` right now (Serf binds both), outside
    the ephemeral range (see ``_port_pool``), never one this process handed out before."""
    pool = _port_pool()
    for _ in range(500):
        if pool:
            port = random.choice(pool)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                t.bind((host, 0))
                port = int(t.getsockname()[1])
        if port in FORBIDDEN_PORTS or port in _HANDED_OUT or not _bindable(host, port):
            continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError("no free port found")


def kill_marked(tag: str) -> None:
    """SIGKILL every process whose command line holds ``tag``, and its process group: the
    playbook processes a SIGKILLed agent left behind (a test puts ``tag`` in a task's
    command line so that it can find and stop them, whatever happens to the agent that
    started them). The group is the ansible worker's (it calls setsid()): the worker and
    what the marked shell started, whose command lines need not hold the tag; the
    ansible-playbook above them then ends on its dead worker. Our own group is spared."""
    own = os.getpgid(0)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if tag.encode() in (entry / "cmdline").read_bytes():
                pid = int(entry.name)
                group = os.getpgid(pid)
                os.kill(pid, signal.SIGKILL)
                if group != own:
                    os.killpg(group, signal.SIGKILL)


def wait_for(
    pred: Callable[[], T | bool | None], timeout: float, what: str, interval: float = 0.05
) -> T:
    """Poll ``pred`` until it returns something truthy; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = pred()
            if value:
                return value  # type: ignore[return-value]
        except (httpx.HTTPError, OSError, KeyError, ValueError) as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")
        time.sleep(interval)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class Instance:
    name: str
    data_dir: Path
    api_port: int
    gossip_port: int
    serf_port: int
    rpc_port: int
    args: list[str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.api_port}"

    @property
    def serf_bind(self) -> str:
        return f"{HOST}:{self.serf_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.name}.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Node:
    """A simulated cluster node: a serf agent with clusterm's tags."""

    label: str
    serial: str
    addr: str
    serf_port: int
    rpc_port: int
    args: list[str]
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    #: Serf node name when it is not ``<label>-<serial>`` (an imposter, a bare member).
    member_name: str = ""

    @property
    def name(self) -> str:
        return self.member_name or f"{self.label}-{self.serial}"


@dataclass
class LocalCluster:
    root: Path
    #: memberlist profile: "local" detects failures in ~5 s instead of ~6 s.
    profile: str = "local"
    #: ansible host vars for every job (the demo and tests run playbooks locally).
    local_ansible: bool = True
    lease_ttl_ms: int = 10_000
    extra_args: Sequence[str] = ()
    instances: dict[str, Instance] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    key_file: Path = field(init=False)
    #: The API token every instance requires (one for the cluster: forwarding passes the
    #: client's token on); the CLI reads it with GOSSIPMGR_TOKEN_FILE.
    token_file: Path = field(init=False)
    config_file: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_file = self.root / "gossip.key"
        if not self.key_file.exists():
            self.key_file.write_text(generate_key() + "\n")
            self.key_file.chmod(0o600)
        self.token_file = self.root / "api.token"
        if not self.token_file.exists():
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
        self.config_file = self.root / "agent.toml"
        lines = []
        if self.local_ansible:
            lines += [
                "[ansible.host_vars]",
                'ansible_connection = "local"',
                'ansible_python_interpreter = "{{ ansible_playbook_python }}"',
                f'gossipmgr_demo_root = "{self.root / "hosts"}/{{{{ inventory_hostname }}}}"',
                # each simulated node keeps its own fence record (docs/ansible.md)
                f'gossipmgr_fence_dir = "{self.root / "hosts"}/{{{{ inventory_hostname }}}}/fence"',
            ]
        self.config_file.write_text("\n".join(lines) + "\n")

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- instances -----------------------------------------------------------------------
    def _seed(self) -> str | None:
        for inst in self.instances.values():
            return inst.serf_bind
        return None

    def add_instance(self, name: str) -> Instance:
        data = self.root / name
        inst = Instance(name, data, free_port(), free_port(), free_port(), free_port(), [])
        join = self._seed()
        inst.args = [
            sys.executable,
            "-m",
            "gossipmgr.cli.main",
            "agent",
            "--name",
            name,
            "--config",
            str(self.config_file),
            "--data-dir",
            str(data),
            "--api-addr",
            f"{HOST}:{inst.api_port}",
            "--gossip-addr",
            f"{HOST}:{inst.gossip_port}",
            "--serf-bind",
            inst.serf_bind,
            "--serf-rpc-bind",
            f"{HOST}:{inst.rpc_port}",
            "--serf-profile",
            self.profile,
            "--encrypt-key-file",
            str(self.key_file),
            "--api-token-file",
            str(self.token_file),
            "--lease-ttl-ms",
            str(self.lease_ttl_ms),
            "--lease-renew-ms",
            str(self.lease_ttl_ms // 4),
            *self.extra_args,
        ]
        if join:
            inst.args += ["--join", join]
        self.instances[name] = inst
        self.start(name)
        return inst

    def start(self, name: str) -> Instance:
        inst = self.instances[name]
        assert not inst.alive, f"{name} is already running"
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(inst.log_path, "ab") as logf:
            inst.proc = subprocess.Popen(
                inst.args,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )
        return inst

    def wait_ready(self, name: str, timeout: float = 30.0) -> None:
        inst = self.instances[name]

        def ready() -> bool:
            if not inst.alive:
                raise RuntimeError(f"agent {name} exited:\n{inst.log()[-3000:]}")
            r = httpx.get(f"{inst.url}/health", timeout=2)
            return r.status_code == 200 and bool(r.json().get("serf", {}).get("healthy"))

        try:
            wait_for(ready, timeout, f"agent {name} to serve with Serf up")
        except TimeoutError as exc:
            try:
                serf_log = (inst.data_dir / "serf" / "agent.log").read_text(errors="replace")
            except OSError as e:
                serf_log = f"(no serf log: {e})"
            raise TimeoutError(
                f"{exc}\n--- {name} log tail ---\n{inst.log()[-3000:]}"
                f"\n--- {name} serf log tail ---\n{serf_log[-2000:]}"
            ) from None

    def add_instances(self, *names: str) -> None:
        """Add and start the instances ``names`` at once, then wait until each serves with
        its Serf agent up (they start in parallel)."""
        for n in names:
            self.add_instance(n)
        for n in names:
            self.wait_ready(n)

    def kill9(self, name: str) -> None:
        inst = self.instances[name]
        if inst.proc is not None and inst.proc.poll() is None:
            inst.proc.kill()
            inst.proc.wait(10)

    def stop(self, name: str, grace: float = 20.0) -> None:
        inst = self.instances[name]
        if inst.proc is not None:
            _stop(inst.proc, grace)

    def serf_pid(self, name: str) -> int | None:
        """The pid of the instance's embedded serf agent (a child of the agent)."""
        inst = self.instances[name]
        if inst.proc is None:
            return None
        # trio forks from a worker thread, so scan every process's parent pid.
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                if ppid != inst.proc.pid:
                    continue
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ValueError, IndexError):
                continue
            if len(cmd) > 1 and cmd[0].endswith(b"serf") and cmd[1] == b"agent":
                return int(entry.name)
        return None

    # -- HTTP ------------------------------------------------------------------------------
    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header every API route but /health requires."""
        return {"Authorization": f"Bearer {self.token_file.read_text().strip()}"}

    def get(self, name: str, path: str, timeout: float = 5.0) -> Any:
        url = f"{self.instances[name].url}{path}"
        r = httpx.get(url, headers=self.headers, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def post(self, name: str, path: str, body: Any, timeout: float = 30.0) -> httpx.Response:
        url = f"{self.instances[name].url}{path}"
        return httpx.post(url, json=body, headers=self.headers, timeout=timeout)

    def put(self, name: str, path: str, body: Any, timeout: float = 30.0) -> httpx.Response:
        url = f"{self.instances[name].url}{path}"
        return httpx.put(url, json=body, headers=self.headers, timeout=timeout)

    def lease(self, name: str) -> dict[str, Any]:
        return dict(self.get(name, "/info/lease")["lease"] or {})

    def holder(self, names: Sequence[str] | None = None) -> str | None:
        """The holder every named (running) instance agrees on, or None."""
        names = names or [n for n, i in self.instances.items() if i.alive]
        seen = set()
        for n in names:
            lease = self.lease(n)
            if not lease.get("valid"):
                return None
            seen.add(lease["holder"])
        return seen.pop() if len(seen) == 1 else None

    def formed(self, names: Sequence[str] | None = None) -> str | None:
        """The agreed holder once every named (running) instance sees all of them and holds
        a majority of them, caught up (``/health`` quorum ``sees == known == len(names)``);
        None before. A holder keeps its majority while it catches up with instances that
        join or come back (``core.quorum.keeps_through_catch_up``), so a job can start as
        soon as there is a holder; this is for a test that needs every instance to count
        every other."""
        names = names or [n for n, i in self.instances.items() if i.alive]
        for n in names:
            q = self.get(n, "/health")["quorum"]
            if not (q["may_hold"] and q["sees"] == q["known"] == len(names)):
                return None
        return self.holder(names)

    # -- simulated nodes -------------------------------------------------------------------
    def add_node(self, label: str, serial: str, addr: str = HOST) -> Node:
        tags = {"NodeLabel": label, "NodeSerial": serial, "NodeAddr": addr}
        return self.add_member(f"{label}-{serial}", tags)

    def add_member(self, name: str, tags: dict[str, str]) -> Node:
        """A bare ``serf agent`` named ``name`` with ``tags``, joined to the cluster: a
        node (``add_node``), or one posing as another node or as a gossipmgr instance."""
        data = self.root / "nodes" / name
        data.mkdir(parents=True, exist_ok=True)
        serf_port, rpc_port = free_port(), free_port()
        seed = self._seed()
        args = serf_agent_argv(
            name,
            f"{HOST}:{serf_port}",
            f"{HOST}:{rpc_port}",
            binary=shutil.which("serf") or "serf",
            profile=self.profile,
            tags=tags,
            keyring_file=self._node_keyring(data),
            retry_join=[seed] if seed else [],
            retry_interval_s=1,
        )
        node = Node(
            tags.get("NodeLabel", ""),
            tags.get("NodeSerial", ""),
            tags.get("NodeAddr", ""),
            serf_port,
            rpc_port,
            args,
            data,
            member_name=name,
        )
        self.nodes[node.name] = node
        self.start_node(node.name)
        return node

    def _node_keyring(self, data: Path) -> Path:
        path = data / "keyring.json"
        path.write_text(f'["{self.key_file.read_text().strip()}"]')
        return path

    def start_node(self, name: str) -> None:
        node = self.nodes[name]
        with open(node.data_dir / "serf.log", "ab") as logf:
            node.proc = subprocess.Popen(
                node.args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )

    def kill9_node(self, name: str) -> None:
        node = self.nodes[name]
        if node.proc is not None and node.proc.poll() is None:
            node.proc.kill()
            node.proc.wait(10)

    # -- teardown --------------------------------------------------------------------------
    def close(self) -> None:
        """Stop everything (graceful first, in parallel), then make sure nothing is left."""
        procs = [i.proc for i in self.instances.values() if i.proc is not None]
        procs += [n.proc for n in self.nodes.values() if n.proc is not None]
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(OSError):
                    p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(0.1, deadline - time.monotonic()))
            if p.poll() is None:
                p.kill()
                p.wait(5)


@contextlib.contextmanager
def local_cluster(root: Path, **kw: Any) -> Iterator[LocalCluster]:
    c = LocalCluster(root, **kw)
    try:
        yield c
    finally:
        c.close()
