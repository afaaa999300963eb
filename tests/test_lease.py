"""The lease, pure: decisions, fencing, and 1,000 seeded schedules over the in-memory
network with a fake (lagging, partitionable) membership."""

from __future__ import annotations

import random

import pytest

from gossipmgr.errors import StaleEpoch
from gossipmgr.gossip.sim import Sim, addr
from gossipmgr.lease import Lease, LeaseConfig, check_fence, decide, is_holder
from gossipmgr.state import LEASE_KEY, job_key

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


class LeaseSim:
    """Sim + a lease loop per instance + a membership view that lags reality."""

    def __init__(self, seed: int, n: int) -> None:
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
        self.views: dict[str, set[str]] = {n: set(self.names) for n in self.names}
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
            self.pending.append((at, n, set(self.group_of(n))))

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
        lease = Lease.from_value(inst.state.lease())
        epoch = lease.epoch if lease else 0
        assert epoch >= self.max_epoch_seen[n], "epochs only grow"
        self.max_epoch_seen[n] = epoch
        new = decide(n, lease, cands, phys, CFG, inst.state.max_record_epoch)
        if new is not None:
            value = new.as_value()
            self.sim.write(n, lambda st, ts: st.d_set(LEASE_KEY, value, ts))
        lease = Lease.from_value(inst.state.lease())
        self.steps += 1
        if is_holder(n, lease, cands, phys) and lease is not None and self.steps % 4 == 0:
            # An action under the lease: a fenced job record stamped with our epoch.
            self.actions.append((n, lease.epoch))
            self.sim.write(
                n,
                lambda st, ts, e=lease.epoch: st.d_set(
                    job_key("last-action"), {"by": n, "epoch": e}, ts
                ),
            )

    def holders(self, group: set[str]) -> set[str]:
        out = set()
        for n in group - self.crashed:
            lease = Lease.from_value(self.sim.inst[n].state.lease())
            if is_holder(n, lease, sorted(self.views[n]), self.sim.phys(n)):
                out.add(n)
        return out


def run_lease_schedule(seed: int) -> None:
    ls = LeaseSim(seed, n=ls_size(seed))
    rnd = ls.rnd
    ls.run(3_000)
    assert len(ls.holders(set(ls.names))) == 1, f"seed {seed}: one holder at start"
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
    current = Lease.from_value(ls.sim.inst[sorted(live)[0]].state.lease())
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
        rec = ls.sim.inst[n].state.job("last-action")
        assert rec == {"by": holder, "epoch": current.epoch}, f"seed {seed}: {rec}"


def ls_size(seed: int) -> int:
    return 3 + seed % 3


def test_1000_lease_schedules_one_holder_growing_epochs_fenced_actions() -> None:
    for seed in range(1000):
        run_lease_schedule(seed)
