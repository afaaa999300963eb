"""Supervise a child ``serf agent``.

:class:`SerfAgentProcess` owns the child process and the files it keeps in ``data_dir``:

- ``tags.json`` (``-tags-file``): runtime ``tags`` RPCs rewrite it, so they survive a
  restart. On :meth:`~SerfAgentProcess.run` the configured tags are laid over whatever the
  file holds (configured keys win; extra runtime keys persist).
- ``keyring.json`` (``-keyring-file``, only with ``encrypt_key``): created from the key when
  absent; when present it wins, because the agent rewrites it on key rotation and a rotated
  key must survive restarts (``-encrypt`` would not: docs/serf.md). A configured key missing
  from it is appended as a secondary key so it can still decrypt.
- without ``encrypt_key`` the agent runs unencrypted (to join a Serf cluster that does, as
  contiv/ansible's nodes do); ``keyring.json`` is then left alone and not passed.
- ``discover``/``iface``: Serf's ``-discover`` (mDNS cluster name) and ``-iface``. Serf then
  advertises itself by mDNS on the interface and joins what answers, once at start and every
  60 s; it needs an IPv4 multicast route (without one serf 0.8.2 crashes in its mDNS client)
  and a usable IPv6 link-local address (else the query fails until the next poll).
- ``snapshot`` (``-snapshot`` with ``-rejoin``): known peers, so a restart rejoins them even
  after a graceful leave.
- ``config.json`` (``-config-file``): ``rpc_auth`` and reap timings, which have no flags.
- ``agent.log``: the child's stdout and stderr.

Peers are joined with ``-retry-join`` (a failed startup ``-join`` is fatal: docs/serf.md).
Stopping sends SIGINT, which makes the agent leave gracefully so peers see ``left`` rather
than ``failed`` (SIGTERM does not leave); once its own member record says ``left`` (the
leave intent has been sent), a second signal skips Serf's fixed 1 s propagate delay; SIGKILL
after ``leave_timeout``.

Caveat: if this Python process is SIGKILLed the child is orphaned; no PDEATHSIG is set
because trio spawns from a worker thread and PDEATHSIG fires when *that thread* exits.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import msgpack
import trio

from gossipmgr.errors import ConfigError, SerfError, SerfUnavailable
from gossipmgr.serf.addr import split_hostport
from gossipmgr.serf.backoff import Backoff
from gossipmgr.serf.client import open_serf_client

__all__ = [
    "MAX_TAGS_BYTES",
    "SerfAgentProcess",
    "encoded_tags_size",
    "parse_hostport",
    "serf_agent_argv",
]


#: The agent must not outlive gossipmgr: an orphaned agent would keep advertising a dead
#: instance as alive, delaying lease takeover by a whole TTL. trio spawns children from a
#: worker thread, so PR_SET_PDEATHSIG (tied to the forking *thread*) cannot be used. Instead
#: bash starts a watcher that blocks reading a pipe whose write end only gossipmgr holds,
#: then ``exec``s serf (same pid, so signals and waits reach serf itself). When gossipmgr
#: exits, however it exits (SIGKILL included), the read sees EOF and the watcher sends serf
#: SIGINT: a graceful leave, which peers see in ~0.1-0.5 s. The watcher also ends within
#: 1 s of serf's own exit, so it never signals a recycled pid later.
_PARENT_WATCH = (
    "fd=$1; shift; pid=$$; "
    '( while kill -0 "$pid" 2>/dev/null; do '
    'read -r -t 1 -u "$fd" _; '
    'if [ $? -le 128 ]; then kill -INT "$pid" 2>/dev/null; exit 0; fi; '
    'done ) & exec "$@"'
)

log = logging.getLogger("gossipmgr.serf")

#: memberlist.MetaMaxSize: the magic byte plus the msgpack tag map must fit in this.
MAX_TAGS_BYTES: Final = 512
PROFILES: Final = frozenset({"lan", "local", "wan"})
#: memberlist's GossipInterval per profile (DefaultLANConfig, DefaultLocalConfig, ...).
GOSSIP_INTERVAL_S: Final = {"lan": 0.2, "local": 0.1, "wan": 0.5}


def encoded_tags_size(tags: Mapping[str, str]) -> int:
    """Bytes Serf needs for ``tags``: 1 magic byte + the map in the *old* msgpack spec.

    Serf's Go codec (``MsgpackHandle`` without ``WriteExt``) has no str8, so strings of
    32-255 bytes take a 3-byte raw16 header; ``use_bin_type=False`` reproduces that. Checked
    live: the agent refused exactly the sizes this function puts above 512.
    """
    return 1 + len(msgpack.packb(dict(tags), use_bin_type=False))


def parse_hostport(value: str, what: str) -> tuple[str, int]:
    """Split "ip:port" (``gossipmgr.serf.addr.split_hostport``, port 1-65535); raise
    ConfigError on a malformed value."""
    try:
        return split_hostport(value)
    except ValueError as exc:
        raise ConfigError(f"{what}: expected ip:port, got {value!r} ({exc})") from None


def serf_agent_argv(
    node: str,
    bind: str,
    rpc_addr: str,
    *,
    binary: str = "serf",
    profile: str | None = None,
    tags: Mapping[str, str] | None = None,
    tags_file: Path | None = None,
    snapshot: Path | None = None,
    rejoin: bool = False,
    log_level: str | None = None,
    keyring_file: Path | None = None,
    config_file: Path | None = None,
    discover: str | None = None,
    iface: str | None = None,
    retry_join: Sequence[str] = (),
    retry_interval_s: float | None = None,
) -> list[str]:
    """The argv of a ``serf agent`` (0.8.x flags): the one builder of it, used by the
    supervised child here and by every test, bench and local cluster that starts a bare
    agent. An option left at None/empty is not passed (Serf's default applies)."""
    argv = [binary, "agent", f"-node={node}", f"-bind={bind}", f"-rpc-addr={rpc_addr}"]
    if profile is not None:
        argv.append(f"-profile={profile}")
    argv += [f"-tag={k}={v}" for k, v in (tags or {}).items()]
    if tags_file is not None:
        argv.append(f"-tags-file={tags_file}")
    if snapshot is not None:
        argv.append(f"-snapshot={snapshot}")
    if rejoin:
        argv.append("-rejoin")
    if log_level is not None:
        argv.append(f"-log-level={log_level}")
    for flag, value in (
        ("keyring-file", keyring_file),
        ("config-file", config_file),
        ("discover", discover),
        ("iface", iface),
    ):
        if value is not None:
            argv.append(f"-{flag}={value}")
    argv += [f"-retry-join={peer}" for peer in retry_join]
    if retry_interval_s is not None:
        argv.append(f"-retry-interval={retry_interval_s:g}s")
    return argv


class SerfAgentProcess:
    """One supervised ``serf agent`` child.

    Construct it (validation happens here and raises ``ConfigError``), then run
    ``await nursery.start(agent.run)``: it returns once the agent's RPC answers. Cancel the
    nursery scope to stop it gracefully.
    """

    def __init__(
        self,
        *,
        name: str,
        bind: str,
        rpc: str,
        data_dir: str | os.PathLike[str],
        tags: Mapping[str, str] | None = None,
        encrypt_key: str | None = None,
        retry_join: Sequence[str] = (),
        discover: str | None = None,
        iface: str | None = None,
        profile: str = "lan",
        rpc_auth: str | None = None,
        serf_binary: str = "serf",
        retry_interval_s: float = 5.0,
        reconnect_timeout: str | None = None,
        tombstone_timeout: str | None = None,
        leave_timeout: float = 5.0,
        start_timeout: float = 15.0,
        backoff_min: float = 0.5,
        backoff_max: float = 10.0,
        log_level: str = "info",
    ) -> None:
        if not name or any(c.isspace() for c in name):
            raise ConfigError(f"serf node name must be non-empty without spaces: {name!r}")
        self.name = name
        self.bind = bind
        parse_hostport(bind, "serf bind")
        self.rpc_host, self.rpc_port = parse_hostport(rpc, "serf rpc")
        for peer in retry_join:
            parse_hostport(peer, "serf retry_join")
        if profile not in PROFILES:
            raise ConfigError(f"serf profile must be one of {sorted(PROFILES)}, not {profile!r}")
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        size = encoded_tags_size(self.tags)
        if size > MAX_TAGS_BYTES:
            raise ConfigError(
                f"serf tags encode to {size} bytes; Serf's limit is {MAX_TAGS_BYTES} bytes"
            )
        if encrypt_key is not None:
            try:
                raw = base64.b64decode(encrypt_key, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ConfigError(f"serf encrypt key is not valid base64: {exc}") from None
            if len(raw) not in (16, 24, 32):
                raise ConfigError(f"serf encrypt key must be 16, 24 or 32 bytes, not {len(raw)}")
        for label, value in (
            ("retry_interval_s", retry_interval_s),
            ("leave_timeout", leave_timeout),
            ("start_timeout", start_timeout),
            ("backoff_min", backoff_min),
            ("backoff_max", backoff_max),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"serf {label} must be a positive number, not {value!r}")
        self.encrypt_key = encrypt_key
        self.retry_join = list(retry_join)
        self.discover = discover or None
        self.iface = iface or None
        self.profile = profile
        self.rpc_auth = rpc_auth
        self.serf_binary = serf_binary
        self.retry_interval_s = retry_interval_s
        self.reconnect_timeout = reconnect_timeout
        self.tombstone_timeout = tombstone_timeout
        self.leave_timeout = leave_timeout
        self.start_timeout = start_timeout
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.log_level = log_level
        self.data_dir = Path(data_dir)
        #: Number of times the child was (re)started.
        self.starts = 0
        self._death_pipe: tuple[int, int] | None = None
        self._proc: trio.Process | None = None
        #: Set while the child's RPC answers; cleared when it dies.
        self.ready = False

    def __repr__(self) -> str:
        return f"<SerfAgentProcess {self.name} rpc={self.rpc_host}:{self.rpc_port}>"

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None."""
        proc = self._proc
        return proc.pid if proc is not None and proc.returncode is None else None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "agent.log"

    # -- files ----------------------------------------------------------------------------

    def prepare(self) -> list[str]:
        """Write the data-dir files and return the agent's argv. Raises ``ConfigError``."""
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            tags_path = self.data_dir / "tags.json"
            tags: dict[str, str] = {}
            if tags_path.exists():
                loaded = json.loads(tags_path.read_text() or "{}")
                if isinstance(loaded, dict):
                    tags = {str(k): str(v) for k, v in loaded.items()}
            tags.update(self.tags)
            size = encoded_tags_size(tags)
            if size > MAX_TAGS_BYTES:
                raise ConfigError(
                    f"serf tags (with {tags_path}) encode to {size} bytes; "
                    f"Serf's limit is {MAX_TAGS_BYTES} bytes"
                )
            _write_json(tags_path, tags)
            keyring_file = self._write_keyring() if self.encrypt_key is not None else None
            argv = serf_agent_argv(
                self.name,
                self.bind,
                f"{self.rpc_host}:{self.rpc_port}",
                binary=self.serf_binary,
                profile=self.profile,
                tags_file=tags_path,
                snapshot=self.data_dir / "snapshot",
                rejoin=True,
                log_level=self.log_level,
                keyring_file=keyring_file,
                config_file=self._write_config(),
                discover=self.discover,
                iface=self.iface,
                retry_join=self.retry_join,
                retry_interval_s=self.retry_interval_s if self.retry_join else None,
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(f"serf data dir {self.data_dir}: {exc}") from exc
        return argv

    def _write_keyring(self) -> Path:
        """keyring.json holding our key (kept with any keys Serf installed since)."""
        assert self.encrypt_key is not None
        ring_path = self.data_dir / "keyring.json"
        ring: list[str] = []
        if ring_path.exists():
            loaded = json.loads(ring_path.read_text() or "[]")
            if isinstance(loaded, list):
                ring = [str(k) for k in loaded]
        if self.encrypt_key not in ring:
            ring.append(self.encrypt_key)
            _write_json(ring_path, ring, mode=0o600)  # the shared key
        return ring_path

    def _write_config(self) -> Path | None:
        """config.json for the settings with no command-line flag, if any is set."""
        config: dict[str, Any] = {}
        if self.rpc_auth is not None:
            config["rpc_auth"] = self.rpc_auth
        if self.reconnect_timeout is not None:
            config["reconnect_timeout"] = self.reconnect_timeout
        if self.tombstone_timeout is not None:
            config["tombstone_timeout"] = self.tombstone_timeout
        if not config:
            return None
        config_path = self.data_dir / "config.json"
        _write_json(config_path, config, mode=0o600)
        return config_path

    # -- supervision ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the agent, report started once its RPC answers, then keep it running.

        Raises ``ConfigError`` for bad files and ``SerfUnavailable`` if the *first* start
        fails (the child exits or its RPC stays silent for ``start_timeout``): that is a
        configuration problem, not a crash. Later deaths are restarted with exponential
        backoff, forever. On cancellation the child leaves gracefully (SIGINT), then is
        SIGKILLed after ``leave_timeout``.
        """
        argv = self.prepare()
        try:
            await self._supervise(argv, task_status)
        finally:
            if self._death_pipe is not None:
                for fd in self._death_pipe:
                    os.close(fd)
                self._death_pipe = None

    async def _supervise(self, argv: list[str], task_status: trio.TaskStatus[None]) -> None:
        started = False
        backoff = Backoff(self.backoff_min, self.backoff_max)
        while True:
            began = trio.current_time()
            proc = await self._spawn(argv)
            try:
                up = await self._wait_rpc(proc)
                if up:
                    self.ready = True
                    if not started:
                        started = True
                        log.info("%r: started (pid %s)", self, proc.pid)
                        task_status.started()
                    else:
                        log.info("%r: restarted (pid %s)", self, proc.pid)
                    await proc.wait()
                    self.ready = False
                if not started:
                    raise SerfUnavailable(
                        f"serf agent {self.name} did not come up "
                        f"(exit code {proc.returncode}); log tail:\n{self._log_tail()}"
                    )
                log.warning(
                    "%r: agent exited with code %s; restarting in %.1f s",
                    self,
                    proc.returncode,
                    backoff.current,
                )
            finally:
                self.ready = False
                if proc.returncode is None:
                    with trio.CancelScope(shield=True):
                        await self._stop(proc)
            if trio.current_time() - began > 30 * self.backoff_max:
                backoff.reset()  # it ran fine for a long while: a fresh failure
            await trio.sleep(backoff.next())

    async def _spawn(self, argv: list[str]) -> trio.Process:
        self.starts += 1
        if self._death_pipe is None:
            self._death_pipe = os.pipe()  # both ends close-on-exec (PEP 446)
        r, _w = self._death_pipe
        with open(self.log_path, "ab") as logf:
            proc = await trio.lowlevel.open_process(
                ["bash", "-c", _PARENT_WATCH, "gossipmgr-serf", str(r), *argv],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                pass_fds=(r,),
            )
        self._proc = proc
        log.debug("%r: spawned %s (pid %s)", self, argv, proc.pid)
        return proc

    async def _wait_rpc(self, proc: trio.Process) -> bool:
        """Poll a handshake until the RPC answers (True) or the child exits/times out."""
        with trio.move_on_after(self.start_timeout):
            while proc.returncode is None:
                try:
                    async with open_serf_client(
                        self.rpc_host, self.rpc_port, self.rpc_auth, timeout=1.0
                    ):
                        return True
                except SerfError:
                    pass
                await trio.sleep(0.05)
        if proc.returncode is None:
            log.warning("%r: RPC silent for %.1f s; killing", self, self.start_timeout)
            with trio.CancelScope(shield=True):
                await self._stop(proc)
        return False

    async def _stop(self, proc: trio.Process) -> None:
        """SIGINT (graceful leave); once the leave is out, a second signal; SIGKILL after
        ``leave_timeout``. Call shielded.

        Serf's leave broadcasts the leave intent, waits until it has been sent, marks the
        node left (its own member record says ``left`` from then on), broadcasts that, then
        sleeps a fixed 1 s (Serf's ``LeavePropagateDelay``, not configurable in the
        agent) before it exits. Peers that got the intent record the member as ``left``
        whatever happens next, so the sleep is not needed for them to: once the agent's
        own record says ``left``, a second signal makes it exit at once (code 1)."""
        if proc.returncode is None:
            proc.send_signal(signal.SIGINT)
            with trio.move_on_after(self.leave_timeout):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._cut_propagate_delay, proc)
                    await proc.wait()
                    nursery.cancel_scope.cancel()
        if proc.returncode is None:
            log.warning("%r: no exit %.1f s after SIGINT; SIGKILL", self, self.leave_timeout)
            proc.kill()
            await proc.wait()
        log.info("%r: stopped (exit code %s)", self, proc.returncode)

    async def _cut_propagate_delay(self, proc: trio.Process) -> None:
        """Poll the agent's own member status; when it is ``left``, signal again (the agent
        then skips the rest of its leave wait). Returns quietly if the RPC goes away."""
        try:
            async with open_serf_client(
                self.rpc_host, self.rpc_port, self.rpc_auth, timeout=1.0
            ) as c:
                while True:
                    own = [m for m in await c.members() if m.get("Name") == self.name]
                    if own and own[0].get("Status") == "left":
                        break
                    await trio.sleep(0.01)
        except SerfError:
            return
        # The node-dead message memberlist queued with ``left`` goes out at the next gossip
        # round: wait one, so peers record ``left`` at once, not after failure detection.
        await trio.sleep(GOSSIP_INTERVAL_S[self.profile])
        if proc.returncode is None:
            log.debug("%r: leave sent; skipping the agent's propagate delay", self)
            proc.send_signal(signal.SIGTERM)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _write_json(path: Path, value: object, mode: int = 0o600) -> None:
    """Atomic replace, so the agent never reads a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
