"""The majority rule: may this instance claim or keep the lease? Pure, time passed in.

An instance claims or renews the lease only while its Serf view holds a *strict majority*
of the known gossipmgr instances: the alive ones plus the failed ones (a failed instance
may be alive on the other side of a partition); members that left gracefully do not count
(they said goodbye: nobody acts on their behalf). In any partition with a majority side,
only that side can hold, so only that side acts; a minority side keeps serving reads and
taking writes with no holder.

Two instances cannot have a majority once one fails: 1 of 2 is not more than half. The
survivor therefore takes over once Serf has declared the other failed for longer than
``solo_after`` (an operator-set bound, ``lease_solo_after_s``; None: never by itself), and
an operator can always override with ``gossipmgr lease take --force`` (``core.lease.take``).
Both accept that a two-instance cluster cut in two may act on both sides: with two
instances, "the other is dead" and "the other is cut off" look the same from either side.

See docs/design.md ("The lease") and docs/partitions.md.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["ALONE", "Quorum", "quorum"]


@dataclass(frozen=True)
class Quorum:
    """What one instance's Serf view says about the majority."""

    #: instances Serf lists alive, this one included
    sees: int
    #: instances Serf lists alive or failed (left ones do not count)
    known: int
    #: the two-instance rule lets this instance hold without a majority
    solo: bool = False

    @property
    def majority(self) -> bool:
        """A strict majority of the known instances is alive in our view."""
        return self.sees * 2 > self.known

    @property
    def may_hold(self) -> bool:
        """This instance may claim or renew the lease."""
        return self.majority or self.solo

    def describe(self) -> str:
        """One line for /health, ``gossipmgr peers`` and ``gossipmgr lease``."""
        if self.known == 0:
            return "no majority: no Serf view"
        seen = f"sees {self.sees} of {self.known} instances"
        if self.majority:
            return f"majority: {seen}"
        if self.solo:
            return f"solo (two-instance rule): {seen}, the other failed long enough"
        return f"no majority: {seen}"

    def as_json(self) -> dict[str, Any]:
        return {
            "majority": self.majority,
            "may_hold": self.may_hold,
            "sees": self.sees,
            "known": self.known,
            "solo": self.solo,
            "reason": self.describe(),
        }


#: A lone instance (no Serf view yet, or a standalone one): a majority of one.
ALONE = Quorum(1, 1)


def quorum(
    me: str,
    alive: Collection[str],
    failed_since: Mapping[str, float],
    now: float,
    solo_after: float | None,
) -> Quorum:
    """The majority as ``me`` sees it.

    ``alive``: instances Serf lists alive (``me`` among them when Serf lists us);
    ``failed_since``: the instances Serf lists failed, each with the time (same clock as
    ``now``, seconds) since when we have seen it failed; ``solo_after``: the two-instance
    bound in seconds (None: off). A name in both is counted as alive.
    """
    up = set(alive)
    failed = {n: t for n, t in failed_since.items() if n not in up}
    known = len(up) + len(failed)
    q = Quorum(len(up), known)
    if q.majority or solo_after is None or known != 2 or up != {me}:
        return q
    (since,) = failed.values()
    return Quorum(q.sees, q.known, solo=now - since >= solo_after)
