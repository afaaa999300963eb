"""A seeded discrete-event datagram network, pure: no trio, no sockets, no clock reads.

Simulations call ``send(src, dst, data, now_ms)`` and ``deliver(now_ms)`` and advance their
own clock to ``next_due()`` (``gossipmgr.testing.sim``). All randomness comes from one
``random.Random(seed)``, so a seed replays the same run exactly (trio's ``test_dtls.py``
drives its fake network with a seeded ``random.Random`` choosing deliver/drop/dupe/delay).
``gossipmgr.testing.network.InMemoryNetwork`` is this network with trio endpoints attached.

What happens to one datagram, in order: refused by a partition or a cut (``reachable``);
else ``route_hook(src, dst, data, now_ms)`` decides if set and it returns non-None; else
dropped with probability ``drop``, duplicated with probability ``dup``; each copy gets an
independent delay uniform in ``delay``. With ``reorder=False`` each (src, dst) link is FIFO.
Partitions and cuts are applied when a datagram is sent; datagrams already in flight arrive.

Counters (``network.counters``): ``sent``, ``delivered``, ``dropped`` (total) and its parts
``dropped_partition``, ``dropped_cut``, ``dropped_hook``, ``dropped_random``; the trio
endpoints add ``dropped_unreachable`` (no endpoint at dst) and ``dropped_inbox_full``;
``duplicated`` (extra copies made).
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Iterable, Sequence

from gossipmgr.gossip.datagram import Counters

__all__ = ["Addr", "RouteHook", "SimNetwork"]

Addr = tuple[str, int]
"""A peer address: (host, port), as ``gossipmgr.gossip.transport.Addr``."""

RouteHook = Callable[[Addr, Addr, bytes, float], Sequence[float] | None]
"""``hook(src, dst, data, now_ms)`` -> None (use the random defaults), or the delays in ms of
the copies to deliver: ``[]`` drops, ``[5.0]`` delivers once after 5 ms, ``[1.0, 9.0]`` dupes."""


class SimNetwork:
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
