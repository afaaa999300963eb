"""The web console's routes over real HTTP, without a browser (the browser tests are
tests/test_console_browser.py): its static files are served without a token and only its
own files; ``GET /whoami`` names the token and its role; the wheel ships every file."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path
from typing import Any

import httpx
from _apiutil import standalone

import gossipmgr
from gossipmgr.core.tokens import READ, make_token

UI = Path(gossipmgr.__file__).parent / "api" / "ui"
ROOT = Path(__file__).parent.parent
ADMIN_SECRET = "console-admin-0123456789"
READ_SECRET = "console-read-0123456789"


async def _get(url: str, path: str, token: str | None = None) -> httpx.Response:
    hdr = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient() as c:
        return await c.get(url + path, headers=hdr)


def _error(r: httpx.Response) -> Any:
    return r.json()["error"]


async def test_console_files_need_no_token_and_whoami_names_the_token(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(make_token("viewer", READ, READ_SECRET).line() + "\n")
    async with standalone(tmp_path, token=ADMIN_SECRET, api_tokens_file=tokens) as ctx:
        url = ctx.agent.api_url
        page = await _get(url, "/ui/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.content == (UI / "index.html").read_bytes()
        csp = page.headers["content-security-policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert page.headers["x-content-type-options"] == "nosniff"
        kinds = {".js": "text/javascript", ".css": "text/css", ".html": "text/html"}
        files = sorted(p for p in UI.iterdir() if p.is_file())
        assert {p.name for p in files} >= {"index.html", "app.js", "api.js", "console.css"}
        for f in files:
            r = await _get(url, f"/ui/{f.name}")
            assert r.status_code == 200 and r.content == f.read_bytes(), f.name
            assert r.headers["content-type"].startswith(kinds[f.suffix]), f.name
        bare = await _get(url, "/ui")
        assert bare.status_code == 308 and bare.headers["location"].endswith("/ui/")
        # only the console's own files: no other name, no way out of its directory
        r = await _get(url, "/ui/nope.js")
        assert r.status_code == 404 and _error(r) == "the console has no file 'nope.js'"
        for path in ("/ui/%2E%2E%2Fboundary.py", "/ui/..%2F__init__.py", "/ui/a/b.js", "/ui/.x"):
            assert (await _get(url, path)).status_code == 404, path
        # the data is not open: reads and the feed still need a token
        for path in ("/info/nodes", "/watch", "/whoami"):
            r = await _get(url, path)
            assert r.status_code == 401 and _error(r) == "missing or invalid bearer token"
        async with httpx.AsyncClient() as c:
            r = await c.post(url + "/ui/", json={})
        assert r.status_code == 401  # only GET/HEAD of the files are open
        r = await _get(url, "/whoami", READ_SECRET)
        assert r.status_code == 200 and r.json() == {"name": "viewer", "role": "read", "auth": True}
        r = await _get(url, "/whoami", ADMIN_SECRET)
        assert r.json() == {"name": "default", "role": "admin", "auth": True}


async def test_whoami_without_auth(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx:
        r = await _get(ctx.agent.api_url, "/whoami")
        assert r.status_code == 200 and r.json() == {"name": "", "role": "admin", "auth": False}


def test_the_wheel_ships_every_console_file() -> None:
    """Every file of the console matches a package-data pattern of pyproject.toml, so the
    wheel (and any install from it) serves the console with no build step."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = meta["tool"]["setuptools"]["package-data"]["gossipmgr"]
    files = [p.relative_to(UI.parent.parent).as_posix() for p in UI.iterdir() if p.is_file()]
    assert files
    missing = [f for f in files if not any(fnmatch.fnmatch(f, g) for g in globs)]
    assert not missing, f"pyproject.toml's package-data leaves out {missing}"
