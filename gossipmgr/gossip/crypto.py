"""Datagram sealing for gossip: AES-256-GCM with a rotating keyring and a replay guard.

PURE: no sockets, no trio, no clock reads. Time comes in as ``now_ms``: Unix-epoch
**wall-clock** milliseconds (``int(time.time() * 1000)``), because it is compared with the
send time another node wrote into the header. A monotonic clock would not do.

Wire format (version 1, big-endian; all header bytes, nonce included, are the GCM AAD)::

    off len field
      0   1 version      = 1
      1   4 key id       first 4 bytes of SHA-256(key): the receiver picks the key directly
      5   8 sender id    the sending node's id (opaque 8 bytes; ``node_id(name)``)
     13   8 recipient id the node it is sealed for, or ANY (8 zero bytes)
     21   8 boot         sender's start time, ms; strictly grows with every restart
     29   8 counter      per boot, starts at 0, +1 per datagram
     37   8 sent ms      sender's wall clock when sealed
     45  12 nonce        random (os.urandom)
     57   .. ciphertext  plaintext length
     ..  16 tag          GCM tag

``OVERHEAD`` = 73 bytes; ``MAX_DATAGRAM`` = 1400 (memberlist's UDP budget), so at most
``MAX_PLAINTEXT`` = 1327 plaintext bytes per datagram. Serf's own encryption adds 29 bytes but
does not defend against replay (its threat model says so); the 44 extra bytes buy that.

Why a recipient id: the counter is per sender, so without it a datagram A sealed for B could
be replayed once to C (C has never seen that counter). For idempotent deltas that is harmless,
but a per-peer message (an ack meant for B) would mislead C. Sealed for B, it opens only at B.

Every function that handles network bytes ends in ``_untrusted`` and raises only
``gossipmgr.errors.BadPacket`` with a stable ``reason`` (habit 3, trio ``_dtls.py``).
Reasons, append-only like memberlist's message types: ``short``, ``version``, ``unknown_key``,
``auth``, ``replay``, ``stale``, ``future``, ``too_large``, ``misdirected``.

Order of checks: size and version, key id, **authentication**, then time and replay. Time and
replay checks come after the tag is verified so that (1) a forger can never move the replay
window or the LRU (IPsec ESP, RFC 4303 3.4.3, updates the window only after the ICV check), and
(2) the ``stale``/``future``/``replay`` labels always describe genuine cluster datagrams,
while random junk is always ``auth``/``unknown_key``/``short``.

The replay guard (``ReplayGuard``) is described in docs/security-wire.md.

Ownership: a ``Sealer`` belongs to one node and one task (not thread-safe; trio is single
threaded). ``Keyring`` is immutable; rotate by assigning ``Sealer.keyring``.
"""

from __future__ import annotations

import collections
import hashlib
import os
import struct
from dataclasses import dataclass

from gossipmgr.errors import BadPacket
from gossipmgr.gossip.datagram import MAX_DATAGRAM, Counters
from gossipmgr.gossip.keys import (
    KEY_LEN,
    Keyring,
    generate_key,
    key_id,
    load_key_file,
    load_keyring_file,
    parse_key_text,
)

# Keys (``keys``) and the datagram budget and counters (``datagram``) are re-exported:
# this module is where callers look for everything about sealed datagrams.
__all__ = [
    "ANY",
    "DEFAULT_MAX_AGE_MS",
    "HEADER_LEN",
    "KEY_LEN",
    "MAX_DATAGRAM",
    "MAX_PLAINTEXT",
    "MAX_TRACKED_SENDERS",
    "OVERHEAD",
    "REASONS",
    "REPLAY_WINDOW",
    "SENDER_ID_LEN",
    "VERSION",
    "Counters",
    "Keyring",
    "Opened",
    "ReplayGuard",
    "Sealer",
    "generate_key",
    "key_id",
    "load_key_file",
    "load_keyring_file",
    "node_id",
    "parse_key_text",
]

# --- named limits -------------------------------------------------------------------------

VERSION = 1
SENDER_ID_LEN = 8
NONCE_LEN = 12  # GCM's native nonce size; random, so <= 2**32 datagrams per key (NIST 800-38D)
TAG_LEN = 16

ANY = bytes(SENDER_ID_LEN)  # recipient id meaning "whoever receives it"

