"""A seeded simulation of the lease's majority rule and of settled health. Pure.

``n`` instances, each with a real ``ClusterState`` and HLC, push their (small) state to
every peer once per lease-loop period over a seeded ``SimNetwork`` (drops, duplicates,
delays, partitions). Each has a Serf view that lags reality (failure detection: 100-1,500 ms,
differently per instance) and that, right after a heal, first shows a stale picture for a
while: the members it had lost contact with are listed alive again (a view caught
mid-change), then the truth. Cluster nodes sit with the first group of a partition; one can
be killed; an instance's view can miss a node's death (its agent could not receive then:
``missed_death``) and views can list a dead node alive again for a while (a push-pull
from such an agent: ``stale_alive``). The decisions are the production pure functions:
``core.quorum`` (the majority rule), ``core.lease`` (``decide``, ``is_holder``,
``reconcile_due``, ``settling``) and ``core.reconcile`` (what a reconcile writes, and which
comebacks wait). ``legacy=True`` runs them as before the majority rule and the settle gate
(every instance may hold; no settle), ``settle=False`` without the settle gate only,
``comeback=(0, 0)`` without the comeback wait (a comeback then waits only
``RECONCILE_SETTLE_S``), to show what each fixes.

Used by ``gossipmgr.testing.majorityschedules`` (the seeded schedules of
``tests/test_majority.py`` and ``bench/majority_sim.py``, checked by
:func:`check_schedule` here) and by the issue's flap scenarios in ``tests/test_majority.py``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from gossipmgr.core import inventory as inv
from gossipmgr.core.clock import HLC, Timestamp
from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.core.lease import (
    Lease,
    LeaseConfig,
    bounded,
    decide,
    is_holder,
    reconcile_due,
    settling,
)
from gossipmgr.core.quorum import Quorum, heard_window_ms, quorum
from gossipmgr.core.reconcile import (
    NodeEvent,
    apply_events,
    comeback,
    comebacks_waiting,
    differences,
)
from gossipmgr.core.state import LEASE_KEY, ClusterState, inventory_key
from gossipmgr.runtime.leaseloop import RECONCILE_EVERY_S, RECONCILE_SETTLE_S, VIEW_SETTLE_S
from gossipmgr.serf.view import comeback_bounds
from gossipmgr.testing.netsim import SimNetwork

__all__ = ["LOOP_MS", "MajoritySim", "View", "check_schedule", "read_lease"]

#: The lease loop's period (``runtime.leaseloop.LEASE_LOOP_S``) in simulated ms.
LOOP_MS = 250
LABEL = "rack"


def node_name(k: int) -> str:
    return inv.node_name(LABEL, f"{k:04d}")


def _event(node: str, up: bool) -> NodeEvent:
    if not up:
        return ("disappeared", node, "", "", "")
    return ("discovered", node, LABEL, node.split("-", 1)[1], "10.0.0.1")


@dataclass
class View:
    """One instance's Serf view: instances alive and failed (since when, s), nodes."""

    alive: frozenset[str]
    failed_since: dict[str, float]
    nodes: dict[str, tuple[bool, float]]  # node -> (alive, since s)
    changed_at: float


@dataclass
class Inst:
    name: str
    state: ClusterState
    hlc: HLC
    skew_ms: int
    view: View
    next_step: float
    refresh_at: list[float] = field(default_factory=list)
    stale_from: float = 0.0
    stale_until: float | None = None
    stale_nodes: bool = False  # the stale picture also lists the nodes alive again
    reconciled_epoch: int = -1
    last_reconcile: float = 0.0
    soon: bool = False
    events: list[NodeEvent] = field(default_factory=list)
    max_epoch: int = 0
    steps: int = 0
    last_heard: dict[str, float] = field(default_factory=dict)  # peer -> ms
    #: node -> [from, until) ms: the view lists the node alive then, whatever the truth
    alive_override: dict[str, tuple[float, float]] = field(default_factory=dict)
    override_at: list[float] = field(default_factory=list)  # ms an override starts or ends
    held_since: float = 0.0  # s, when it last became the holder
    was_holding: bool = False


def read_lease(state: ClusterState, cfg: LeaseConfig) -> Lease | None:
    """What ``Replica.lease`` does: the entry, its expiry bounded by its timestamp."""
    e = state.map.entry(LEASE_KEY)
    lease = None if e is None or e.deleted else Lease.from_value(e.value)
    return None if lease is None or e is None else bounded(lease, e.ts.ms, cfg)


