"""``gossipmgr watch``, run as a subprocess against a real instance (standalone: the agent's
wiring, Serf faked), through a TCP proxy the test can cut to drop its connection."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _apiutil import standalone

from gossipmgr.cli.client import Client, CliError
from gossipmgr.cli.watch import Cutoff, Watcher, cmd_watch, render, sse_events
from gossipmgr.testing.wait import until

TOKEN = "w4tch-cli"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Proxy:
    """A loopback TCP proxy to ``upstream``; :meth:`cut` closes every connection through it
    and, while ``refusing``, new ones are closed at once."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.refusing = False
        self.scopes: set[trio.CancelScope] = set()
        self.port = 0

    async def serve(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, down: trio.SocketStream) -> None:
        async with down:
            if self.refusing:
                return
            with trio.CancelScope() as scope:
                self.scopes.add(scope)
                try:
                    async with await trio.open_tcp_stream(*self.upstream) as up:
                        async with trio.open_nursery() as n:
                            n.start_soon(self._pipe, down, up, n)
                            n.start_soon(self._pipe, up, down, n)
                finally:
                    self.scopes.discard(scope)

    @staticmethod
    async def _pipe(a: trio.SocketStream, b: trio.SocketStream, n: trio.Nursery) -> None:
        try:
            async for data in a:
                await b.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        n.cancel_scope.cancel()

    def cut(self) -> None:
        for s in list(self.scopes):
            s.cancel()


