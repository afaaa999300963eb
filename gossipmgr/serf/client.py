"""A trio client for the Serf agent's RPC protocol.

One reader task owns the socket's receive side and dispatches frames by seq into per-seq
memory channels; writers share one lock around ``send_all`` (serf ``client/rpc_client.go``
``listen``/``dispatch``; trio-websocket's ``_reader_task``). Framing rules live in
:mod:`gossipmgr.serf.rpc`.

Ownership: :func:`open_serf_client` owns the TCP connection and the reader task; both end
when its ``async with`` block exits. A lost connection (EOF, reset, desync) is recorded once
and raised as :class:`~gossipmgr.errors.SerfUnavailable` (or ``SerfProtocolError`` on a
desync) in every waiter, current and future: nothing hangs.

The agent handles each connection serially (docs/serf.md, "RPC protocol"): a slow ``join``,
``leave`` or key operation delays every later reply on the same connection, and a busy
stream competes with replies. Open a separate client for those (:func:`serf_connector`
makes a factory for that).
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Final

import trio

from gossipmgr.errors import SerfError, SerfProtocolError, SerfUnavailable
from gossipmgr.serf.rpc import (
    Frame,
    MemberRecord,
    SerfRpcProtocol,
    error_for,
    normalize_member,
    normalize_record,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "RecordStream",
    "SerfClient",
    "normalize_member",
    "open_serf_client",
    "serf_connector",
]

log = logging.getLogger("gossipmgr.serf")

#: Default per-request deadline. Local RPC replies in milliseconds; 5 s only trips on a
#: wedged agent.
DEFAULT_TIMEOUT: Final = 5.0
#: Floor for commands that are slow by design: ``leave`` replies after 1.1-1.7 s and a
#: ``join`` or key operation waits on the network (docs/serf.md, "Measured timings").
SLOW_TIMEOUT: Final = 15.0
#: Records buffered per stream before we drop (the agent itself buffers 512 per stream).
STREAM_BUFFER: Final = 512
_READ_SIZE: Final = 65536


class RecordStream:
    """Async iterator over the records of one ``stream``/``monitor``/``query`` seq.

    Iteration ends normally when the stream is finished (``done`` query record, or the
    stream was stopped); it raises ``SerfUnavailable`` if the connection is lost first.
    """

    def __init__(self, client: SerfClient, seq: int, receive: trio.MemoryReceiveChannel[Frame]):
        self._client = client
        self.seq = seq
        self._receive = receive

    def __aiter__(self) -> RecordStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            frame = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self._client._raise_if_broken()
            raise StopAsyncIteration from None
        return normalize_record(frame.body or {})

    async def aclose(self) -> None:
        """Stop listening locally (does not send ``stop``; see :meth:`SerfClient.stream`)."""
        self._client._drop_waiter(self.seq)
        await self._receive.aclose()


class SerfClient:
    """An open, handshaken Serf RPC connection. Build it with :func:`open_serf_client`.

    Every method raises ``SerfError`` when the agent answers with an error string
    (``SerfAuthError`` for auth ones) and ``SerfUnavailable`` when the connection is lost or
    the reply misses its deadline. The timeout applies per request.
    """

    def __init__(self, stream: trio.SocketStream, *, timeout: float, name: str) -> None:
        self._stream = stream
        self._proto = SerfRpcProtocol()
        self._send_lock = trio.Lock()
        self._waiters: dict[int, trio.MemorySendChannel[Frame]] = {}
        self._broken: SerfError | None = None
        self.timeout = timeout
        self.name = name
        #: Records dropped because a stream consumer fell behind (logged as well).
        self.dropped_records = 0

    def __repr__(self) -> str:
        return f"<SerfClient {self.name}{' broken' if self._broken else ''}>"

    @property
    def broken(self) -> bool:
        """True once the connection is lost; every call then raises ``SerfUnavailable``."""
        return self._broken is not None

    # -- plumbing -------------------------------------------------------------------------

    def _raise_if_broken(self) -> None:
        if self._broken is not None:
            # A fresh instance per waiter: one exception object raised in many tasks would
            # pile up their tracebacks.
            raise type(self._broken)(str(self._broken))

    def _mark_broken(self, exc: SerfError) -> None:
        if self._broken is None:
            self._broken = exc
            log.debug("%r: connection lost: %s", self, exc)
        for send in self._waiters.values():
            send.close()
        self._waiters.clear()

    def _drop_waiter(self, seq: int) -> None:
        send = self._waiters.pop(seq, None)
        if send is not None:
            send.close()

    async def _reader(self) -> None:
        """The only receiver. Never raises: failures mark the client broken."""
        try:
            while True:
                data = await self._stream.receive_some(_READ_SIZE)
                if not data:
                    raise SerfUnavailable(f"{self.name}: serf agent closed the RPC connection")
                self._proto.receive_data(data)
                for frame in self._proto.next_frames():
                    self._dispatch(frame)
        except SerfError as exc:
            self._mark_broken(exc)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._mark_broken(SerfUnavailable(f"{self.name}: RPC connection lost: {exc!r}"))
        except trio.Cancelled:
            self._mark_broken(SerfUnavailable(f"{self.name}: RPC client closed"))
            raise

    def _dispatch(self, frame: Frame) -> None:
        send = self._waiters.get(frame.seq)
        if send is None or frame.retired:
            return  # the caller gave up (cancelled / timed out) or a late stream record
        try:
            send.send_nowait(frame)
        except trio.WouldBlock:
            # Like the agent's own 512-event buffer: drop rather than stall every other seq.
            self.dropped_records += 1
            log.warning(
                "%r: dropping %s record for seq %s (consumer too slow)",
                self,
                frame.command,
                frame.seq,
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        if frame.final:
            self._drop_waiter(frame.seq)

    async def _send(
        self, command: str, body: Mapping[str, Any] | None, buffer: int
    ) -> tuple[int, trio.MemoryReceiveChannel[Frame]]:
        self._raise_if_broken()
        seq, data = self._proto.send(command, body)
        send, receive = trio.open_memory_channel[Frame](buffer)
        self._waiters[seq] = send
        try:
            async with self._send_lock:
                # Shielded: a write cut in half by cancellation would desync the agent's
                # decoder for every later request on this connection.
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(self.timeout) as scope:
                        await self._stream.send_all(data)
                if scope.cancelled_caught:
                    raise SerfUnavailable(f"{self.name}: RPC write timed out")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            err = SerfUnavailable(f"{self.name}: RPC connection lost: {exc!r}")
            self._mark_broken(err)
            raise err from exc
        except SerfUnavailable as exc:
            self._mark_broken(exc)
            raise
        return seq, receive

    async def _first(
        self, command: str, receive: trio.MemoryReceiveChannel[Frame], seq: int, wait_s: float
    ) -> Frame:
        try:
            with trio.fail_after(wait_s):
                return await receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            self._raise_if_broken()
            raise SerfProtocolError(f"{self.name}: {command} ended without a reply")
        except trio.TooSlowError:
            self._drop_waiter(seq)
            raise SerfUnavailable(f"{self.name}: no reply to {command} within {wait_s:g} s")

    async def call(
        self, command: str, body: Mapping[str, Any] | None = None, *, wait_s: float | None = None
    ) -> dict[str, Any]:
        """Send one non-streaming request; return its body (``{}`` when none follows).

        Raises the mapped ``SerfError`` when ``Error`` is not empty.
        """
        seq, receive = await self._send(command, body, 1)
        try:
            frame = await self._first(command, receive, seq, wait_s or self.timeout)
        finally:
            self._drop_waiter(seq)
        if frame.error:
            raise error_for(command, frame.error)
        return frame.body or {}

    async def open_records(
        self, command: str, body: Mapping[str, Any], *, wait_s: float | None = None
    ) -> RecordStream:
        """Start a ``stream``/``monitor``/``query`` and wait for its ack.

        The returned iterator yields record bodies. Raises the mapped ``SerfError`` if the
        ack carries an error (``Invalid event filter``...).
        """
        seq, receive = await self._send(command, body, STREAM_BUFFER)
        try:
            frame = await self._first(command, receive, seq, wait_s or self.timeout)
        except BaseException:
            self._drop_waiter(seq)
            self._proto.retire(seq)
            raise
        if frame.error:
            raise error_for(command, frame.error)
        return RecordStream(self, seq, receive)

    # -- commands -------------------------------------------------------------------------

    async def handshake(self) -> None:
        await self.call("handshake", {"Version": 1})

    async def auth(self, key: str) -> None:
        await self.call("auth", {"AuthKey": key})

    async def members(self) -> list[MemberRecord]:
        """All members the agent knows, ``Addr`` as an IP string, in the agent's (random)
        order: sort them yourself (docs/serf.md, "RPC protocol")."""
        body = await self.call("members")
        return [normalize_member(m) for m in body.get("Members") or [] if isinstance(m, dict)]

    async def members_filtered(
        self,
        tags: Mapping[str, str] | None = None,
        status: str | None = None,
        name: str | None = None,
    ) -> list[MemberRecord]:
        """Members matching anchored regexes. An invalid regex makes the agent close the
        connection without a reply: that raises ``SerfUnavailable`` and breaks this client."""
        req = {"Tags": dict(tags or {}), "Status": status or "", "Name": name or ""}
        body = await self.call("members-filtered", req)
        return [normalize_member(m) for m in body.get("Members") or [] if isinstance(m, dict)]

    async def tags(self, set: Mapping[str, str] | None = None, delete: Sequence[str] = ()) -> None:
        """Merge ``set`` into this agent's tags and delete the keys in ``delete``."""
        await self.call("tags", {"Tags": dict(set or {}), "DeleteTags": list(delete)})

    async def join(self, addrs: Sequence[str], replay: bool = False) -> int:
        """Join the agents at ``addrs`` ("ip:port"); return how many answered.

        Slow (network round trips): prefer a dedicated client. Raises ``SerfError`` when
        none could be joined.
        """
        body = await self.call(
            "join",
            {"Existing": list(addrs), "Replay": replay},
            wait_s=max(self.timeout, SLOW_TIMEOUT),
        )
        num = body.get("Num", 0)
        return num if isinstance(num, int) else 0

    async def leave(self) -> None:
        """Leave the cluster gracefully; the agent then shuts down and closes the connection.

        Takes 1-2 s: use a dedicated client, which is unusable afterwards.
        """
        await self.call("leave", wait_s=max(self.timeout, SLOW_TIMEOUT))

    async def force_leave(self, node: str, prune: bool = False) -> None:
        """Mark a failed ``node`` as left. An unknown node is not an error for the agent."""
        body: dict[str, Any] = {"Node": node}
        if prune:  # only sent when asked: older agents may not know the field
            body["Prune"] = True
        await self.call("force-leave", body)

    async def event(self, name: str, payload: bytes = b"", coalesce: bool = True) -> None:
        """Fire a user event. Name+payload must fit about 480 bytes (docs/serf.md, "Limits")."""
        await self.call("event", {"Name": name, "Payload": bytes(payload), "Coalesce": coalesce})

    @asynccontextmanager
    async def stream(self, filter: str = "*") -> AsyncIterator[RecordStream]:
        """``async with c.stream("member-join,user") as events: async for ev in events``.

        Event dicts carry ``Event`` plus its fields; member events have normalised
        ``Members``. Sends ``stop`` on exit. Member events lag ``members`` by about 1 s,
        and a busy stream delays replies to other requests: use a dedicated client.
        """
        records = await self.open_records("stream", {"Type": filter})
        try:
            yield records
        finally:
            await self._stop(records)

    @asynccontextmanager
    async def monitor(self, log_level: str = "INFO") -> AsyncIterator[RecordStream]:
        """Like :meth:`stream`, for the agent's log lines (``{"Log": str}``)."""
        records = await self.open_records("monitor", {"LogLevel": log_level})
        try:
            yield records
        finally:
            await self._stop(records)

    async def _stop(self, records: RecordStream) -> None:
        self._drop_waiter(records.seq)
        if self.broken:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(self.timeout):
            try:
                await self.call("stop", {"Stop": records.seq})
            except SerfError as exc:
                log.debug("%r: stop %s failed: %s", self, records.seq, exc)

    async def query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        filter_nodes: Sequence[str] = (),
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        relay_factor: int = 0,
        timeout_s: float = 0.0,
    ) -> RecordStream:
        """Start a query; iterate the result for ``{"Type": "ack"|"response", "From",
        "Payload"}`` records. Iteration ends after the agent's ``done`` record.

        ``timeout_s`` 0 means the agent's default (1.6 s local, 3.2 s LAN profile).
        """
        if not 0 <= relay_factor <= 255:
            raise ValueError("relay_factor must fit a uint8")
        body = {
            "Name": name,
            "Payload": bytes(payload),
            "FilterNodes": list(filter_nodes),
            "FilterTags": dict(filter_tags or {}),
            "RequestAck": request_ack,
            "RelayFactor": relay_factor,
            "Timeout": int(timeout_s * 1e9),
        }
        records = await self.open_records("query", body)
        return _DoneFilter(records)

    async def respond(self, id: int, payload: bytes = b"") -> None:
        """Answer query ``id`` (from a ``query`` stream record on THIS connection)."""
        await self.call("respond", {"ID": id, "Payload": bytes(payload)})

    async def stats(self) -> dict[str, Any]:
        """The agent's ``stats`` sections; every leaf value is a string."""
        return await self.call("stats")

    async def get_coordinate(self, node: str) -> dict[str, Any] | None:
        """``node``'s network coordinate, or None when the agent has none (unknown node)."""
        body = await self.call("get-coordinate", {"Node": node})
        if not body.get("Ok"):
            return None
        coord = body.get("Coord")
        return coord if isinstance(coord, dict) else None

    async def _key_op(self, command: str, key: str | None) -> dict[str, Any]:
        body = None if key is None else {"Key": key}
        seq, receive = await self._send(command, body, 1)
        try:
            frame = await self._first(command, receive, seq, max(self.timeout, SLOW_TIMEOUT))
        finally:
            self._drop_waiter(seq)
        reply = frame.body or {}
        if frame.error:
            msgs = reply.get("Messages") or {}
            detail = "; ".join(f"{k}: {v}" for k, v in sorted(msgs.items())) if msgs else ""
            raise error_for(command, f"{frame.error} ({detail})" if detail else frame.error)
        return reply

    async def install_key(self, key: str) -> dict[str, Any]:
        """Install a base64 key cluster-wide. Slow: prefer a dedicated client."""
        return await self._key_op("install-key", key)

    async def use_key(self, key: str) -> dict[str, Any]:
        """Make an installed key primary cluster-wide."""
        return await self._key_op("use-key", key)

    async def remove_key(self, key: str) -> dict[str, Any]:
        """Remove a (non-primary) key cluster-wide."""
        return await self._key_op("remove-key", key)

    async def list_keys(self) -> dict[str, int]:
        """``{base64 key: number of nodes holding it}``."""
        keys = (await self._key_op("list-keys", None)).get("Keys") or {}
        return {str(k): int(v) for k, v in keys.items()}