class MajoritySim:
    """See the module docstring. ``now`` is simulated ms."""

    def __init__(
        self,
        seed: int,
        n: int,
        *,
        legacy: bool = False,
        settle: bool = True,
        cfg: LeaseConfig | None = None,
        solo_after_s: float | None = None,
        drop: float = 0.0,
        stale_ms: tuple[float, float] = (0.0, 2_500.0),
        n_nodes: int = 2,
        comeback: tuple[float, float] | None = None,
    ) -> None:
        self.rng = random.Random(seed)
        self.legacy, self.solo_after_s, self.stale_ms = legacy, solo_after_s, stale_ms
        self.settle = settle and not legacy
        #: the comeback bounds (alive_s, held_s); default: production's, lan profile
        self.comeback = comeback or comeback_bounds("lan", n + n_nodes)
        if not self.settle:
            self.comeback = (0.0, 0.0)
        self.cfg = cfg or LeaseConfig(ttl_ms=2_000, renew_ms=500)
        # The production window without its 5 s floor (which is about real gossip's
        # cadence; here every instance pushes its whole state every other loop period).
        c = self.cfg
        self.heard_ms = min(heard_window_ms(c.ttl_ms, c.renew_ms), c.ttl_ms - c.renew_ms - 500)
        self.net = SimNetwork(seed, drop=drop, dup=0.05, delay=(0.2, 5.0))
        self.now = 1_000_000.0
        self.names = [f"i{k}" for k in range(n)]
        self.nodes = [node_name(k + 1) for k in range(n_nodes)]
        self.groups: list[set[str]] = [set(self.names)]
        self.crashed: set[str] = set()
        self.killed: set[str] = set()
        #: (ms, instance, node, state) each time a replica's record of a node changed
        self.node_states: list[tuple[float, str, str, str]] = []
        #: (ms, holders, views current, connected groups of live instances) after every
        #: lease-loop step: who may act then, and who could reach whom
        self.holders_at: list[tuple[float, frozenset[str], bool, tuple[frozenset[str], ...]]] = []
        self.inst: dict[str, Inst] = {}
        for name in self.names:
            view = self._truth(name, None)
            st = ClusterState()
            skew = self.rng.randint(-100, 100)
            start = self.now + self.rng.uniform(0, LOOP_MS)
            self.inst[name] = Inst(name, st, HLC(name), skew, view, start)
        self._last_seen: dict[tuple[str, str], str] = {}
        self._msgs: list[list[tuple[Key, Entry]]] = []  # a datagram carries an index
        self._dirty: set[str] = set()

    # -- topology ------------------------------------------------------------------------
    def group_of(self, name: str) -> set[str]:
        """The live instances ``name`` can reach (itself included)."""
        for g in self.groups:
            if name in g:
                return g - self.crashed
        return {name} - self.crashed

    def node_reachable(self, name: str, node: str) -> bool:
        return node not in self.killed and name in self.groups[0]

    def partition(self, groups: Iterable[set[str]], slow: Mapping[str, float] = {}) -> None:
        """Cut the instances into ``groups`` (cluster nodes stay with the first). ``slow``:
        instances whose Serf view takes that many ms to notice (an isolated agent's
        Lifeguard slows its probes: ~26 s with 4 peers in the partition suite)."""
        self.groups = [set(g) for g in groups]
        self.net.partition([{(n, 0) for n in g} for g in self.groups])
        self._refresh_all(slow)

    def heal(self) -> None:
        live = set(self.names) - self.crashed
        cut_off = {n: live - self.group_of(n) for n in self.names}
        nodes_cut = {n: n not in self.groups[0] for n in self.names}
        self.groups = [set(self.names)]
        self.net.heal()
        for name, lost in cut_off.items():
            i = self.inst[name]
            # Traffic flows again: even a view slowed by Lifeguard catches up now.
            at = self.now + self.rng.uniform(100, 1_500)
            # (a stale picture still showing from an earlier heal ends as modelled)
            i.refresh_at = [at] + ([i.stale_until] if i.stale_until is not None else [])
            if name in self.crashed or not (lost or nodes_cut[name]):
                continue
            if i.stale_until is not None and i.stale_from <= self.now:
                continue  # already mid-change: that picture ends as modelled (<= stale_ms)
            # Mid-change: what it lost contact with comes back "alive" first, then the truth.
            i.stale_from, i.stale_until = at, at + self.rng.uniform(*self.stale_ms)
            i.stale_nodes = nodes_cut[name]
            i.refresh_at.append(i.stale_until)

    def crash(self, name: str) -> None:
        self.crashed.add(name)
        self._refresh_all()

    def kill_node(self, node: str) -> None:
        self.killed.add(node)
        self._refresh_all()

    def missed_death(self, name: str, node: str, until_ms: float) -> None:
        """``name``'s agent cannot receive now: when ``node`` dies its view keeps listing
        it alive until ``until_ms`` (a push-pull round and the probes that follow)."""
        self.stale_alive([name], node, self.now, until_ms)

    def stale_alive(self, names: Iterable[str], node: str, from_ms: float, until_ms: float) -> None:
        """The views of ``names`` list ``node`` alive in [from_ms, until_ms): a push-pull
        from an agent that missed its death, until probes fail it again."""
        for name in names:
            self.inst[name].alive_override[node] = (from_ms, until_ms)
            self.inst[name].override_at += [from_ms, until_ms]

    def _refresh_all(self, slow: Mapping[str, float] = {}) -> None:
        for name in self.names:
            lag = slow.get(name, self.rng.uniform(100, 1_500))
            self.inst[name].refresh_at.append(self.now + lag)

    def views_current(self) -> bool:
        """No instance has a Serf view still to catch up with reality."""
        return all(not self.inst[n].refresh_at for n in self.names if n not in self.crashed)

    def _truth(self, name: str, old: View | None) -> View:
        now_s = self.now / 1000
        alive = frozenset(self.group_of(name))
        failed = {
            n: (old.failed_since.get(n, now_s) if old else now_s)
            for n in self.names
            if n not in alive
        }
        nodes = {}
        inst = self.inst.get(name)
        for nd in self.nodes:
            up = self.node_reachable(name, nd)
            over = inst.alive_override.get(nd) if inst is not None else None
            up = up or (over is not None and over[0] <= self.now < over[1])
            prev = old.nodes.get(nd) if old else None
            nodes[nd] = (up, prev[1] if prev is not None and prev[0] == up else now_s)
        return View(alive, failed, nodes, now_s)

    def _stale(self, i: Inst) -> View:
        """The members ``i`` lost contact with in the partition listed alive again (a view
        mid-change); crashed instances stay failed."""
        now_s, old = self.now / 1000, i.view
        nodes = old.nodes
        if i.stale_nodes:
            nodes = {nd: (True, s if up else now_s) for nd, (up, s) in old.nodes.items()}
        failed = {n: t for n, t in old.failed_since.items() if n in self.crashed}
        return View(frozenset(set(self.names) - self.crashed), failed, nodes, now_s)

    def _update_view(self, i: Inst) -> None:
        due = [t for t in i.refresh_at if t <= self.now]
        if not due:
            if i.override_at and min(i.override_at) <= self.now:
                self._update_overrides(i)
            return
        i.refresh_at = [t for t in i.refresh_at if t > self.now]
        i.override_at = [t for t in i.override_at if t > self.now]
        stale = i.stale_until is not None and i.stale_from <= self.now < i.stale_until
        new = self._stale(i) if stale else self._truth(i.name, i.view)
        if i.stale_until is not None and self.now >= i.stale_until:
            i.stale_until = None
        old = i.view
        if (new.alive, new.failed_since.keys(), new.nodes) == (
            old.alive,
            old.failed_since.keys(),
            old.nodes,
        ):
            return
        if new.alive != old.alive:
            i.soon = True
        self._set_nodes(i, new)

    def _set_nodes(self, i: Inst, new: View) -> None:
        for nd, (up, _) in new.nodes.items():
            if i.view.nodes.get(nd, (None, 0.0))[0] != up:
                i.events.append(_event(nd, up))
        i.view = new

    def _update_overrides(self, i: Inst) -> None:
        """An alive override starts or ends (``stale_alive``): only the nodes it covers
        change in the view; the rest keeps whatever lag it has (Serf says it at once)."""
        i.override_at = [t for t in i.override_at if t > self.now]
        truth, old = self._truth(i.name, i.view).nodes, i.view
        nodes = {nd: truth[nd] if nd in i.alive_override else v for nd, v in old.nodes.items()}
        if nodes != old.nodes:
            self._set_nodes(i, View(old.alive, old.failed_since, nodes, self.now / 1000))

    # -- one instance's lease loop ----------------------------------------------------------
    def quorum_of(self, i: Inst) -> Quorum:
        if self.legacy:
            return Quorum(1, 1)
        heard = {p for p, t in i.last_heard.items() if self.now - t < self.heard_ms}
        v = i.view
        now_s, solo, ever = self.now / 1000, self.solo_after_s, i.last_heard.keys()
        return quorum(i.name, v.alive, v.failed_since, now_s, solo, heard, ever)

    def phys(self, i: Inst) -> int:
        return int(self.now) + i.skew_ms

    def write(self, i: Inst, delta_of: Callable[[ClusterState, Timestamp], LWWMap]) -> None:
        """A local write, pushed to every peer at once (the protocol's delta push)."""
        delta = delta_of(i.state, i.hlc.now(self.phys(i)))
        i.state.apply(delta)
        self._dirty.add(i.name)
        if len(delta):
            self._broadcast(i, list(delta.items()))

    def _broadcast(self, i: Inst, items: list[tuple[Key, Entry]]) -> None:
        """Send ``items`` to every peer (an empty state is sent too: peers hear us)."""
        self._msgs.append(items)
        data = str(len(self._msgs) - 1).encode()
        for peer in self.names:
            if peer != i.name:
                self.net.send((i.name, 0), (peer, 0), data, self.now)

    def holding(self, i: Inst) -> bool:
        lease = read_lease(i.state, self.cfg)
        cands = sorted(i.view.alive)
        return is_holder(i.name, lease, cands, self.phys(i), self.quorum_of(i).may_hold)

    def _step(self, i: Inst) -> None:
        lease = read_lease(i.state, self.cfg)
        epoch = lease.epoch if lease is not None else 0
        assert epoch >= i.max_epoch, f"{i.name}: epoch went back from {i.max_epoch} to {epoch}"
        i.max_epoch = epoch
        q = self.quorum_of(i)
        new = decide(
            i.name,
            lease,
            sorted(i.view.alive),
            self.phys(i),
            self.cfg,
            i.state.max_record_epoch,
            may_hold=q.may_hold,
        )
        if new is not None:
            value = new.as_value()
            self.write(i, lambda s, ts: s.d_set(LEASE_KEY, value, ts))
        lease = read_lease(i.state, self.cfg)
        held = lease is not None and self.holding(i)
        if held and not i.was_holding:
            i.held_since = self.now / 1000
        i.was_holding = held
        if lease is not None and held:
            self._health(i, lease)
        else:
            i.events.clear()  # not the holder: a takeover reconciles
        i.steps += 1
        # Anti-entropy: the whole (small) state every period, so peers hear from us (the
        # real protocol: acks to every renewal push, digest probes of silent peers).
        self._broadcast(i, list(i.state.map.items()))

    def _health(self, i: Inst, lease: Lease) -> None:
        now_s = self.now / 1000
        epoch = lease.epoch
        if self.settle and settling(epoch, i.reconciled_epoch, i.soon):
            i.events.clear()  # the settled reconcile covers them
        elif i.events:
            events = [e for e in i.events if not (self.settle and comeback(i.state, e))]
            i.events = []
            self.write(i, lambda s, ts: apply_events(s, events, epoch, ts))
        quiet = now_s - i.view.changed_at
        settle = VIEW_SETTLE_S if self.settle else 0.0
        last = i.last_reconcile
        if not reconcile_due(
            epoch, i.reconciled_epoch, now_s, last, RECONCILE_EVERY_S, i.soon, quiet, settle
        ):
            return
        view = i.view
        unsettled = {nd for nd, (_, s) in view.nodes.items() if now_s - s < RECONCILE_SETTLE_S}
        alive = {nd: _event(nd, True)[2:] for nd, (up, _) in view.nodes.items() if up}
        if any(self.comeback):
            up_since = {nd: s for nd, (up, s) in view.nodes.items() if up}
            a, h = self.comeback
            unsettled |= comebacks_waiting(i.state, alive, up_since, i.held_since, now_s, a, h)
        events = differences(i.state, alive, unsettled)
        self.write(i, lambda s, ts: apply_events(s, events, epoch, ts))
        i.soon, i.reconciled_epoch, i.last_reconcile = False, epoch, now_s

    # -- time -------------------------------------------------------------------------------
    def run(self, ms: float) -> None:
        end = self.now + ms
        while self.now < end:
            nxt = min(
                (i.next_step for i in self.inst.values() if i.name not in self.crashed),
                default=end,
            )
            due = self.net.next_due()
            t = min(end, nxt, due if due is not None else end)
            self.now = max(self.now, t)
            for src, dst, data in self.net.deliver(self.now):
                if dst[0] not in self.crashed:
                    self._deliver(src[0], self.inst[dst[0]], self._msgs[int(data)])
            stepped = False
            for i in self.inst.values():
                if i.name in self.crashed:
                    continue
                self._update_view(i)
                if i.next_step <= self.now:
                    i.next_step = self.now + LOOP_MS
                    self._step(i)
                    stepped = True
            self._sample(stepped)
            if t >= end:
                break

    def _deliver(self, src: str, i: Inst, items: list[tuple[Key, Entry]]) -> None:
        i.last_heard[src] = self.now
        for _, e in items:
            i.hlc.advance_to(e.ts)
        if i.state.apply(items):
            self._dirty.add(i.name)

    def _sample(self, stepped: bool) -> None:
        if stepped:
            live = [self.inst[n] for n in self.names if n not in self.crashed]
            holders = frozenset(i.name for i in live if self.holding(i))
            groups = tuple(frozenset(g - self.crashed) for g in self.groups)
            self.holders_at.append((self.now, holders, self.views_current(), groups))
        for name in sorted(self._dirty):
            for nd in self.nodes:
                v = self.inst[name].state.map.get(inventory_key(nd))
                st = v.get("state", "") if isinstance(v, dict) else ""
                if self._last_seen.get((name, nd)) != st:
                    self._last_seen[(name, nd)] = st
                    self.node_states.append((self.now, name, nd, st))
        self._dirty.clear()

    def flaps(self, node: str) -> list[str]:
        """Instances whose record of ``node`` went Disappeared and later back to Discovered,
        or Disappeared more than once (the partition suite's check)."""
        out = []
        for name in self.names:
            seq = [st for _, n, nd, st in self.node_states if n == name and nd == node]
            if "Disappeared" in seq and inv.DISCOVERED in seq[seq.index("Disappeared") :]:
                out.append(f"{node} on {name}: {' -> '.join(seq)}")
        return out


