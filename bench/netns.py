"""Network-namespace harness: 3-5 "hosts" with real gossipmgr agents, partitioned for real.

Each host is a network namespace joined to a per-run bridge by a veth pair, addressed in
127.1.0.0/24 (docs/serf.md, netns: ``lo`` shrunk to 127.0.0.1/32 and ``route_localnet=1`` so a
127/8 address can leave the namespace). A host runs one ``gossipmgr agent`` (with its
embedded ``serf agent``); a *node* host runs a plain ``serf agent`` carrying clusterm's
``NodeLabel``/``NodeSerial``/``NodeAddr`` tags, as ``gossipmgr.localcluster`` does.

Names: everything this run creates starts with ``gm<pid><letter>`` (namespaces
``<prefix>-h1``, links ``<prefix>v1``/``<prefix>v1b``, bridges ``<prefix>br``/``<prefix>g2``),
so parallel runs never collide and :func:`cleanup_leftovers` can find a dead run's debris.
Inside a namespace of its own every port is free, so ports are fixed constants (deliberately
not Serf's 7946/7373, which the test policy reserves).

Faults, all made with links and qdiscs, because this kernel has no ``tc netem``, no tc
actions, no iptables/nft, and blackhole routes are *not* silent loss (docs/serf.md):

* :meth:`NetnsCluster.partition` moves the bridge ports of each non-first group onto a bridge
  of their own (a group of one is simply detached: ``nomaster``); :meth:`heal` puts every
  port back on the main bridge.
* :meth:`link_down` / :meth:`link_up` set the host's bridge-side veth down/up (flapping).
* :meth:`block_ingress`: a ``pfifo limit 0`` root qdisc on the *bridge-side* veth drops
  every frame the bridge forwards to the host, while the host's own frames still reach the
  bridge: a host that can send but not receive. ``limit 0`` also disables the qdisc bypass
  (``fifo_init`` sets ``TCQ_F_CAN_BYPASS`` only for ``limit >= 1``), so nothing leaks; the
  qdisc's drop counter proves it. Static ARP entries (``nud permanent``) are installed at
  setup so a blocked host's neighbour cache never expires (it would never hear an ARP
  reply) and one-way stays one-way instead of decaying into full isolation.

**contiv mode** (``mdns="<cluster>"``): the cluster as contiv/ansible provisions it
(``roles/serf/templates/serf.j2``). Nodes run ``serf agent -node=<label>-<serial> -discover
<cluster> -iface <if> -tag NodeLabel=... -tag NodeSerial=... -tag NodeAddr=...`` with no key
and no join: they find each other by mDNS. They start first (the fleet already runs); the
instances then join them with ``--serf-no-encrypt --serf-discover <cluster> --serf-iface
<if>`` and no ``--join``. (Ports stay this harness's constants instead of Serf's defaults.)
mDNS over the bridge needs two things a bare namespace lacks, both found the hard way:
an IPv4 route for 224.0.0.0/4 (without one serf 0.8.2's mDNS client panics on a nil
multicast socket and the agent dies) and IPv6 duplicate address detection off on the veth
(while the link-local address is tentative the query fails with ``cannot assign requested
address`` and Serf polls again only 60 s later). The bridge floods multicast as created.

HTTP to an agent is spoken *inside its namespace*: :class:`NetnsDialer` keeps one thread
that called ``setns(CLONE_NEWNET)`` once and opens every socket there; a socket keeps the
namespace it was created in, so any thread can then use it (docs/serf.md). This costs one
thread hop per *connection* (not per request: connections are kept alive), whereas the
alternative, ``ip netns exec curl`` per request, costs a process spawn (~5-10 ms) per
request and would cap lease sampling well below the 100 ms we want.

Ownership: :class:`NetnsCluster` owns every namespace, link and process it creates;
:meth:`NetnsCluster.close` removes them (processes first, then links, namespaces, bridges)
and is safe to call twice and after a partial setup. Use it as a context manager and call
:func:`install_signal_teardown` so SIGTERM/SIGHUP unwind through ``finally`` like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from gossipmgr.serf.process import serf_agent_argv

T = TypeVar("T")

SUBNET = "127.1.0"
API_PORT = 18007
GOSSIP_PORT = 17950
SERF_PORT = 17946
RPC_PORT = 17373
NODE_BASE = 100  # node k lives at 127.1.0.(100+k)
NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000
#: ``gm<pid><letter>``: the pid says which process owns it, the letter tells two clusters
#: of one process (e.g. consecutive tests) apart.
PREFIX_RE = re.compile(r"^(gm(\d+)[a-z])")
_seq = itertools.count()
_libc = ctypes.CDLL(None, use_errno=True)


class HarnessError(RuntimeError):
    """A harness step failed (a command, a process, a wait); the message says which."""


# --------------------------------------------------------------------------- environment
def unavailable_reason() -> str | None:
    """Why this harness cannot run here, or None. Needs root, ``ip netns`` and ``serf``."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    if shutil.which("serf") is None:
        return "`serf` is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command; raise HarnessError with its stderr when ``check`` and it fails."""
    r = subprocess.run(list(argv), capture_output=True, text=True)
    if check and r.returncode != 0:
        raise HarnessError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.strip()}")
    return r


