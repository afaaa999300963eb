"""Byte transports for gossip: the ``Transport`` seam and its trio UDP implementation.

A transport only moves datagrams (habit 1: hypercorn's ``trio/udp_server.py`` is a thin loop
over a protocol object). It neither encrypts nor parses: the protocol seals with
``gossipmgr.gossip.crypto.Sealer`` and hands bytes here.
``gossipmgr.testing.network.InMemoryTransport``
satisfies the same ``Transport`` protocol with no sockets (memberlist ``mock_transport.go``).

Errors: ``send`` raises ValueError for a datagram over MAX_DATAGRAM (a caller bug). Network
errors on send (ECONNREFUSED from an ICMP port-unreachable on loopback, ENETUNREACH, EPERM
from a firewall...) are counted in ``counters`` as ``send_error:<ERRNO>`` and not raised:
UDP gives no delivery guarantee anyway and the protocol loop must not die of one. The same
for errors surfacing on receive (``recv_error:<ERRNO>``). Inbound datagrams over
MAX_DATAGRAM are dropped and counted (``recv_too_large``): no gossip sender makes them.
"""

from __future__ import annotations

import errno
import socket as _stdsocket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol, runtime_checkable

import trio

from gossipmgr.gossip.datagram import MAX_DATAGRAM, Counters

__all__ = ["MAX_DATAGRAM", "RECV_BUFFER", "Addr", "Transport", "UdpTransport", "open_udp_transport"]

Addr = tuple[str, int]
"""A peer address: (host literal, port)."""

# Read buffer: larger than MAX_DATAGRAM so an oversized datagram is seen whole and refused,
# not silently truncated into something that merely fails authentication.
RECV_BUFFER = 65_536


@runtime_checkable
class Transport(Protocol):
    """What the gossip loop needs from a network: unreliable, unordered datagrams.

    ``send`` refuses > MAX_DATAGRAM with ValueError and never raises for network errors;
    ``try_send`` is ``send`` without waiting: False (nothing sent) when the socket would
    block; ``recv`` waits for the next datagram. ``counters`` counts what was dropped and why.
    """

    counters: Counters

    @property
    def local_addr(self) -> Addr: ...

    async def send(self, data: bytes, addr: Addr) -> None: ...

    def try_send(self, data: bytes, addr: Addr) -> bool: ...

    async def recv(self) -> tuple[bytes, Addr]: ...


# Errors meaning the socket itself is gone: raise instead of counting (counting would spin).
_FATAL = frozenset({errno.EBADF, errno.ENOTSOCK})


