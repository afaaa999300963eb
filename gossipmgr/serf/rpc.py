"""Serf RPC framing, sans-I/O: requests to bytes, bytes to frames.

The protocol (hashicorp/serf ``cmd/serf/command/agent/ipc.go``; docs/serf.md) has no
length prefix: msgpack objects go back to back.
A request is a header ``{"Command", "Seq"}`` plus, for some commands, a body map; a reply is a
header ``{"Seq", "Error"}`` plus, for some commands, a body map. Neither side announces whether
a body follows: both work it out from the command name, so the tables below must match the
agent's exactly or the stream desynchronises (a stray body is parsed as the next header).

:class:`SerfRpcProtocol` keeps the outstanding ``seq -> command`` map, encodes requests and
turns received bytes into :class:`Frame` objects, in the style of h11's ``Connection``
(``send`` / ``receive_data`` / ``next_event``). It never touches a socket or a clock.

Raised here: :class:`~gossipmgr.errors.SerfProtocolError` when the received bytes cannot be
framed (undecodable msgpack, a header for an unknown seq, a non-map body); ``ValueError`` for a
programming error on the sending side (unknown command, body given to a body-less command).
:func:`error_for` maps a reply's ``Error`` string to a typed error; it does not raise it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from gossipmgr.errors import SerfAuthError, SerfError, SerfProtocolError

__all__ = [
    "COMMANDS",
    "NO_BODY_ERRORS",
    "REQUEST_BODY",
    "RESPONSE_BODY",
    "STREAMING",
    "Frame",
    "MemberRecord",
    "SerfRpcProtocol",
    "encode_request",
    "error_for",
    "normalize_member",
    "normalize_record",
]

#: Commands that send a body map after the request header (ipc.go's handlers that call
#: ``client.dec.Decode``). ``members``, ``leave``, ``list-keys`` and ``stats`` must NOT send one:
#: the agent would parse it as the next header and re-run the old command (docs/serf.md,
#: "RPC protocol").
REQUEST_BODY: Final = frozenset(
    {
        "handshake",
        "auth",
        "event",
        "force-leave",
        "join",
        "members-filtered",
        "tags",
        "stream",
        "monitor",
        "stop",
        "query",
        "respond",
        "install-key",
        "use-key",
        "remove-key",
        "get-coordinate",
    }
)
#: Commands whose reply header is followed by a body map, even when ``Error`` is set
#: (``join`` sends ``{Num}`` on failure too), except for :data:`NO_BODY_ERRORS`.
RESPONSE_BODY: Final = frozenset(
    {
        "join",
        "members",
        "members-filtered",
        "stats",
        "get-coordinate",
        "install-key",
        "use-key",
        "remove-key",
        "list-keys",
    }
)
#: Commands whose first reply is a bare header ack, followed by header+record pairs carrying
#: the same seq. ``stream``/``monitor`` run until ``stop``; ``query`` ends with ``Type: done``.
STREAMING: Final = frozenset({"stream", "monitor", "query"})
COMMANDS: Final = (
    REQUEST_BODY | RESPONSE_BODY | STREAMING | {"members", "leave", "list-keys", "stats"}
)
#: Errors the agent's dispatcher sends before any handler runs, so no body ever follows them.
NO_BODY_ERRORS: Final = frozenset(
    {"Authentication required", "Handshake required", "Unsupported command"}
)
#: Errors meaning "give me (another) RPC auth key".
AUTH_ERRORS: Final = frozenset({"Authentication required", "Invalid authentication token"})

#: A stream that was stopped may still deliver a record or two that the agent had queued
#: before it processed ``stop``; we remember this many retired stream seqs to frame them.
MAX_RETIRED_STREAMS: Final = 1024


def encode_request(command: str, seq: int, body: Mapping[str, Any] | None = None) -> bytes:
    """Encode one request. ``body`` must be given exactly for :data:`REQUEST_BODY` commands.

    Raises ``ValueError`` for an unknown command, a missing or forbidden body, or a bad seq.
    """
    if command not in COMMANDS:
        raise ValueError(f"unknown serf RPC command {command!r}")
    if not 0 <= seq < 2**64:
        raise ValueError(f"seq {seq} is not a uint64")
    wants_body = command in REQUEST_BODY
    if wants_body and body is None:
        raise ValueError(f"serf command {command!r} needs a request body")
    if not wants_body and body is not None:
        # A body here would be read by the agent as the next header (docs/serf.md, "RPC protocol").
        raise ValueError(f"serf command {command!r} takes no request body")
    out: bytes = msgpack.packb({"Command": command, "Seq": seq}, use_bin_type=True)
    if body is not None:
        out += msgpack.packb(dict(body), use_bin_type=True)
    return out


def error_for(command: str, error: str) -> SerfError:
    """Map a reply's non-empty ``Error`` string to a typed error (not raised here)."""
    if error in AUTH_ERRORS:
        return SerfAuthError(f"serf {command}: {error}")
    return SerfError(f"serf {command}: {error}")


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded reply unit for ``seq``.

    ``kind`` is ``"reply"`` (header [+ body] of a plain command), ``"ack"`` (the bare header
    that starts a stream) or ``"record"`` (one streamed header+body). ``final`` is True when
    no more frames will come for ``seq`` (plain reply, failed ack, ``done`` query record).
    ``retired`` marks a late record of a stream that was already stopped: drop it.
    """

    seq: int
    command: str
    kind: str
    error: str
    body: dict[str, Any] | None
    final: bool
    retired: bool = False


class SerfRpcProtocol:
    """The client side of one Serf RPC connection, sans-I/O.

    Call :meth:`send` to get the bytes of a request (it assigns and registers the seq), feed
    received bytes to :meth:`receive_data`, then drain :meth:`next_frames`. Owns no socket.
    """

    def __init__(self, first_seq: int = 1) -> None:
        self._next_seq = first_seq
        # seq -> command for every request still expecting frames.
        self._outstanding: dict[int, str] = {}
        # stream seqs whose ack arrived (records follow as header+body).
        self._acked: set[int] = set()
        # stop seq -> stream seq it stops; the stream retires when the stop reply arrives.
        self._stops: dict[int, int] = {}
        self._retired: dict[int, str] = {}
        self._unpacker = msgpack.Unpacker(raw=False)
        self._header: dict[str, Any] | None = None  # a header whose body has not arrived yet
        #: Query records dropped as zero values of Serf's closed channels
        #: (:func:`_closed_channel_record`).
        self.dropped_empty_records = 0

    @property
    def outstanding(self) -> Mapping[int, str]:
        """Seqs still expecting frames, and their commands (read-only view)."""
        return self._outstanding

    def send(self, command: str, body: Mapping[str, Any] | None = None) -> tuple[int, bytes]:
        """Register a new request and return ``(seq, bytes to write)``.

        Raises ``ValueError`` as :func:`encode_request` does.
        """
        seq = self._next_seq
        data = encode_request(command, seq, body)
        self._next_seq += 1
        self._outstanding[seq] = command
        if command == "stop" and body is not None:
            target = body.get("Stop")
            if isinstance(target, int):
                self._stops[seq] = target
        return seq, data

    def receive_data(self, data: bytes) -> None:
        """Buffer received bytes; frames come out of :meth:`next_frames`."""
        self._unpacker.feed(data)

    def next_frames(self) -> list[Frame]:
        """Return every frame completed by the bytes fed so far (possibly none).

        Raises :class:`SerfProtocolError` if the stream cannot be framed; the connection is
        then unusable (the caller should close it).
        """
        frames: list[Frame] = []
        while True:
            try:
                obj = next(self._unpacker)
            except StopIteration:
                return frames
            except Exception as exc:  # msgpack raises several unrelated types on bad bytes
                raise SerfProtocolError(f"undecodable serf RPC data: {exc!r}") from exc
            if self._header is None:
                frame = self._on_header(obj)
            else:
                header, self._header = self._header, None
                frame = self._on_body(header, obj)
            if frame is not None:
                frames.append(frame)

    # -- internals -------------------------------------------------------------------------

    def _on_header(self, obj: object) -> Frame | None:
        if not isinstance(obj, dict):
            raise SerfProtocolError(f"serf RPC header is not a map: {obj!r:.80}")
        seq = obj.get("Seq")
        error = obj.get("Error", "")
        if not isinstance(seq, int) or not isinstance(error, str):
            raise SerfProtocolError(f"bad serf RPC header: {obj!r:.120}")
        retired = False
        command = self._outstanding.get(seq)
        if command is None:
            command = self._retired.get(seq)
            retired = True
            if command is None:
                raise SerfProtocolError(f"serf RPC reply for unknown seq {seq}")
        if command in STREAMING and (retired or seq in self._acked):
            # A streamed record: the body always follows.
            self._header = {"Seq": seq, "Error": error, "retired": retired}
            return None
        if command in STREAMING:
            if error:
                self._finish(seq)
                return Frame(seq, command, "ack", error, None, final=True)
            self._acked.add(seq)
            return Frame(seq, command, "ack", "", None, final=False)
        if command in RESPONSE_BODY and error not in NO_BODY_ERRORS:
            self._header = {"Seq": seq, "Error": error, "retired": False}
            return None
        self._finish(seq)
        if command == "stop":
            target = self._stops.pop(seq, None)
            if target is not None and target in self._outstanding:
                self._retire(target)
        return Frame(seq, command, "reply", error, None, final=True)

    def _on_body(self, header: dict[str, Any], obj: object) -> Frame | None:
        seq: int = header["Seq"]
        if not isinstance(obj, dict):
            raise SerfProtocolError(f"serf RPC body for seq {seq} is not a map: {obj!r:.80}")
        if header["retired"]:
            return Frame(seq, self._retired[seq], "record", header["Error"], obj, True, True)
        command = self._outstanding[seq]
        if command == "query" and _closed_channel_record(obj):
            self.dropped_empty_records += 1
            return None
        if command in STREAMING:
            final = command == "query" and obj.get("Type") == "done"
            if final:
                self._finish(seq)
            return Frame(seq, command, "record", header["Error"], obj, final=final)
        self._finish(seq)
        return Frame(seq, command, "reply", header["Error"], obj, final=True)

    def _finish(self, seq: int) -> None:
        self._outstanding.pop(seq, None)
        self._acked.discard(seq)

    def _retire(self, seq: int) -> None:
        command = self._outstanding[seq]
        self._finish(seq)
        self._retired[seq] = command
        while len(self._retired) > MAX_RETIRED_STREAMS:
            del self._retired[next(iter(self._retired))]

    def retire(self, seq: int) -> None:
        """Forget a live stream without a ``stop`` (e.g. its consumer went away).

        Late records for it are still framed (as ``retired``) so the stream stays in sync.
        """
        if seq in self._outstanding and self._outstanding[seq] in STREAMING:
            self._retire(seq)


def _closed_channel_record(body: Mapping[str, Any]) -> bool:
    """True for an ``ack`` or ``response`` query record with no sender: not from any member.

    At a query's deadline Serf closes the query's ack and response channels (``serf.go``,
    ``registerQueryResponse``) while the agent's stream loop waits on them and on its own
    deadline timer (``ipc_query_response_stream.go``). When the close wins, the loop reads
    zero values from the closed channels and sends each as a record, ``From`` empty and
    ``Payload`` nil, until its timer fires: tens of them on a loaded machine (hashicorp/serf
    issue 408). A member always has a name, so such a record carries nothing.
    """
    return body.get("Type") in ("ack", "response") and not body.get("From")


# --- member records -----------------------------------------------------------------------

MemberRecord = dict[str, Any]


def normalize_member(raw: Mapping[str, Any]) -> MemberRecord:
    """Copy a Serf member record with ``Addr`` (4 or 16 raw bytes) turned into an IP string.

    IPv4-mapped IPv6 addresses become plain IPv4. Other fields are copied unchanged.
    """
    rec = dict(raw)
    addr = rec.get("Addr")
    if isinstance(addr, bytes | bytearray) and len(addr) in (4, 16):
        ip = ipaddress.ip_address(bytes(addr))
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        rec["Addr"] = str(ip)
    if not isinstance(rec.get("Tags"), dict):
        rec["Tags"] = {}
    return rec


def normalize_record(body: dict[str, Any]) -> dict[str, Any]:
    """A reply or stream record with its ``Members`` normalized (``normalize_member``)."""
    members = body.get("Members")
    if isinstance(members, list):
        body = dict(body)
        body["Members"] = [normalize_member(m) for m in members if isinstance(m, dict)]
    return body
