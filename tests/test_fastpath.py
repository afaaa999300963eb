"""The fast path (gossipmgr.api.fastpath) answers ``GET|PUT|DELETE /globals/{key}`` with the
very bytes Quart's routes answer: status, headers and JSON body, for good and bad requests
(tokens and roles, keys with "/", "%", newlines or over the limit, refused variable names,
bodies that are not JSON, not objects, the wrong media type, too large).

Two standalone instances (the agent's wiring over a fake Serf) with the same tokens: one
app with the fast path, one without (``create_app(ctx, fast_path=False)``: every request
through Quart). Each request goes to both, from the same state; the answers and the states
after must be equal. Hypothesis drives it from a worker thread (it cannot drive an async
test), calling into the trio loop with ``trio.from_thread``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any
from urllib.parse import quote

import trio
from _apiutil import serving, standalone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gossipmgr.api import MAX_BODY_BYTES, create_app
from gossipmgr.api.fastpath import FastPath
from gossipmgr.core.tokens import ADMIN, READ, make_token

DEFAULT = "the-default-secret"
OPS = "ops-secret-0123456789"
VIEWER = "viewer-secret-0123456789"

Request = tuple[str, str, dict[str, str], bytes]
Answer = tuple[int, list[tuple[str, str]], bytes]

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=8,
)
key_chars = st.characters(exclude_categories=["Cs"]) | st.sampled_from("/%?#\n\r \x00")
keys = (
    st.text(key_chars, max_size=12)
    | st.sampled_from(["k", "a/b", "/a", "a//b", "ansible_host", "ANSIBLE_x", "%2F", ".."])
    | st.integers(250, 260).map(lambda n: "k" * n)
)
tokens = st.sampled_from([None, DEFAULT, OPS, VIEWER, "wrong", "Basic eA==", "bearer " + OPS])
ctypes = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "application/merge-patch+json",
        "text/plain",
        None,
    ]
)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    """One request to a single-key route, good or bad in any of its parts."""
    method = draw(st.sampled_from(["GET", "PUT", "DELETE", "PUT", "PUT", "HEAD"]))
    key = draw(keys)
    headers: dict[str, str] = {}
    tok = draw(tokens)
    if tok is not None:
        headers["Authorization"] = tok if " " in tok else f"Bearer {tok}"
    body = b""
    if method == "PUT":
        ctype = draw(ctypes)
        if ctype is not None:
            headers["Content-Type"] = ctype
        kind = draw(st.sampled_from(["value", "value", "value", "raw", "other", "empty"]))
        if kind == "value":
            body = json.dumps({"value": draw(json_values)}).encode()
        elif kind == "other":
            body = json.dumps(draw(json_values)).encode()
        elif kind == "raw":
            body = draw(st.sampled_from([b"{", b"NaN", b'{"value": Infinity}', b"\xff", b"[1]"]))
        if draw(st.booleans()):
            headers["Content-Length"] = str(len(body))
    return method, "/globals/" + quote(key, safe="/"), headers, body


def _tokens_file(path: Path) -> Path:
    entries = [make_token("ops", ADMIN, OPS), make_token("viewer", READ, VIEWER)]
    path.write_text("".join(t.line() + "\n" for t in entries))
    return path


class _Counting(FastPath):
    """The fast path, counting the requests it answers."""

    answered = 0

    async def __call__(self, req: Any, receive: Any, send: Any) -> None:
        self.answered += 1
        await super().__call__(req, receive, send)


async def _ask(client: Any, req: Request) -> Answer:
    method, path, headers, body = req
    r = await client.open(path, method=method, headers=headers, data=body)
    return r.status_code, list(r.headers.items()), await r.get_data()


async def test_fast_path_answers_what_quart_answers(tmp_path: Path) -> None:
    tokens_file = _tokens_file(tmp_path / "tokens")
    kw: dict[str, Any] = {"token": DEFAULT, "api_tokens_file": tokens_file, "claim": False}
    async with (
        standalone(tmp_path / "fast", **kw) as fctx,
        standalone(tmp_path / "quart", **kw) as qctx,
    ):
        fapp = create_app(fctx)
        fapp.fast_path = counting = _Counting(fctx)
        fast = fapp.test_client()
        slow = create_app(qctx, fast_path=False).test_client()
        taken = [0]

        async def both(req: Request) -> tuple[Answer, Answer, bool]:
            a = await _ask(fast, req)
            b = await _ask(slow, req)
            return a, b, fctx.replica.state.globals() == qctx.replica.state.globals()

        def run() -> int:
            @settings(
                max_examples=300,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(requests())
            def check(req: Request) -> None:
                a, b, same = trio.from_thread.run(both, req)
                assert a == b, req
                assert same, req
                taken[0] += 1

            check()
            return taken[0]

        with trio.fail_after(120):
            n = await trio.to_thread.run_sync(run)
        assert n >= 300
        # Most of them were answered by the fast path (HEAD, a key with a newline, a body on
        # a GET went to Quart, as they should). How many, and whether a PUT got through,
        # depends on the draws: the fast path's share is asserted on fixed requests.
        auth = {"Authorization": f"Bearer {DEFAULT}"}
        put_hdrs = {**auth, "Content-Type": "application/json"}
        before = counting.answered
        for req in [
            ("PUT", "/globals/fixed/a", put_hdrs, b'{"value": {"v": [1, "x"]}}'),
            ("GET", "/globals/fixed/a", auth, b""),
            ("DELETE", "/globals/fixed/a", auth, b""),
            ("PUT", "/globals/fixed/b", put_hdrs, b'{"value": null}'),
        ]:
            a, b, same = await both(req)
            assert a == b and same, req
            assert a[0] in (200, 201, 204), a
        assert counting.answered == before + 4
        assert "fixed/b" in fctx.replica.state.globals()


async def test_too_large_body_answered_alike(tmp_path: Path) -> None:
    """A body over MAX_BODY_BYTES, declared or not: Quart's 413 (after the key's checks)."""
    async with (
        standalone(tmp_path / "fast", claim=False) as fctx,
        standalone(tmp_path / "quart", claim=False) as qctx,
    ):
        fast = create_app(fctx).test_client()
        slow = create_app(qctx, fast_path=False).test_client()
        big = b'{"value": "' + b"x" * MAX_BODY_BYTES + b'"}'
        h = {"Content-Type": "application/json"}
        cases: list[Request] = [
            ("PUT", "/globals/k", h, big),
            ("PUT", "/globals/k", {**h, "Content-Length": str(len(big))}, big),
            ("PUT", "/globals/" + "k" * 300, h, big),
        ]
        for req in cases:
            a = await _ask(fast, req)
            assert a == await _ask(slow, req), req[1][:20]
        assert a[0] == 422
        status, headers, _ = await _ask(fast, cases[0])
        assert status == 413 and ("connection", "close") in headers


def _raw(url: str, request: bytes) -> bytes:
    """Send ``request`` on a new connection; the whole response (the server closes)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    # Date changes from one answer to the next; everything else must be equal.
    return b"\r\n".join(x for x in out.split(b"\r\n") if not x.lower().startswith(b"date:"))


