"""Serving the app: hypercorn's trio worker in the caller's nursery, and the rule the agent
applies before it binds (:func:`check_listen_policy`)."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from hypercorn.config import Config, Sockets
from hypercorn.trio import serve as hyper_serve
from quart_trio import QuartTrio

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