_FIXED = struct.Struct(">B4s8s8sQQQ")  # version, key id, sender, recipient, boot, counter, sent
HEADER_LEN = _FIXED.size + NONCE_LEN  # 57
OVERHEAD = HEADER_LEN + TAG_LEN  # 73: what seal() adds to the plaintext

# MAX_DATAGRAM (gossip.datagram) is the whole sealed datagram: 1400 B, memberlist's budget.
MAX_PLAINTEXT = MAX_DATAGRAM - OVERHEAD  # 1327

# Replay window in datagrams per sender. DTLS uses 64, IPsec ESN implementations 1024+. The
# counter is per *sender*, not per (sender, receiver) pair, so a receiver sees the counters a
# sender spent on other peers as gaps; a wide window keeps reordering across those gaps from
# looking like replay. 1024 bits = 128 B per tracked sender.
REPLAY_WINDOW = 1024
# Senders whose replay state is kept (LRU). 4096 * ~300 B ~ 1.2 MB worst case; far above the
# clusters gossipmgr targets (clusterm managed tens to hundreds of nodes).
MAX_TRACKED_SENDERS = 4096
# How far a datagram's send time may be from the receiver's now, either way. It bounds how
# long a captured datagram stays replayable to a receiver that has no state for its sender.
# It is also the clock-skew allowance: nodes must be NTP-synced to well within it.
DEFAULT_MAX_AGE_MS = 30_000

_U64_MAX = 2**64 - 1

# WARNING: ONLY APPEND TO THIS LIST (metric labels; memberlist net.go habit).
REASONS = (
    "short",
    "version",
    "unknown_key",
    "auth",
    "replay",
    "stale",
    "future",
    "too_large",
    "misdirected",
)


# --- ids ----------------------------------------------------------------------------------


def node_id(name: str) -> bytes:
    """An 8-byte sender/recipient id for a node name: first 8 bytes of SHA-256(name, UTF-8).

    Any stable 8 bytes will do; this is the convention so both ends derive the same id from
    the name they already share (the Serf node name). Never ANY in practice (p = 2**-64).
    """
    return hashlib.sha256(name.encode("utf-8")).digest()[:SENDER_ID_LEN]


# --- replay guard -------------------------------------------------------------------------


@dataclass(slots=True)
class _SenderState:
    boot: int  # highest boot seen
    top: int  # highest counter accepted for that boot
    bitmap: int  # bit i set <=> counter (top - i) accepted; bit 0 is `top` itself
    last_sent_ms: int  # highest send time accepted (sender's clock)
    floor_ms: int  # the guard's floor when this state was made: nothing sent before is taken


