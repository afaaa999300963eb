"""Public fakes for tests and simulations (like ``trio.testing``): a deterministic network.

``InMemoryNetwork`` is a seeded discrete-event datagram network, usable WITHOUT trio: pure
simulations call ``send(src, dst, data, now_ms)`` and ``deliver(now_ms)`` and advance their own
clock to ``next_due()``. All randomness comes from one ``random.Random(seed)``, so a seed
replays the same run exactly (trio's ``test_dtls.py`` drives its fake network with a seeded
``random.Random`` choosing deliver/drop/dupe/delay; memberlist's ``mock_transport.go`` wires
transports together with no sockets).

``network.endpoint(addr)`` gives an ``InMemoryTransport``: the trio adapter satisfying
``gossipmgr.gossip.transport.Transport``, timed by trio's clock, so the real gossip loop runs
without sockets and under ``trio.testing``'s ``autojump_clock`` delays cost no wall time.

What happens to one datagram, in order: refused by a partition or a cut (``reachable``);
else ``route_hook(src, dst, data, now_ms)`` decides if set and it returns non-None; else
dropped with probability ``drop``, duplicated with probability ``dup``; each copy gets an
independent delay uniform in ``delay``. With ``reorder=False`` each (src, dst) link is FIFO.
Partitions and cuts are applied when a datagram is sent; datagrams already in flight arrive.

Counters (``network.counters``): ``sent``, ``delivered``, ``dropped`` (total) and its parts
``dropped_partition``, ``dropped_cut``, ``dropped_hook``, ``dropped_random``,
``dropped_unreachable`` (no endpoint at dst), ``dropped_inbox_full``; ``duplicated`` (extra
copies made).
"""

from __future__ import annotations

import collections
import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType

import trio

from gossipmgr.gossip.crypto import MAX_DATAGRAM, Counters
from gossipmgr.gossip.transport import Addr

__all__ = ["INBOX_LIMIT", "InMemoryNetwork", "InMemoryTransport", "RouteHook"]

RouteHook = Callable[[Addr, Addr, bytes, float], Sequence[float] | None]
"""``hook(src, dst, data, now_ms)`` -> None (use the random defaults), or the delays in ms of
the copies to deliver: ``[]`` drops, ``[5.0]`` delivers once after 5 ms, ``[1.0, 9.0]`` dupes."""

# Datagrams queued at an endpoint nobody reads, like a socket's receive buffer; beyond it new
# arrivals are dropped (as the kernel does), which keeps a stalled reader from eating memory.
INBOX_LIMIT = 4096