def _errname(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


class UdpTransport:
    """A bound trio UDP socket. Made and closed by ``open_udp_transport``, which owns it.

    One task should call ``recv`` (one reader, habit 11); any task may ``send``.
    """

    def __init__(self, sock: _stdsocket.socket) -> None:
        # The stdlib socket, for try_send; trio's wrapper of it (the same object
        # underneath, made non-blocking) for what waits.
        self._std = sock
        self._sock = trio.socket.from_stdlib_socket(sock)
        host, port = self._sock.getsockname()[:2]
        self._local_addr: Addr = (host, port)
        self.counters = Counters()

    @property
    def local_addr(self) -> Addr:
        return self._local_addr

    async def send(self, data: bytes, addr: Addr) -> None:
        """Send one datagram. Raises ValueError if over MAX_DATAGRAM; network errors are
        counted, not raised; trio.ClosedResourceError after close."""
        if len(data) > MAX_DATAGRAM:
            raise ValueError(f"datagram of {len(data)} B exceeds MAX_DATAGRAM={MAX_DATAGRAM}")
        if self._sock.fileno() == -1:
            raise trio.ClosedResourceError("transport is closed")
        try:
            await self._sock.sendto(data, addr)
        except OSError as exc:
            if exc.errno in _FATAL:
                raise trio.ClosedResourceError("transport is closed") from exc
            self.counters.incr(f"send_error:{_errname(exc)}")
            await trio.lowlevel.checkpoint()
            return
        self.counters.incr("sent")

    def try_send(self, data: bytes, addr: Addr) -> bool:
        """Send one datagram now, without a checkpoint: True when sent (or a network error
        counted, as ``send`` counts it), False when the socket would block (nothing sent:
        ``send`` it). No address resolution: ``addr`` is a numeric (host, port), as every
        address the gossip service holds is. Raises like ``send``."""
        if len(data) > MAX_DATAGRAM:
            raise ValueError(f"datagram of {len(data)} B exceeds MAX_DATAGRAM={MAX_DATAGRAM}")
        try:
            self._std.sendto(data, addr)
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno in _FATAL:
                raise trio.ClosedResourceError("transport is closed") from exc
            self.counters.incr(f"send_error:{_errname(exc)}")
            return True
        self.counters.incr("sent")
        return True

    async def recv(self) -> tuple[bytes, Addr]:
        """The next datagram of at most MAX_DATAGRAM bytes and its source address.

        Oversized datagrams and socket errors (e.g. a queued ECONNREFUSED) are counted and
        skipped. Raises trio.ClosedResourceError after close.
        """
        while True:
            if self._sock.fileno() == -1:
                raise trio.ClosedResourceError("transport is closed")
            try:
                data, addr = await self._sock.recvfrom(RECV_BUFFER)
            except OSError as exc:
                if exc.errno in _FATAL:
                    raise trio.ClosedResourceError("transport is closed") from exc
                # A queued ICMP error (ECONNREFUSED) is reported once then cleared; the
                # checkpoint keeps a persistent error from starving other tasks.
                self.counters.incr(f"recv_error:{_errname(exc)}")
                await trio.lowlevel.checkpoint()
                continue
            if len(data) > MAX_DATAGRAM:
                self.counters.incr("recv_too_large")
                continue
            self.counters.incr("received")
            return data, (addr[0], addr[1])

    def close(self) -> None:
        self._sock.close()


#: Socket buffer we ask for. A resync window is ~100 KB and two are in flight; Linux's
#: default 208 KB receive buffer overflowed during 100,000-record catch-ups (lost ENTRIES
#: datagrams, each costing a re-pull of its whole window). As root SO_RCVBUFFORCE passes
#: net.core.rmem_max; otherwise the kernel caps the request there (no error).
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024


def _grow_buffers(sock: _stdsocket.socket) -> None:
    for force, plain in (
        (getattr(_stdsocket, "SO_RCVBUFFORCE", None), _stdsocket.SO_RCVBUF),
        (getattr(_stdsocket, "SO_SNDBUFFORCE", None), _stdsocket.SO_SNDBUF),
    ):
        try:
            if force is None:
                raise PermissionError
            sock.setsockopt(_stdsocket.SOL_SOCKET, force, SOCKET_BUFFER_BYTES)
        except PermissionError:
            sock.setsockopt(_stdsocket.SOL_SOCKET, plain, SOCKET_BUFFER_BYTES)


@asynccontextmanager
async def open_udp_transport(host: str, port: int) -> AsyncIterator[UdpTransport]:
    """Bind a UDP socket to (host, port) and yield a ``UdpTransport``; closed on exit.

    Binding is the caller's choice (tests: "127.0.0.1", 0). Raises OSError if the address
    cannot be resolved or bound (e.g. EADDRINUSE); that is a startup error, not a packet one.
    """
    infos = await trio.socket.getaddrinfo(host, port, type=_stdsocket.SOCK_DGRAM)
    if not infos:  # pragma: no cover - getaddrinfo raises instead
        raise OSError(f"cannot resolve {host!r}")
    family, type_, proto, _, sockaddr = infos[0]
    sock = _stdsocket.socket(family, type_, proto)
    try:
        _grow_buffers(sock)
        sock.bind(sockaddr)  # resolved above: binding a datagram socket does not block
        transport = UdpTransport(sock)
    except BaseException:
        sock.close()
        raise
    with transport._sock:
        yield transport
