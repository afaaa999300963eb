"""The lease, pure: decisions, fencing, and 250 seeded schedules over the in-memory
network with a fake (lagging, partitionable) membership (bench/sim_schedules.py: 1,000)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmgr.core.clock import HLC
from gossipmgr.core.crdt import Entry
from gossipmgr.core.lease import (
    MAX_EPOCH,
    MAX_SKEW_MS,
    Lease,
    LeaseConfig,
    bounded,
    check_fence,
    decide,
    is_holder,
    reconcile_due,
    reset,
)
from gossipmgr.core.state import LEASE_KEY, ClusterState, job_key, lease_rank
from gossipmgr.errors import Conflict, StaleEpoch
from gossipmgr.testing.sim import Sim, addr

CFG = LeaseConfig(ttl_ms=2_000, renew_ms=500)


def test_first_candidate_claims_a_free_lease_others_wait() -> None:
    cands = ["a", "b", "c"]
    assert decide("a", None, cands, 1_000, CFG) == Lease("a", 1, 3_000)
    assert decide("b", None, cands, 1_000, CFG) is None


def test_holder_renews_before_expiry_and_not_too_often() -> None:
    lease = Lease("a", 4, 3_000)
    assert decide("a", lease, ["a", "b"], 1_100, CFG) is None  # 1.9 s left of 2 s
    assert decide("a", lease, ["a", "b"], 1_600, CFG) == Lease("a", 4, 3_600)


def test_failed_holder_is_replaced_once_its_renewals_stop() -> None:
    lease = Lease("a", 4, 10_000)  # granted at 8,000; next renewal due at 8,500
    # Serf says a failed, but its last renewal is fresh: it is alive and reachable to us.
    assert decide("b", lease, ["b", "c"], 8_600, CFG) is None
    # ...half a renewal period overdue: a really stopped renewing; b claims at once.
    assert decide("b", lease, ["b", "c"], 8_750, CFG) == Lease("b", 5, 10_750)
    assert decide("c", lease, ["b", "c"], 8_750, CFG) is None
    # a still listed by Serf but silent: after expiry b claims, a goes to the back
    assert decide("b", lease, ["a", "b", "c"], 10_000, CFG) == Lease("b", 5, 12_000)
    assert decide("c", lease, ["a", "b", "c"], 10_000, CFG) is None
    # if b does not act either, c claims one TTL later
    assert decide("c", lease, ["a", "b", "c"], 12_000, CFG) == Lease("c", 5, 14_000)


def test_lease_moves_past_epochs_seen_in_records() -> None:
    # A crashed holder's epoch-5 action reached us, its claim did not: never trail it.
    assert decide("b", Lease("b", 4, 9_000), ["b"], 1_000, CFG, floor=5) == Lease("b", 6, 3_000)
    assert decide("c", None, ["c"], 0, CFG, floor=7) == Lease("c", 8, 2_000)


def test_non_candidates_never_act() -> None:
    assert decide("z", None, ["a"], 0, CFG) is None
    assert not is_holder("a", Lease("a", 1, 10), [], 0)


def test_fence_refuses_older_epochs_and_lost_concurrent_claims() -> None:
    current = Lease("b", 5, 0)
    check_fence(current, 5, "b")
    check_fence(current, 6, "c")  # newer than what we know: not ours to refuse
    with pytest.raises(StaleEpoch):
        check_fence(current, 4, "b")
    with pytest.raises(StaleEpoch):
        check_fence(current, 5, "a")  # same epoch, the claim that lost the merge


# --- a forged lease is bounded; the operator can reset it ------------------------------------


def first_claim_at(me: str, lease: Lease, written: int, cands: list[str]) -> int | None:
    """When ``me``, deciding every 250 ms from ``written`` on, first writes something."""
    for t in range(written, written + 20 * CFG.ttl_ms, 250):
        if decide(me, bounded(lease, written, CFG), cands, t, CFG) is not None:
            return t
    return None


@settings(max_examples=300, deadline=None)
@given(
    holder=st.sampled_from(["0-mallory", "a", "b", "zz-gone", ""]),
    epoch=st.integers(0, 2**62),
    ahead_ms=st.integers(0, 2**62),
    written=st.integers(1_000_000, 2_000_000),
)
def test_a_forged_far_future_lease_is_claimed_within_one_ttl_of_being_written(
    holder: str, epoch: int, ahead_ms: int, written: int
) -> None:
    """A gossip-key holder writes {holder, epoch, expires_ms: anything}. Its timestamp
    cannot be more than MAX_SKEW_MS ahead of a receiver (the HLC refuses it), so written is
    at most that. The first live candidate acts (claims, or renews if it is named) no later
    than one TTL + skew after: a year-long expiry buys nothing. ``b`` stands for a listed
    candidate that does not act."""
    forged = Lease(holder, epoch, written + ahead_ms)
    cands = ["a", "b"]
    t = first_claim_at("a", forged, written, cands)
    assert t is not None and t <= written + CFG.ttl_ms + MAX_SKEW_MS
    new = decide("a", bounded(forged, written, CFG), cands, t, CFG)
    assert new is not None and new.holder == "a"
    # a renews its own epoch, or claims the next one (over another holder, or its own
    # lease once expired)
    assert new.epoch == epoch + 1 or (holder == "a" and new.epoch == epoch)


def test_the_issue_case_a_lease_34_s_or_a_year_ahead() -> None:
    for ahead in (34_000, 365 * 86_400_000):
        forged = Lease("0-mallory", 9, 1_000_000 + ahead)
        t = first_claim_at("a", forged, 1_000_000, ["a", "b"])
        # not a holder Serf lists: claimable once it is overdue (a renewal and a half)
        assert t is not None and t <= 1_000_000 + MAX_SKEW_MS + CFG.renew_ms * 3 // 2 + 250


@settings(max_examples=300, deadline=None)
@given(
    now=st.integers(0, 2**50),
    hlc_ahead=st.integers(0, 10_000),
    held=st.booleans(),
    epoch=st.integers(0, 1_000),
)
def test_an_honest_grant_is_never_cut(now: int, hlc_ahead: int, held: bool, epoch: int) -> None:
    # The holder stamps its write with the HLC, at or after the physical time it decided at.
    current = Lease("a", epoch, now + CFG.ttl_ms - CFG.renew_ms) if held else None
    new = decide("a", current, ["a", "b"], now, CFG)
    assert new is not None
    assert bounded(new, now + hlc_ahead, CFG) == new


def test_reset_refuses_an_acting_holder_unless_forced_and_outranks_everything() -> None:
    acting = Lease("a", 7, 5_000)
    with pytest.raises(Conflict, match="a holds a valid lease"):
        reset(acting, ["a", "b"], 1_000)
    assert reset(acting, ["a", "b"], 1_000, force=True) == Lease("", 8, 0)
    # A holder that is not an alive candidate, an expired lease, none: no force needed.
    assert reset(Lease("0-mallory", 3, 10**15), ["a"], 1_000) == Lease("", 4, 0)
    assert reset(Lease("a", 3, 900), ["a"], 1_000, floor=11) == Lease("", 12, 0)
    assert reset(None, ["a"], 1_000) == Lease("", 1, 0)
    # It merges above the lease it replaces (higher epoch), whatever the timestamps.
    st_ = ClusterState()
    forged_ts = st_.map  # noqa: F841 (a fresh map: only ranks matter below)
    from gossipmgr.core.clock import Timestamp

    forged = Entry(Timestamp(9_999_999, 5, "zz"), Lease("0-mallory", 3, 10**15).as_value())
    reset_e = Entry(Timestamp(1, 0, "a"), Lease("", 4, 0).as_value())
    assert lease_rank(LEASE_KEY, reset_e) > lease_rank(LEASE_KEY, forged)
    # ...and the first candidate claims the next epoch at once; the others wait.
    assert decide("a", Lease("", 4, 0), ["a", "b"], 1_000, CFG) == Lease("a", 5, 3_000)
    assert decide("b", Lease("", 4, 0), ["a", "b"], 1_000, CFG) is None


def test_an_epoch_at_the_top_of_the_range_stops_claims_instead_of_crashing() -> None:
    # Claiming 2**63 (or 2**64) would not encode: the lease loop used to die of it.
    for top in (MAX_EPOCH, 2**64 - 1):
        stuck = Lease("0-mallory", top, 0)
        assert decide("a", stuck, ["a"], 1_000, CFG) is None
        assert decide("a", None, ["a"], 1_000, CFG, floor=top) is None  # via a record
        with pytest.raises(Conflict, match="epoch is exhausted"):
            reset(stuck, ["a"], 1_000)
    assert decide("a", Lease("b", MAX_EPOCH - 1, 0), ["a"], 1_000, CFG) == Lease(
        "a", MAX_EPOCH, 1_000 + CFG.ttl_ms
    )
    # A holder named in such a lease still renews it (same epoch).
    assert decide("a", Lease("a", MAX_EPOCH, 2_000), ["a"], 1_600, CFG) == Lease(
        "a", MAX_EPOCH, 1_600 + CFG.ttl_ms
    )


def merged_lease(*values: object) -> Lease | None:
    """Join lease entries written one after the other (as gossip would) and read the
    result as Replica.lease does."""
    from gossipmgr.core.clock import Timestamp

    st_ = ClusterState()
    for i, v in enumerate(values):
        st_.apply([(LEASE_KEY, Entry(Timestamp(1_000_000 + i, 0, "w"), v))])
    return read_lease(st_)


@pytest.mark.parametrize(
    "forged",
    [
        {"holder": "0-mallory", "epoch": 9},  # no expiry
        {"holder": "0-mallory", "epoch": 9, "expires_ms": 1.5e15},  # not an int
        {"holder": 7, "epoch": 9, "expires_ms": 10**15},  # not a name
        {"epoch": 9},
    ],
)
def test_a_malformed_lease_entry_is_outbid_by_the_next_claim_and_by_a_reset(
    forged: dict[str, object],
) -> None:
    """A gossip-key holder writes a lease entry that is not a valid lease but carries an
    epoch. The merge still ranks it by that epoch (state.lease_rank), so it must be read as
    vacant at that epoch: read as absent, every claim (epoch 1) and every reset lost the
    merge to it, and the cluster had no holder for good."""
    honest = Lease("a", 3, 1_010_000).as_value()
    read = merged_lease(honest, forged)
    assert read is not None and read.epoch == 9
    assert not is_holder("a", read, ["a", "b"], 1_000_500)
    claim = decide("a", read, ["a", "b"], 1_000_500, CFG)
    assert claim is not None and claim.epoch == 10
    assert merged_lease(honest, forged, claim.as_value()) == claim
    vacant = reset(read, ["a", "b"], 1_000_500)
    assert merged_lease(honest, forged, vacant.as_value()) == vacant


def test_an_expiry_before_1970_reads_as_expired_at_0() -> None:
    """lease_json shows the expiry as a date: one before year 1 made /health, /info/lease
    and /info/peers answer 500 while such a lease was current (for good at MAX_EPOCH)."""
    for expires in (-(2**62), -1):
        read = bounded(Lease("0-mallory", MAX_EPOCH, expires), 1_000_000, CFG)
        assert read == Lease("0-mallory", MAX_EPOCH, 0)
    assert bounded(Lease("a", 1, 5), 1_000_000, CFG) == Lease("a", 1, 5)


# --- candidates that are not live gossip peers -----------------------------------------------


def test_members_posing_as_instances_do_not_delay_takeover() -> None:
    """Three Serf members tagged role=gossipmgr sort before the real instances and never
    act. a held the lease and died (Serf dropped it, renewals stopped)."""
    cands = ["0-p1", "0-p2", "0-p3", "b", "c"]
    lease = Lease("a", 4, 10_000)  # granted at 8,000; overdue at 8,750
    # Old rule: b is at rank 3 and waits three TTLs past expiry.
    assert decide("b", lease, cands, 8_750, CFG) is None
    # b has heard from c over gossip, never from the others: it claims at once.
    assert decide("b", lease, cands, 8_750, CFG, live={"c"}) == Lease("b", 5, 10_750)
    assert decide("c", lease, cands, 8_750, CFG, live={"b"}) is None
    # The vacancy rule is untouched: a holder whose renewals still arrive is not claimed.
    assert decide("b", lease, cands, 8_600, CFG, live={"c"}) is None
    # ...nor one Serf still lists, before it expires, live or not.
    assert decide("b", lease, ["a", *cands], 9_900, CFG, live=set()) is None
    # If c is not heard from either, b still goes first among the real ones; c is next.
    assert decide("b", lease, cands, 8_750, CFG, live=set()) == Lease("b", 5, 10_750)
    assert decide("c", lease, cands, 8_750 + CFG.ttl_ms, CFG, live={"b"}) is None
    assert decide("c", lease, cands, 10_000 + CFG.ttl_ms, CFG, live={"b"}) == Lease(
        "c", 5, 12_000 + CFG.ttl_ms
    )


class LeaseSim:
    """Sim + a lease loop per instance + a membership view that lags reality."""

    def __init__(self, seed: int, n: int, phantoms: int = 0) -> None:
        self.rnd = random.Random(seed)
        self.sim = Sim(
            n,
            seed=seed,
            drop=self.rnd.choice([0.0, 0.05, 0.2]),
            dup=0.05,
            delay=(0.1, 5.0),
            max_skew_ms=100,
        )
        self.names = self.sim.names
        self.groups: list[set[str]] = [set(self.names)]
        self.crashed: set[str] = set()
        # membership view per instance: (effective_at_ms, view)
        #: Serf members tagged as instances that run no gossipmgr, named to sort first.
        self.phantoms = {f"0-phantom-{i}" for i in range(phantoms)}
        self.views: dict[str, set[str]] = {n: set(self.names) | self.phantoms for n in self.names}
        self.pending: list[tuple[float, str, set[str]]] = []
        self.max_epoch_seen: dict[str, int] = {n: 0 for n in self.names}
        self.actions: list[tuple[str, int]] = []  # (holder, epoch) of actions taken
        self.next_lease = {n: self.sim.now + self.rnd.uniform(0, 250) for n in self.names}
        self.steps = 0
        self.quiet = False  # when set, no lease decisions or actions (to compare replicas)

    def group_of(self, name: str) -> set[str]:
        for g in self.groups:
            if name in g:
                return g - self.crashed
        return {name}

    def _schedule_views(self) -> None:
        for n in self.names:
            # Serf takes a while to notice (failure detection), differently per instance.
            at = self.sim.now + self.rnd.uniform(100, 1_500)
            self.pending.append((at, n, set(self.group_of(n)) | self.phantoms))

    def partition(self, groups: list[set[str]]) -> None:
        self.groups = groups
        self.sim.net.partition([{addr(n) for n in g} for g in groups])
        self._schedule_views()

    def heal(self) -> None:
        self.groups = [set(self.names)]
        self.sim.net.heal()
        self._schedule_views()

    def crash(self, name: str) -> None:
        self.crashed.add(name)
        self.sim.inst[name].up = False
        self._schedule_views()

    def run(self, ms: float) -> None:
        end = self.sim.now + ms
        while self.sim.now < end:
            nxt = min(self.next_lease.values())
            self.sim.step(min(end, nxt))
            now = self.sim.now
            for at, n, view in list(self.pending):
                if at <= now:
                    self.views[n] = view
                    self.pending.remove((at, n, view))
            for n in self.names:
                if self.next_lease[n] > now:
                    continue
                self.next_lease[n] = now + 250
                if n in self.crashed or self.quiet:
                    continue
                self._lease_step(n)

    def _lease_step(self, n: str) -> None:
        inst = self.sim.inst[n]
        phys = self.sim.phys(n)
        cands = sorted(self.views[n])
        lease = read_lease(inst.state)
        epoch = lease.epoch if lease else 0
        assert epoch >= self.max_epoch_seen[n], "epochs only grow"
        self.max_epoch_seen[n] = epoch
        # Phantoms are never heard from; real instances are (a crashed one until Serf
        # drops it: the conservative side).
        live = None if not self.phantoms else set(self.names)
        new = decide(n, lease, cands, phys, CFG, inst.state.max_record_epoch, live)
        if new is not None:
            value = new.as_value()
            self.sim.write(n, lambda st, ts: st.d_set(LEASE_KEY, value, ts))
        lease = read_lease(inst.state)
        self.steps += 1
        if is_holder(n, lease, cands, phys) and lease is not None and self.steps % 4 == 0:
            # An action under the lease: a fenced job record stamped with our epoch.
            self.actions.append((n, lease.epoch))
            action = {"by": n, "epoch": lease.epoch}
            self.sim.write(n, lambda st, ts: st.d_set(job_key("last-action"), action, ts))

    def holders(self, group: set[str]) -> set[str]:
        out = set()
        for n in group - self.crashed:
            lease = read_lease(self.sim.inst[n].state)
            if is_holder(n, lease, sorted(self.views[n]), self.sim.phys(n)):
                out.add(n)
        return out


def read_lease(state: ClusterState) -> Lease | None:
    """What Replica.lease does: the entry, its expiry bounded by its timestamp."""
    e = state.map.entry(LEASE_KEY)
    lease = None if e is None or e.deleted else Lease.from_value(e.value)
    return None if lease is None or e is None else bounded(lease, e.ts.ms, CFG)


def run_lease_schedule(seed: int, phantoms: int = 0) -> None:
    ls = LeaseSim(seed, n=ls_size(seed), phantoms=phantoms)
    rnd = ls.rnd
    ls.run(3_000)
    assert len(ls.holders(set(ls.names))) == 1, f"seed {seed}: one holder at start"
    if phantoms:
        # The holder dies with no partition: a survivor holds the lease once Serf has
        # dropped it (<= 1.5 s here) and its renewals are overdue (<= 0.75 s), plus a
        # lease-loop period; phantoms sorted first cost nothing (old rule: a TTL each).
        holder = min(ls.holders(set(ls.names)))
        ls.crash(holder)
        t0 = ls.sim.now
        while not ls.holders(set(ls.names)) and ls.sim.now - t0 < 10_000:
            ls.run(50)
        took = ls.sim.now - t0
        assert took <= 1_500 + 750 + 250 + 250, f"seed {seed}: takeover took {took} ms"
    kind = rnd.choice(["partition", "crash_holder", "partition_and_crash", "quiet"])
    if kind in ("partition", "partition_and_crash"):
        members = list(ls.names)
        rnd.shuffle(members)
        cut = rnd.randint(1, len(members) - 1)
        ls.partition([set(members[:cut]), set(members[cut:])])
        ls.run(rnd.uniform(500, 4_000))
    if kind in ("crash_holder", "partition_and_crash"):
        # During a partition each side may have its own holder (documented): crash one.
        holder = min(ls.holders(set(ls.names)) or {ls.names[0]})
        ls.crash(holder)
        ls.run(rnd.uniform(500, 3_000))
    ls.heal()
    ls.run(5_000)  # views settle (<=1.5 s), gossip converges, expired claims resolve
    # Stop writing (a renewed lease has >= 1.5 s left) until in-flight renewals land; under
    # heavy loss that can take more than one quiet window, so resume and retry a few times.
    live = set(ls.names) - ls.crashed
    for _ in range(5):
        ls.quiet = True
        if ls.sim.run_until_converged(1_200, sorted(live)) is not None:
            break
        ls.quiet = False
        ls.run(2_000)
    assert ls.sim.converged(sorted(live)), f"seed {seed}: replicas converged"
    holders = ls.holders(live)
    assert len(holders) == 1, f"seed {seed}: holders {holders} in one connected group"
    # Fencing: every action taken under an older epoch is refused by the current lease,
    # and the replicated fenced record holds an action of the newest epoch.
    current = read_lease(ls.sim.inst[sorted(live)[0]].state)
    assert current is not None
    for who, epoch in ls.actions:
        if epoch < current.epoch:
            with pytest.raises(StaleEpoch):
                check_fence(current, epoch, who)
    # The holder acts; then a deposed actor (older epoch) writes later, by the clock, from
    # another live instance: the fenced record keeps the holder's action everywhere.
    holder = current.holder
    ls.sim.write(
        holder,
        lambda st, ts: st.d_set(job_key("last-action"), {"by": holder, "epoch": current.epoch}, ts),
    )
    stale_epoch = current.epoch - 1
    other = next(n for n in sorted(live) if n != holder) if len(live) > 1 else holder
    ls.sim.step(ls.sim.now + 50)
    ls.sim.write(
        other,
        lambda st, ts: st.d_set(
            job_key("last-action"), {"by": "deposed", "epoch": stale_epoch}, ts
        ),
    )
    assert ls.sim.run_until_converged(20_000, sorted(live)) is not None
    for n in live:
        rec = ls.sim.inst[n].state.map.get(job_key("last-action"))
        assert rec == {"by": holder, "epoch": current.epoch}, f"seed {seed}: {rec}"


def ls_size(seed: int) -> int:
    return 3 + seed % 3


def test_250_lease_schedules_one_holder_growing_epochs_fenced_actions() -> None:
    # bench/sim_schedules.py runs 1,000 and more (each schedule costs ~70 ms of CPU)
    for seed in range(250):
        run_lease_schedule(seed)


def test_100_lease_schedules_with_three_phantom_candidates_sorted_first() -> None:
    for seed in range(100):
        run_lease_schedule(seed, phantoms=3)


def test_reconcile_is_due_at_takeover_when_asked_and_then_periodically() -> None:
    # at takeover: an epoch not reconciled under yet
    assert reconcile_due(3, 2, now=10.0, last=9.0, every=5.0, soon=False)
    # same epoch, recent, not asked: not due
    assert not reconcile_due(3, 3, now=10.0, last=9.0, every=5.0, soon=False)
    # the instance set changed
    assert reconcile_due(3, 3, now=10.0, last=9.0, every=5.0, soon=True)
    # the period passed
    assert reconcile_due(3, 3, now=14.5, last=9.0, every=5.0, soon=False)
    assert not reconcile_due(3, 3, now=14.0, last=9.0, every=5.0, soon=False)


@pytest.mark.parametrize("value", [7, "x", [1, 2], None, True])
def test_a_raw_lease_entry_that_is_not_a_map_reads_as_absent(value: object) -> None:
    """``ClusterState.lease()`` (the raw entry the lease loop inspects) raised on a forged
    value that ``dict()`` cannot take; it reads as absent, as the other readers do."""
    state = ClusterState()
    state.apply(state.d_set(LEASE_KEY, value, HLC("x").now(1)))
    assert state.lease() is None
