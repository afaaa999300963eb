"""GET /watch over real HTTP: standalone instances (the agent's wiring, Serf faked), raw
sockets for a client that does not read, and real agents with real Serf for the gossip path.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
import trio
from _apiutil import standalone
from serfutil import local_cluster

from gossipmgr.api import listen
from gossipmgr.localcluster import LocalCluster, wait_for
from gossipmgr.testing.wait import until

TOKEN = "w4tch"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Events:
    """A ``GET`` of a Server-Sent Events stream over a plain socket (HTTP/1.1, chunked):
    :meth:`next` returns one block as a dict (``id``, ``event``, ``data`` decoded from
    JSON); an id-only block has no ``event``. (httpx's async line iterators, left
    unexhausted, are garbage collected with a ResourceWarning, an error here.)"""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock
        self.raw = b""  # received, not yet de-chunked
        self.text = ""  # de-chunked, not yet split into lines
        self.headers = ""

    async def _recv(self) -> None:
        data = await self.sock.recv(65536)
        if not data:
            raise EOFError("the connection closed")
        self.raw += data

    async def _line(self) -> str:
        while "\n" not in self.text:
            size_line, sep, rest = self.raw.partition(b"\r\n")
            if not sep:
                await self._recv()
                continue
            size = int(size_line, 16)
            if size == 0:
                raise EOFError("the stream ended")
            if len(rest) < size + 2:
                await self._recv()
                continue
            self.text += rest[:size].decode()
            self.raw = rest[size + 2 :]
        line, _, self.text = self.text.partition("\n")
        return line

    async def next(self) -> dict[str, Any]:
        block: dict[str, Any] = {}
        while True:
            line = await self._line()
            if line == "":
                if block:
                    return block
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            block[name] = json.loads(value) if name == "data" else value

    async def change(self) -> dict[str, Any]:
        """The next event (skipping id-only blocks)."""
        while True:
            b = await self.next()
            if "event" in b:
                return b


@asynccontextmanager
async def watching(
    c: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> AsyncIterator[Events]:
    """``GET url`` as a stream of events (closed on exit); ``c`` gives the token."""
    u = urlsplit(url)
    hdrs = {"Host": u.netloc, **{k: str(v) for k, v in c.headers.items()}, **(headers or {})}
    head = "".join(f"{k}: {v}\r\n" for k, v in hdrs.items() if k.lower() != "accept-encoding")
    target = u.path + (f"?{u.query}" if u.query else "")
    with trio.socket.socket() as sock:
        await sock.connect((u.hostname, u.port))
        await sock.send(f"GET {target} HTTP/1.1\r\n{head}\r\n".encode())
        ev = Events(sock)
        while b"\r\n\r\n" not in ev.raw:
            await ev._recv()
        head_bytes, _, ev.raw = ev.raw.partition(b"\r\n\r\n")
        ev.headers = head_bytes.decode().lower()
        assert ev.headers.startswith("http/1.1 200"), ev.headers
        assert "content-type: text/event-stream" in ev.headers
        yield ev


async def put(c: httpx.AsyncClient, url: str, key: str, value: Any) -> None:
    r = await c.put(f"{url}/globals/{quote(key, safe='')}", json={"value": value})
    assert r.status_code == 200, r.text


async def delete(c: httpx.AsyncClient, url: str, key: str) -> None:
    r = await c.delete(f"{url}/globals/{quote(key, safe='')}")
    assert r.status_code == 200, r.text


def seen(ev: dict[str, Any]) -> tuple[str, str, Any]:
    return (ev["event"], ev["data"]["key"], ev["data"].get("value"))


async def test_every_change_once_in_order_across_a_reconnect(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN) as ctx:
        url = ctx.agent.api_url
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
            with trio.fail_after(60):
                got: list[dict[str, Any]] = []
                async with watching(c, f"{url}/watch?prefix=globals/") as ev:
                    start = await ev.next()
                    assert "id" in start and "event" not in start
                    await put(c, url, "a", 1)
                    await put(c, url, "b", {"x": [1]})
                    await put(c, url, "a", 2)
                    await delete(c, url, "b")
                    await put(c, url, "c/d", None)
                    got += [await ev.change() for _ in range(3)]
                # disconnected after 3 of 5; the rest arrive while nobody watches
                await put(c, url, "a", 3)
                await put(c, url, "b", "again")
                await delete(c, url, "a")
                last = got[-1]["id"]
                async with watching(c, f"{url}/watch", {"Last-Event-ID": last}) as ev:
                    assert (await ev.next())["id"] == last  # resumes right after it
                    got += [await ev.change() for _ in range(5)]
                    await put(c, url, "sentinel", True)
                    tail = await ev.change()  # nothing repeated or extra before it
                    got.append(tail)
    assert [seen(e) for e in got] == [
        ("put", "globals/a", 1),
        ("put", "globals/b", {"x": [1]}),
        ("put", "globals/a", 2),
        ("delete", "globals/b", None),
        ("put", "globals/c/d", None),
        ("put", "globals/a", 3),
        ("put", "globals/b", "again"),
        ("delete", "globals/a", None),
        ("put", "globals/sentinel", True),
    ]
    ids = [e["id"] for e in got]
    assert len(set(ids)) == len(ids)
    assert all(e["data"]["writer"] == "i1" for e in got)


async def test_prefix_filters_on_the_text_key_with_slashes(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN) as ctx:
        url = ctx.agent.api_url
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
            with trio.fail_after(60):
                q = quote("globals/a/", safe="")
                async with watching(c, f"{url}/watch?prefix={q}") as ev:
                    await ev.next()
                    for k in ("a", "ab", "a/b", "x/a/", "a/c/d", "/a/", "a/"):
                        await put(c, url, k, k)
                    await put(c, url, "a/zz-sentinel", 0)
                    keys = [(await ev.change())["data"]["key"] for _ in range(4)]
    assert keys == ["globals/a/b", "globals/a/c/d", "globals/a/", "globals/a/zz-sentinel"]


async def test_reset_when_history_is_gone_bad_ids_and_auth(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN, watch_history=3) as ctx:
        url = ctx.agent.api_url
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
            with trio.fail_after(60):
                async with watching(c, f"{url}/watch") as ev:
                    since = (await ev.next())["id"]
                for i in range(5):  # more than the 3 kept
                    await put(c, url, f"k{i}", i)
                async with watching(c, f"{url}/watch?since={quote(since)}") as ev:
                    head = (await ev.next())["id"]
                    reset = await ev.next()
                    assert reset["event"] == "reset" and reset["id"] == head
                    assert "no longer kept" in reset["data"]["reason"]
                    await put(c, url, "after", 1)  # continues from now
                    assert seen(await ev.change()) == ("put", "globals/after", 1)
                r2 = await c.get(f"{url}/watch?since=zzz")
                assert r2.status_code == 400 and "not an event id" in r2.json()["error"]
                r2 = await c.get(f"{url}/watch", headers={"Authorization": "Bearer nope"})
                assert r2.status_code == 401
                assert ctx.agent.feed.clients == 0  # both streams ended and were counted out


async def test_reset_after_a_restart(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN) as ctx:
        url = ctx.agent.api_url
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
            async with watching(c, f"{url}/watch") as ev:
                await ev.next()
                await put(c, url, "x", 1)
                last = (await ev.change())["id"]
    async with standalone(tmp_path, token=TOKEN) as ctx:  # the same data, a new run
        url = ctx.agent.api_url
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
            async with watching(c, f"{url}/watch", {"Last-Event-ID": last}) as ev:
                head = (await ev.next())["id"]
                reset = await ev.next()
                assert reset["event"] == "reset" and "another run" in reset["data"]["reason"]
                assert head != last and reset["id"] == head
                r2 = await c.get(f"{url}/globals/x")
                assert r2.json()["value"] == 1  # what the client re-reads is there


def _dechunk(raw: bytes) -> tuple[bytes, bool]:
    """The body of a chunked HTTP/1.1 response (headers included in ``raw``), and whether
    its last chunk arrived."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body, True
        body, rest = body + rest[:size], rest[size + 2 :]
    return body, False


