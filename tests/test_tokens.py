"""Named API tokens and roles (gossipmgr.core.tokens): the tokens file, read tokens refused
every mutation with a 403 naming the role (and nothing written), the single token still an
admin token named "default", a SIGHUP reload, and ``gossipmgr token add``. Over real HTTP
against a standalone instance (the agent's own wiring over a fake Serf)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from _apiutil import add_nodes, standalone

from gossipmgr.agent import Agent
from gossipmgr.config import load
from gossipmgr.core.tokens import ADMIN, READ, TokenTable, make_token, parse_tokens
from gossipmgr.errors import ConfigError
from gossipmgr.keys import load_or_create_token, load_tokens

DEFAULT = "the-default-secret"
OPS = "ops-secret-0123456789"
VIEWER = "viewer-secret-0123456789"


def _tokens_file(path: Path, *entries: tuple[str, str, str]) -> Path:
    path.write_text(
        "# name role hash\n" + "".join(make_token(*e).line() + "\n" for e in entries) + "\n"
    )
    return path


async def _call(
    url: str, method: str, path: str, token: str | None, body: Any = None
) -> tuple[int, Any]:
    h = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with httpx.AsyncClient() as c:
        r = await c.request(method, url + path, json=body, headers=h)
    return r.status_code, r.json()


# --------------------------------------------------------------------------- pure


def test_tokens_file_parses_and_matches_by_hash() -> None:
    ops, viewer = make_token("ops", ADMIN, OPS).line(), make_token("v", READ, VIEWER).line()
    text = f"{ops}  # the operators\n\n{viewer}\n"
    table = TokenTable.with_default(DEFAULT, parse_tokens(text, "f"))
    assert [(t.name, t.role) for t in table.tokens] == [
        ("default", ADMIN),
        ("ops", ADMIN),
        ("v", READ),
    ]
    assert OPS not in text and VIEWER not in text  # only hashes are stored
    found = table.match(VIEWER)
    assert found is not None and found.name == "v"
    assert table.match(DEFAULT) is not None and table.match("nope") is None
    assert table.match("") is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("ops admin", "expected NAME ROLE sha256:HEX, got 2 fields"),
        ("ops root sha256:" + "0" * 64, "role must be admin or read"),
        ("ops admin md5:" + "0" * 32, "the hash must be sha256:"),
        ("o/ps admin sha256:" + "0" * 64, "token name 'o/ps'"),
    ],
)
def test_a_bad_tokens_line_is_refused_with_where(text: str, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_tokens("# ok\n" + text + "\n", "tokens.txt")
    assert str(exc.value).startswith("tokens.txt:2: ") and why in str(exc.value)


def test_names_and_secrets_must_be_unique() -> None:
    with pytest.raises(ConfigError, match="names must be unique: ops"):
        TokenTable([make_token("ops", ADMIN, "a"), make_token("ops", READ, "b")])
    with pytest.raises(ConfigError, match="same secret"):
        TokenTable([make_token("a", ADMIN, "x"), make_token("b", READ, "x")])
    with pytest.raises(ConfigError, match="names must be unique: default"):
        TokenTable.with_default("x", [make_token("default", READ, "y")])


# --------------------------------------------------------------------------- HTTP


async def test_roles_over_real_http_and_sighup_reload(tmp_path: Path) -> None:
    path = _tokens_file(tmp_path / "tokens", ("ops", ADMIN, OPS), ("viewer", READ, VIEWER))
    async with standalone(tmp_path, token=DEFAULT, api_tokens_file=path) as ctx:
        await add_nodes(ctx, 1)
        url = ctx.agent.api_url
        # a read token reads
        st, nodes = await _call(url, "GET", "/info/nodes", VIEWER)
        assert st == 200 and list(nodes) == ["node-0"]
        assert (await _call(url, "GET", "/info/node/node-0/history", VIEWER))[0] == 200
        # ... and watches: the change feed is opened for it (closed unread)
        hdr = {"Authorization": f"Bearer {VIEWER}"}
        async with httpx.AsyncClient() as c, c.stream("GET", url + "/watch", headers=hdr) as w:
            assert w.status_code == 200
            assert w.headers["content-type"].startswith("text/event-stream")
        # ... and may not mutate: 403 naming the token and its role, nothing written
        st, r = await _call(url, "PUT", "/globals/x", VIEWER, {"value": 1})
        assert st == 403
        assert r["error"] == (
            'token "viewer" has the role read: it may read and watch, not PUT /globals/x '
            "(that needs an admin token)"
        )
        assert not ctx.replica.state.has_global("x")
        for method, route, body in [
            ("POST", "/commission/nodes", {"nodes": ["node-0"], "host_group": "service-master"}),
            ("POST", "/node/node-0/forget", {"force": True}),
            ("DELETE", "/globals/x", None),
            ("POST", "/lease/reset", {}),
        ]:
            st, r = await _call(url, method, route, VIEWER, body)
            assert st == 403 and 'token "viewer" has the role read' in r["error"], route
        assert ctx.replica.state.has_node("node-0")
        # admin tokens, the named one and the single default one, may
        assert (await _call(url, "PUT", "/globals/x", OPS, {"value": 1}))[0] == 200
        assert (await _call(url, "PUT", "/globals/y", DEFAULT, {"value": 2}))[0] == 200
        # unknown or missing: 401 as before
        assert (await _call(url, "GET", "/info/nodes", "nope"))[0] == 401
        assert (await _call(url, "GET", "/info/nodes", None))[0] == 401
        assert (await _call(url, "GET", "/health", None))[0] == 200
        # SIGHUP (its handler): the file is read again (viewer removed, late added)
        agent = ctx.agent
        assert isinstance(agent, Agent)
        _tokens_file(path, ("ops", ADMIN, OPS), ("late", READ, "late-secret-0123"))
        agent.reload()
        assert (await _call(url, "GET", "/info/nodes", VIEWER))[0] == 401
        assert (await _call(url, "GET", "/info/nodes", "late-secret-0123"))[0] == 200
        # a broken file on reload is refused whole: the old tokens stay
        path.write_text("late read sha256:xyz\n")
        agent.reload()
        assert (await _call(url, "GET", "/info/nodes", "late-secret-0123"))[0] == 200
        # ... and so is one that is not UTF-8 (a Latin-1 comment): refused, not a crash of
        # the signal handler (UnicodeDecodeError is no ConfigError), for either token file
        good = path.read_bytes()
        path.write_bytes(b"# caf\xe9\n" + good)
        agent.reload()
        assert (await _call(url, "GET", "/info/nodes", "late-secret-0123"))[0] == 200
        path.write_bytes(good)
        default_file = tmp_path / "default.token"
        default_file.write_bytes(b"caf\xe9\n")
        with pytest.raises(ConfigError, match="not UTF-8"):
            load_or_create_token(load(None, {"data_dir": tmp_path, "api_token_file": default_file}))
        assert (await _call(url, "PUT", "/globals/z", OPS, {"value": 3}))[0] == 200


async def test_without_a_tokens_file_the_single_token_is_admin(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=DEFAULT) as ctx:
        url = ctx.agent.api_url
        assert (await _call(url, "PUT", "/globals/x", DEFAULT, {"value": 1}))[0] == 200
        assert (await _call(url, "PUT", "/globals/x", OPS, {"value": 1}))[0] == 401


# --------------------------------------------------------------------------- CLI


def _gm(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
    return subprocess.run(
        [sys.executable, "-m", "gossipmgr.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_add_prints_the_secret_once_and_appends_its_hash(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    p = _gm("token", "add", "dash", "--file", str(path))
    assert p.returncode == 0, p.stderr
    secret = p.stdout.strip()
    assert len(secret) >= 40 and "dash" in p.stderr and "only now" in p.stderr
    assert secret not in path.read_text()
    assert (path.stat().st_mode & 0o777) == 0o600
    p2 = _gm("token", "add", "boss", "--role", "admin", "--file", str(path))
    assert p2.returncode == 0, p2.stderr
    table = TokenTable(parse_tokens(path.read_text(), str(path)))
    dash, boss = table.match(secret), table.match(p2.stdout.strip())
    assert dash is not None and (dash.name, dash.role) == ("dash", READ)
    assert boss is not None and (boss.name, boss.role) == ("boss", ADMIN)
    again = _gm("token", "add", "dash", "--file", str(path))
    assert again.returncode == 1 and 'already has a token named "dash"' in again.stderr
    bad = _gm("token", "add", "a b", "--file", str(path))
    assert bad.returncode == 2 and "token name 'a b'" in bad.stderr
    assert len(path.read_text().splitlines()) == 2  # nothing appended by the refusals


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (
            {"no_auth": True, "api_tokens_file": "/x"},
            "no-auth and api-token-file / api-tokens-file",
        ),
        ({"node_history_limit": -1}, "node-history-limit must be 0 to 10000"),
        ({"node_history_limit": 10_001}, "node-history-limit must be 0 to 10000"),
    ],
)
def test_config_refuses_bad_token_and_history_settings(
    tmp_path: Path, overrides: dict[str, Any], why: str
) -> None:
    with pytest.raises(ConfigError, match=why):
        load(None, {"data_dir": str(tmp_path), **overrides})


def test_a_tokens_file_clashing_with_the_default_token_is_refused(tmp_path: Path) -> None:
    path = _tokens_file(tmp_path / "tokens", ("ops", ADMIN, DEFAULT))
    cfg = load(None, {"data_dir": tmp_path, "api_tokens_file": path})
    with pytest.raises(ConfigError, match="same secret"):
        load_tokens(cfg, DEFAULT)
    _tokens_file(path, ("default", READ, OPS))
    with pytest.raises(ConfigError, match="names must be unique: default"):
        load_tokens(cfg, DEFAULT)
    _tokens_file(path, ("ops", ADMIN, OPS))
    table = load_tokens(cfg, DEFAULT)
    assert table is not None and [t.name for t in table.tokens] == ["ops"]
