"""Public fakes for tests (like ``trio.testing``): a deterministic network with trio endpoints.

``InMemoryNetwork`` is the seeded discrete-event network of ``gossipmgr.testing.netsim``
(usable without trio; see there for what happens to a datagram and the counters) plus
``network.endpoint(addr)``, which gives an ``InMemoryTransport``: the trio adapter satisfying
``gossipmgr.gossip.transport.Transport``, timed by trio's clock, so the real gossip loop runs
without sockets and under ``trio.testing``'s ``autojump_clock`` delays cost no wall time
(memberlist's ``mock_transport.go`` wires transports together with no sockets).
"""

from __future__ import annotations

import collections
import functools
import math
from types import TracebackType

import trio

from gossipmgr.gossip.datagram import MAX_DATAGRAM, Counters
from gossipmgr.gossip.transport import Addr
from gossipmgr.testing.netsim import RouteHook, SimNetwork

__all__ = ["INBOX_LIMIT", "InMemoryNetwork", "InMemoryTransport", "RouteHook"]

# Datagrams queued at an endpoint nobody reads, like a socket's receive buffer; beyond it new
# arrivals are dropped (as the kernel does), which keeps a stalled reader from eating memory.
INBOX_LIMIT = 4096


class InMemoryNetwork(SimNetwork):
    """A ``SimNetwork`` whose datagrams are delivered to trio endpoints (``endpoint``).

    Raises ValueError for probabilities outside [0, 1] or a bad delay range. Not thread-safe.
    """

    #: the trio wake-up of receivers waiting for a datagram's due time (made on demand)
    _changed: trio.Event | None = None

    @functools.cached_property
    def _endpoints(self) -> dict[Addr, InMemoryTransport]:
        return {}

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

    def try_send(self, data: bytes, addr: Addr) -> bool:
        """``send`` without its checkpoint (an in-memory network never blocks)."""
        if self._closed:
            raise trio.ClosedResourceError("endpoint is closed")
        if len(data) > MAX_DATAGRAM:
            raise ValueError(f"datagram of {len(data)} B exceeds MAX_DATAGRAM={MAX_DATAGRAM}")
        self._network.send(self._addr, addr, bytes(data), _now_ms())
        self.counters.incr("sent")
        self._network._notify()
        return True

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
