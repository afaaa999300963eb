"""The majority simulation with catch-up and restarts (issue 18: rejoining peers). Pure.

``CatchUpSim`` extends ``testing.majoritysim.MajoritySim`` with what the lease loop counts
about returning peers:

* a peer heard again after going unheard for the heard window, restarted (a new
  incarnation) or never heard is *behind* until a digest exchange with it comes out equal,
  0.25-3 s later (``catch_up_ms``), as ``AntiEntropy.caught_up`` counts it; its first
  message after such a gap stands for a digest (what it holds arrives a round trip later);
* the quorum is the lease loop's (``runtime.leaseloop.Holder.refresh_peers``): the peers
  heard lately, those of them we are behind, ``core.quorum.keeps_through_catch_up`` (a
  holder with a majority counts a peer it is catching up with on neither side), and, until
  the instance has caught up with a peer since its start (or was alone with no other
  holder on record), a listed peer it never heard from counts as known;
* instances stop gracefully (Serf: left, counted nowhere) or crash (failed), and start
  again: a new incarnation, the replica kept, the volatile state (who was heard, caught up
  with, the previous quorum) lost.

``keep=False`` runs the rule as before this change (a peer we are behind counts as known,
for a holder too), ``guard=False`` without the start guard (a just-started instance
counts only the peers it heard from: "1 of 1" at once), to show what each fixes.
``run_rejoin_schedule`` draws seeded schedules of restarts (one peer, several at once, the
holder, after a crash) mixed with partitions and isolations, and checks them with
``check_schedule`` and ``CatchUpSim.two_holders``. Used by tests/test_quorum_rejoin.py
and bench/majority_sim.py.
"""

from __future__ import annotations

import random
from typing import Any

from gossipmgr.core.crdt import Entry, Key
from gossipmgr.core.quorum import Quorum, keeps_through_catch_up, quorum
from gossipmgr.testing.majoritysim import (
    LOOP_MS,
    Inst,
    MajoritySim,
    View,
    check_schedule,
    read_lease,
)

__all__ = ["CatchUpSim", "run_rejoin_schedule"]

#: the previous evaluation of an instance that has none (a start): no majority
NONE = Quorum(0, 0)


class CatchUpSim(MajoritySim):
    """See the module docstring. ``holds_at`` records, at every instant some instance's
    lease loop stepped, who holds and under which epoch: ``(ms, {instance: epoch})``."""

    def __init__(
        self,
        seed: int,
        n: int,
        *,
        keep: bool = True,
        guard: bool = True,
        catch_up_ms: tuple[float, float] = (250.0, 3_000.0),
        **kw: Any,
    ) -> None:
        self.left: set[str] = set()
        super().__init__(seed, n, **kw)
        self.keep, self.guard = keep, guard
        self.incarnation = {x: 1 for x in self.names}
        self.seen_inc: dict[str, dict[str, int]] = {x: {} for x in self.names}
        self.behind: dict[str, set[str]] = {x: set() for x in self.names}
        #: peer -> when a digest exchange with it first comes out equal (a catch-up takes
        #: ``catch_up_ms``: 0.2-3 s on the real protocol under load)
        self.equal_at: dict[str, dict[str, float]] = {x: {} for x in self.names}
        self.catch_up_ms = catch_up_ms
        self.synced = dict.fromkeys(self.names, False)
        self._q: dict[str, tuple[float, Quorum]] = {}
        self.holds_at: list[tuple[float, dict[str, int]]] = []

    # -- faults ----------------------------------------------------------------------------
    def stop(self, name: str) -> None:
        """A graceful stop: Serf lists it as left, so no instance counts it."""
        self.left.add(name)
        self.crash(name)

    def start(self, name: str) -> None:
        """Start a stopped or crashed instance again: a new incarnation, its replica kept."""
        self.crashed.discard(name)
        self.left.discard(name)
        self.incarnation[name] += 1
        i = self.inst[name]
        i.last_heard, i.events, i.soon = {}, [], False
        i.was_holding, i.reconciled_epoch, i.refresh_at = False, -1, []
        i.next_step = self.now + self.rng.uniform(0, LOOP_MS)
        self.behind[name], self.seen_inc[name], self.synced[name] = set(), {}, False
        self.equal_at[name] = {}
        self._q.pop(name, None)
        i.view = self._truth(name, None)
        self._refresh_all()

    # -- views: left instances are in neither list -----------------------------------------
    def _without_left(self, v: View) -> View:
        v.failed_since = {n: t for n, t in v.failed_since.items() if n not in self.left}
        return v

    def _truth(self, name: str, old: View | None) -> View:
        return self._without_left(super()._truth(name, old))

    def _stale(self, i: Inst) -> View:
        return self._without_left(super()._stale(i))

    def _update_view(self, i: Inst) -> None:
        """A peer the view no longer lists at all (it left) is dropped from the gossip peers
        with what we knew of it (``CatchUpPeers.set_peers``): back, it starts as new."""
        super()._update_view(i)
        v = i.view
        for p in [p for p in i.last_heard if p not in v.alive and p not in v.failed_since]:
            del i.last_heard[p]
            self.behind[i.name].discard(p)
            self.seen_inc[i.name].pop(p, None)
            self.equal_at[i.name].pop(p, None)

    # -- catch-up ----------------------------------------------------------------------------
    def _deliver(self, src: str, i: Inst, items: list[tuple[Key, Entry]]) -> None:
        seen = self.seen_inc[i.name]
        restarted = seen.get(src, self.incarnation[src]) != self.incarnation[src]
        seen[src] = self.incarnation[src]
        last = i.last_heard.get(src)
        if last is None or restarted or self.now - last >= self.heard_ms:
            i.last_heard[src] = self.now  # heard: a digest; its content comes next time
            self.behind[i.name].add(src)
            self.equal_at[i.name][src] = self.now + self.rng.uniform(*self.catch_up_ms)
            return
        if self.now >= self.equal_at[i.name].get(src, 0.0):
            self.behind[i.name].discard(src)  # an equal digest exchange: caught up
            self.synced[i.name] = True
        super()._deliver(src, i, items)

    def quorum_of(self, i: Inst) -> Quorum:
        """The lease loop's quorum, evaluated once per instant; the previous evaluation is
        what ``keeps_through_catch_up`` looks at."""
        if self.legacy:
            return super().quorum_of(i)
        at, prev = self._q.get(i.name, (None, NONE))
        if at == self.now:
            return prev
        heard = {p for p, t in i.last_heard.items() if self.now - t < self.heard_ms}
        behind = heard & self.behind[i.name]
        lease = read_lease(i.state, self.cfg)
        v = i.view
        first = not (set(v.alive) | set(v.failed_since)) - {i.name}
        if first and (lease is None or lease.holder == i.name):
            self.synced[i.name] = True  # alone, and no other holder on record
        ever = set(i.last_heard) if self.synced[i.name] or not self.guard else None
        keep = self.keep and keeps_through_catch_up(i.name, lease, self.phys(i), prev)
        now_s = self.now / 1000
        solo = self.solo_after_s
        q = quorum(i.name, v.alive, v.failed_since, now_s, solo, heard, ever, behind, keep)
        self._q[i.name] = (self.now, q)
        return q

    def _sample(self, stepped: bool) -> None:
        # After every instance's view update of this instant (an instance's quorum is
        # evaluated once per instant: evaluating another's before its update went stale).
        super()._sample(stepped)
        if not stepped:
            return
        holds = {}
        for x in self.names:
            lease = read_lease(self.inst[x].state, self.cfg)
            if x not in self.crashed and lease is not None and self.holding(self.inst[x]):
                holds[x] = lease.epoch
        self.holds_at.append((self.now, holds))

    def two_holders(self, after: float) -> list[str]:
        """Steps after ``after`` at which two instances that could reach each other, with
        every Serf view current, both held the lease: one kept acting on a lease the other
        had moved on, or one claimed over a holder it had not caught up with."""
        out = []
        groups = {t: (g, cur) for t, _, cur, g in self.holders_at}
        for t, holds in self.holds_at:
            g, cur = groups.get(t, ((), False))
            for side in g if cur and t > after else ():
                both = sorted((x, holds[x]) for x in side if x in holds)
                if len(both) > 1:
                    out.append(f"at {t}: {both}")
        return out

    def held_throughout(self, name: str, since: float, until: float) -> bool:
        """``name`` held the lease under one epoch at every step in [since, until]."""
        seen = [h.get(name) for t, h in self.holds_at if since <= t <= until]
        return bool(seen) and None not in seen and len(set(seen)) == 1


