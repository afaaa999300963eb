"""Serving the app: hypercorn's trio worker in the caller's nursery, on a socket bound
beforehand (``api.listen``) or one it binds; :func:`check_listen_policy` (the rule the agent
applies before it binds) lives in ``api.listen`` and is re-exported here."""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import h11
import hypercorn.protocol
import hypercorn.trio.run
import trio
from hypercorn.config import Config, Sockets
from hypercorn.events import Closed, Event, RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import serve as hyper_serve
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.statsd import StatsdLogger
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState, H11SendableEvent, LifespanState
from hypercorn.utils import wrap_app

from gossipmgr.api import idletimer, listen
from gossipmgr.api.front import KEEP_ALIVE_S, Handler
from gossipmgr.api.listen import check_listen_policy
from gossipmgr.errors import ConfigError

if TYPE_CHECKING:
    from quart_trio import QuartTrio

__all__ = ["check_listen_policy", "connection_handler", "serve"]

#: How long a stop lets a send to a client go on (:class:`_StopBound`).
STOP_SEND_GRACE_S = 1.0


class _ShieldedSend:
    """ASGI wrapper shielding ``send`` from cancellation (docs/api.md, "Serving").

    Without it, hypercorn's trio worker loses the idle timer of a keep-alive connection after
    its first request (the cancel of a send half-way leaves the connection in a state where
    no timeout applies), and shutdown then waits ``graceful_timeout`` for idle clients.
    Shielding costs a few percent of requests/s; it makes shutdown take ~0.1 s.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def shielded_send(message: Any) -> None:
            with trio.CancelScope(shield=True):
                await send(message)

        await self.app(scope, receive, shielded_send)


class _StopBound:
    """The end a stop puts to the sends of one server's connections.

    hypercorn writes to a connection with its send shielded from cancellation (and the app's
    sends are shielded too: :class:`_ShieldedSend`), so a send to a client that stopped
    reading (its receive window shut) held a stop until the kernel aborted the connection
    (``TCP_USER_TIMEOUT``, 30 s). From a stop on, each send in flight, and any begun later,
    gets :data:`STOP_SEND_GRACE_S` (after hypercorn's ``graceful_timeout`` when it stops
    gracefully), then fails as a broken connection (:class:`_BoundedStream`)."""

    def __init__(self) -> None:
        self.deadline = math.inf
        self.scopes: set[trio.CancelScope] = set()

    @contextmanager
    def scope(self) -> Iterator[trio.CancelScope]:
        with trio.CancelScope(deadline=self.deadline) as scope:
            self.scopes.add(scope)
            try:
                yield scope
            finally:
                self.scopes.discard(scope)

    def bound(self, grace: float) -> None:
        """Every send in flight, and any begun later, ends within ``grace`` seconds."""
        self.deadline = min(self.deadline, trio.current_time() + grace)
        for scope in self.scopes:
            scope.deadline = self.deadline

    async def at_stop(self) -> None:
        """Wait for the stop (this task's cancellation); then :meth:`bound` the sends."""
        try:
            await trio.sleep_forever()
        finally:
            self.bound(STOP_SEND_GRACE_S)


class _BoundedStream:
    """A connection's stream whose ``send_all`` ends when its server's stop says so: it is
    called inside hypercorn's shield, where only a scope of its own can end it. Everything
    else (TLS's handshake and ALPN, the socket, receive, close) is the stream's own."""

    def __init__(self, stream: Any, stop: _StopBound) -> None:
        self._stream = stream
        self._stop = stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._stop.scope() as scope:
            await self._stream.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("the server stopped during this send")


class _TCPServer(TCPServer):
    """hypercorn's per-connection server, its stream's sends bounded by its server's stop
    (the :class:`_Config` it serves with)."""

    def __init__(self, app: Any, config: Config, context: Any, state: Any, stream: Any) -> None:
        if isinstance(config, _Config):
            stream = _BoundedStream(stream, config.stop)
        super().__init__(app, config, context, state, stream)


class _Refused(Exception):
    """An HTTP/2 preface was answered with a 505 and the connection closed."""


class _OneSendH11(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, writing a response of known length in one ``send()``,
    and never switching to HTTP/2 (docs/api.md, "Serving").

    HTTP/1.1 only: hypercorn takes an ``Upgrade: h2c`` request without a body, or the HTTP/2
    preface (``PRI * HTTP/2.0``), to its HTTP/2 protocol, where a client that leaves (or
    half-closes) before its first answer is sent leaves that answer's task waiting forever
    for a sender task that has ended (``StreamBuffer.drain``); the send being shielded
    (:class:`_ShieldedSend`), a stop then hangs. Here the ``Upgrade: h2c`` is ignored (the
    request is answered in HTTP/1.1, as hypercorn answers one with a body) and the preface
    gets a ``505`` and a close. ALPN offers only ``http/1.1`` (:func:`_config`). The API has
    no WebSocket routes either: a WebSocket handshake's ``Upgrade`` is ignored the same way.

    hypercorn writes each h11 event on its own: the head, the body, then the (empty) end of
    a message whose length the head declares: two ``send()`` calls and a third, empty,
    trip through the connection's send lock per answer. On loopback each ``send()`` runs
    the whole TCP path and wakes the client, so for a small answer (a single-key write's)
    the second costs nearly as much as the first. Here the head of a response that declares
    its Content-Length is held and written together with the first bytes that follow it
    (its body, or its end when it has none: a HEAD, an empty answer), and an end of message
    that adds no bytes is not written at all. Streamed answers (chunked: ``GET /watch``,
    followed job logs) are written as hypercorn writes them, event by event.
    """

    _held = b""

    async def handle(self, event: Event) -> None:
        try:
            await super().handle(event)
        except _Refused:
            return

    async def _check_protocol(self, event: h11.Request) -> None:
        if event.method == b"PRI" and event.target == b"*" and event.http_version == b"2.0":
            await self._send_error_response(505)
            await self.send(Closed())
            raise _Refused()

    async def _create_stream(self, request: h11.Request) -> None:
        # No WebSocket routes: an ``Upgrade`` is dropped before hypercorn looks for a
        # WebSocket handshake, so the request is answered as the plain HTTP request it also
        # is (hypercorn's WebSocket stream reached the app's HTTP error handler: a 500).
        if any(name == b"upgrade" for name, _ in request.headers):
            headers = [(n, v) for n, v in request.headers if n != b"upgrade"]
            request = h11.Request(
                method=request.method,
                target=request.target,
                headers=headers,
                http_version=request.http_version,
            )
        await super()._create_stream(request)

    async def _send_h11_event(self, event: H11SendableEvent) -> None:
        try:
            data = self.connection.send(event)
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            return
        if isinstance(event, h11.Response) and any(
            name.lower() == b"content-length" for name, _ in event.headers
        ):
            self._held = data
            return
        if self._held:
            data, self._held = self._held + data, b""
        if data or not isinstance(event, h11.EndOfMessage):
            await self.send(RawData(data=data))


def _install_one_send() -> None:
    """Make hypercorn's connections speak HTTP/1.1 through :class:`_OneSendH11`.

    hypercorn has no setting for its protocol classes: its ``ProtocolWrapper`` builds one by
    the name it imports, ``hypercorn.protocol.H11Protocol``, so that name is pointed at the
    subclass (every hypercorn server in the process is this API's). Idempotent."""
    setattr(hypercorn.protocol, "H11Protocol", _OneSendH11)  # noqa: B010 (not exported)
    # and the TLS server's connections (hyper_serve builds them by this name) are bounded
    setattr(hypercorn.trio.run, "TCPServer", _TCPServer)  # noqa: B010


class _Config(Config):
    """hypercorn's Config, its TCP listeners set to abort stalled connections (their
    accepted sockets inherit the option); ``listener``: a socket bound beforehand
    (``api.listen.bind_listener``) to serve on instead of binding ``bind``."""

    listener: socket.socket | None = None
    #: what ends the sends at a stop (set per server by :func:`_config`)
    stop: _StopBound

    def create_sockets(self) -> Sockets:
        if self.listener is None:
            sockets = super().create_sockets()
        else:
            tls = [self.listener] if self.ssl_enabled else []
            plain = [] if self.ssl_enabled else [self.listener]
            sockets = Sockets(secure_sockets=tls, insecure_sockets=plain, quic_sockets=[])
        for s in (*sockets.secure_sockets, *sockets.insecure_sockets):
            listen.set_stall_timeout(s)
        return sockets


def _config() -> _Config:
    """The API's hypercorn settings (both ways of serving), its classes installed."""
    _install_one_send()
    idletimer.install()
    cfg = _Config()
    cfg.stop = _StopBound()
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("gossipmgr.api.hypercorn")
    cfg.keep_alive_timeout = KEEP_ALIVE_S
    cfg.alpn_protocols = ["http/1.1"]  # no HTTP/2 (_OneSendH11)
    return cfg


async def connection_handler(
    app: QuartTrio, *, task_status: trio.TaskStatus[Handler] = trio.TASK_STATUS_IGNORED
) -> None:
    """hypercorn serving ``app`` on connections the front hands over (``api.front``):
    runs the app's lifespan, then calls ``task_status.started(handler)``; ``handler(stream)``
    serves one connection (hypercorn's own TCP server, as its trio worker runs it per
    accepted connection, on the stream given: HTTP/1.1 with the fast path, a websocket
    upgrade; never HTTP/2: :class:`_OneSendH11`) until it closes. Runs until cancelled."""
    cfg = _config()
    cfg.set_statsd_logger_class(StatsdLogger)
    asgi = wrap_app(_ShieldedSend(app), cfg.wsgi_max_body_size, "asgi")
    context = WorkerContext(None)
    state: LifespanState = {}
    lifespan = Lifespan(asgi, cfg, state)

    async def handler(stream: trio.abc.HalfCloseableStream) -> None:
        server = _TCPServer(asgi, cfg, context, ConnectionState(state.copy()), stream)
        await server.run()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cfg.stop.at_stop)
        await nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        task_status.started(handler)
        await trio.sleep_forever()


async def serve(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 2.0,
    sock: socket.socket | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn until ``shutdown_trigger`` returns (or cancellation).

    Calls ``task_status.started(url)`` with the bound base URL (``http://127.0.0.1:PORT``,
    ``https://...`` with TLS), so ``port=0`` works. ``sock``: a listening socket bound
    beforehand (``api.listen.bind_listener``) to serve on, instead of binding
    ``host:port``; the server owns it from then on. TLS is on when both ``certfile`` and
    ``keyfile`` are given; one without the other raises ConfigError. The caller owns the
    nursery and so the server's lifetime.
    """
    if (certfile is None) != (keyfile is None):
        raise ConfigError("TLS needs both a certificate file and a key file")
    cfg = _config()
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    cfg.bind = [f"{h}:{port}"]
    cfg.certfile = certfile
    cfg.keyfile = keyfile
    cfg.graceful_timeout = graceful_timeout
    cfg.listener = sock

    trigger: Callable[[], Awaitable[None]] | None = None
    if shutdown_trigger is not None:
        wait_stop = shutdown_trigger

        async def graceful() -> None:  # hypercorn's graceful stop; then the sends' grace
            await wait_stop()
            cfg.stop.bound(graceful_timeout + STOP_SEND_GRACE_S)

        trigger = graceful

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await hyper_serve(
            _ShieldedSend(app),
            cfg,
            shutdown_trigger=trigger,
            task_status=task_status,
            mode="asgi",
        )
        nursery.cancel_scope.cancel()  # hypercorn is done: so is the sends' stop watch

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cfg.stop.at_stop)
        binds: list[str] = await nursery.start(run)
        task_status.started(binds[0])