class InMemoryNetwork:
    """A deterministic, seeded datagram network between addresses. See the module docstring.

    Raises ValueError for probabilities outside [0, 1] or a bad delay range. Not thread-safe.
    """

    def __init__(
        self,
        seed: int,
        drop: float = 0.0,
        dup: float = 0.0,
        delay: tuple[float, float] = (0.0, 0.0),
        reorder: bool = True,
        route_hook: RouteHook | None = None,
    ) -> None:
        if not (0.0 <= drop <= 1.0 and 0.0 <= dup <= 1.0):
            raise ValueError("drop and dup are probabilities in [0, 1]")
        lo, hi = delay
        if not 0.0 <= lo <= hi:
            raise ValueError("delay must be (min_ms, max_ms) with 0 <= min_ms <= max_ms")
        self.seed = seed
        self.drop = drop
        self.dup = dup
        self.delay = (float(lo), float(hi))
        self.reorder = reorder
        self.route_hook = route_hook
        self.counters = Counters()
        self._rng = random.Random(seed)
        self._seq = 0  # tie-break: equal due times deliver in send order
        self._queue: list[tuple[float, int, Addr, Addr, bytes]] = []
        self._link_last: dict[tuple[Addr, Addr], float] = {}
        self._group_of: dict[Addr, int] = {}
        self._cuts: set[tuple[Addr, Addr]] = set()
        self._endpoints: dict[Addr, InMemoryTransport] = {}
        self._changed: trio.Event | None = None

    # --- faults ---------------------------------------------------------------------------

    def partition(self, groups: Iterable[set[Addr]]) -> None:
        """Drop traffic between addresses of different groups (replaces any earlier partition).

        Addresses named in no group are not partitioned from anyone. Raises ValueError if an
        address is in two groups.
        """
        group_of: dict[Addr, int] = {}
        for i, group in enumerate(groups):
            for addr in group:
                if addr in group_of:
                    raise ValueError(f"{addr!r} is in two partition groups")
                group_of[addr] = i
        self._group_of = group_of

    def cut(self, a: Addr, b: Addr, both_ways: bool = True) -> None:
        """Drop everything sent from ``a`` to ``b`` (and from ``b`` to ``a`` if both_ways)."""
        self._cuts.add((a, b))
        if both_ways:
            self._cuts.add((b, a))

    def uncut(self, a: Addr, b: Addr, both_ways: bool = True) -> None:
        """Undo ``cut``."""
        self._cuts.discard((a, b))
        if both_ways:
            self._cuts.discard((b, a))

    def heal(self) -> None:
        """Remove every partition and cut."""
        self._group_of = {}
        self._cuts.clear()

    def reachable(self, src: Addr, dst: Addr) -> bool:
        """Whether a datagram sent now from ``src`` to ``dst`` passes partitions and cuts."""
        return self._why_unreachable(src, dst) is None

    def _why_unreachable(self, src: Addr, dst: Addr) -> str | None:
        gs, gd = self._group_of.get(src), self._group_of.get(dst)
        if gs is not None and gd is not None and gs != gd:
            return "partition"
        if (src, dst) in self._cuts:
            return "cut"
        return None

    # --- the pure discrete-event core -----------------------------------------------------

    def _dropped(self, why: str) -> None:
        self.counters.incr("dropped")
        self.counters.incr(f"dropped_{why}")

    def send(self, src: Addr, dst: Addr, data: bytes, now_ms: float) -> None:
        """Put one datagram on the wire at ``now_ms``. Never raises for network reasons."""
        data = bytes(data)
        self.counters.incr("sent")
        why = self._why_unreachable(src, dst)
        if why is not None:
            self._dropped(why)
            return
        delays: Sequence[float] | None = None
        if self.route_hook is not None:
            delays = self.route_hook(src, dst, data, now_ms)
            if delays is not None and not delays:
                self._dropped("hook")
                return
        if delays is None:
            # Draw order is fixed (drop, dup, then one delay per copy) so a seed replays.
            if self._rng.random() < self.drop:
                self._dropped("random")
                return
            copies = 2 if self._rng.random() < self.dup else 1
            lo, hi = self.delay
            delays = [self._rng.uniform(lo, hi) for _ in range(copies)]
        if len(delays) > 1:
            self.counters.incr("duplicated", len(delays) - 1)
        for d in delays:
            if d < 0:
                raise ValueError("route_hook returned a negative delay")
            due = now_ms + d
            if not self.reorder:
                due = max(due, self._link_last.get((src, dst), -math.inf))
                self._link_last[(src, dst)] = due
            heapq.heappush(self._queue, (due, self._seq, src, dst, data))
            self._seq += 1

    def _pop_due(self, now_ms: float) -> list[tuple[Addr, Addr, bytes]]:
        out: list[tuple[Addr, Addr, bytes]] = []
        while self._queue and self._queue[0][0] <= now_ms:
            _, _, src, dst, data = heapq.heappop(self._queue)
            out.append((src, dst, data))
        return out

    def deliver(self, now_ms: float) -> list[tuple[Addr, Addr, bytes]]:
        """Remove and return every datagram due at or before ``now_ms``, in delivery order
        (due time, then send order), as ``(src, dst, data)``."""
        out = self._pop_due(now_ms)
        self.counters.incr("delivered", len(out))
        return out

    def next_due(self) -> float | None:
        """When the next datagram is due (ms), or None if nothing is in flight."""
        return self._queue[0][0] if self._queue else None

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    # --- the trio adapter's plumbing ------------------------------------------------------

    def endpoint(self, addr: Addr) -> InMemoryTransport:
        """Attach a trio ``InMemoryTransport`` at ``addr`` (close it to detach).

        Raises ValueError if ``addr`` already has an open endpoint.
        """
        if addr in self._endpoints:
            raise ValueError(f"{addr!r} already has an endpoint")
        ep = InMemoryTransport(self, addr)
        self._endpoints[addr] = ep
        return ep

    def _event(self) -> trio.Event:
        if self._changed is None:
            self._changed = trio.Event()
        return self._changed

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    def _pump(self, now_ms: float) -> None:
        """Move due datagrams into their endpoints' inboxes; wake waiting receivers."""
        moved = False
        for src, dst, data in self._pop_due(now_ms):
            ep = self._endpoints.get(dst)
            if ep is None:
                self._dropped("unreachable")
            elif len(ep._inbox) >= INBOX_LIMIT:
                self._dropped("inbox_full")
            else:
                self.counters.incr("delivered")
                ep._inbox.append((data, src))
                moved = True
        if moved:
            self._notify()


