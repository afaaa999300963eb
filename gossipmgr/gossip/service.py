"""The thin trio loop under the anti-entropy protocol: it only moves bytes.

The service owns the anti-entropy protocol object (``ae``, pure) and feeds it. Three tasks
share one transport:

* receive: datagram -> ``Sealer.open_untrusted`` (decrypt, authenticate, replay guard) ->
  ``AntiEntropy.receive_untrusted`` (joins into the replica's state) -> novel delta queued
  for persistence. Anything refused is dropped and counted by reason; nothing refused
  reaches the state.
* send: drains the outbox (what the protocol wants sent), seals each payload for its
  recipient and sends it to the peer's gossip address (from Serf membership).
* tick: calls the protocol's timer every ``tick_ms``.

And a fourth persists remote deltas through the replica's store, so an fsync never stalls
the receive loop: those arriving within ``PERSIST_WINDOW_MS`` of each other share one group
commit (one append per window, not per delta). Local writes reach the protocol through the replica's
``on_local_send`` hook, registered here (the replica does not know the gossip layer): each
is pushed as soon as it is made, in parallel with the writer's fsync.

Ownership: the service owns ``ae`` and its outbox, none of its arguments; the caller opens
and closes the transport and the replica. ``run`` returns when cancelled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import trio

from gossipmgr.core.clock import HLC
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState
from gossipmgr.errors import BadPacket
from gossipmgr.gossip.crypto import HEADER_LEN, SENDER_ID_LEN, Counters, Keyring, Sealer, node_id
from gossipmgr.gossip.messages import TYPE_NAMES
from gossipmgr.gossip.protocol import AntiEntropy, GossipConfig
from gossipmgr.gossip.transport import Addr, Transport

log = logging.getLogger("gossipmgr.gossip")

#: Remote deltas waiting for the disk. Beyond it the receive loop waits (backpressure).
PERSIST_QUEUE = 1_024
#: How long the first remote delta of a batch waits for others before they are persisted
#: together (one group commit per window at most; ``GossipService._persist_loop``).
PERSIST_WINDOW_MS = 100
#: Datagrams queued for the send task; beyond it they are dropped and counted (the
#: retransmit tick and digest resync recover them), so a stalled socket never blocks a write.
OUTBOX_LIMIT = 10_000
#: Confirm rounds' PING/PONG (``gossip.confirm``) go through a queue of their own with a
#: send task of its own: a confirm waits at most a second, and behind a backlog in the
#: outbox (the partition suite saw thousands queued, and thousands dropped, after a heal)
#: its answers came too late or never.
URGENT = frozenset({"ping", "pong"})
URGENT_LIMIT = 1_024
#: Refusals that mean "this sender does not hold our key": a key we do not know, or a tag
#: that does not verify. Counted per source address so /health can name the peer.
AUTH_REASONS = frozenset({"unknown_key", "auth"})
#: Source addresses whose authentication failures are kept (the least recently failing is
#: forgotten first), so junk from many addresses cannot grow memory.
MAX_FAILING_SOURCES = 256
#: Instances not (yet) in our peer set whose answers go to the source address of their last
#: authenticated datagram (see ``_note_reply_to``); the least recent is forgotten first.
MAX_REPLY_TO = 256


@dataclass
class AuthFailures:
    """Datagrams from one source address that failed authentication."""

    count: int = 0
    last_ms: int = 0
    reasons: Counters = field(default_factory=Counters)
    #: The sender id the last one claimed (unauthenticated: a hint, not a proof).
    claimed_sender: bytes = b""


def _msg_type(plaintext: bytes) -> str:
    # Messages are msgpack lists [version, type, ...]: fixarray byte, version, type.
    if len(plaintext) >= 3 and plaintext[2] in TYPE_NAMES:
        return TYPE_NAMES[plaintext[2]]
    return "other"


class ReplicaPort(Protocol):
    """What the service needs of the replica (``gossipmgr.runtime.replica.Replica``)."""

    @property
    def name(self) -> str: ...

    @property
    def incarnation(self) -> int: ...

    @property
    def state(self) -> ClusterState: ...

    @property
    def hlc(self) -> HLC: ...

    #: the service counts ``outbox_dropped`` here
    counters: dict[str, int]

    def now_ms(self) -> int: ...

    def on_local_send(self, listener: Callable[[LWWMap], None]) -> None: ...

    def remote_applied(self, novel: LWWMap) -> None: ...

    async def persist(self, novel: LWWMap) -> None: ...


R = TypeVar("R", bound=ReplicaPort)


class GossipService(Generic[R]):
    """Gossip for one replica (``R``: what the agent passes, seen through ``ReplicaPort``)."""

    def __init__(
        self,
        replica: R,
        transport: Transport,
        keyring: Keyring,
        *,
        boot_ms: int,
        config: GossipConfig | None = None,
    ):
        self.replica = replica
        self.transport = transport
        self.ae = AntiEntropy(replica.name, replica.incarnation, replica.state, replica.hlc, config)
        self._outbox_send, self._outbox = trio.open_memory_channel[tuple[str, bytes]](OUTBOX_LIMIT)
        self._urgent_send, self._urgent = trio.open_memory_channel[tuple[str, bytes]](URGENT_LIMIT)
        replica.on_local_send(self._local_write)
        self.sealer = Sealer(keyring, node_id(replica.name), boot_ms)
        self.addrs: dict[str, Addr] = {}
        #: senders Serf has not named to us yet -> where their last datagram came from
        self.reply_to: dict[str, Addr] = {}
        self.counters = Counters()
        #: source address -> its authentication failures (insertion order = LRU order)
        self.auth_failures: dict[Addr, AuthFailures] = {}
        self._persist_send, self._persist_recv = trio.open_memory_channel[LWWMap](PERSIST_QUEUE)
        self.persist_window_ms = PERSIST_WINDOW_MS
        self._catchup_logged = True
        #: told every peer set given to :meth:`set_peers` (the agent keeps the last one in
        #: its data dir, to catch up from at its next start before Serf names them)
        self.on_peers: Callable[[dict[str, Addr], Mapping[str, str] | None], None] | None = None

    @property
    def local_addr(self) -> Addr:
        return self.transport.local_addr

    def set_keyring(self, keyring: Keyring) -> None:
        """Rotate keys at run time (SIGHUP): new primary for sending, all for receiving."""
        self.sealer.keyring = keyring

    def set_peers(self, peers: dict[str, Addr], alive: Mapping[str, str] | None = None) -> None:
        """The gossipmgr instances to gossip with (name -> gossip address; self excluded).

        ``alive``: those Serf lists as alive, each with its boot id. A peer that is new (and
        alive) or comes back (alive again, or a new boot id) is caught up with at once
        (``AntiEntropy.set_peers``); this instance's first peers too, so a restart starts
        pulling what it missed as soon as Serf names them.
        """
        peers = {n: a for n, a in peers.items() if n != self.replica.name}
        if peers != self.addrs:
            log.info("%s: gossip peers now %s", self.replica.name, sorted(peers))
        self.addrs = dict(peers)
        if self.on_peers is not None:
            self.on_peers(self.addrs, alive)
        for n in peers:
            self.reply_to.pop(n, None)
        before = self.ae.catchup
        self._queue(self.ae.set_peers(sorted(peers), self.replica.now_ms(), alive))
        cu = self.ae.catchup
        if cu is not None and cu is not before:
            log.info("%s: catch-up: started with %s", self.replica.name, ", ".join(cu.peers))
            self._catchup_logged = False

    def probe_unheard(self, names: Iterable[str], within_ms: float) -> None:
        """Ask the peers among ``names`` not heard from lately (``AntiEntropy.probe_unheard``:
        the lease loop of an instance that may need a majority)."""
        self._queue(self.ae.probe_unheard(names, self.replica.now_ms(), within_ms))

    def ask(self, out: list[tuple[str, bytes]]) -> None:
        """Send what the protocol returned to a caller outside the service's loops (a confirm
        round: ``AntiEntropy.confirm_ask``, ``runtime.confirm``)."""
        self._queue(out)

    def _log_catchup(self) -> None:
        cu = self.ae.catchup
        if cu is not None and cu.done_ms is not None and not self._catchup_logged:
            self._catchup_logged = True
            log.info("%s: catch-up: done %s", self.replica.name, cu.summary())

    def _queue(self, out: list[tuple[str, bytes]]) -> None:
        for item in out:
            try:
                urgent = _msg_type(item[1]) in URGENT
                (self._urgent_send if urgent else self._outbox_send).send_nowait(item)
            except trio.WouldBlock:
                self.replica.counters["outbox_dropped"] += 1

    def _local_write(self, novel: LWWMap) -> None:
        """Push a local write to the peers now, in the writer's task: each datagram is
        sealed and handed to the socket without waiting (``Transport.try_send``), before
        the writer waits for its fsync. Only what the socket does not take at once (or
        after the transport closed) goes through the outbox and the send task, as
        everything else does: no wake-up of that task, no scheduler round and no address
        resolution per datagram of a local write."""
        out = self.ae.push_local(novel, self.replica.now_ms()).out
        for i, (peer, payload) in enumerate(out):
            sealed = self._seal(peer, payload)
            if sealed is None:
                continue  # counted
            try:
                sent = self.transport.try_send(sealed[0], sealed[1])
            except trio.ClosedResourceError:
                sent = False
            if not sent:
                self._queue(out[i:])
                return
            self.counters.incr("pushed_now")
            self._count_sent(payload, sealed[0])

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._receive_loop)
            nursery.start_soon(self._send_loop, self._outbox)
            nursery.start_soon(self._send_loop, self._urgent)
            nursery.start_soon(self._tick_loop)
            nursery.start_soon(self._persist_loop)
            task_status.started(self.transport.local_addr)

    async def _receive_loop(self) -> None:
        while True:
            data, src = await self.transport.recv()
            self.counters.incr("datagrams_received")
            self.counters.incr("bytes_received", len(data))
            try:
                opened = self.sealer.open_untrusted(data, self.replica.now_ms())
            except BadPacket as exc:
                self.counters.incr(f"drop_{exc.reason}")
                if exc.reason in AUTH_REASONS:
                    self._note_auth_failure(src, exc.reason, data)
                continue
            kind = _msg_type(opened.plaintext)
            self.counters.incr(f"recv_{kind}")
            self.counters.incr(f"recv_bytes_{kind}", len(data))
            res = self.ae.receive_untrusted(opened.plaintext, self.replica.now_ms())
            self._note_reply_to(res.out, opened.sender_id, src)
            self._queue(res.out)
            if res.novel is not None and len(res.novel):
                self.replica.remote_applied(res.novel)
                await self._persist_send.send(res.novel)

    def _note_reply_to(self, out: list[tuple[str, bytes]], sender_id: bytes, src: Addr) -> None:
        """Answers to an instance Serf has not named to us yet go to the datagram's source.

        At a start, Serf names the new instance's peers to it before it names the new
        instance to them (their membership poll): without this, the new instance's
        catch-up digest was dropped (``no_address``) and its catch-up began only once they
        caught up with it. Only answers to this very datagram (the protocol answers its
        sender only) and only when the datagram's authenticated sender id is the
        recipient's: the source address is not authenticated, but the datagram is fresh,
        sealed for us by a key holder, and never replayable (``Sealer``).
        """
        for peer, _ in out:
            if peer in self.addrs or node_id(peer) != sender_id:
                continue
            self.reply_to.pop(peer, None)
            self.reply_to[peer] = src  # most recent last
            if len(self.reply_to) > MAX_REPLY_TO:
                del self.reply_to[next(iter(self.reply_to))]
            self.counters.incr("reply_to_source")
            return

    def _note_auth_failure(self, src: Addr, reason: str, data: bytes) -> None:
        f = self.auth_failures.pop(src, None)
        # Logged once per host while any of its sources is kept: anyone can send such
        # datagrams, each from a new port, and a warning each would flood the log.
        said = f is not None or any(a[0] == src[0] for a in self.auth_failures)
        if f is None:
            f = AuthFailures()
            if len(self.auth_failures) >= MAX_FAILING_SOURCES:
                del self.auth_failures[next(iter(self.auth_failures))]
        self.auth_failures[src] = f  # most recent last
        f.count += 1
        f.last_ms = self.replica.now_ms()
        f.reasons.incr(reason)
        if len(data) >= HEADER_LEN:
            f.claimed_sender = bytes(data[5 : 5 + SENDER_ID_LEN])
        if not said:
            log.warning(
                "%s: gossip datagram from %s:%s failed authentication (%s): a peer whose "
                "gossip key differs from ours?",
                self.replica.name,
                *src[:2],
                reason,
            )

    async def _send_loop(self, outbox: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        async for peer, payload in outbox:
            sealed = self._seal(peer, payload)
            if sealed is None:
                continue
            self._count_sent(payload, sealed[0])
            await self.transport.send(*sealed)

    def _seal(self, peer: str, payload: bytes) -> tuple[bytes, Addr] | None:
        """The datagram of ``payload`` for ``peer`` and where it goes; None (counted) when
        there is no address for the peer or it cannot be sealed."""
        dest = self.addrs.get(peer) or self.reply_to.get(peer)
        if dest is None:
            self.counters.incr("drop_no_address")
            return None
        try:
            return self.sealer.seal(payload, self.replica.now_ms(), to=node_id(peer)), dest
        except ValueError as exc:
            # A payload over the datagram budget is a bug upstream (the protocol sizes
            # them); dropping it costs a retransmit, raising would stop all gossip.
            self.counters.incr("drop_unsealable")
            kind = _msg_type(payload)
            log.error("%s: %s message to %s not sent: %s", self.replica.name, kind, peer, exc)
            return None

    def _count_sent(self, payload: bytes, sealed: bytes) -> None:
        kind = _msg_type(payload)
        self.counters.incr("datagrams_sent")
        self.counters.incr("bytes_sent", len(sealed))
        self.counters.incr(f"sent_{kind}")
        self.counters.incr(f"sent_bytes_{kind}", len(sealed))

    async def _tick_loop(self) -> None:
        interval = self.ae.cfg.tick_ms / 1000
        while True:
            self._queue(self.ae.tick(self.replica.now_ms()))
            self._log_catchup()
            await trio.sleep(interval)

    async def _persist_loop(self) -> None:
        """Persist remote deltas in one group commit per ``persist_window_ms`` at most.

        Each append is a group commit of its own (a hand-off to the store's thread and two
        fdatasyncs): one per received delta cost a replica more CPU than receiving it. So
        the first delta of a batch waits up to the window for those arriving after it, and
        the lot goes to disk in one append. Remote deltas are persisted best effort (peers
        still hold them: ``Replica.persist``); what is held when the service stops is
        appended before it returns (shielded), so a graceful stop loses none."""
        async for novel in self._persist_recv:
            batch = [novel]
            try:
                await trio.sleep(self.persist_window_ms / 1000)
            finally:
                while True:  # whatever else is queued: one append (one fsync) for the lot
                    try:
                        batch.append(self._persist_recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                merged = batch[0]
                if len(batch) > 1:
                    merged = LWWMap.lazy()  # a delta: never digested, so never hashed
                    for d in batch:
                        merged.join(d)
                with trio.CancelScope(shield=True):
                    await self.replica.persist(merged)

    def stats(self) -> dict[str, Any]:
        return {
            "transport": dict(self.counters),
            "refused": dict(self.sealer.refused),
            "socket": dict(self.transport.counters),
            "protocol": self.ae.stats(self.replica.now_ms()),
        }
