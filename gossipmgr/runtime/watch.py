"""The change feed's trio part: fed by the replica, read by ``GET /watch`` clients.

:class:`ChangeFeed` registers with the replica for local commits (``on_local_write``) and
remote deltas (``on_remote_write``) and records each entry in the pure
:class:`~gossipmgr.core.feed.History`, synchronously and without awaiting anything: the
commit path never waits for a client. Each client is a cursor into that history
(:meth:`ChangeFeed.open`), so a client holds no buffer of its own; its backlog is bounded by
the history, and a client that falls further behind than the history holds is cut off with
a reason (noted when it happens; the client is told when it reads again). Clients sleep on
one event that every append sets; an idle stream gets a comment every ``heartbeat_s`` so
proxies keep it open. A stream is an async generator run by the HTTP server's own request
task: it starts no task, and a client that disconnects cancels it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Protocol

import trio

from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.feed import (
    DEFAULT_HISTORY,
    Cursor,
    History,
    Start,
    comment_frame,
    cutoff_reason,
    event_frame,
    stream_token,
)
from gossipmgr.errors import BadRequest

log = logging.getLogger("gossipmgr.watch")

#: Seconds between comments on an idle stream (proxies close idle connections at 30-60 s).
HEARTBEAT_S = 15.0
#: Most bytes sent to one client in one chunk.
MAX_CHUNK_BYTES = 256 * 1024
#: Bench-only: told each chunk and when it was handed to the server, once the server asks
#: for the next (``gossipmgr.runtime.visibletrace``); None in the product.
chunk_trace: Callable[[bytes, float], None] | None = None


class FeedSource(Protocol):
    """What the feed needs of ``gossipmgr.runtime.replica.Replica``."""

    @property
    def name(self) -> str: ...
    @property
    def incarnation(self) -> int: ...
    def on_local_write(self, listener: Callable[[LWWMap], None]) -> None: ...
    def on_remote_write(self, listener: Callable[[LWWMap], None]) -> None: ...


class Watch:
    """One client's stream (from :meth:`ChangeFeed.open`): iterate :meth:`frames`."""

    def __init__(self, feed: ChangeFeed, prefix: str, start: Start) -> None:
        self.feed = feed
        self.start = start
        self.cursor = Cursor(prefix, start.seq)
        #: why it was cut off ("" while it is not)
        self.reason = ""

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The stream's bytes: ``: watching`` (with the id it starts from), a reset if
        one is due, then the changes as they are committed, heartbeats while idle, and a
        cutoff (which ends it) when the client fell behind what the history holds."""
        feed = self.feed
        feed.watches.add(self)
        try:
            yield comment_frame("watching", self.start.event_id)
            if self.start.reset:
                yield event_frame("reset", {"reason": self.start.reset}, self.start.event_id)
            while True:
                wake = feed.wake
                chunk = self._next_chunk()
                if chunk is None:
                    yield event_frame("cutoff", {"reason": self.cut_off()})
                    return
                if chunk:
                    handed = time.monotonic() if chunk_trace is not None else 0.0
                    yield chunk
                    if chunk_trace is not None:
                        chunk_trace(chunk, handed)
                    continue
                with trio.move_on_after(feed.heartbeat_s) as idle:
                    await wake.wait()
                if idle.cancelled_caught:
                    yield comment_frame("keepalive")
        finally:
            feed.watches.discard(self)

    def lost(self) -> bool:
        """True once a change this client has not been sent left the history."""
        return self.cursor.pos + 1 < self.feed.history.oldest

    def cut_off(self) -> str:
        """Cut this client off (once: counted and logged); the reason it is told."""
        if not self.reason:
            h = self.feed.history
            self.reason = cutoff_reason(self.cursor.behind(h), h.held)
            self.feed.cutoffs += 1
            log.info("watch client (prefix %r) cut off: %s", self.cursor.prefix, self.reason)
        return self.reason

    def _next_chunk(self) -> bytes | None:
        """The frames of the next changes for this client (b"" when there are none yet);
        None when it was cut off."""
        h = self.feed.history
        parts: list[bytes] = []
        size = 0
        while size < MAX_CHUNK_BYTES:
            batch = self.cursor.take(h)
            if batch is None:
                return None if not parts else b"".join(parts)
            if not batch:
                break
            for c in batch:
                parts.append(c.frame)
                size += len(c.frame)
        return b"".join(parts)


class ChangeFeed:
    """The history of changes committed to one replica, and the clients watching it."""

    def __init__(
        self,
        replica: FeedSource,
        *,
        history: int = DEFAULT_HISTORY,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> None:
        self.history = History(stream_token(replica.name, replica.incarnation), history)
        self.heartbeat_s = heartbeat_s
        #: set (and replaced) on every append: what idle clients wait on
        self.wake = trio.Event()
        #: streams open now; streams ever cut off
        self.watches: set[Watch] = set()
        self.cutoffs = 0
        replica.on_local_write(self._record)
        replica.on_remote_write(self._record)

    @property
    def clients(self) -> int:
        return len(self.watches)

    def _record(self, novel: LWWMap) -> None:
        if self.history.append(novel.items()):
            # A client that lost a change is cut off now (counted, logged), even while its
            # connection is blocked: it learns it when it reads again.
            for w in self.watches:
                if not w.reason and w.lost():
                    w.cut_off()
            self.wake.set()
            self.wake = trio.Event()

    def open(self, prefix: str = "", since: str | None = None) -> Watch:
        """A stream of the changes whose key starts with ``prefix``: from now on, or after
        the event ``since`` (a reset first when that history is gone). Raises BadRequest
        (400) when ``since`` is not an event id."""
        try:
            start = self.history.start(since)
        except ValueError as exc:
            raise BadRequest(f"since / Last-Event-ID: {exc}") from None
        return Watch(self, prefix, start)
