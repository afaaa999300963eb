"""Serving the app: hypercorn's trio worker in the caller's nursery, and the rule the agent
applies before it binds (:func:`check_listen_policy`)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import h11
import hypercorn.protocol
import trio
from hypercorn.config import Config, Sockets
from hypercorn.events import RawData
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.trio import serve as hyper_serve
from hypercorn.typing import H11SendableEvent
from quart_trio import QuartTrio

from gossipmgr.api import idletimer
from gossipmgr.errors import ConfigError


def check_listen_policy(host: str, token: str | None, insecure: bool) -> None:
    """Refuse to serve the API without a token on a non-loopback address.

    Raises ConfigError unless ``host`` is a loopback address (or ``localhost``), a token is
    set, or ``insecure`` is true. An empty host or ``0.0.0.0``/``::`` listen everywhere and
    so count as non-loopback.
    """
    if token or insecure:
        return
    h = host.strip("[]")
    if h == "localhost":
        return
    try:
        if ipaddress.ip_address(h).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(
        f"refusing to serve the API on {host or 'all addresses'} without a token: "
        "drop --no-auth (a token is then required) or also pass --insecure"
    )


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


class _OneSendH11(H11Protocol):
    """hypercorn's HTTP/1.1 protocol, writing a response of known length in one ``send()``.

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


#: A connection whose peer acknowledges none of our data for this long (a client that stopped
#: reading: its receive window stays shut) is aborted by the kernel (``TCP_USER_TIMEOUT``).
#: hypercorn's writes cannot be cancelled, so without it such a client holds its request, a
#: ``GET /watch`` stream for one, and the server's stop with it, forever (docs/api.md,
#: "Serving"). Read when the listening sockets are made.
SEND_STALL_TIMEOUT_MS = 30_000


class _Config(Config):
    """hypercorn's Config, its TCP listeners set to abort stalled connections (their
    accepted sockets inherit the option)."""

    def create_sockets(self) -> Sockets:
        sockets = super().create_sockets()
        opt = getattr(socket, "TCP_USER_TIMEOUT", None)
        for s in (*sockets.secure_sockets, *sockets.insecure_sockets):
            if opt is not None and s.family in (socket.AF_INET, socket.AF_INET6):
                s.setsockopt(socket.IPPROTO_TCP, opt, SEND_STALL_TIMEOUT_MS)
        return sockets


async def serve(
    app: QuartTrio,
    host: str,
    port: int,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 2.0,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` with hypercorn until ``shutdown_trigger`` returns (or cancellation).

    Calls ``task_status.started(url)`` with the bound base URL (``http://127.0.0.1:PORT``,
    ``https://...`` with TLS), so ``port=0`` works. TLS is on when both ``certfile`` and
    ``keyfile`` are given; one without the other raises ConfigError. The caller owns the
    nursery and so the server's lifetime.
    """
    if (certfile is None) != (keyfile is None):
        raise ConfigError("TLS needs both a certificate file and a key file")
    _install_one_send()
    idletimer.install()
    cfg = _Config()
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    cfg.bind = [f"{h}:{port}"]
    cfg.certfile = certfile
    cfg.keyfile = keyfile
    cfg.graceful_timeout = graceful_timeout
    cfg.accesslog = None
    cfg.errorlog = logging.getLogger("gossipmgr.api.hypercorn")
    cfg.keep_alive_timeout = 5.0

    async def run(task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        await hyper_serve(
            _ShieldedSend(app),
            cfg,
            shutdown_trigger=shutdown_trigger,
            task_status=task_status,
            mode="asgi",
        )

    async with trio.open_nursery() as nursery:
        binds: list[str] = await nursery.start(run)
        task_status.started(binds[0])