class _DoneFilter(RecordStream):
    """Query records, ending after (and swallowing) the ``done`` record."""

    def __init__(self, inner: RecordStream) -> None:
        super().__init__(inner._client, inner.seq, inner._receive)

    async def __anext__(self) -> dict[str, Any]:
        rec = await super().__anext__()
        if rec.get("Type") == "done":
            raise StopAsyncIteration
        return rec


@asynccontextmanager
async def open_serf_client(
    host: str,
    port: int,
    auth_key: str | None = None,
    *,
    # A per-request default kept by the client, not a deadline for this call: ASYNC109's
    # advice (wrap the call in fail_after) does not fit a long-lived connection.
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109
) -> AsyncIterator[SerfClient]:
    """Connect to a Serf agent's RPC address, handshake and (if ``auth_key``) authenticate.

    Raises ``SerfUnavailable`` if the agent cannot be reached in ``timeout`` seconds and
    ``SerfAuthError`` if the key is refused. The connection and its reader task are closed
    when the block exits. Exceptions from the block propagate unchanged (not wrapped in an
    ExceptionGroup).
    """
    if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    name = f"serf@{host}:{port}"
    try:
        with trio.fail_after(timeout):
            sock = await trio.open_tcp_stream(host, port)
    except (OSError, trio.TooSlowError) as exc:
        raise SerfUnavailable(f"{name}: cannot connect: {exc!r}") from exc
    client = SerfClient(sock, timeout=timeout, name=name)
    body_exc: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._reader)
            try:
                await client.handshake()
                if auth_key is not None:
                    await client.auth(auth_key)
                yield client
            except BaseException as exc:
                # Re-raised below, outside the nursery, so callers get the exception itself
                # and not an ExceptionGroup (the reader task never raises).
                body_exc = exc
            finally:
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await sock.aclose()
    if body_exc is not None:
        try:
            raise body_exc
        finally:
            body_exc = None


def serf_connector(
    host: str, port: int, auth_key: str | None = None, *, timeout: float = DEFAULT_TIMEOUT
) -> Callable[[], AbstractAsyncContextManager[SerfClient]]:
    """A factory of fresh connections, e.g. for :class:`SerfMembership` or for a dedicated
    connection per stream or slow command."""

    def connect() -> AbstractAsyncContextManager[SerfClient]:
        return open_serf_client(host, port, auth_key, timeout=timeout)

    return connect