async def test_same_bytes_on_the_wire(tmp_path: Path) -> None:
    """Over real HTTP (hypercorn): the same response bytes, Date aside."""
    async with (
        standalone(tmp_path / "fast", token=DEFAULT, claim=False) as fctx,
        standalone(tmp_path / "quart", token=DEFAULT, claim=False) as qctx,
        serving(create_app(fctx)) as furl,
        serving(create_app(qctx, fast_path=False)) as qurl,
    ):
        auth = f"Authorization: Bearer {DEFAULT}\r\n"
        delete = (
            f"DELETE /globals/a%2Fb HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        ).encode()
        put = b'{"value": {"a": [1, 2.5, "\\u00e9"]}}'
        cases: list[bytes] = [
            f"PUT /globals/a%2Fb HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
            f"Content-Length: {len(put)}\r\nConnection: close\r\n\r\n".encode()
            + put,
            f"GET /globals/a%2Fb HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n".encode(),
            b"GET /globals/a%2Fb HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            f"PUT /globals/c HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: text/plain\r\n"
            f"Content-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode(),
            delete,
            delete,
        ]
        answers = []
        for req in cases:
            a = await trio.to_thread.run_sync(_raw, furl, req)
            b = await trio.to_thread.run_sync(_raw, qurl, req)
            assert a == b, req
            answers.append(a.split(b"\r\n", 1)[0])
        assert answers == [
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 401 ",
            b"HTTP/1.1 415 ",
            b"HTTP/1.1 200 ",
            b"HTTP/1.1 404 ",
        ]