# -- the seeded schedules' checks (the schedules: ``majorityschedules``) -------------------
def check_schedule(seed: int, sim: MajoritySim, solo: float | None) -> None:
    """The properties (raises AssertionError naming the seed): never a holder on a minority
    side once every Serf view has caught up and a majority side exists; after the heal at
    most one holder, exactly one when one may exist; the dead node Disappeared everywhere,
    never back to Discovered. Epochs only grow: ``MajoritySim`` asserts it at every step."""
    n = len(sim.names)
    for t, holders, current, groups in sim.holders_at:
        if not current:
            continue  # some Serf view still lags reality: nobody has been told yet
        major = [g for g in groups if 2 * len(g) > n]
        if major:
            # Never a holder on a minority side once a majority side exists.
            assert holders <= major[0], f"seed {seed} at {t}: holders {holders}, groups {groups}"
    # After the heal: one connected group; at most one holder, exactly one when a
    # majority of the known instances is alive (or the two-instance rule applies).
    live = set(sim.names) - sim.crashed
    tail = [h for t, h, cur, _ in sim.holders_at if t > sim.now - 2_000 and cur]
    assert tail, f"seed {seed}: views never settled"
    assert all(len(h) <= 1 for h in tail), f"seed {seed}: holders {tail[-5:]}"
    can_hold = 2 * len(live) > n or (solo is not None and n == 2 and len(live) == 1)
    assert (len(tail[-1]) == 1) == can_hold, f"seed {seed}: {tail[-1]} live {live}"
    if can_hold:
        # Health agrees with Serf and never flapped: the dead node Disappeared everywhere.
        flaps = sim.flaps(sim.nodes[0])
        assert flaps == [], f"seed {seed}: {flaps}"
        for x in live:
            rec = sim.inst[x].state.node(sim.nodes[0])
            assert rec is not None and rec.inventory.state == "Disappeared", f"seed {seed}: {x}"