class ReplayGuard:
    """Per-sender replay state: highest boot, and a sliding-window bitmap of counters.

    The bitmap is the IPsec/DTLS anti-replay window (RFC 4303 appendix A, RFC 6347 4.1.2.6):
    counters above the top slide the window; counters inside it are accepted once; counters
    below it are refused. A newer boot (the sender restarted) resets the window; an older
    boot is refused.

    A sender with no state (never seen, or evicted) is judged by time alone: its datagram
    must not be older than ``floor_ms``. That floor is kept in the state made for it, and
    applies to every later datagram of that sender too: once we hear from it again, its
    window starts at the counter it is at now, so an older counter of the same boot that
    our previous incarnation accepted would otherwise look new. The floor starts at
    ``floor_ms`` (the ``Sealer`` passes its own boot: nothing sent before this node started
    can be meant for it) and, when an LRU eviction forgets a sender, rises to the last send
    time accepted from it, so nothing that sender sent before its eviction can be replayed.
    Cost: an unknown sender whose clock lags by S ms is refused as "stale" for at most S ms
    after such an event.

    Memory: at most ``max_senders`` entries (LRU), each a few small ints. PURE.
    ``check_and_update`` must only be called for authenticated datagrams.
    """

    def __init__(
        self,
        window: int = REPLAY_WINDOW,
        max_senders: int = MAX_TRACKED_SENDERS,
        floor_ms: int = 0,
    ) -> None:
        if window < 1 or max_senders < 1:
            raise ValueError("window and max_senders must be >= 1")
        self.window = window
        self.max_senders = max_senders
        self.floor_ms = floor_ms
        self._mask = (1 << window) - 1
        self._senders: collections.OrderedDict[bytes, _SenderState] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._senders)

    def __contains__(self, sender_id: object) -> bool:
        return sender_id in self._senders

    def check_and_update(self, sender_id: bytes, boot: int, counter: int, sent_ms: int) -> None:
        """Accept (and remember) or refuse one authenticated datagram's (boot, counter).

        Raises BadPacket("replay") for a counter already seen or below the window, or an older
        boot; BadPacket("stale") for an unknown sender's datagram sent before ``floor_ms``.
        """
        st = self._senders.get(sender_id)
        if st is None:
            if sent_ms < self.floor_ms:
                raise BadPacket("stale", "unknown sender, sent before the replay floor")
            self._remember(sender_id, _SenderState(boot, counter, 1, sent_ms, self.floor_ms))
            return
        if sent_ms < st.floor_ms:
            # The window only knows counters from the first one accepted since the floor
            # (our start, or this sender's eviction); an earlier counter of the same boot
            # may have been accepted before that: by our previous incarnation, or before
            # the eviction. The bitmap cannot tell, the send time can.
            raise BadPacket("stale", "sent before the replay floor")
        if boot < st.boot:
            raise BadPacket("replay", "boot older than the highest seen")
        if boot > st.boot:  # the sender restarted: a new counter space
            st.boot, st.top, st.bitmap = boot, counter, 1
        elif counter > st.top:
            st.bitmap = ((st.bitmap << (counter - st.top)) | 1) & self._mask
            st.top = counter
        else:
            back = st.top - counter
            if back >= self.window:
                raise BadPacket("replay", "counter below the window")
            if (st.bitmap >> back) & 1:
                raise BadPacket("replay", "counter already seen")
            st.bitmap |= 1 << back
        st.last_sent_ms = max(st.last_sent_ms, sent_ms)
        self._senders.move_to_end(sender_id)

    def _remember(self, sender_id: bytes, st: _SenderState) -> None:
        self._senders[sender_id] = st
        while len(self._senders) > self.max_senders:
            _, old = self._senders.popitem(last=False)
            self.floor_ms = max(self.floor_ms, old.last_sent_ms + 1)


# --- sealing ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Opened:
    """An authenticated, fresh datagram. ``sender_id`` is proven only to hold a cluster key:
    with a shared group key any member can claim any id (as in Serf/memberlist)."""

    sender_id: bytes
    boot: int
    counter: int
    plaintext: bytes
    sent_ms: int = 0
    recipient: bytes = ANY  # our own id, or ANY if it was sealed for whoever receives it