# -- seeded schedules ----------------------------------------------------------------------
def run_rejoin_schedule(seed: int, keep: bool = True, guard: bool = True) -> CatchUpSim:
    """One seeded schedule: 2-6 instances; one to three faults among a graceful restart of
    one instance (the holder or not), of several at once, a crash and restart, a partition
    and its heal, an isolation whose Serf view notices nothing; a node killed; then
    ``check_schedule``'s checks (epochs only grow is asserted at every step), and never two
    holders in one connected group once formed and every Serf view is current."""
    rng = random.Random(seed)
    n = 2 + seed % 5
    drop = rng.choice([0.0, 0.05, 0.2])
    sim = CatchUpSim(seed, n, keep=keep, guard=guard, drop=drop)
    sim.run(4_000)
    formed = sim.now
    for k in range(rng.randint(1, 3)):
        live = [x for x in sim.names if x not in sim.crashed]
        kinds = ["restart", "restart_many", "crash_restart", "partition", "isolate"]
        kind = rng.choice(kinds)
        if kind in ("partition", "isolate") and len(live) > 1:
            rng.shuffle(live)
            cut = rng.randint(1, len(live) - 1) if kind == "partition" else 1
            # an isolated agent's Serf view may notice nothing (Lifeguard slows its probes)
            slow = {live[0]: 60_000.0} if kind == "isolate" and rng.random() < 0.5 else {}
            sim.partition([set(live[cut:]), set(live[:cut])], slow=slow)
            sim.run(rng.uniform(500, 8_000))
            sim.heal()
        else:
            many = rng.randint(1, max(1, len(live) - 1)) if kind == "restart_many" else 1
            gone = rng.sample(live, many)
            for x in gone:
                (sim.crash if kind == "crash_restart" else sim.stop)(x)
            sim.run(rng.uniform(200, 8_000))
            for x in gone:
                sim.start(x)
        if k == 0:
            sim.kill_node(sim.nodes[0])
        sim.run(rng.uniform(0, 2_000))
    sim.run(9_000)  # views settle, then 3 s quiet, reconcile
    check_schedule(seed, sim, None)
    two = sim.two_holders(after=formed)
    assert not two, f"seed {seed}: two holders in one connected group {two[:3]}"
    return sim
