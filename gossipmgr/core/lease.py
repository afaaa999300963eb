"""The lease: which single instance acts on health events and runs jobs. Pure.

There is no coordinator, so the lease is an entry of the replicated map (``("lease",)``) whose
merge order is "higher epoch wins, then the holder earlier in name order, then the later
timestamp" (``state.lease_rank``). Every instance runs :func:`decide` on its own replica with
its own view of Serf membership and the current physical time, and commits what it returns.

Rules:

* Candidates are the alive gossipmgr members in Serf, sorted by name (``candidates``).
* An instance claims or renews only while its Serf view holds a strict majority of the
  known instances, or the two-instance rule lets it (``core.quorum``; ``decide``'s
  ``may_hold``); a holder without one stops acting at once (``is_holder``). An operator can
  override with :func:`take` (a forced grant, renewed without a majority, naming who forced it).
* The holder renews (same epoch, new expiry) once less than ``ttl - renew`` is left.
* The lease is *vacant* when absent, expired, or its holder is not an alive candidate (Serf
  says failed or left) *and* has missed a renewal by half a period (its renewals stopped
  reaching us: a holder whose renewals still arrive is alive and reachable, whatever a
  lagging Serf view says). A vacant lease is claimed with ``epoch + 1`` by the first candidate
  at once (the expired holder itself, if still listed, goes last); the candidate at rank
  ``r`` claims only ``r * ttl`` after expiry, so a first candidate that is alive in Serf but
  not acting is passed over, and a healthy one is never raced.
* Concurrent claims of one epoch merge to the same winner everywhere (name order); the loser
  sees it is not the holder on its next decision and stops acting.

Trust (see docs/design.md, "What a gossip-key holder can do to the lease"):

* A lease never lasts longer than ``ttl + MAX_SKEW_MS`` past the time it was written (its
  entry's hybrid timestamp, which a receiver refuses when it is more than 500 ms ahead of
  its clock): :func:`bounded`. A forged entry with ``expires_ms`` a year away is read, on
  every replica alike, as expiring one TTL after it was written; an honest grant (``now +
  ttl``, stamped at or after ``now``) is never cut.
* :func:`reset` is the operator's way out: a vacant lease one epoch above everything seen,
  which deposes the holder (its later actions are fenced) and is claimed at once.
* Claimants are ranked live first (:func:`decide`'s ``live``): a candidate Serf lists that
  we have not heard from over gossip (a stale member, a bare ``serf agent`` tagged as a
  gossipmgr instance) goes to the back of the line instead of costing a TTL each.

Fencing (Kleppmann's tokens): every action taken under the lease carries ``(epoch, holder)``;
:func:`check_fence` refuses one that is older than the current lease. Records written under
the lease are also merged epoch-first (``state.fenced_rank``), so a deposed holder's late
writes lose on every replica.

What this can promise (see docs/design.md): at most one holder per connected group once
gossip has converged; epochs only grow; a stale action is refused. It cannot promise mutual
exclusion across a partition: each side may elect its own holder (with the same or different
epochs); after the heal, the order above keeps exactly one and fences the other.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gossipmgr.core.clock import DEFAULT_MAX_OFFSET_MS
from gossipmgr.errors import Conflict, StaleEpoch

#: Clock skew a lease's expiry is allowed past ``written + ttl``: the HLC's bound on how far
#: ahead of a receiver a timestamp may be (docs/design.md). Expiry is the only place clocks
#: matter to the lease.
MAX_SKEW_MS = DEFAULT_MAX_OFFSET_MS
#: The largest epoch written (a signed 64-bit integer, as the codec encodes it). Honest
#: epochs grow by one per claim and never get near it; a forged one can sit there, and then
#: no claim can outbid it: decide() does nothing (it used to raise on encoding, crashing
#: the lease loop) and reset() refuses, naming the cause.
MAX_EPOCH = 2**63 - 1


@dataclass(frozen=True)
class LeaseConfig:
    """Lease timing. See docs/design.md for the worst-case takeover arithmetic."""

    #: Time to live of a grant. Serf marks a killed agent failed in ~5-6 s here (LAN
    #: profile), so a holder whose whole host dies is replaced on Serf's word; the TTL only
    #: matters when Serf still says "alive" but the instance stopped renewing (hung, or
    #: its gossip cut). 10 s keeps that case near Serf's own detection time.
    ttl_ms: int = 10_000
    #: Renew when less than ``ttl - renew_ms`` is left, i.e. every ~2.5 s: four chances to
    #: get one renewal through before expiry, even with gossip loss.
    renew_ms: int = 2_500


@dataclass(frozen=True)
class Lease:
    holder: str
    epoch: int
    expires_ms: int
    #: Who forced this grant without a majority (``take``); "" for an ordinary grant.
    forced_by: str = ""

    def as_value(self) -> dict[str, Any]:
        v: dict[str, Any] = {
            "holder": self.holder,
            "epoch": self.epoch,
            "expires_ms": self.expires_ms,
        }
        if self.forced_by:
            v["forced_by"] = self.forced_by
        return v

    @classmethod
    def from_value(cls, v: Any) -> Lease | None:
        if not isinstance(v, dict):
            return None
        h, e, x = v.get("holder"), v.get("epoch"), v.get("expires_ms")
        if isinstance(h, str) and type(e) is int and type(x) is int:
            f = v.get("forced_by")
            return cls(h, e, x, f if isinstance(f, str) else "")
        if type(e) is int:
            # Malformed (only a gossip-key holder can write one), but the merge still ranks
            # it by its epoch (state.lease_rank). Read as absent, every claim and reset at a
            # lower epoch would lose to it for good; read as vacant at that epoch, the next
            # claim (or a reset) goes past it.
            return cls("", e, 0)
        return None


def bounded(lease: Lease, written_ms: int, cfg: LeaseConfig) -> Lease:
    """``lease`` as every replica must read it: expiring at most ``ttl + MAX_SKEW_MS`` after
    ``written_ms`` (the ms of the entry's hybrid timestamp).

    The holder writes ``now + ttl`` stamped at or after ``now``, so an honest grant is never
    cut; anything further out (a forged entry, or a peer configured with a longer TTL) is
    read as ending there. Every replica holds the same entry, so all read the same expiry.
    An expiry before 0 (1970) is read as 0: expired all the same, and showable as a date.
    """
    limit = written_ms + cfg.ttl_ms + MAX_SKEW_MS
    expires = max(0, min(lease.expires_ms, limit))
    return lease if expires == lease.expires_ms else replace(lease, expires_ms=expires)


def acting_holder(lease: Lease | None, cands: Sequence[str], now_ms: int) -> str | None:
    """The holder, if it is an alive candidate holding an unexpired lease, else None."""
    if lease is None or now_ms >= lease.expires_ms or lease.holder not in cands:
        return None
    return lease.holder


def reset(
    lease: Lease | None, cands: Sequence[str], now_ms: int, floor: int = 0, force: bool = False
) -> Lease:
    """The operator's reset: a vacant lease (no holder, already expired) one epoch above
    both ``lease`` and ``floor``. It outranks every lease seen so far, so it replaces a
    forged or stuck one everywhere it reaches; the first candidate claims the next epoch
    within one lease-loop period. The deposed holder's later actions carry an older epoch
    and are fenced: a job it runs is stopped.

    Raises Conflict while an alive candidate holds a valid lease, unless ``force``: that
    holder is acting, and a reset would only stop its jobs.
    """
    holder = acting_holder(lease, cands, now_ms)
    if holder is not None and not force:
        raise Conflict(
            f"{holder} holds a valid lease (epoch {lease.epoch if lease else 0}) and is alive: "
            "a reset would stop its jobs; pass force to reset anyway"
        )
    epoch = max(lease.epoch if lease is not None else 0, floor) + 1
    if epoch > MAX_EPOCH:
        raise Conflict(
            f"the lease epoch is exhausted ({epoch - 1}, written by a gossip-key holder): "
            "no lease can outbid it (see docs/design.md)"
        )
    return Lease("", epoch, 0)


def candidates(alive_instances: Sequence[str]) -> list[str]:
    """The membership order: alive gossipmgr instances sorted by name."""
    return sorted(set(alive_instances))


def overdue(lease: Lease, now_ms: int, cfg: LeaseConfig) -> bool:
    """True once the holder has missed a renewal by half a period.

    The holder renews ``renew_ms`` after each grant (``expires - ttl``); its renewals are
    what tells us it still acts. Serf can say "failed" about a holder whose renewals still
    reach us (a partition Serf has not re-merged yet, while gossip already flows): such a
    holder is alive and reachable, and claiming over it would start a lease war.
    """
    return now_ms >= lease.expires_ms - cfg.ttl_ms + cfg.renew_ms + cfg.renew_ms // 2


def vacant(
    lease: Lease | None, cands: Sequence[str], now_ms: int, cfg: LeaseConfig | None = None
) -> bool:
    """Absent, expired, or held by an instance Serf no longer lists whose renewals stopped."""
    if lease is None or now_ms >= lease.expires_ms:
        return True
    return lease.holder not in cands and overdue(lease, now_ms, cfg or LeaseConfig())


def is_holder(
    me: str, lease: Lease | None, cands: Sequence[str], now_ms: int, may_hold: bool = True
) -> bool:
    """True if ``me`` may act now: it holds an unexpired lease, is itself a candidate, and
    its Serf view holds a majority (``may_hold``, ``core.quorum``) or the grant was forced.
    A holder that loses its majority stops acting at once, not when its grant expires."""
    return (
        lease is not None
        and lease.holder == me
        and now_ms < lease.expires_ms
        and me in cands
        and (may_hold or bool(lease.forced_by))
    )


def take(
    me: str,
    lease: Lease | None,
    cands: Sequence[str],
    now_ms: int,
    cfg: LeaseConfig,
    by: str,
    floor: int = 0,
) -> Lease:
    """The operator's override (``gossipmgr lease take --force``): ``me`` holds the lease
    one epoch above everything seen, with or without a majority, recording ``by`` (who
    forced it). While ``me`` has no majority it keeps renewing the forced grant (``decide``);
    once it has one again, the renewal is an ordinary one. Every other holder is deposed:
    its later actions carry an older epoch and are fenced.

    Raises Conflict if ``me`` is not a candidate (Serf does not list it alive) or the epoch
    is exhausted.
    """
    if me not in cands:
        raise Conflict(f"{me} is not a lease candidate (Serf does not list it alive)")
    epoch = max(lease.epoch if lease is not None else 0, floor) + 1
    if epoch > MAX_EPOCH:
        raise Conflict(
            f"the lease epoch is exhausted ({epoch - 1}, written by a gossip-key holder): "
            "no lease can outbid it (see docs/design.md)"
        )
    return Lease(me, epoch, now_ms + cfg.ttl_ms, forced_by=by or "an API client")


def decide(
    me: str,
    lease: Lease | None,
    cands: Sequence[str],
    now_ms: int,
    cfg: LeaseConfig,
    floor: int = 0,
    live: Collection[str] | None = None,
    may_hold: bool = True,
) -> Lease | None:
    """What ``me`` should write now: a renewal or a claim, or None to do nothing.

    ``may_hold``: our Serf view holds a majority of the known instances, or the
    two-instance rule applies (``core.quorum``). Without it ``me`` neither claims nor
    renews, except that a grant forced by an operator (``take``) is renewed as forced.

    ``floor`` is the highest epoch any fenced record carries (``ClusterState.
    max_record_epoch``). A holder that crashed right after claiming may have had its
    actions reach us but not its claim; the lease must then move past that epoch, or every
    later write under the older epoch would lose to the dead holder's records.

    ``live``: the candidates we have heard from over gossip lately (None: all of them;
    ``me`` always counts). Only the claim order uses it: live candidates first, then the
    others, then an expired holder still listed. Whether the lease is vacant still depends
    on Serf and the holder's renewals alone, so a holder is never claimed over sooner.
    A Serf member tagged as a gossipmgr instance that runs none never renews anything: at
    rank 0 it would cost every takeover a TTL (three of them: 23.5 s instead of 3.2 s).
    """
    if me not in cands:
        return None
    if lease is not None and lease.holder == me and now_ms < lease.expires_ms:
        if not may_hold and not lease.forced_by:
            return None  # lost the majority: stop renewing (is_holder already says no)
        forced = "" if may_hold else lease.forced_by
        if lease.epoch < floor:
            if floor >= MAX_EPOCH:
                return None  # nothing can outbid it
            return Lease(me, floor + 1, now_ms + cfg.ttl_ms, forced)  # re-grant past the floor
        if lease.expires_ms - now_ms <= cfg.ttl_ms - cfg.renew_ms or forced != lease.forced_by:
            return Lease(me, lease.epoch, now_ms + cfg.ttl_ms, forced)
        return None
    if not may_hold or not vacant(lease, cands, now_ms, cfg):
        return None
    # The expired holder (alive in Serf but silent: hung, or its gossip cut) goes to the
    # back of the line, so the next candidate claims at once instead of a TTL later.
    others = [c for c in cands if lease is None or c != lease.holder]
    if live is not None:
        heard = [c for c in others if c == me or c in live]
        others = heard + [c for c in others if c != me and c not in live]
    order = others
    if lease is not None and lease.holder in cands:
        order.append(lease.holder)
    rank = order.index(me)
    if rank > 0:
        expired_at = lease.expires_ms if lease is not None else 0
        if now_ms < expired_at + rank * cfg.ttl_ms:
            return None
    epoch = max(lease.epoch if lease is not None else 0, floor) + 1
    if epoch > MAX_EPOCH:
        return None  # nothing can outbid it
    return Lease(me, epoch, now_ms + cfg.ttl_ms)


def check_fence(lease: Lease | None, epoch: int, holder: str, what: str = "action") -> None:
    """Refuse an action made under ``(epoch, holder)`` if the lease has moved past it.

    Raises StaleEpoch.
    """
    if lease is None:
        return
    if epoch < lease.epoch or (epoch == lease.epoch and holder != lease.holder):
        raise StaleEpoch(epoch, lease.epoch, what)


def reconcile_due(
    epoch: int,
    reconciled_epoch: int,
    now: float,
    last: float,
    every: float,
    soon: bool,
    quiet_for: float = float("inf"),
    settle: float = 0.0,
) -> bool:
    """Whether the holder reconciles inventory against Serf now: at takeover (an epoch it
    has not reconciled under) and when asked ``soon`` (the instance set changed), once its
    Serf view has been quiet (no member changed) for ``settle`` seconds (``quiet_for``:
    how long it has been); otherwise every ``every`` seconds (``now`` and ``last``, the
    previous reconcile, in seconds).

    Right after a heal or a takeover the view is mid-change: acting on it once flapped a
    dead node back to Discovered (docs/design.md, "Takeover"). A pending takeover or
    instance-set reconcile also holds back the periodic one."""
    if epoch != reconciled_epoch or soon:
        return quiet_for >= settle
    return now - last > every


def settling(epoch: int, reconciled_epoch: int, soon: bool) -> bool:
    """True while a takeover or instance-set reconcile is pending: the holder then leaves
    Serf's node events to that reconcile (made from a settled view) instead of applying
    them from a view that may be mid-change."""
    return epoch != reconciled_epoch or soon
