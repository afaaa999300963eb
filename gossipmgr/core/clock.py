"""Hybrid logical clock (Kulkarni, Demirbas et al., "Logical Physical Clocks", 2014).

A timestamp is ``(ms, logical, node)``: ``ms`` tracks physical time (milliseconds since the
epoch), ``logical`` orders events within one millisecond and across clock skew, and
``node`` (the instance name) breaks the remaining ties, so two timestamps issued by different
instances never compare equal and the order is total.

Pure: physical time is always passed in (``phys_ms``); nothing here reads a clock. The
two rules:

* local or send event: ``l' = max(l, pt)``; ``c' = c + 1`` if ``l' == l`` else ``0``.
* receive event of remote ``(lm, cm)``: ``l' = max(l, lm, pt)``; ``c'`` is the successor of
  the largest counter among those whose ``l`` equals ``l'`` (0 if only ``pt`` does).

Bounded skew (CockroachDB's rule): a remote timestamp more than ``max_offset_ms`` ahead of
local physical time is refused with :class:`~gossipmgr.errors.ClockError` and counted, never
adopted, so one instance with a wild clock cannot drag every other clock into the future.
With skews inside the bound, a write issued after observing another write always carries a
larger timestamp, which is what last-writer-wins needs.
"""

from __future__ import annotations

from typing import NamedTuple

from gossipmgr.errors import ClockError

#: Default bound on how far a remote timestamp may run ahead of local physical time.
#: 500 ms is CockroachDB's default maximum offset; NTP keeps LAN hosts within a few ms.
DEFAULT_MAX_OFFSET_MS = 500


class Timestamp(NamedTuple):
    """A hybrid logical timestamp. Ordered by ``(ms, logical, node)``.

    A named tuple, not a dataclass: every entry carries one, so making and comparing them
    is on the restore path (30,000 per 10,000 nodes) and in every join; a tuple is made in
    a third of the time and compares in C (issue 17, start time)."""

    ms: int
    logical: int
    node: str

    def __str__(self) -> str:
        return f"{self.ms}.{self.logical}@{self.node}"


ZERO = Timestamp(0, 0, "")


class HLC:
    """One instance's hybrid logical clock.

    ``last`` may be given to resume after a restart (the highest timestamp found in the
    restored state), so the clock never goes backwards across restarts even if the wall
    clock did.
    """

    def __init__(
        self,
        node: str,
        *,
        max_offset_ms: int = DEFAULT_MAX_OFFSET_MS,
        last: Timestamp | None = None,
    ) -> None:
        if not node:
            raise ValueError("HLC node id must be non-empty")
        self.node = node
        self.max_offset_ms = max_offset_ms
        self._l = last.ms if last else 0
        self._c = last.logical if last else 0
        #: remote timestamps refused for being too far ahead
        self.refused = 0
        #: the largest forward offset seen (remote ms - local physical ms), for /metrics
        self.max_seen_offset_ms = 0

    @property
    def last(self) -> Timestamp:
        return Timestamp(self._l, self._c, self.node)

    def now(self, phys_ms: int) -> Timestamp:
        """Timestamp a local event (a write). Strictly greater than every earlier result."""
        if phys_ms > self._l:
            self._l, self._c = phys_ms, 0
        else:
            self._c += 1
        return Timestamp(self._l, self._c, self.node)

    def check(self, ts: Timestamp, phys_ms: int) -> None:
        """Raise ClockError (and count it) if ``ts`` is too far ahead of ``phys_ms``."""
        ahead = ts.ms - phys_ms
        if ahead > self.max_seen_offset_ms:
            self.max_seen_offset_ms = ahead
        if ahead > self.max_offset_ms:
            self.refused += 1
            raise ClockError(
                f"remote timestamp {ts} is {ahead} ms ahead of local time "
                f"(max offset {self.max_offset_ms} ms)"
            )

    def observe(self, ts: Timestamp, phys_ms: int) -> None:
        """Merge a remote timestamp (receive event). Raises ClockError if it is too far ahead."""
        self.check(ts, phys_ms)
        l_old, c_old = self._l, self._c
        self._l = max(l_old, ts.ms, phys_ms)
        if self._l == l_old and self._l == ts.ms:
            self._c = max(c_old, ts.logical) + 1
        elif self._l == l_old:
            self._c = c_old + 1
        elif self._l == ts.ms:
            self._c = ts.logical + 1
        else:
            self._c = 0

    def advance_to(self, ts: Timestamp) -> None:
        """Never issue a timestamp <= ``ts`` (used on restore; no offset check)."""
        if (ts.ms, ts.logical) > (self._l, self._c):
            self._l, self._c = ts.ms, ts.logical
