"""The lease: which single instance acts on health events and runs jobs. Pure.

There is no coordinator, so the lease is an entry of the replicated map (``("lease",)``) whose
merge order is "higher epoch wins, then the holder earlier in name order, then the later
timestamp" (``state.lease_rank``). Every instance runs :func:`decide` on its own replica with
its own view of Serf membership and the current physical time, and commits what it returns.

Rules:

* Candidates are the alive gossipmgr members in Serf, sorted by name (``candidates``).
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import StaleEpoch


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

    def as_value(self) -> dict[str, Any]:
        return {"holder": self.holder, "epoch": self.epoch, "expires_ms": self.expires_ms}

    @classmethod
    def from_value(cls, v: Any) -> Lease | None:
        if not isinstance(v, dict):
            return None
        h, e, x = v.get("holder"), v.get("epoch"), v.get("expires_ms")
        if isinstance(h, str) and type(e) is int and type(x) is int:
            return cls(h, e, x)
        return None


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


def is_holder(me: str, lease: Lease | None, cands: Sequence[str], now_ms: int) -> bool:
    """True if ``me`` may act now: it holds an unexpired lease and is itself a candidate."""
    return lease is not None and lease.holder == me and now_ms < lease.expires_ms and me in cands


def decide(
    me: str,
    lease: Lease | None,
    cands: Sequence[str],
    now_ms: int,
    cfg: LeaseConfig,
    floor: int = 0,
) -> Lease | None:
    """What ``me`` should write now: a renewal or a claim, or None to do nothing.

    ``floor`` is the highest epoch any fenced record carries (``ClusterState.
    max_record_epoch``). A holder that crashed right after claiming may have had its
    actions reach us but not its claim; the lease must then move past that epoch, or every
    later write under the older epoch would lose to the dead holder's records.
    """
    if me not in cands:
        return None
    if lease is not None and lease.holder == me and now_ms < lease.expires_ms:
        if lease.epoch < floor:
            return Lease(me, floor + 1, now_ms + cfg.ttl_ms)  # re-grant past the floor
        if lease.expires_ms - now_ms <= cfg.ttl_ms - cfg.renew_ms:
            return Lease(me, lease.epoch, now_ms + cfg.ttl_ms)
        return None
    if not vacant(lease, cands, now_ms, cfg):
        return None
    # The expired holder (alive in Serf but silent: hung, or its gossip cut) goes to the
    # back of the line, so the next candidate claims at once instead of a TTL later.
    order = [c for c in cands if lease is None or c != lease.holder]
    if lease is not None and lease.holder in cands:
        order.append(lease.holder)
    rank = order.index(me)
    if rank > 0:
        expired_at = lease.expires_ms if lease is not None else 0
        if now_ms < expired_at + rank * cfg.ttl_ms:
            return None
    epoch = max(lease.epoch if lease is not None else 0, floor) + 1
    return Lease(me, epoch, now_ms + cfg.ttl_ms)


def check_fence(lease: Lease | None, epoch: int, holder: str, what: str = "action") -> None:
    """Refuse an action made under ``(epoch, holder)`` if the lease has moved past it.

    Raises StaleEpoch.
    """
    if lease is None:
        return
    if epoch < lease.epoch or (epoch == lease.epoch and holder != lease.holder):
        raise StaleEpoch(epoch, lease.epoch, what)