async def test_a_client_that_does_not_read_is_cut_off_and_writes_go_on(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN, watch_history=32) as ctx:
        url = ctx.agent.api_url
        host, port = urlsplit(url).hostname, urlsplit(url).port
        slow = trio.socket.socket()
        # A small receive window: the server's writes block after a few hundred KB.
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        with slow, trio.fail_after(120):
            await slow.connect((host, port))
            await slow.send(
                f"GET /watch HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            raw = b""
            while b": watching" not in raw:
                raw += await slow.recv(4096)
            small: list[str] = []
            async with (
                httpx.AsyncClient(headers=AUTH, timeout=60) as c,
                watching(c, f"{url}/watch?prefix=globals/small/") as fast,
                trio.open_nursery() as nursery,
            ):
                await fast.next()

                async def read_fast() -> None:
                    while True:
                        small.append((await fast.change())["data"]["key"])

                nursery.start_soon(read_fast)
                big = "x" * 30_000
                feed, writes = ctx.agent.feed, 0
                # Write to a client that reads nothing until the feed cuts it off (once its
                # socket buffers are full it falls behind the 32 kept changes); every write
                # is acknowledged meanwhile. 2,000 x 30 KB is far more than any buffers hold.
                while feed.cutoffs == 0 and writes < 2000:
                    await put(c, url, f"big/{writes}", big)
                    if writes % 20 == 0:
                        await put(c, url, f"small/{writes}", writes)
                    writes += 1
                assert feed.cutoffs == 1
                assert feed.clients == 2  # still connected: it is told when it reads
                await put(c, url, "small/last", 0)
                await until(lambda: small[-1:] == ["globals/small/last"], 30, "the fast one")
                nursery.cancel_scope.cancel()
            # the other client got every change it watched, in order
            assert small == [f"globals/small/{i}" for i in range(0, writes, 20)] + [
                "globals/small/last"
            ]
            while True:  # now the slow client reads: what was sent, the cutoff, the end
                data = await slow.recv(65536)
                if not data:
                    break
                raw += data
    body, complete = _dechunk(raw)
    assert complete
    frames = body.decode().strip().split("\n\n")
    assert frames[-1].startswith("event: cutoff\ndata: ")
    assert "fell" in json.loads(frames[-1].split("data: ", 1)[1])["reason"]
    assert 0 < sum(f.count("event: put") for f in frames) < writes  # some sent, then cut off


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "cluster", lease_ttl_ms=6_000) as c:
        yield c


