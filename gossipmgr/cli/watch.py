"""``gossipmgr watch [PREFIX] [--since ID] [--json]``: follow ``GET /watch``.

One line per change: ``put globals/x = 1`` / ``delete globals/x`` (``--json``: one JSON
object per line with the event's ``id`` and ``event``). A dropped connection is reopened
with ``Last-Event-ID`` (nothing is lost or repeated while the instance keeps the history);
a ``reset`` (the history asked for is gone) is said on stderr and watching goes on; a
``cutoff`` (the client fell behind) or a refusal (401, 400) ends it with exit code 1 and
the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

from gossipmgr.cli.client import Client, CliError

#: The server sends a comment at least every 15 s: a read waiting this long means the
#: connection is dead (reopened).
READ_TIMEOUT_S = 60.0
#: Waits between reconnection attempts (seconds), the last one repeated.
RECONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class Cutoff(Exception):
    """The server ended the stream: the client did not keep up."""


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, str]]:
    """Server-Sent Events from a stream's lines: ``{"id", "event", "data"}`` for each
    event, and ``{"id"}`` alone for a block that only sets the last event id."""
    block: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                block["data"] = "\n".join(data)
            if block:
                yield block
            block, data = {}, []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("id", "event"):
            block[name] = value


def render(event: str, data: dict[str, Any]) -> str:
    """The human line of one event."""
    key = data.get("key", "")
    if event == "put":
        return f"put {key} = {json.dumps(data.get('value'))}"
    if event == "delete":
        return f"delete {key}"
    return f"{event}: {data.get('reason', '')}"


class Watcher:
    """The stream's state across reconnections: the last event id seen."""

    def __init__(self, c: Client, prefix: str, since: str | None, as_json: bool) -> None:
        self.c = c
        self.prefix = prefix
        self.last_id = since
        self.as_json = as_json
        #: a stream was opened once (a later refused connection is then a restart or a
        #: network fault to wait out, not a wrong URL)
        self.connected = False
        #: the last attempt opened a stream (a drop after that starts the backoff over)
        self.opened = False

    def url(self) -> str:
        q = urlencode({"prefix": self.prefix}) if self.prefix else ""
        return self.c.url + "/watch" + (f"?{q}" if q else "")

    def handle(self, ev: dict[str, str]) -> None:
        if "id" in ev:
            self.last_id = ev["id"]
        kind = ev.get("event", "message")
        if "data" not in ev:
            return
        try:
            data = json.loads(ev["data"])
        except ValueError:
            data = {"data": ev["data"]}
        if not isinstance(data, dict):
            data = {"data": data}
        if self.as_json:
            print(json.dumps({"id": ev.get("id"), "event": kind, **data}), flush=True)
        elif kind in ("put", "delete"):
            print(render(kind, data), flush=True)
        if kind == "reset":
            print(f"gossipmgr: watch reset: {data.get('reason', '')}", file=sys.stderr)
        elif kind == "cutoff":
            raise Cutoff(str(data.get("reason", "")))

    def stream_once(self) -> None:
        """One connection, until it ends. Raises CliError for a refusal, Cutoff, or the
        client's transport errors (the caller reconnects)."""
        c = self.c
        self.opened = False
        headers = {"Accept": "text/event-stream"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        timeout = c._httpx.Timeout(READ_TIMEOUT_S, connect=5.0)
        with c.http.stream("GET", self.url(), headers=headers, timeout=timeout) as r:
            if r.status_code >= 400:
                r.read()
                c._decode(r)
            self.connected = self.opened = True
            for ev in sse_events(r.iter_lines()):
                self.handle(ev)


def cmd_watch(c: Client, args: argparse.Namespace) -> int:
    w = Watcher(c, args.prefix or "", args.since, bool(args.json))
    failures = 0
    while True:
        try:
            w.stream_once()
            failures = 0
            why = "the server ended the stream"
        except Cutoff as exc:
            raise CliError(f"watch cut off: {exc}") from None
        except c._httpx.HTTPError as exc:
            if not w.connected and isinstance(exc, c._httpx.ConnectError):
                raise c._unreachable(exc) from None
            why = str(exc) or type(exc).__name__
            if w.opened:  # it was streaming: a new outage, not the same one going on
                failures = 0
        wait = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
        failures += 1
        print(f"gossipmgr: watch: {why}; reconnecting in {wait:g}s", file=sys.stderr)
        time.sleep(wait)


def add_watch_command(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "watch",
        parents=[common],
        help="print every change committed to the instance, as it happens (GET /watch)",
    )
    p.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="e.g. globals/")
    p.add_argument("--since", default=None, metavar="ID", help="resume after this event id")
    p.set_defaults(func=cmd_watch, client_command=True)
