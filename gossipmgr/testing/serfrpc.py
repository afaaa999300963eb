"""A scripted Serf RPC server on loopback: replays records in an order a test chooses.

The real ``serf agent`` sends some record sequences only in races a test cannot force, e.g.
the empty records its query stream sends after Serf closed the query's channels and before
its own deadline timer fires. :func:`scripted_serf_rpc` speaks the agent's framing
(:mod:`gossipmgr.serf.rpc`'s tables) to a real :class:`~gossipmgr.serf.client.SerfClient`
over a real TCP connection, and answers:

- ``handshake`` and ``auth``: an empty success header;
- ``query``: the ack header, then each scripted record as header + body, in order;
- ``respond``, ``event``, ``stop``: an empty success header;
- anything else: ``Unsupported command`` (as the agent's dispatcher does).

It binds 127.0.0.1 on a port the kernel picks; the listener and every connection close when
the ``async with`` block exits.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import msgpack
import trio

from gossipmgr.serf.rpc import REQUEST_BODY

__all__ = ["scripted_serf_rpc"]

_EMPTY_REPLY = frozenset({"handshake", "auth", "respond", "event", "stop"})


def _pack(*objs: object) -> bytes:
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in objs)


async def _requests(stream: trio.SocketStream) -> AsyncIterator[tuple[str, int]]:
    """Yield ``(command, seq)`` per request, its body (if any) read and discarded."""
    unpacker = msgpack.Unpacker(raw=False)
    want_body = False
    header: dict[str, Any] = {}
    while data := await stream.receive_some(65536):
        unpacker.feed(data)
        for obj in unpacker:
            if want_body:
                want_body = False
                yield header["Command"], header["Seq"]
                continue
            header = obj
            if header["Command"] in REQUEST_BODY:
                want_body = True
            else:
                yield header["Command"], header["Seq"]


def _reply(command: str, seq: int, query_records: Sequence[Mapping[str, Any]]) -> bytes:
    header = {"Seq": seq, "Error": ""}
    if command == "query":
        out: list[object] = [header]
        for rec in query_records:
            out += [header, dict(rec)]
        return _pack(*out)
    if command in _EMPTY_REPLY:
        return _pack(header)
    return _pack({"Seq": seq, "Error": "Unsupported command"})


async def _serve(stream: trio.SocketStream, query_records: Sequence[Mapping[str, Any]]) -> None:
    async with stream:
        try:
            async for command, seq in _requests(stream):
                await stream.send_all(_reply(command, seq, query_records))
        except trio.BrokenResourceError:
            pass  # the client went away


@asynccontextmanager
async def scripted_serf_rpc(query_records: Sequence[Mapping[str, Any]]) -> AsyncIterator[int]:
    """Serve the script on 127.0.0.1; yield the port. Every ``query`` gets ``query_records``.

    An exception from the block propagates as itself, not wrapped in an ExceptionGroup.
    """
    body_exc: BaseException | None = None
    async with trio.open_nursery() as nursery:
        serve = functools.partial(
            trio.serve_tcp, lambda s: _serve(s, query_records), 0, host="127.0.0.1"
        )
        listeners = await nursery.start(serve)
        port: int = listeners[0].socket.getsockname()[1]
        try:
            yield port
        except BaseException as exc:
            body_exc = exc
        finally:
            nursery.cancel_scope.cancel()
    if body_exc is not None:
        try:
            raise body_exc
        finally:
            body_exc = None