@pytest.mark.serf
@pytest.mark.slow
def test_changes_arriving_by_gossip_appear_on_the_other_feed(cluster: LocalCluster) -> None:
    for name in ("g1", "g2"):
        cluster.add_instance(name)
    for name in ("g1", "g2"):
        cluster.wait_ready(name)
    g2 = cluster.instances["g2"].url
    timeout = httpx.Timeout(60, connect=5)
    with httpx.stream(
        "GET", f"{g2}/watch?prefix=globals/", headers=cluster.headers, timeout=timeout
    ) as r:
        assert r.status_code == 200
        lines: Iterator[str] = r.iter_lines()
        assert next(lines) == ": watching"
        for i in range(3):
            assert cluster.put("g1", f"/globals/from-g1-{i}", {"value": i}).status_code == 200
        got = []
        for line in lines:
            if line.startswith("data: "):
                got.append(json.loads(line[6:]))
                if len(got) == 3:
                    break
    # In g2's commit order, which need not be g1's across keys (a datagram lost or
    # reordered is resent later); each key's changes stay in order (the LWW join).
    assert sorted((d["key"], d["value"], d["writer"]) for d in got) == [
        (f"globals/from-g1-{i}", i, "g1") for i in range(3)
    ]
    wait_for(lambda: cluster.get("g2", "/globals/from-g1-2")["value"] == 2, 10, "the read")


async def test_idle_stream_heartbeats_a_disconnect_leaves_nothing(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN) as ctx:
        url, feed = ctx.agent.api_url, ctx.agent.feed
        feed.heartbeat_s = 0.05  # the default is 15 s; what is checked is that one comes
        async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
            with trio.fail_after(60):
                async with watching(c, f"{url}/watch") as ev:
                    assert await ev._line() == ": watching"
                    while await ev._line() != ": keepalive":
                        pass
                    assert feed.clients == 1
                # the client left: its stream (an async generator in the request's task)
                # ended with the request; nothing of it stays behind
                await until(lambda: feed.clients == 0, 30, "the stream to end")


async def test_the_instance_stops_with_a_watcher_connected(tmp_path: Path) -> None:
    sock = trio.socket.socket()
    with sock, trio.fail_after(60):
        async with standalone(tmp_path, token=TOKEN) as ctx:
            u = urlsplit(ctx.agent.api_url)
            await sock.connect((u.hostname, u.port))
            await sock.send(
                f"GET /watch HTTP/1.1\r\nHost: {u.netloc}\r\n"
                f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
            )
            raw = b""
            while b": watching" not in raw:
                raw += await sock.recv(4096)
        # stopped while the stream was open: the server closed the connection
        while await sock.recv(65536):
            pass


async def test_a_stalled_client_does_not_hold_the_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watcher that stops reading blocks the server's (uncancellable) writes; the kernel
    aborts its connection once nothing was acknowledged for SEND_STALL_TIMEOUT_MS, so the
    instance still stops (it hung until the client left before)."""
    monkeypatch.setattr(listen, "SEND_STALL_TIMEOUT_MS", 1000)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    with sock, trio.fail_after(90):
        async with standalone(tmp_path, token=TOKEN) as ctx:
            url = ctx.agent.api_url
            u = urlsplit(url)
            await sock.connect((u.hostname, u.port))
            await sock.send(
                f"GET /watch HTTP/1.1\r\nHost: {u.netloc}\r\n"
                f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
            )
            raw = b""
            while b": watching" not in raw:
                raw += await sock.recv(4096)
            async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
                for i in range(100):  # ~3 MB: far more than the socket buffers hold
                    await put(c, url, f"big/{i}", "x" * 30_000)
        # stopped (it could not before: the server's stop waited for the stalled write);
        # the connection was aborted (a reset) or closed
        try:
            while await sock.recv(65536):
                pass
        except OSError:
            pass