class Sealer:
    """One node's datagram sealer/opener (sans-I/O; the caller owns sockets and time).

    ``sender_id``: 8 bytes naming this node (``node_id(name)``); datagrams sealed ``to`` it
    (or to ANY) open here. ``boot``: this node's start time in wall-clock
    ms; it must strictly grow across restarts (else peers refuse the new datagrams as
    "replay" until they forget us). ``accept_since_ms`` (default ``boot``): datagrams from
    senders we hold no state for must have been sent at or after it (see ReplayGuard).

    ``refused`` counts every BadPacket raised by ``open_untrusted`` by reason, so the receive
    loop can just catch-and-continue without counting again.
    """

    def __init__(
        self,
        keyring: Keyring,
        sender_id: bytes,
        boot: int,
        *,
        max_age_ms: int = DEFAULT_MAX_AGE_MS,
        accept_since_ms: int | None = None,
        replay_window: int = REPLAY_WINDOW,
        max_senders: int = MAX_TRACKED_SENDERS,
    ) -> None:
        if not isinstance(sender_id, bytes) or len(sender_id) != SENDER_ID_LEN:
            raise ValueError(f"sender_id must be {SENDER_ID_LEN} bytes")
        if sender_id == ANY:
            raise ValueError("sender_id must not be all zeros (that is ANY)")
        if not 0 <= boot <= _U64_MAX:
            raise ValueError("boot must fit an unsigned 64-bit integer")
        if max_age_ms < 0:
            raise ValueError("max_age_ms must be >= 0")
        self.keyring = keyring
        self.sender_id = sender_id
        self.boot = boot
        self.max_age_ms = max_age_ms
        self._counter = 0
        self.guard = ReplayGuard(
            replay_window, max_senders, boot if accept_since_ms is None else accept_since_ms
        )
        self.refused = Counters()
        # Function-local: cryptography loads when gossip starts, after the API serves (a heavy
        # import: issue 17, start time); the keyring makes its ciphers then too.
        from cryptography.exceptions import InvalidTag

        self._invalid_tag: type[Exception] = InvalidTag

    @property
    def counter(self) -> int:
        """The counter the next sealed datagram will carry."""
        return self._counter

    def seal(self, plaintext: bytes, now_ms: int, to: bytes = ANY) -> bytes:
        """Encrypt ``plaintext`` into one datagram with the primary key, for recipient ``to``.

        ``to`` is the recipient's 8-byte id (``node_id(name)``); only that node will open it.
        Leave it ANY only for messages whose meaning does not depend on who receives them.
        Raises ValueError if the datagram would exceed MAX_DATAGRAM (a caller bug: size
        chunks with MAX_PLAINTEXT / OVERHEAD), ``now_ms`` is negative or ``to`` is not 8 bytes.
        """
        if len(to) != SENDER_ID_LEN:
            raise ValueError(f"recipient id must be {SENDER_ID_LEN} bytes")
        if len(plaintext) > MAX_PLAINTEXT:
            raise ValueError(
                f"plaintext of {len(plaintext)} B exceeds MAX_PLAINTEXT={MAX_PLAINTEXT} "
                f"(datagram limit {MAX_DATAGRAM} B, overhead {OVERHEAD} B)"
            )
        now_ms = int(now_ms)
        if not 0 <= now_ms <= _U64_MAX:
            raise ValueError("now_ms must be a non-negative 64-bit millisecond time")
        if self._counter > _U64_MAX:
            raise ValueError("counter exhausted for this boot; restart with a new boot")
        header = _FIXED.pack(
            VERSION,
            self.keyring.primary_id,
            self.sender_id,
            bytes(to),
            self.boot,
            self._counter,
            now_ms,
        ) + os.urandom(NONCE_LEN)
        self._counter += 1
        ct = self.keyring._sealer().encrypt(header[_FIXED.size :], plaintext, header)
        return header + ct

    def open_untrusted(self, datagram: bytes, now_ms: int) -> Opened:
        """Authenticate, decrypt and replay-check one received datagram.

        Raises only BadPacket (reason in REASONS), counted in ``self.refused``.
        """
        try:
            return self._open_untrusted(datagram, int(now_ms))
        except BadPacket as exc:
            self.refused.incr(exc.reason)
            raise

    def _open_untrusted(self, datagram: bytes, now_ms: int) -> Opened:
        if not isinstance(datagram, bytes | bytearray | memoryview):
            raise BadPacket("short", "not bytes")
        n = len(datagram)
        if n > MAX_DATAGRAM:
            raise BadPacket("too_large", f"{n} B > {MAX_DATAGRAM} B")
        if n == 0:
            raise BadPacket("short", "empty")
        data = bytes(datagram)
        # Version first, so a future version with another layout is reported as such.
        if data[0] != VERSION:
            raise BadPacket("version", f"version {data[0]}")
        if n < OVERHEAD:
            raise BadPacket("short", f"{n} B < {OVERHEAD} B")
        _, kid, sender, recipient, boot, counter, sent_ms = _FIXED.unpack_from(data)
        aead = self.keyring._opener(kid)
        if aead is None:
            raise BadPacket("unknown_key", f"key id {kid.hex()}")
        header = data[:HEADER_LEN]
        try:
            plaintext = aead.decrypt(header[_FIXED.size :], data[HEADER_LEN:], header)
        except self._invalid_tag:
            raise BadPacket("auth", "tag mismatch")
        # Authenticated from here on: labels below describe genuine cluster datagrams.
        if sent_ms < now_ms - self.max_age_ms:
            raise BadPacket("stale", f"sent {now_ms - sent_ms} ms ago")
        if sent_ms > now_ms + self.max_age_ms:
            raise BadPacket("future", f"sent {sent_ms - now_ms} ms ahead")
        if sender == self.sender_id:
            # Reflection: with a group key our own datagrams open fine; never accept them.
            raise BadPacket("replay", "own sender id (reflected)")
        if recipient != ANY and recipient != self.sender_id:
            # Sealed for another node: a misroute, or a replay across receivers.
            raise BadPacket("misdirected", f"sealed for {recipient.hex()}")
        self.guard.check_and_update(sender, boot, counter, sent_ms)
        return Opened(sender, boot, counter, plaintext, sent_ms, recipient)
