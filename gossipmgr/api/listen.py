"""The API's listening socket, made before the web stack is loaded, and the rule the agent
applies before it binds (:func:`check_listen_policy`).

Light on purpose (the standard library only): the agent binds its API address as soon as
its data dir is restored, so the URL it advertises (Serf's ``api`` tag) is known at once and
a request that arrives while Quart and hypercorn are still being imported waits in the
socket's backlog and is answered once they serve (docs/design.md, "Start and stop").
"""

from __future__ import annotations

import ipaddress
import socket

from gossipmgr.errors import ConfigError

#: A connection whose peer acknowledges none of our data for this long (a client that stopped
#: reading: its receive window stays shut) is aborted by the kernel (``TCP_USER_TIMEOUT``).
#: hypercorn's writes cannot be cancelled, so without it such a client holds its request, a
#: ``GET /watch`` stream for one, and the server's stop with it, forever (docs/api.md,
#: "Serving"). Read when a listening socket is made; accepted sockets inherit it.
SEND_STALL_TIMEOUT_MS = 30_000
#: Connections the kernel queues for us before the server accepts them (hypercorn's default).
BACKLOG = 100


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


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` and listening (``port`` 0: any free port), set
    up as hypercorn sets up the sockets it makes (no Nagle, address reuse, non-blocking,
    inheritable), its connections aborted when a client stops reading
    (:func:`set_stall_timeout`). :func:`gossipmgr.api.serve` serves on it."""
    h = host.strip("[]")
    sock = socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        set_stall_timeout(sock)
        sock.bind((h, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock


def set_stall_timeout(sock: socket.socket) -> None:
    """Abort ``sock``'s connections (and those it accepts) once nothing sent was acknowledged
    for :data:`SEND_STALL_TIMEOUT_MS` (where the system has ``TCP_USER_TIMEOUT``)."""
    opt = getattr(socket, "TCP_USER_TIMEOUT", None)
    if opt is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, opt, SEND_STALL_TIMEOUT_MS)


def listener_url(sock: socket.socket, tls: bool) -> str:
    """The base URL of the API on ``sock`` (``http://127.0.0.1:PORT``, ``https://[::1]:PORT``),
    as hypercorn reports the sockets it binds."""
    host, port = sock.getsockname()[:2]
    h = f"[{host}]" if sock.family == socket.AF_INET6 else host
    return f"{'https' if tls else 'http'}://{h}:{port}"
