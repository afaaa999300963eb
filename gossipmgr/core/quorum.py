"""The majority rule: may this instance claim or keep the lease? Pure, time passed in.

An instance claims or renews the lease only while its Serf view holds a *strict majority*
of the known gossipmgr instances: the alive ones plus the failed ones (a failed instance
may be alive on the other side of a partition); members that left gracefully do not count
(they said goodbye: nobody acts on their behalf). In any partition with a majority side,
only that side can hold, so only that side acts; a minority side keeps serving reads and
taking writes with no holder. An instance Serf lists alive counts only if we heard from it
over gossip lately (:func:`heard_window_ms`): an isolated instance's Serf view can list
everyone alive for tens of seconds; and only once caught up with, if it was heard *again*
after going that long unheard (a heal, a restart, a new peer): it may hold a newer lease
that has not reached us yet. While this instance holds a valid lease and held a majority
at its previous evaluation (:func:`keeps_through_catch_up`), such a peer counts on neither
side until caught up with: it cannot take the holder's majority away (a restart of the
other of two made the holder step down, stopping its job), nor give one.

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

from gossipmgr.core.lease import Lease

__all__ = ["ALONE", "Quorum", "heard_window_ms", "keeps_through_catch_up", "quorum"]


@dataclass(frozen=True)
class Quorum:
    """What one instance's Serf view (and its gossip) says about the majority."""

    #: instances Serf lists alive that we heard from over gossip lately, this one included
    sees: int
    #: instances Serf lists alive or failed (left ones do not count)
    known: int
    #: the two-instance rule lets this instance hold without a majority
    solo: bool = False
    #: instances Serf lists alive that we have not heard from lately, or heard again but
    #: not caught up with (in ``known``, not in ``sees``)
    unheard: int = 0
    #: instances heard again but not caught up with that the holder counts on neither
    #: side (:func:`keeps_through_catch_up`)
    catching_up: int = 0

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
        if self.catching_up:
            seen += f" (and {self.catching_up} catching up, counted on neither side)"
        if self.majority:
            return f"majority: {seen}"
        if self.solo:
            return f"solo (two-instance rule): {seen}, the other failed long enough"
        if self.unheard:
            seen += (
                f" ({self.unheard} alive in Serf but not heard from over gossip lately, or not"
                " caught up with since)"
            )
        return f"no majority: {seen}"

    def as_json(self) -> dict[str, Any]:
        return {
            "majority": self.majority,
            "may_hold": self.may_hold,
            "sees": self.sees,
            "known": self.known,
            "unheard": self.unheard,
            "catching_up": self.catching_up,
            "solo": self.solo,
            "reason": self.describe(),
        }


#: The shortest window of :func:`heard_window_ms`: an instance that may need a majority
#: probes the peers it has not heard from lately every 2 s (``probe_unheard`` in
#: gossip/catchup.py, called by the lease loop), so a live one is heard well within it.
MIN_HEARD_MS = 5_000

#: A lone instance (no Serf view yet, or a standalone one): a majority of one.
ALONE = Quorum(1, 1)


def heard_window_ms(ttl_ms: int, renew_ms: int) -> int:
    """How recently an instance must have been heard from over gossip to count as seen.

    Serf's view of an isolated instance can list every other member alive for tens of
    seconds (Lifeguard slows its probes when nothing answers), and its copy of the lease
    expires ``ttl - renew`` after it last heard a renewal at the latest: without this,
    it claimed then, "with a majority". A peer it last heard before the cut is unheard
    for at least that long by then, so the window stays below it (500 ms of margin for
    the loop's period). Live peers are heard far more often: the holder's renewals (every
    ``renew``) are acknowledged by every peer, and an instance that may need a majority
    probes the peers it has not heard lately every 2 s; the window is also at most two
    renewal periods, so a holder cut off from its peers stops within two missed rounds of
    acknowledgements. It is never below 5 s (MIN_HEARD_MS): with a TTL under 5.5 s plus the
    renewal period, an isolated instance may therefore still count peers heard just before
    the cut.
    """
    return max(MIN_HEARD_MS, min(2 * renew_ms, ttl_ms - renew_ms - 500))


def keeps_through_catch_up(me: str, lease: Lease | None, now_ms: int, prev: Quorum) -> bool:
    """``me`` holds an unexpired lease and held a strict majority at its previous evaluation
    (``prev``): peers it is catching up with then count on neither side (:func:`quorum`'s
    ``keep``). A solo or forced holder does not qualify, nor one that lost its majority.
    """
    return lease is not None and lease.holder == me and now_ms < lease.expires_ms and prev.majority


def quorum(
    me: str,
    alive: Collection[str],
    failed_since: Mapping[str, float],
    now: float,
    solo_after: float | None,
    heard: Collection[str] | None = None,
    ever: Collection[str] | None = None,
    behind: Collection[str] = (),
    keep: bool = False,
) -> Quorum:
    """The majority as ``me`` sees it.

    ``alive``: instances Serf lists alive (``me`` among them when Serf lists us);
    ``failed_since``: the instances Serf lists failed, each with the time (same clock as
    ``now``, seconds) since when we have seen it failed; ``solo_after``: the two-instance
    bound in seconds (None: off); ``heard``: the instances heard from over gossip within
    :func:`heard_window_ms` (None: count every alive one); ``ever``: those heard from at
    least once since they became our gossip peers (None: all); ``behind``: those heard
    again after a gap (or restarted, or new) that we have not caught up with since
    (``AntiEntropy.caught_up``); ``keep``: :func:`keeps_through_catch_up`.

    An instance counts as seen when Serf lists it alive and (it is ``me`` or) we heard from
    it lately and are not behind it. One Serf lists alive that never spoke to us (just
    joined, or a bare ``serf agent`` tagged as an instance) is not counted at all until it
    does: it cannot take a majority away. One we are behind counts as known but not seen,
    so it cannot give a majority (an instance cut off while the others moved the lease on
    must not claim on its stale copy); with ``keep`` it is not counted at all, so it
    cannot take the holder's majority away either. A failed one always counts. A name in
    both ``alive`` and ``failed_since`` is counted as alive.
    """
    listed = set(alive)
    if ever is not None:
        listed = {n for n in listed if n == me or n in ever}
    late = {n for n in behind if n != me}
    aside = listed & late if keep else set()
    listed -= aside
    up = listed if heard is None else {n for n in listed if n == me or n in heard}
    up -= late
    failed = {n: t for n, t in failed_since.items() if n not in set(alive)}
    known = len(listed) + len(failed)
    q = Quorum(len(up), known, unheard=len(listed - up), catching_up=len(aside))
    if q.majority or solo_after is None or known != 2 or listed != {me} or up != {me}:
        return q
    (since,) = failed.values()
    return Quorum(q.sees, q.known, solo=now - since >= solo_after)
