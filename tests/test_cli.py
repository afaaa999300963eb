"""The ``gossipmgr`` command line, run as a subprocess against a real API server process.

The server is ``tests/_apiutil.py`` (a standalone instance with three discovered nodes, a
token, the real JobManager running the shipped playbooks on ansible_connection=local).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _imports import modules_loaded_by

HERE = Path(__file__).parent
TOKEN = "cli-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("cli")
    url_file = root / "url"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "_apiutil.py"),
            "--data",
            str(root),
            "--url-file",
            str(url_file),
            "--token",
            TOKEN,
            "--nodes",
            "3",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not url_file.exists():
            if proc.poll() is not None:
                raise RuntimeError(f"server died: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 30 s")
            time.sleep(0.05)
        yield url_file.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def gm(
    *args: str,
    url: str | None = None,
    token: str | None = TOKEN,
    stdin: str | None = None,
    env_extra: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
    if url is not None:
        env["GOSSIPMGR_URL"] = url
    if token is not None:
        env["GOSSIPMGR_TOKEN"] = token
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "gossipmgr.cli.main", *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(p: subprocess.CompletedProcess[str]) -> str:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p.stdout


def refused(p: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    assert "Traceback" not in p.stderr
    return p.stderr.strip()


def js(p: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(p))


def test_nodes(server: str) -> None:
    out = ok(gm("nodes", "get", url=server))
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATUS", "STATE", "HOST-GROUP", "ADDRESS", "PREV-STATUS"]
    assert [ln.split()[0] for ln in lines[1:]] == ["node-0", "node-1", "node-2"]
    assert lines[1].split()[1:4] == ["Unallocated", "Discovered", "service-master"]
    assert sorted(js(gm("a", "g", "-j", url=server))) == ["node-0", "node-1", "node-2"]
    assert sorted(js(gm("a", "g", "node-1", "node-2", "--json", url=server))) == [
        "node-1",
        "node-2",
    ]
    n = js(gm("n", "g", "node-1", "-j", url=server))
    assert n["inventory_state"]["name"] == "node-1"
    assert 'node_name = "node-1"' in ok(gm("node", "get", "node-1", url=server))
    err = refused(gm("node", "get", "ghost", url=server))
    assert err == 'gossipmgr: node with name or address "ghost" doesn\'t exists'
    # the URL can also follow the command
    assert ok(gm("node", "get", "node-0", "-u", server)).startswith("NAME")


def test_globals(server: str) -> None:
    assert ok(gm("global", "set", "-e", '{"x": 1, "y": "z"}', url=server)).split() == [
        "KEY",
        "VALUE",
        "x",
        "1",
        "y",
        '"z"',
    ]
    assert ok(gm("g", "s", "port", "8080", url=server)).strip() == "port = 8080"
    assert ok(gm("g", "s", "name", "web", url=server)).strip() == 'name = "web"'
    assert ok(gm("g", "g", "port", url=server)).strip() == "8080"
    assert js(gm("global", "get", "-j", url=server)) == {
        "extra_vars": {"x": 1, "y": "z", "port": 8080, "name": "web"}
    }
    assert ok(gm("global", "delete", "x", url=server)).strip() == "deleted x"
    assert refused(gm("global", "get", "x", url=server)) == (
        'gossipmgr: global extra-var "x" doesn\'t exist'
    )
    err = refused(gm("g", "s", "-e", "{bad", url=server))
    assert err.startswith('gossipmgr: "extra_vars" should be a valid json. Error: ')


def test_usage_errors_exit_2(server: str) -> None:
    err = refused(gm("discover", "10.0.0.1", "not-an-ip", url=server), 2)
    assert err == 'gossipmgr: failed to parse ip address "not-an-ip"'
    assert "usage:" in refused(gm("node", url=server), 2)
    assert "usage:" in refused(gm("frobnicate", url=server), 2)
    assert "usage:" in refused(gm("node", "commission", url=server), 2)
    assert refused(gm("config", "set", "/nonexistent/file", url=server), 2).startswith(
        "gossipmgr: cannot read /nonexistent/file"
    )


def test_daemon_down_is_one_line() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = gm("nodes", "get", url=f"http://127.0.0.1:{port}")
    err = refused(p)
    assert err == f"gossipmgr: cannot reach http://127.0.0.1:{port}: connection refused"
    assert len(p.stderr.splitlines()) == 1


def test_token_sources(server: str, tmp_path: Path) -> None:
    # no token anywhere: the 401 says which default file was tried and why it failed
    no_dir = {"GOSSIPMGR_DATA_DIR": str(tmp_path / "none")}
    assert refused(gm("lease", url=server, token=None, env_extra=no_dir)) == (
        "gossipmgr: missing or invalid bearer token (no token: cannot read "
        f"{tmp_path / 'none' / 'api.token'}: No such file or directory)"
    )
    assert refused(gm("lease", "--token", "wrong", url=server, token=None)).endswith(
        "missing or invalid bearer token (token from --token)"
    )
    tf = tmp_path / "tok"
    tf.write_text(TOKEN + "\n")
    assert "holder=i1" in ok(gm("--token-file", str(tf), "lease", url=server, token=None))
    assert "holder=i1" in ok(gm("lease", "--token", TOKEN, url=server, token=None))
    env_file = {"GOSSIPMGR_TOKEN_FILE": str(tf)}
    assert "holder=i1" in ok(gm("lease", url=server, token=None, env_extra=env_file))
    # the agent's own file in its data directory, found without any option
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api.token").write_text(TOKEN + "\n")
    data_dir = {"GOSSIPMGR_DATA_DIR": str(tmp_path / "data")}
    assert "holder=i1" in ok(gm("lease", url=server, token=None, env_extra=data_dir))


def test_peers_lease_config(server: str) -> None:
    out = ok(gm("peers", url=server))
    assert out.splitlines()[0].split()[:3] == ["NAME", "STATUS", "API"]
    assert out.splitlines()[1].split()[:2] == ["*i1", "alive"]
    assert "lease: holder=i1 epoch=1" in out
    assert js(gm("lease", "-j", url=server))["lease"]["holder"] == "i1"
    cfg = js(gm("c", "g", url=server))
    assert set(cfg) == {"serf", "ansible", "manager"}
    assert (
        ok(
            gm("config", "set", "-", url=server, stdin=json.dumps({"ansible": {"user": "ops"}}))
        ).strip()
        == "config updated"
    )
    assert js(gm("config", "get", url=server))["ansible"]["user"] == "ops"
    err = refused(gm("c", "s", "-", url=server, stdin=json.dumps({"serf": {"Addr": "x"}})))
    assert err == (
        'gossipmgr: "serf" configuration can\'t be changed. '
        "Only changes to ansible configuration are allowed."
    )


@pytest.mark.ansible
def test_commission_and_follow_a_real_job(server: str) -> None:
    assert refused(gm("job", "cancel", url=server)) == "gossipmgr: job is not Running"
    err = refused(gm("n", "c", "node-0", "-g", "db", url=server))
    assert err == 'gossipmgr: invalid or empty host-group specified: "db"'
    started = ok(gm("n", "c", "node-0", "-g", "service-master", "-e", '{"v": 1}', url=server))
    assert started.startswith("job ") and "started (Running)" in started
    job_id = started.split()[1]
    err = refused(gm("a", "u", "node-1", url=server))
    assert err.startswith("gossipmgr: there is already an active job")
    p = gm("job", "get", "active", "--follow", url=server)
    out = ok(p)
    lines = out.splitlines()
    assert any("PLAY" in ln for ln in lines)
    assert lines[-1].startswith(f"job {job_id}: Complete (")
    assert "[running" not in p.stderr  # progress goes to a TTY only
    assert ok(gm("j", "g", "last", url=server)).splitlines()[1].split()[:3] == [
        job_id,
        "commission",
        "Complete",
    ]
    assert js(gm("j", "g", job_id, "-j", url=server))["status"] == "Complete"
    hist = ok(gm("jobs", url=server)).splitlines()
    assert hist[0].split()[:3] == ["ID", "TASK", "STATUS"] and hist[1].split()[0] == job_id
    # following a finished job replays its log and its final status
    again = ok(gm("j", "g", job_id, "-f", url=server)).splitlines()
    assert again[-1].startswith(f"job {job_id}: Complete") and len(again) == len(lines)
    assert js(gm("n", "g", "node-0", "-j", url=server))["inventory_state"]["status"] == (
        "Allocated"
    )


def test_agent_and_demo_commands_are_hooked_in_lazily() -> None:
    out = ok(gm("--help"))
    assert "agent" in out and "demo" in out
    assert "--data-dir" in ok(gm("agent", "--help"))
    assert "--keep" in ok(gm("-u", "http://x", "demo", "--help"))


def test_peers_last_heard_column_from_last_heard_ms_ago() -> None:
    """LAST-HEARD comes from the agent's ``last_heard_ms_ago`` (milliseconds ago): it used
    to read ``last_heard``, which no agent sends, and so was always empty."""
    from gossipmgr.cli.output import PEER_HEADER, ago, render_peers

    def peer(name: str, ms_ago: float | None) -> dict[str, Any]:
        # the fields of one entry of the agent's GET /info/peers
        return {
            "auth_failures": 0,
            "auth_failure_reasons": {},
            "name": name,
            "api_url": f"http://127.0.0.1:1/{name}",
            "gossip_addr": "127.0.0.1:2",
            "status": "alive",
            "self": name == "a",
            "lag": 0,
            "resyncing": False,
            "last_heard_ms_ago": ms_ago,
        }

    res = {
        "self": "a",
        "peers": [peer("a", None), peer("b", 1234.5), peer("c", 3_725_000.0)],
        "lease": None,
    }
    lines = render_peers(res).splitlines()
    col = lines[0].index("LAST-HEARD")
    assert PEER_HEADER.index("LAST-HEARD") == 5
    assert [ln[col:].split("  ")[0].strip() for ln in lines[1:4]] == [
        "",
        "1.2s ago",
        "1h02m ago",
    ]
    assert ago(float("inf")) == ago(float("nan")) == ""  # a hostile server's JSON
    assert [ago(v) for v in (0, 999.0, 42_400, 185_000, None, -1, True, "5")] == [
        "0.0s ago",
        "1.0s ago",
        "42s ago",
        "3m05s ago",
        "",
        "",
        "",
        "",
    ]


def test_import_command_is_hooked_in_lazily() -> None:
    """`import clusterm` lives in gossipmgr.clusterm (a layer above the CLI): loaded only when
    that command is run, with its real flags then."""
    code = (
        "import sys\n"
        "from gossipmgr.cli.parser import build_parser\n"
        "build_parser(['peers']).parse_args(['peers'])\n"
        "print(sorted(m for m in sys.modules if m.startswith('gossipmgr.clusterm')))\n"
        "args = build_parser(['import']).parse_args(['import', 'clusterm', '--boltdb', 'f'])\n"
        "print(args.boltdb, args.client_command, args.func.__module__)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.splitlines() == ["[]", "f True gossipmgr.clusterm.importer"]


async def test_peers_shows_last_heard_against_the_real_wiring(tmp_path: Path) -> None:
    """Issue 15: `gossipmgr peers` showed an empty LAST-HEARD column against a real agent
    (the agent sends ``last_heard_ms_ago``; the CLI read ``last_heard``, which only the old
    hand-wired test context sent). Two instances built by the agent's own wiring (only Serf
    is a fake, shared), gossiping over real UDP; the CLI, a subprocess, asks ``a``."""
    import trio
    from _apiutil import standalone

    from gossipmgr.testing.fakeserf import FakeSerfCluster
    from gossipmgr.testing.standalone import shared_key
    from gossipmgr.testing.wait import until

    cluster = FakeSerfCluster()
    key = shared_key(tmp_path)
    kw: dict[str, Any] = {"token": TOKEN, "cluster": cluster, "encrypt_key_file": key}
    async with standalone(tmp_path, "a", **kw) as a, standalone(tmp_path, "b", claim=False, **kw):
        # Polled: hearing from b is no change to a's replica (a wait for one only ended
        # when b happened to claim the lease before a's lease reached it).
        await until(
            lambda: any(
                p.name == "b" and p.last_heard_ms_ago is not None for p in a.peer_records()
            ),
            30,
            "a to hear from b over gossip",
        )
        url = a.agent.api_url
        p = await trio.to_thread.run_sync(lambda: gm("peers", url=url))
        # the typed record serves the JSON docs/api.md lists
        listed = {"name", "api_url", "gossip_addr", "status", "self", "lag", "resyncing"}
        listed |= {"last_heard_ms_ago", "auth_failures", "auth_failure_reasons"}
        assert [set(peer) for peer in a.peers()] == [listed, listed]
    lines = ok(p).splitlines()
    col = lines[0].index("LAST-HEARD")
    rows = {ln.split()[0].lstrip("*"): ln for ln in lines[1:3]}
    assert set(rows) == {"a", "b"}, lines
    assert rows["b"][col:].split(), lines  # a LAST-HEARD value for the peer


def test_agent_command_path_leaves_heavy_imports_for_later() -> None:
    """Issue 17 (start within 0.5 s): what `gossipmgr agent` imports to serve does not load
    the heavy dependencies only some requests need: httpx (forwarding, the CLI's client),
    ansible_runner (a playbook run), prometheus_client (a scrape), the clusterm modules
    (`import clusterm`)."""
    loaded = set(modules_loaded_by(["gossipmgr.cli.main", "gossipmgr.daemon", "gossipmgr.agent"]))
    heavy = {"httpx", "ansible_runner", "ansible", "prometheus_client", "gossipmgr.clusterm"}
    assert "trio" in loaded  # the daemon itself was imported (its web stack loads later)
    assert heavy & loaded == set()
