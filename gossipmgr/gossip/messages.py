"""The anti-entropy messages as typed, frozen records, and the one decoder of untrusted bytes.

PURE. ``decode_untrusted`` turns one decrypted datagram payload into a :class:`Message`
whose ``body`` is one of the records below, fully checked (h11 style: the protocol object
consumes typed events and never looks at raw fields); it raises only ``BadPacket`` with a
stable reason (``msgpack``, ``too_large``, ``shape``, ``version``, ``type``, and the entry
reasons of ``gossipmgr.core.codec``). ``pack`` is the encoder. A message larger than one
datagram travels as ``Frag`` pieces: ``fragment`` splits, a ``Reassembler`` joins them back
with bounded memory.

Wire format (a msgpack list): ``[PROTO_VERSION, type, sender, incarnation, *fields]``:

=========  ===  ===================================  =============================
type       id   fields                               meaning
=========  ===  ===================================  =============================
DELTA      1    lo, hi, [entry...]                   the interval (lo, hi] of deltas
ACK        2    seq                                  holds everything up to seq
DIGEST     3    seq, 64 x u64 (bytes)                super-bucket digests
SYNC_OK    4    seq, their_seq                       digests equal
LEAVES     5    super, 64 x u64 (bytes)              leaf digests of one super-bucket
PULL       6    req, [leaf...]                       send me these leaves
ENTRIES    7    req, [entry...]                      leaf entries (several per req)
PULL_DONE  8    req, count                           req answered in count ENTRIES
FRAG       9    id, index, total, bytes              one piece of a larger message
PING       10   nonce                                answer me now (a confirm round)
PONG       11   nonce, lease epoch, lease holder     the answer, with the lease I read
SINCE      12   req, share, shares, [[node, ms, l]]  send me, of your leaves with
                                                     ``leaf % shares == share``, the
                                                     entries newer than my newest of
                                                     their origin (a restart's catch-up)
=========  ===  ===================================  =============================

Entries are encoded by ``gossipmgr.core.codec.entry_to_wire``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import entries_from_wire_untrusted, unpack_untrusted
from gossipmgr.core.crdt import FANOUT, Entry, Key
from gossipmgr.errors import BadPacket
from gossipmgr.gossip.datagram import Counters

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_NAME",
    "PROTO_VERSION",
    "TYPE_NAMES",
    "Ack",
    "Body",
    "Delta",
    "Digest",
    "Entries",
    "Frag",
    "Leaves",
    "Message",
    "Ping",
    "Pong",
    "Pull",
    "PullDone",
    "Reassembler",
    "Since",
    "SyncOk",
    "decode_untrusted",
    "fragment",
    "pack",
    "pack64",
]

PROTO_VERSION = 1

# Message types. WARNING: ONLY APPEND TO THIS LIST (wire compatibility).
DELTA = 1
ACK = 2
DIGEST = 3
SYNC_OK = 4
LEAVES = 5
PULL = 6
ENTRIES = 7
PULL_DONE = 8
FRAG = 9
PING = 10
PONG = 11
SINCE = 12
TYPE_NAMES = {
    DELTA: "delta",
    ACK: "ack",
    DIGEST: "digest",
    SYNC_OK: "sync_ok",
    LEAVES: "leaves",
    PULL: "pull",
    ENTRIES: "entries",
    PULL_DONE: "pull_done",
    FRAG: "frag",
    PING: "ping",
    PONG: "pong",
    SINCE: "since",
}

#: Largest reassembled message and how many partial ones are kept per instance.
MAX_MESSAGE_BYTES = 1024 * 1024
MAX_PARTIAL_MESSAGES = 64
FRAG_TTL_MS = 5_000
#: Smallest fragment payload a sender makes, so a message has at most this many pieces.
MIN_FRAGMENT = 512
MAX_FRAGMENTS = MAX_MESSAGE_BYTES // MIN_FRAGMENT
MAX_NAME = 128
#: A SINCE summary names at most this many origins; a state with more sends a DIGEST.
MAX_ORIGINS = 512
#: A SINCE splits the leaves among at most this many peers.
MAX_SHARES = 64


@dataclass(frozen=True, slots=True)
class Delta:
    lo: int
    hi: int
    entries: list[tuple[Key, Entry]]


@dataclass(frozen=True, slots=True)
class Ack:
    seq: int


@dataclass(frozen=True, slots=True)
class Digest:
    seq: int
    supers: list[int]


@dataclass(frozen=True, slots=True)
class SyncOk:
    seq: int
    their_seq: int


@dataclass(frozen=True, slots=True)
class Leaves:
    super_index: int
    digests: list[int]


@dataclass(frozen=True, slots=True)
class Pull:
    req: int
    leaves: list[int]


@dataclass(frozen=True, slots=True)
class Entries:
    req: int
    entries: list[tuple[Key, Entry]]


@dataclass(frozen=True, slots=True)
class PullDone:
    req: int
    count: int


@dataclass(frozen=True, slots=True)
class Frag:
    msg_id: int
    index: int
    total: int
    piece: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int
    lease_epoch: int
    lease_holder: str


@dataclass(frozen=True, slots=True)
class Since:
    req: int
    share: int
    shares: int
    #: origin -> the newest timestamp of it the sender holds
    summary: dict[str, Timestamp]


Body = (
    Delta | Ack | Digest | SyncOk | Leaves | Pull | Entries | PullDone | Frag | Ping | Pong | Since
)


@dataclass(frozen=True, slots=True)
class Message:
    sender: str
    incarnation: int
    type: int  # one of TYPE_NAMES
    body: Body


# ------------------------------------------------------------------ encoding
def pack(mtype: int, sender: str, incarnation: int, fields: list[Any]) -> bytes:
    """One message's bytes. Raises ValueError/TypeError/OverflowError if it cannot be
    encoded (msgpack's errors)."""
    return msgpack.packb(  # type: ignore[no-any-return]
        [PROTO_VERSION, mtype, sender, incarnation, *fields], use_bin_type=True
    )


def pack64(values: Sequence[int]) -> bytes:
    """Digests as the wire carries them: 8 bytes each, big-endian."""
    return b"".join(v.to_bytes(8, "big") for v in values)


def fragment(
    data: bytes, sender: str, incarnation: int, msg_id: int, max_payload: int
) -> list[bytes]:
    """``data`` (one encoded message) as FRAG messages of at most ``max_payload`` bytes."""
    # The fragment header holds the sender's name (up to MAX_NAME characters): measure
    # it (with the largest index/count and a bin32 length) instead of assuming it small.
    header = len(pack(FRAG, sender, incarnation, [msg_id, MAX_FRAGMENTS, MAX_FRAGMENTS, b""]))
    chunk = max_payload - header - 4
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return [
        pack(FRAG, sender, incarnation, [msg_id, i, len(pieces), p]) for i, p in enumerate(pieces)
    ]


# ------------------------------------------------------------------ decoding
def _int(x: Any) -> bool:
    return type(x) is int


def _unpack64(raw: Any, n: int) -> list[int]:
    if not isinstance(raw, bytes) or len(raw) != 8 * n:
        raise BadPacket("shape", "digest block has the wrong size")
    return [int.from_bytes(raw[i : i + 8], "big") for i in range(0, 8 * n, 8)]


def _body_untrusted(mtype: int, f: list[Any]) -> Body:
    """The typed body of a message of type ``mtype`` from its raw fields."""
    if mtype == DELTA:
        if len(f) != 3 or not _int(f[0]) or not _int(f[1]) or not f[0] <= f[1]:
            raise BadPacket("shape", "delta is [lo, hi, entries]")
        return Delta(f[0], f[1], entries_from_wire_untrusted(f[2]))
    if mtype == ACK:
        if len(f) != 1 or not _int(f[0]):
            raise BadPacket("shape", "ack is [seq]")
        return Ack(f[0])
    if mtype == DIGEST:
        if len(f) != 2 or not _int(f[0]):
            raise BadPacket("shape", "digest is [seq, supers]")
        return Digest(f[0], _unpack64(f[1], FANOUT))
    if mtype == SYNC_OK:
        if len(f) != 2 or not _int(f[0]) or not _int(f[1]):
            raise BadPacket("shape", "sync_ok is [seq, their_seq]")
        return SyncOk(f[0], f[1])
    if mtype == LEAVES:
        if len(f) != 2 or not _int(f[0]) or not 0 <= f[0] < FANOUT:
            raise BadPacket("shape", "leaves is [super, digests]")
        return Leaves(f[0], _unpack64(f[1], FANOUT))
    if mtype == PULL:
        return _pull_untrusted(f)
    if mtype == ENTRIES:
        if len(f) != 2 or not _int(f[0]):
            raise BadPacket("shape", "entries is [req, entries]")
        return Entries(f[0], entries_from_wire_untrusted(f[1]))
    if mtype == PULL_DONE:
        if len(f) != 2 or not _int(f[0]) or not _int(f[1]):
            raise BadPacket("shape", "pull_done is [req, count]")
        return PullDone(f[0], f[1])
    if mtype in (PING, PONG):
        return _confirm_untrusted(mtype, f)
    if mtype == SINCE:
        return _since_untrusted(f)
    return _frag_untrusted(f)


def _confirm_untrusted(mtype: int, f: list[Any]) -> Ping | Pong:
    if mtype == PING:
        if len(f) != 1 or not _int(f[0]):
            raise BadPacket("shape", "ping is [nonce]")
        return Ping(f[0])
    if (
        len(f) != 3
        or not _int(f[0])
        or not _int(f[1])
        or f[1] < 0
        or not isinstance(f[2], str)
        or len(f[2]) > MAX_NAME
    ):
        raise BadPacket("shape", "pong is [nonce, lease epoch, lease holder]")
    return Pong(f[0], f[1], f[2])


def _pull_untrusted(f: list[Any]) -> Pull:
    if (
        len(f) != 2
        or not _int(f[0])
        or not isinstance(f[1], list)
        or len(f[1]) > 4 * FANOUT
        or not all(_int(x) and 0 <= x < FANOUT * FANOUT for x in f[1])
    ):
        raise BadPacket("shape", "pull is [req, leaves]")
    return Pull(f[0], f[1])


def _since_untrusted(f: list[Any]) -> Since:
    if (
        len(f) != 4
        or not all(_int(x) for x in f[:3])
        or not 0 <= f[1] < f[2] <= MAX_SHARES
        or not isinstance(f[3], list)
        or len(f[3]) > MAX_ORIGINS
    ):
        raise BadPacket("shape", "since is [req, share, shares, summary]")
    summary: dict[str, Timestamp] = {}
    for o in f[3]:
        if (
            not isinstance(o, list)
            or len(o) != 3
            or not isinstance(o[0], str)
            or not 0 < len(o[0]) <= MAX_NAME
            or o[0] in summary
            or not (_int(o[1]) and _int(o[2]) and 0 <= o[1] < 2**63 and 0 <= o[2] < 2**63)
        ):
            raise BadPacket("shape", "a since summary is [[node, ms, logical], ...]")
        summary[o[0]] = Timestamp(o[1], o[2], o[0])
    return Since(f[0], f[1], f[2], summary)


def _frag_untrusted(f: list[Any]) -> Frag:
    if (
        len(f) != 4
        or not all(_int(x) for x in f[:3])
        or not isinstance(f[3], bytes)
        or not 0 <= f[1] < f[2] <= MAX_FRAGMENTS
    ):
        raise BadPacket("shape", "frag is [id, index, total, bytes]")
    return Frag(f[0], f[1], f[2], f[3])


def decode_untrusted(data: bytes) -> Message:
    """Decode one message (a decrypted datagram payload, or a reassembled one).

    Raises only BadPacket; nothing partial is returned.
    """
    msg = unpack_untrusted(data, MAX_MESSAGE_BYTES)
    if not isinstance(msg, list) or len(msg) < 4:
        raise BadPacket("shape", "message must be a list")
    version, mtype, sender, inc = msg[:4]
    if version != PROTO_VERSION:
        raise BadPacket("version", f"protocol version {version!r}")
    if not _int(mtype) or mtype not in TYPE_NAMES:
        raise BadPacket("type", f"unknown message type {mtype!r}")
    if not isinstance(sender, str) or not 0 < len(sender) <= MAX_NAME:
        raise BadPacket("shape", "bad sender")
    if not _int(inc) or inc < 0:
        raise BadPacket("shape", "bad incarnation")
    return Message(sender, inc, mtype, _body_untrusted(mtype, msg[4:]))


class Reassembler:
    """Joins ``Frag`` pieces back into messages, with bounded memory: at most
    ``MAX_PARTIAL_MESSAGES`` partial messages (the oldest evicted, ``drop_frag_evicted``),
    each for at most ``FRAG_TTL_MS`` (``drop_frag_expired``, counted in ``counters``) and
    holding at most ``MAX_MESSAGE_BYTES`` (past that it is dropped: BadPacket ``too_large``)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self._partial: OrderedDict[tuple[str, int], tuple[float, list[bytes | None]]] = (
            OrderedDict()
        )
        self._size: dict[tuple[str, int], int] = {}  # bytes held per partial message

    def held_bytes(self) -> int:
        """Bytes of pieces held in partial messages."""
        return sum(self._size.values())

    def add_untrusted(self, sender: str, f: Frag, now: float) -> bytes | None:
        """The whole message once its last piece arrived, else None. Raises BadPacket."""
        key = (sender, f.msg_id)
        if key not in self._partial:
            if len(self._partial) >= MAX_PARTIAL_MESSAGES:
                evicted, _ = self._partial.popitem(last=False)
                del self._size[evicted]
                self.counters.incr("drop_frag_evicted")
            self._partial[key] = (now, [None] * f.total)
            self._size[key] = 0
        _, parts = self._partial[key]
        if len(parts) != f.total:
            raise BadPacket("shape", "fragment total changed")
        old = parts[f.index]
        size = self._size[key] + len(f.piece) - (len(old) if old is not None else 0)
        if size > MAX_MESSAGE_BYTES:
            # Refused now, not when the last piece arrives: a partial message holds at
            # most MAX_MESSAGE_BYTES (up to MAX_FRAGMENTS pieces could hold more).
            self._drop(key)
            raise BadPacket("too_large", "reassembled message too large")
        parts[f.index] = f.piece
        self._size[key] = size
        if any(p is None for p in parts):
            return None
        self._drop(key)
        return b"".join(p for p in parts if p is not None)

    def _drop(self, key: tuple[str, int]) -> None:
        del self._partial[key]
        del self._size[key]

    def expire(self, now: float) -> None:
        while self._partial:
            key, (born, _) = next(iter(self._partial.items()))
            if now - born < FRAG_TTL_MS:
                break
            self._drop(key)
            self.counters.incr("drop_frag_expired")