def nsexec(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", ns, *argv, check=check)


def wait_for(pred: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    """Poll ``pred`` until truthy; raise HarnessError naming ``what`` (and the last error)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
            last = exc
        if time.monotonic() >= deadline:
            raise HarnessError(
                f"timed out after {timeout:.0f} s waiting for {what}"
                + (f" (last error: {last})" if last else "")
            )
        time.sleep(interval)


class _Teardown(BaseException):
    """Raised by the signal handler so ``finally`` blocks run (like KeyboardInterrupt)."""


def install_signal_teardown() -> None:
    """Make SIGTERM and SIGHUP unwind the main thread like Ctrl-C does."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise _Teardown(f"signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# --------------------------------------------------------------------------- HTTP in a netns
def _enter_netns(ns: str) -> None:
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


class NetnsDialer:
    """Opens TCP connections inside one namespace, from a thread that lives there.

    Owns one worker thread (stopped by :meth:`close`). Thread-safe.
    """

    def __init__(self, ns: str) -> None:
        self.ns = ns
        self._pool = ThreadPoolExecutor(1, f"netns-{ns}", _enter_netns, (ns,))

    def connect(self, addr: tuple[str, int], timeout: float) -> socket.socket:
        return self._pool.submit(socket.create_connection, addr, timeout).result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _NsConnection(http.client.HTTPConnection):
    def __init__(self, dialer: NetnsDialer, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self._dialer = dialer

    def connect(self) -> None:
        self.sock = self._dialer.connect((self.host, self.port), self.timeout or 5.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class ApiClient:
    """A keep-alive JSON client for one agent's API, reached inside its namespace.

    Not thread-safe: give each thread its own (:meth:`NetnsCluster.client`). Raises OSError /
    http.client.HTTPException on transport failure (the connection is dropped and redialled
    on the next call).
    """

    def __init__(
        self, dialer: NetnsDialer, host: str, port: int, timeout: float = 5.0, token: str = ""
    ) -> None:
        self._dialer, self.host, self.port, self.timeout = dialer, host, port, timeout
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: _NsConnection | None = None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        if self._conn is None:
            self._conn = _NsConnection(self._dialer, self.host, self.port, self.timeout)
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        headers.update(self._auth)
        try:
            self._conn.request(method, path, body=data, headers=headers)
            r = self._conn.getresponse()
            raw = r.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        try:
            return r.status, json.loads(raw) if raw else None
        except ValueError:
            return r.status, raw.decode(errors="replace")

    def get(self, path: str) -> Any:
        reused = self._conn is not None
        try:
            status, body = self.request("GET", path)
        except ConnectionResetError:  # RemoteDisconnected too
            if not reused:
                raise
            # A keep-alive connection the server closed while idle (the partition suite's
            # final read, 3 s after the last, failed on one): a GET is safe to redial once.
            status, body = self.request("GET", path)
        if status != 200:
            raise http.client.HTTPException(f"GET {path}: {status} {body}")
        return body

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --------------------------------------------------------------------------- hosts
@dataclass
class Host:
    """One namespace on the bridge. ``kind`` is "instance" (gossipmgr) or "node" (serf)."""

    name: str
    index: int
    kind: str
    prefix: str
    data_dir: Path
    argv: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    mac: str = ""
    #: A node's clusterm identity (its NodeLabel and NodeSerial tags): the node is named
    #: ``<label>-<serial>``. Defaults to ``rack1`` and the node's number.
    label: str = "rack1"
    serial: str = ""

    @property
    def ns(self) -> str:
        return f"{self.prefix}-{self.name}"

    @property
    def addr(self) -> str:
        return f"{SUBNET}.{self.index}"

    @property
    def veth(self) -> str:  # inside the namespace
        return f"{self.prefix}{self.name}"

    @property
    def veth_br(self) -> str:  # the bridge port
        return f"{self.prefix}{self.name}b"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "out.log"

    def log(self, tail: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class NetnsCluster:
    """``n_instances`` gossipmgr hosts (h1..hN) and ``n_nodes`` simulated nodes (n1..nK).

    Call :meth:`setup` (or use ``with``); :meth:`close` tears everything down. ``root`` holds
    data dirs and logs; a temporary one is made (and removed on a clean close unless
    ``keep``) when not given. Raises HarnessError when a step fails.
    """

    n_instances: int = 3
    n_nodes: int = 0
    profile: str = "lan"
    lease_ttl_ms: int = 10_000
    root: Path | None = None
    keep: bool = False
    #: contiv mode: the mDNS cluster name (see the module docstring); empty = joins and keys.
    mdns: str = ""
    #: Extra options for every gossipmgr agent (e.g. ``--config FILE``).
    agent_args: Sequence[str] = ()
    #: The nodes' (label, serial), node k taking the k-th; default ("rack1", "000k").
    node_ids: Sequence[tuple[str, str]] = ()
    prefix: str = ""
    instances: dict[str, Host] = field(default_factory=dict)
    nodes: dict[str, Host] = field(default_factory=dict)
    #: which group (0 = the main bridge) each host's port is on, or None when detached.
    group_of: dict[str, int | None] = field(default_factory=dict)
    links_down: set[str] = field(default_factory=set)
    ingress_blocked: set[str] = field(default_factory=set)
    _bridges: list[str] = field(default_factory=list)
    _dialers: dict[str, NetnsDialer] = field(default_factory=dict)
    _own_root: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not 1 <= self.n_instances <= 9 or not 0 <= self.n_nodes <= 9:
            raise ValueError("1-9 instances and 0-9 nodes")
        if not self.prefix:
            letter = "abcdefghijklmnopqrstuvwxyz"[next(_seq) % 26]
            self.prefix = f"gm{os.getpid()}{letter}"
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix=f"gossipmgr-{self.prefix}-"))
            self._own_root = True
        self.root.mkdir(parents=True, exist_ok=True)
        self.key_file = self.root / "gossip.key"
        from gossipmgr.gossip.crypto import generate_key

        self.key_file.write_text(generate_key() + "\n")
        self.key_file.chmod(0o600)
        # One API token for every instance (forwarding passes the client's token on).
        self.token_file = self.root / "api.token"
        self.token_file.write_text(secrets.token_urlsafe(32) + "\n")
        self.token_file.chmod(0o600)
        for i in range(1, self.n_instances + 1):
            h = Host(f"h{i}", i, "instance", self.prefix, self.root / f"h{i}")
            self.instances[h.name] = h
        for k in range(1, self.n_nodes + 1):
            h = Host(f"n{k}", NODE_BASE + k, "node", self.prefix, self.root / f"n{k}")
            h.label, h.serial = self.node_ids[k - 1] if k <= len(self.node_ids) else ("rack1", "")
            h.serial = h.serial or f"{k:04d}"
            self.nodes[h.name] = h

    @property
    def hosts(self) -> list[Host]:
        return [*self.instances.values(), *self.nodes.values()]

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br"

    def __enter__(self) -> NetnsCluster:
        try:
            self.setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ setup
    def setup(self, timeout: float = 60.0) -> None:
        """Namespaces, links, agents and nodes; returns when every agent serves with Serf up
        and sees every other instance alive. Raises HarnessError."""
        cleanup_leftovers(self.prefix)  # a dead process with our pid left debris behind
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        self._bridges.append(self.bridge)
        sh("ip", "link", "set", self.bridge, "up")
        for h in self.hosts:
            self._make_host(h)
        self._static_neighbours()
        if self.mdns:
            # The fleet runs before gossipmgr arrives; Serf's mDNS polls at start (then every
            # 60 s), so the instances find the nodes at once.
            for h in self.nodes.values():
                self.start(h.name)
            for h in self.nodes.values():
                wait_for(
                    partial(self._rpc_up_or_dead, h),
                    timeout,
                    f"node {h.name}'s serf RPC",
                )
                if not h.alive:
                    raise HarnessError(f"node {h.name} exited:\n{h.log()}")
        for h in self.instances.values():
            self.start(h.name)
        for h in self.instances.values():
            self.wait_ready(h.name, timeout)
        if not self.mdns:
            for h in self.nodes.values():
                self.start(h.name)
        self.wait_instances_see_each_other(timeout)

    def _make_host(self, h: Host) -> None:
        h.data_dir.mkdir(parents=True, exist_ok=True)
        sh("ip", "netns", "add", h.ns)
        sh("ip", "link", "add", h.veth, "type", "veth", "peer", "name", h.veth_br)
        sh("ip", "link", "set", h.veth, "netns", h.ns)
        sh("ip", "link", "set", h.veth_br, "master", self.bridge)
        sh("ip", "link", "set", h.veth_br, "up")
        for argv in (
            ["ip", "link", "set", "lo", "up"],
            ["ip", "addr", "del", "127.0.0.1/8", "dev", "lo"],
            ["ip", "addr", "add", "127.0.0.1/32", "dev", "lo"],
            ["sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1"],
            ["sysctl", "-qw", f"net.ipv4.conf.{h.veth}.route_localnet=1"],
            ["ip", "addr", "add", f"{h.addr}/24", "dev", h.veth],
            *([["sysctl", "-qw", f"net.ipv6.conf.{h.veth}.accept_dad=0"]] if self.mdns else []),
            ["ip", "link", "set", h.veth, "up"],
            *([["ip", "route", "add", "224.0.0.0/4", "dev", h.veth]] if self.mdns else []),
        ):
            nsexec(h.ns, *argv)
        out = nsexec(h.ns, "cat", f"/sys/class/net/{h.veth}/address").stdout.strip()
        h.mac = out
        self.group_of[h.name] = 0
        self._dialers[h.name] = NetnsDialer(h.ns)

    def _static_neighbours(self) -> None:
        for h in self.hosts:
            for peer in self.hosts:
                if peer is not h:
                    nsexec(
                        h.ns,
                        "ip",
                        "neigh",
                        "replace",
                        peer.addr,
                        "lladdr",
                        peer.mac,
                        "dev",
                        h.veth,
                        "nud",
                        "permanent",
                    )

    def _argv(self, h: Host) -> list[str]:
        joins = [f"{p.addr}:{SERF_PORT}" for p in self.instances.values() if p is not h]
        if h.kind == "instance":
            argv = [
                sys.executable,
                "-m",
                "gossipmgr.cli.main",
                "agent",
                "--name",
                h.name,
                "--data-dir",
                str(h.data_dir / "data"),
                "--api-addr",
                f"{h.addr}:{API_PORT}",
                "--gossip-addr",
                f"{h.addr}:{GOSSIP_PORT}",
                "--serf-bind",
                f"{h.addr}:{SERF_PORT}",
                "--serf-rpc-bind",
                f"127.0.0.1:{RPC_PORT}",
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
            ]
            if self.mdns:
                argv += [
                    "--serf-no-encrypt",
                    "--serf-discover",
                    self.mdns,
                    "--serf-iface",
                    h.veth,
                ]
            else:
                for j in joins:
                    argv += ["--join", j]
            return [*argv, *self.agent_args]
        if self.mdns:  # as contiv/ansible's serf.j2 starts it (our ports, not Serf's)
            return serf_agent_argv(
                node_name(h),
                f"0.0.0.0:{SERF_PORT}",
                f"127.0.0.1:{RPC_PORT}",
                binary=shutil.which("serf") or "serf",
                tags={"NodeLabel": h.label, "NodeSerial": h.serial, "NodeAddr": h.addr},
                discover=self.mdns,
                iface=h.veth,
            )
        keyring = h.data_dir / "keyring.json"
        keyring.write_text(json.dumps([self.key_file.read_text().strip()]))
        return serf_agent_argv(
            node_name(h),
            f"{h.addr}:{SERF_PORT}",
            f"127.0.0.1:{RPC_PORT}",
            binary=shutil.which("serf") or "serf",
            profile=self.profile,
            tags={"NodeLabel": h.label, "NodeSerial": h.serial, "NodeAddr": h.addr},
            keyring_file=keyring,
            retry_join=joins,
            retry_interval_s=1,
        )

    # ------------------------------------------------------------------ processes
    def host(self, name: str) -> Host:
        return self.instances.get(name) or self.nodes[name]

    @staticmethod
    def _rpc_up_or_dead(h: Host) -> bool:
        """A node's Serf RPC answers (or the node is down, which the caller sees next)."""
        rpc = f"-rpc-addr=127.0.0.1:{RPC_PORT}"
        return nsexec(h.ns, "serf", "members", rpc, check=False).returncode == 0 or not h.alive

    def start(self, name: str) -> None:
        """(Re)start a host's process (``ip netns exec`` execs in place: the pid is ours)."""
        h = self.host(name)
        if h.alive:
            raise HarnessError(f"{name} is already running")
        h.argv = self._argv(h)
        env = dict(os.environ)
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        with open(h.log_path, "ab") as logf:
            h.proc = subprocess.Popen(
                ["ip", "netns", "exec", h.ns, *h.argv],
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def kill9(self, name: str) -> None:
        """SIGKILL every process in the host's namespace (agent and its serf: a host crash)."""
        h = self.host(name)
        pids = sh("ip", "netns", "pids", h.ns, check=False).stdout.split()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if h.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                h.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                h.proc.wait(10)

    def client(self, name: str, timeout: float = 5.0) -> ApiClient:
        """A new API client for instance ``name`` (one per thread)."""
        h = self.instances[name]
        token = self.token_file.read_text().strip()
        return ApiClient(self._dialers[name], h.addr, API_PORT, timeout, token)

    def wait_ready(self, name: str, timeout: float = 60.0) -> None:
        h = self.instances[name]
        c = self.client(name, timeout=2.0)

        def ready() -> bool:
            if not h.alive:
                raise HarnessError(f"agent {name} exited:\n{h.log()}")
            body = c.get("/health")
            return bool(body.get("serf", {}).get("healthy"))

        try:
            wait_for(ready, timeout, f"agent {name} to serve with Serf up")
        finally:
            c.close()

    def wait_instances_see_each_other(self, timeout: float = 60.0) -> None:
        names = sorted(self.instances)
        clients = {n: self.client(n) for n in names}

        def ok() -> bool:
            for c in clients.values():
                peers = c.get("/info/peers")["peers"]
                alive = sorted(p["name"] for p in peers if p.get("status") == "alive")
                if alive != names:
                    return False
            return True

        try:
            wait_for(ok, timeout, "every instance to see every other alive in Serf", 0.25)
        finally:
            for c in clients.values():
                c.close()

    # ------------------------------------------------------------------ faults
    def partition(self, groups: Sequence[Sequence[str]]) -> None:
        """Cut the network into ``groups`` (host names; hosts not named stay in group 0,
        which keeps the main bridge). A group of one is detached (``nomaster``); a larger
        group gets a bridge of its own so its members still talk to each other."""
        with self._lock:
            for gi, group in enumerate(groups[1:], start=1):
                br = None
                if len(group) > 1:
                    br = f"{self.prefix}g{gi}"
                    if br not in self._bridges:
                        sh("ip", "link", "add", br, "type", "bridge")
                        self._bridges.append(br)
                        sh("ip", "link", "set", br, "up")
                for name in group:
                    h = self.host(name)
                    if br is None:
                        sh("ip", "link", "set", h.veth_br, "nomaster")
                        self.group_of[name] = None
                    else:
                        sh("ip", "link", "set", h.veth_br, "master", br)
                        self.group_of[name] = gi
                    # Leaving a bridge can reset the port's state; keep it up unless flapped.
                    if name not in self.links_down:
                        sh("ip", "link", "set", h.veth_br, "up")

    def isolate(self, name: str) -> None:
        self.partition([[], [name]])

    def heal(self) -> None:
        """Every port back on the main bridge, links up, ingress unblocked."""
        with self._lock:
            for h in self.hosts:
                if self.group_of.get(h.name) != 0:
                    sh("ip", "link", "set", h.veth_br, "master", self.bridge)
                    self.group_of[h.name] = 0
            for name in list(self.links_down):
                sh("ip", "link", "set", self.host(name).veth_br, "up")
                self.links_down.discard(name)
            for name in list(self.ingress_blocked):
                sh("tc", "qdisc", "del", "dev", self.host(name).veth_br, "root", check=False)
                self.ingress_blocked.discard(name)
            for h in self.hosts:
                sh("ip", "link", "set", h.veth_br, "up")

    def link_down(self, name: str) -> None:
        with self._lock:
            sh("ip", "link", "set", self.host(name).veth_br, "down")
            self.links_down.add(name)

    def link_up(self, name: str) -> None:
        with self._lock:
            sh("ip", "link", "set", self.host(name).veth_br, "up")
            self.links_down.discard(name)

    def block_ingress(self, name: str) -> None:
        """The host keeps sending but receives nothing (see the module docstring)."""
        with self._lock:
            sh(
                "tc",
                "qdisc",
                "replace",
                "dev",
                self.host(name).veth_br,
                "root",
                "pfifo",
                "limit",
                "0",
            )
            self.ingress_blocked.add(name)

    def ingress_drops(self, name: str) -> int:
        """Frames dropped so far by :meth:`block_ingress` on ``name`` (0 when none)."""
        out = sh("tc", "-s", "qdisc", "show", "dev", self.host(name).veth_br).stdout
        m = re.search(r"pfifo .*?dropped (\d+)", out, re.S)
        return int(m.group(1)) if m else 0

    def components(self) -> list[set[str]]:
        """The instances that can currently talk both ways, as groups (for the checker)."""
        out: dict[Any, set[str]] = {}
        for name in self.instances:
            g = self.group_of.get(name)
            key: Any = g
            if g is None or name in self.links_down or name in self.ingress_blocked:
                key = ("alone", name)
            out.setdefault(key, set()).add(name)
        return list(out.values())

    # ------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Kill every process, then delete links, namespaces and bridges. Idempotent."""
        for h in self.hosts:
            with contextlib.suppress(OSError, HarnessError):
                self.kill9(h.name)
        for d in self._dialers.values():
            d.close()
        self._dialers.clear()
        for h in self.hosts:
            sh("ip", "link", "del", h.veth_br, check=False)
            sh("ip", "netns", "del", h.ns, check=False)
        for br in self._bridges:
            sh("ip", "link", "del", br, check=False)
        self._bridges.clear()
        cleanup_leftovers(self.prefix)
        if self._own_root and not self.keep and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)


def node_name(h: Host) -> str:
    """The Serf/inventory name of a simulated node host (clusterm: ``<label>-<serial>``)."""
    return f"{h.label}-{h.serial}"


def cleanup_leftovers(prefix: str | None = None) -> list[str]:
    """Remove namespaces (and the processes in them) and links left by harness runs.

    With ``prefix``, only that run's; without, every ``gm<pid><letter>`` run whose process
    is gone (a live run is left alone). Returns what was removed.
    """

    def mine(name: str) -> bool:
        m = PREFIX_RE.match(name)
        if m is None:
            return False
        if prefix is not None:
            return m.group(1) == prefix
        return not Path(f"/proc/{m.group(2)}").exists()

    removed: list[str] = []
    for line in sh("ip", "netns", "list", check=False).stdout.splitlines():
        ns = line.split()[0] if line.split() else ""
        if not ns or not mine(ns):
            continue
        for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while sh("ip", "netns", "pids", ns, check=False).stdout.split():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        sh("ip", "netns", "del", ns, check=False)
        removed.append(ns)
    for line in sh("ip", "-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(": ")
        if len(parts) < 2:
            continue
        name = parts[1].split("@")[0]
        if mine(name):
            sh("ip", "link", "del", name, check=False)
            removed.append(name)
    return removed


@contextlib.contextmanager
def netns_cluster(**kw: Any) -> Iterator[NetnsCluster]:
    c = NetnsCluster(**kw)
    with c:
        yield c