def _now_ms() -> float:
    return trio.current_time() * 1000.0


class InMemoryTransport:
    """A ``Transport`` on an ``InMemoryNetwork``, timed by trio's clock (ms = seconds * 1000).

    Made by ``InMemoryNetwork.endpoint``; the caller owns it and closes it (also usable as a
    ``with`` block). ``send`` raises ValueError over MAX_DATAGRAM and ClosedResourceError
    after close; it never raises for loss. Every datagram is delivered by whichever task
    calls ``recv`` on any endpoint of the network, so at least the receivers must be running.
    """

    def __init__(self, network: InMemoryNetwork, addr: Addr) -> None:
        self._network = network
        self._addr = addr
        self._inbox: collections.deque[tuple[bytes, Addr]] = collections.deque()
        self._closed = False
        self.counters = Counters()

    @property
    def local_addr(self) -> Addr:
        return self._addr

    async def send(self, data: bytes, addr: Addr) -> None:
        if self._closed:
            raise trio.ClosedResourceError("endpoint is closed")
        if len(data) > MAX_DATAGRAM:
            raise ValueError(f"datagram of {len(data)} B exceeds MAX_DATAGRAM={MAX_DATAGRAM}")
        await trio.lowlevel.checkpoint()
        self._network.send(self._addr, addr, bytes(data), _now_ms())
        self.counters.incr("sent")
        self._network._notify()  # a receiver may be sleeping past this datagram's due time

    async def recv(self) -> tuple[bytes, Addr]:
        """The next datagram for this endpoint, waiting on trio's clock until one is due.

        Raises trio.ClosedResourceError once the endpoint is closed.
        """
        net = self._network
        while True:
            if self._closed:
                raise trio.ClosedResourceError("endpoint is closed")
            net._pump(_now_ms())
            if self._inbox:
                await trio.lowlevel.checkpoint()
                if self._inbox and not self._closed:
                    self.counters.incr("received")
                    return self._inbox.popleft()
                continue
            due = net.next_due()
            changed = net._event()
            with trio.move_on_at(math.inf if due is None else due / 1000.0) as scope:
                await changed.wait()
            if scope.cancelled_caught and due is not None:
                # Woken by the deadline: pump at `due` itself, since seconds->ms float
                # rounding can leave current_time()*1000 a hair below it (and under
                # autojump_clock that would spin forever without time moving).
                net._pump(max(_now_ms(), due))

    def close(self) -> None:
        """Detach from the network; datagrams to this address are then dropped (unreachable)."""
        if not self._closed:
            self._closed = True
            if self._network._endpoints.get(self._addr) is self:
                del self._network._endpoints[self._addr]
            self._network._notify()

    def __enter__(self) -> InMemoryTransport:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
