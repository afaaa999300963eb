"""Secrets on the gossipmgr host (docs/security.md section 3): the default install refuses
an unauthenticated local user, and the Serf RPC secret is on no command line.

Real parts: a real ``gossipmgr agent`` process (with its embedded ``serf agent``) started
with nothing but its data directory and free loopback ports; real HTTP; the real CLI,
run as root (the operator) and as uid 65534 (nobody: any other local user).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gossipmgr.localcluster import HOST, _stop, free_port, wait_for

pytestmark = [pytest.mark.serf]

NOBODY = 65534


class Agent:
    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        self.url = f"http://{HOST}:{free_port()}"
        self.log_path = data.parent / f"{data.name}.log"
        port = self.url.rsplit(":", 1)[1]
        self.rpc_addr = f"{HOST}:{free_port()}"
        args = [
            sys.executable,
            "-m",
            "gossipmgr.cli.main",
            "agent",
            "--name",
            data.name,
            "--data-dir",
            str(data),
            "--api-addr",
            f"{HOST}:{port}",
            "--gossip-addr",
            f"{HOST}:{free_port()}",
            "--serf-bind",
            f"{HOST}:{free_port()}",
            "--serf-rpc-bind",
            self.rpc_addr,
            "--serf-profile",
            "local",
            *extra,
        ]
        env = dict(
            os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        )
        with open(self.log_path, "ab") as logf:
            self.proc = subprocess.Popen(
                args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_serving(self, serf: bool = False) -> None:
        """Until /health answers (and, with ``serf``, says Serf is healthy)."""

        def up() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited:\n{self.log()[-3000:]}")
            try:
                r = httpx.get(f"{self.url}/health", timeout=2)
            except httpx.HTTPError:
                return False
            return r.status_code == 200 and (not serf or bool(r.json()["serf"]["healthy"]))

        wait_for(up, 60, "the agent to serve" + (" with Serf up" if serf else ""))


@pytest.fixture
def world_readable_root() -> Iterator[Path]:
    """A directory every user can traverse, so that only the token file's own mode
    stands between uid 65534 and the token (pytest's tmp_path is 0700)."""
    root = Path(tempfile.mkdtemp(prefix="gossipmgr-token-test-"))
    root.chmod(0o755)
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def run_cli(
    url: str, uid: int | None, env: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process; with ``uid`` it drops to that user first.

    The interpreter lives under /root (mode 0700 here), which uid 65534 cannot execute, so
    the child starts as root, imports the CLI and warms up httpx with a request to the
    open /health route (nothing read from disk after that but the token file), then drops
    to ``uid`` and runs ``gossipmgr.cli.main.main``, which looks for the token as usual.
    """
    code = (
        "import os, sys, httpx, gossipmgr.cli.main as cli\n"
        f"httpx.get({url!r} + '/health', timeout=5)\n"
        f"uid = {uid!r}\n"
        "if uid is not None:\n"
        "    os.setgroups([]); os.setgid(uid); os.setuid(uid)\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
    full_env.update(env)
    full_env["GOSSIPMGR_URL"] = url
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )


@pytest.mark.slow
def test_default_agent_refuses_requests_and_users_without_the_token(
    world_readable_root: Path,
) -> None:
    data = world_readable_root / "solo"
    agent = Agent(data)
    try:
        agent.wait_serving()
        token_file = data / "api.token"
        mode = stat.S_IMODE(token_file.stat().st_mode)
        assert mode == 0o600, oct(mode)
        assert str(token_file) in agent.log()
        token = token_file.read_text().strip()
        assert len(token) >= 40

        # plain HTTP from anyone on the host: refused, on loopback too
        for method, path in [("GET", "/info/nodes"), ("PUT", "/globals/x"), ("GET", "/metrics")]:
            r = httpx.request(method, f"{agent.url}{path}", json={"value": 1}, timeout=5)
            assert r.status_code == 401, (method, path, r.status_code, r.text)
        health = httpx.get(f"{agent.url}/health", timeout=5).json()
        assert health["auth"] == {"token": True}
        ok = httpx.get(
            f"{agent.url}/info/nodes", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        assert ok.status_code == 200, ok.text

        # the CLI finds the agent's token through the data dir; nobody cannot read it
        env = {"GOSSIPMGR_DATA_DIR": str(data)}
        as_nobody = run_cli(agent.url, NOBODY, env, "global", "set", "x", "1")
        assert as_nobody.returncode == 1, as_nobody
        assert "missing or invalid bearer token" in as_nobody.stderr, as_nobody.stderr
        assert "Permission denied" in as_nobody.stderr, as_nobody.stderr
        as_nobody = run_cli(agent.url, NOBODY, env, "nodes", "get")
        assert as_nobody.returncode == 1 and "bearer token" in as_nobody.stderr, as_nobody
        as_root = run_cli(agent.url, None, env, "global", "set", "x", "1")
        assert as_root.returncode == 0, as_root
        as_root = run_cli(agent.url, None, env, "nodes", "get")
        assert as_root.returncode == 0, as_root
        # ... and so does GOSSIPMGR_TOKEN_FILE
        as_root = run_cli(agent.url, None, {"GOSSIPMGR_TOKEN_FILE": str(token_file)}, "jobs")
        assert as_root.returncode == 0, as_root
        g = httpx.get(f"{agent.url}/info/globals", headers={"Authorization": f"Bearer {token}"})
        assert g.json()["extra_vars"] == {"x": 1}
    finally:
        _stop(agent.proc, 20)


@pytest.mark.slow
def test_no_auth_is_explicit_and_loud(tmp_path: Path) -> None:
    agent = Agent(tmp_path / "open", "--no-auth")
    try:
        agent.wait_serving()
        assert not (tmp_path / "open" / "api.token").exists()
        r = httpx.get(f"{agent.url}/info/nodes", timeout=5)
        assert r.status_code == 200
        health = httpx.get(f"{agent.url}/health", timeout=5).json()
        assert health["auth"]["token"] is False and "every local user" in health["auth"]["warning"]
        assert "WARNING" in agent.log() and "no_auth = true" in agent.log()
    finally:
        _stop(agent.proc, 20)


def _cmdlines() -> dict[int, bytes]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                out[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue
    return out


@pytest.mark.slow
def test_serf_rpc_secret_is_on_no_command_line(tmp_path: Path) -> None:
    secret = "rpc-" + os.urandom(12).hex()
    secret_file = tmp_path / "rpc.auth"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    data = tmp_path / "rpc"
    agent = Agent(data, "--serf-rpc-auth-file", str(secret_file))
    try:
        agent.wait_serving(serf=True)  # the agent talks to its serf with the secret
        token = (data / "api.token").read_text().strip()
        lines = _cmdlines()
        serf = [
            p for p, c in lines.items() if c.startswith(b"serf\0agent") and str(data).encode() in c
        ]
        assert serf, "the embedded serf agent is running"
        assert agent.proc.pid in lines
        assert [p for p, c in lines.items() if secret.encode() in c] == []
        config = data / "serf" / "config.json"
        assert stat.S_IMODE(config.stat().st_mode) == 0o600
        assert secret in config.read_text()
        # and the embedded serf does require it
        members = ["serf", "members", f"-rpc-addr={agent.rpc_addr}"]
        denied = subprocess.run(members, capture_output=True, text=True, timeout=30)
        assert denied.returncode != 0, denied
        allowed = subprocess.run(
            members,
            capture_output=True,
            text=True,
            timeout=30,
            env=dict(os.environ, SERF_RPC_AUTH=secret),
        )
        assert allowed.returncode == 0 and "rpc" in allowed.stdout, allowed
        r = httpx.get(f"{agent.url}/info/peers", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
    finally:
        _stop(agent.proc, 20)


def test_serf_rpc_secret_on_the_command_line_is_warned_about(tmp_path: Path) -> None:
    """The agent stops with exit 2 before starting anything (a missing token file is
    checked after the warning), so no agent runs."""
    argv = [sys.executable, "-m", "gossipmgr.cli.main", "agent", "--data-dir", str(tmp_path / "d")]
    argv += ["--serf-rpc-auth", "s3cret", "--api-token-file", str(tmp_path / "missing")]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot read api token file" in out.stderr, out
    assert "WARNING" in out.stderr and "every local user can read it" in out.stderr, out


def test_serf_rpc_secret_file_checks(tmp_path: Path) -> None:
    from gossipmgr.config import load, serf_rpc_secret
    from gossipmgr.errors import ConfigError

    secret_file = tmp_path / "rpc.auth"
    secret_file.write_text("s3cret\n")
    cfg = load(None, {"serf_rpc_auth_file": secret_file})
    assert serf_rpc_secret(cfg) == "s3cret"
    with pytest.raises(ConfigError, match="exclude each other"):
        load(None, {"serf_rpc_auth": "s3cret", "serf_rpc_auth_file": secret_file})
    secret_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        serf_rpc_secret(cfg)
    with pytest.raises(ConfigError, match="cannot read"):
        serf_rpc_secret(load(None, {"serf_rpc_auth_file": tmp_path / "missing"}))


def test_default_token_is_created_once_and_no_auth_is_not_a_reload(tmp_path: Path) -> None:
    """In-process (no agent runs): the token survives restarts and a SIGHUP cannot turn
    authentication off (a restart must, with its warning and listen-policy check)."""
    from gossipmgr.agent import Agent
    from gossipmgr.config import load

    data = tmp_path / "d"
    conf = tmp_path / "agent.toml"
    conf.write_text("")
    overrides = {"name": "a", "data_dir": data}
    first = Agent(load(conf, overrides), overrides)
    assert first.token == (data / "api.token").read_text().strip()
    second = Agent(load(conf, overrides), overrides)
    assert second.token == first.token  # created once, then read
    conf.write_text("no_auth = true\n")
    second.reload()
    assert second.token == first.token and second.cfg.no_auth is False


async def test_sighup_swaps_the_token_the_api_checks(tmp_path: Path) -> None:
    """The running API checks the token a reload read (in-process app, real Agent)."""
    from gossipmgr.agent import Agent, AgentApiContext
    from gossipmgr.api import create_app
    from gossipmgr.config import load

    tok = tmp_path / "token"
    tok.write_text("first\n")
    conf = tmp_path / "agent.toml"
    conf.write_text(f'api_token_file = "{tok}"\n')
    overrides = {"name": "a", "data_dir": tmp_path / "d"}
    agent = Agent(load(conf, overrides), overrides)
    agent.replica.open()
    try:
        agent.api_ctx = AgentApiContext(agent)
        client = create_app(agent.api_ctx).test_client()

        async def status(token: str) -> int:
            r = await client.get("/info/globals", headers={"Authorization": f"Bearer {token}"})
            return r.status_code

        assert (await status("first"), await status("second")) == (200, 401)
        tok.write_text("second\n")
        agent.reload()
        assert (await status("first"), await status("second")) == (401, 200)
    finally:
        await agent.replica.aclose()