class Lines:
    """Lines of a process's output stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buf = b""

    async def next(self) -> str:
        while b"\n" not in self.buf:
            data = await self.stream.receive_some(65536)
            if not data:
                raise EOFError(self.buf.decode())
            self.buf += data
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}


@asynccontextmanager
async def cli_watch(*args: str) -> AsyncIterator[tuple[trio.Process, Lines, Lines]]:
    """``gossipmgr ARGS`` running; yields it and its stdout and stderr lines; stopped on exit
    even when the test fails."""
    cmd = [sys.executable, "-m", "gossipmgr.cli.main", *args]
    proc = await trio.lowlevel.open_process(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env()
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        yield proc, Lines(proc.stdout), Lines(proc.stderr)
    finally:
        with trio.CancelScope(shield=True):
            if proc.returncode is None:
                proc.terminate()
            with trio.move_on_after(10):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    await pipe.aclose()


async def test_cli_watch_prints_changes_and_resumes_after_a_dropped_connection(
    tmp_path: Path,
) -> None:
    async with standalone(tmp_path, token=TOKEN) as ctx, trio.open_nursery() as nursery:
        url = ctx.agent.api_url
        feed = ctx.agent.feed
        host, port = url.rsplit("/", 1)[1].split(":")
        proxy = Proxy((host, int(port)))
        await nursery.start(proxy.serve)
        via = f"http://127.0.0.1:{proxy.port}"
        async with (
            httpx.AsyncClient(headers=AUTH, timeout=30) as c,
            cli_watch("--url", via, "--token", TOKEN, "watch", "globals/", "--json") as (
                proc,
                out,
                err,
            ),
        ):
            with trio.fail_after(60):
                await until(lambda: feed.clients == 1, 30, "the CLI to connect")
                await c.put(f"{url}/globals/a", json={"value": 1})
                first = json.loads(await out.next())
                assert first["event"] == "put" and first["key"] == "globals/a"
                assert first["value"] == 1 and first["id"]
                # drop the connection; changes committed while nobody watches
                proxy.refusing = True
                proxy.cut()
                await until(lambda: feed.clients == 0, 30, "the server to see the drop")
                await c.put(f"{url}/globals/b", json={"value": [2]})
                await c.delete(f"{url}/globals/a")
                assert "reconnecting" in await err.next()
                proxy.refusing = False
                got = [json.loads(await out.next()) for _ in range(2)]
                await c.put(f"{url}/globals/c", json={"value": "3"})
                got.append(json.loads(await out.next()))
                assert proc.returncode is None
        nursery.cancel_scope.cancel()
    assert [(g["event"], g["key"], g.get("value")) for g in got] == [
        ("put", "globals/b", [2]),
        ("delete", "globals/a", None),
        ("put", "globals/c", "3"),
    ]
    ids = [first["id"], *(g["id"] for g in got)]
    assert len(set(ids)) == 4


async def test_cli_watch_exits_1_with_the_reason_when_refused(tmp_path: Path) -> None:
    async with standalone(tmp_path, token=TOKEN) as ctx:
        url = ctx.agent.api_url
        for args, reason in (
            (("--token", "wrong"), "missing or invalid bearer token"),
            (("--token", TOKEN, "--since", "zzz"), "not an event id"),
        ):
            cmd = [sys.executable, "-m", "gossipmgr.cli.main", "--url", url, "watch", *args]
            p = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
            assert p.returncode == 1, p
            assert reason in p.stderr.decode() and b"Traceback" not in p.stderr


def test_cli_watch_parsing_rendering_and_cutoff() -> None:
    lines = [": watching", "id: s-1", "", "id: s-2", "event: put", 'data: {"key":"k"}', ""]
    assert list(sse_events(lines)) == [
        {"id": "s-1"},
        {"id": "s-2", "event": "put", "data": '{"key":"k"}'},
    ]
    assert render("put", {"key": "globals/x", "value": {"a": 1}}) == 'put globals/x = {"a": 1}'
    assert render("delete", {"key": "globals/x"}) == "delete globals/x"
    c = Client("http://127.0.0.1:9", None, None)
    try:
        w = Watcher(c, "", None, False)
        w.handle({"id": "s-3"})
        assert w.last_id == "s-3"
        with pytest.raises(Cutoff, match="too slow"):
            w.handle({"id": "s-4", "event": "cutoff", "data": '{"reason": "too slow"}'})
    finally:
        c.close()


async def test_cli_watch_keeps_reconnecting_after_the_instance_it_watched_stops(
    tmp_path: Path,
) -> None:
    """The instance stops (a restart, say) while the CLI watches: the stream breaks, and the
    reconnection attempts are refused while it is down. The CLI connected once, so it goes
    on trying (it exited with "cannot reach" at the first refusal when the stream it had
    was broken rather than ended)."""
    async with standalone(tmp_path, token=TOKEN) as ctx:
        url = ctx.agent.api_url
        feed = ctx.agent.feed
        proc_cm = cli_watch("--url", url, "--token", TOKEN, "watch", "--json")
        proc, out, err = await proc_cm.__aenter__()
        try:
            with trio.fail_after(60):
                await until(lambda: feed.clients == 1, 30, "the CLI to connect")
                async with httpx.AsyncClient(headers=AUTH, timeout=30) as c:
                    await c.put(f"{url}/globals/a", json={"value": 1})
                assert json.loads(await out.next())["key"] == "globals/a"
        except BaseException:
            await proc_cm.__aexit__(None, None, None)
            raise
    # the instance is stopped: its port refuses connections
    try:
        with trio.fail_after(60):
            first = await err.next()
            assert "reconnecting" in first, first
            try:
                second = await err.next()
            except EOFError as exc:
                raise AssertionError(f"the CLI exited: {exc}") from None
            assert "reconnecting" in second, second
            assert proc.returncode is None
    finally:
        await proc_cm.__aexit__(None, None, None)


def test_cli_watch_backoff_starts_over_after_a_stream_that_was_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reconnection waits grow while attempts fail, and start over once a stream was
    open: a watch that streamed for an hour and then lost its connection waits 0.2 s, not
    the 5 s an earlier outage had reached."""
    # each attempt: (opened a stream?, then the error it ended with)
    attempts = [(False, True), (False, True), (False, True), (True, True), (False, True)]
    attempts += [(True, True), (True, True), (False, False)]
    waits: list[float] = []

    def stream_once(self: Watcher) -> None:
        opened, _ = attempts.pop(0)
        if not attempts:
            raise Cutoff("end of the test")
        self.opened = opened
        self.connected = self.connected or opened
        raise httpx.ReadError("connection dropped")

    monkeypatch.setattr(Watcher, "stream_once", stream_once)
    monkeypatch.setattr("gossipmgr.cli.watch.time.sleep", waits.append)
    c = Client("http://127.0.0.1:9", None, None)
    args = argparse.Namespace(prefix="", since=None, json=False)
    try:
        with pytest.raises(CliError, match="end of the test"):
            cmd_watch(c, args)
    finally:
        c.close()
    assert waits == [0.2, 0.5, 1.0, 0.2, 0.5, 0.2, 0.2]
