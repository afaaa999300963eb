"""The front: the API's listening socket served by our own lean HTTP/1.1 code, which answers
the hottest routes itself and hands every other connection to hypercorn + Quart.

Why (issue 17): a sequential single-key write spent most of its server CPU in hypercorn
and h11 around the route (reading and parsing the request, a task and channels per request,
its answer's events, send lock and cancel scopes), and a start could not answer anything
until the web stack (Quart, flask, werkzeug, jinja2, hypercorn) was imported.

How: :class:`Front` accepts the connections (trio, on the socket ``api.listen`` bound) and
reads each request head with ``api.wire``'s strict parser. ``GET /health``,
``GET /info/globals`` and ``GET|PUT|DELETE /globals/{key}`` are answered inline, in the
connection's task (no task per request, no channels), by ``api.hot.answer``: the functions
Quart's views call, so the answer is the same status, headers and body, errors included
(docs/api.md, "Serving"). Keep-alive and pipelined requests are served in order. At the
first request the front does not answer (another route or method, anything odd:
``api.wire``), the connection is handed, with the bytes already read, to the handler given
by :meth:`Front.hand_to` (hypercorn's connection server over the app,
``api.server.connection_handler``), which owns it from then on, keep-alive included. Until
that handler is given (the web stack still loading), such a connection waits; the front's
own routes are answered from the moment the socket is bound.

Kept from hypercorn: ``TCP_USER_TIMEOUT`` on the connections (``api.listen``), the
keep-alive idle timeout (5 s from the last answer, or the accept, until a request head is
complete), the
``connection: close`` on the 1000th request of a connection, the client's
``Connection: close``. Not from hypercorn, which has none: a body must follow its head
within ``BODY_S`` (30 s), or the request gets a 408 with the reason and the connection
closes. A client that disconnects mid-body is dropped with nothing done; a
request fully read is finished (a write is committed) even if its client has gone. A stop
cancels the front's nursery: every connection closes at once. Plain HTTP only: with TLS the
agent leaves the listening socket to hypercorn, as before. Quart-free (``tests/test_startup``
checks what it imports).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from gossipmgr.api.hot import answer, json_answer
from gossipmgr.api.wire import (
    MAX_REQUESTS,
    Dates,
    FieldsMemo,
    Head,
    parse_head,
    plausible,
    response,
)

if TYPE_CHECKING:
    from gossipmgr.api.context import ApiContext

log = logging.getLogger("gossipmgr.api")

#: How long a connection may sit without a complete request head (hypercorn's
#: ``keep_alive_timeout``, as ``api.server`` sets it).
KEEP_ALIVE_S = 5.0
#: How long a request's body may take to follow its head: then a 408 and a close. Without
#: it a client that declared a body and sent part of it held its connection for good.
BODY_S = 30.0
RECV = 65536

#: What serves a handed-over connection: hypercorn's TCP server on the stream.
Handler = Callable[[trio.abc.HalfCloseableStream], Awaitable[None]]


class Replay(trio.abc.HalfCloseableStream):
    """A connection handed over: the bytes the front read first, then the socket's."""

    def __init__(self, stream: trio.SocketStream, data: bytes) -> None:
        self.stream = stream
        self.socket = stream.socket  # hypercorn reads the addresses from it
        self._data = data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._data:
            n = len(self._data) if max_bytes is None else max_bytes
            out, self._data = self._data[:n], self._data[n:]
            await trio.lowlevel.checkpoint()
            return out
        return bytes(await self.stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.stream.send_eof()

    async def aclose(self) -> None:
        await self.stream.aclose()


class Front:
    """The API's server on ``listener`` over ``ctx``; see the module docstring."""

    def __init__(self, ctx: ApiContext, listener: socket.socket) -> None:
        self.ctx = ctx
        self.listener = listener
        self.dates = Dates()
        self._handler: Handler | None = None
        self._ready = trio.Event()
        #: set once a connection waits for :meth:`hand_to` (the agent's start loads the
        #: web stack at once then)
        self.wanted = trio.Event()
        #: requests answered here, and connections handed over (tests, benchmarks)
        self.answered = 0
        self.handed_over = 0

    def hand_to(self, handler: Handler) -> None:
        """From now on, hand the connections the front does not serve to ``handler``."""
        self._handler = handler
        self._ready.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled (the listening socket stays the caller's to close)."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.listener))
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._serve, [listener])
            task_status.started()

    async def _serve(self, stream: trio.SocketStream) -> None:
        try:
            await _Connection(self, stream).serve()
        except Exception:
            # one connection's failure (ours or hypercorn's) must not stop the server
            log.exception("API connection failed")
        finally:
            await stream.aclose()

    async def hand_over(self, stream: trio.SocketStream, data: bytes) -> None:
        """Give the connection, and ``data`` read from it, to the handler (once there is
        one); it owns the connection from then on."""
        self.wanted.set()
        await self._ready.wait()
        assert self._handler is not None
        self.handed_over += 1
        await self._handler(Replay(stream, data))


class _HandOver(Exception):
    """The connection goes to hypercorn from this request on."""


class _Connection:
    """One connection while the front serves it."""

    def __init__(self, front: Front, stream: trio.SocketStream) -> None:
        self.front = front
        self.stream = stream
        self.buf = b""
        self.served = 0
        self.memo = FieldsMemo()

    async def serve(self) -> None:
        try:
            await self._serve()
        except _HandOver:
            await self.front.hand_over(self.stream, self.buf)

    async def _serve(self) -> None:
        while True:
            head = await self._head()
            if head is None:
                return  # closed by the client, or idle
            self.buf = self.buf[head.size :]
            body = None
            with trio.move_on_after(BODY_S) as late:
                body = await self._body(head.length)
            if late.cancelled_caught:
                await self._late()
                return
            if body is None:
                return  # the client went away mid-body: nothing was done
            if not await self._answer(head, body):
                return

    async def _recv(self, max_bytes: int = RECV) -> bytes:
        try:
            return bytes(await self.stream.receive_some(max_bytes))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""

    async def _head(self) -> Head | None:
        """The next request head the front answers (None: the connection closed or stayed
        idle too long); raises _HandOver for one it does not answer."""
        deadline = trio.current_time() + KEEP_ALIVE_S
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                head = parse_head(self.buf, end, self.memo)
                if head is None:
                    raise _HandOver()
                return head
            if self.buf and not plausible(self.buf):
                raise _HandOver()
            data = b""
            with trio.move_on_at(deadline):
                data = await self._recv()
            if not data:
                return None
            self.buf += data

    async def _body(self, length: int) -> bytes | None:
        while len(self.buf) < length:
            data = await self._recv(max(RECV, length - len(self.buf)))
            if not data:
                return None
            self.buf += data
        body, self.buf = self.buf[:length], self.buf[length:]
        return body

    async def _late(self) -> None:
        """The body did not follow its head within BODY_S: 408 with the reason, and close
        (what was read is dropped: nothing was done)."""
        why = f"the request's body did not arrive within {BODY_S:g} s of its head"
        status, data, headers = json_answer(408, {"error": why}, {})
        out = response(status, data, headers, self.front.dates.now(), client_close=False, last=True)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(out)

    async def _answer(self, head: Head, body: bytes) -> bool:
        """Answer ``head``; whether the connection stays open."""
        front = self.front
        status, data, headers = await answer(
            front.ctx,
            head.method,
            head.path,
            head.authorization,
            head.content_type,
            body,
        )
        self.served += 1
        front.answered += 1
        last = self.served >= MAX_REQUESTS
        out = response(status, data, headers, front.dates.now(), client_close=head.close, last=last)
        try:
            await self.stream.send_all(out)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return not (head.close or last)
