"""Deterministic simulation of many instances running the pure anti-entropy protocol.

Used by the protocol tests (thousands of seeded schedules) and by ``bench/bench_sim.py``
(50 and 200 instances, 100,000 records): no trio, no sockets, simulated milliseconds.
Each instance has its own physical clock offset (skew) within the HLC's bound.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from gossipmgr.core.clock import HLC
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState
from gossipmgr.gossip.protocol import AntiEntropy, GossipConfig
from gossipmgr.testing.netsim import SimNetwork


def addr(name: str) -> tuple[str, int]:
    return (name, 0)


@dataclass
class SimInstance:
    ae: AntiEntropy
    skew_ms: int
    up: bool = True
    bytes_sent: int = 0
    datagrams_sent: int = 0
    received_novel: int = 0
    next_tick: float = 0.0

    @property
    def state(self) -> ClusterState:
        return self.ae.state


@dataclass
class Sim:
    """``n`` instances on a ``SimNetwork``; ``now`` is simulated milliseconds."""

    n: int
    seed: int = 0
    drop: float = 0.0
    dup: float = 0.0
    delay: tuple[float, float] = (0.2, 2.0)
    max_skew_ms: int = 0
    config: GossipConfig = field(default_factory=GossipConfig)
    now: float = 1_000_000.0
    #: send what each instance's first ``set_peers`` returns (its start's catch-up digests);
    #: False for a simulation that seeds every instance and starts it converged
    announce: bool = True
    names: list[str] = field(init=False)
    inst: dict[str, SimInstance] = field(init=False)
    net: SimNetwork = field(init=False)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        self.net = SimNetwork(self.seed, drop=self.drop, dup=self.dup, delay=self.delay)
        self.names = [f"i{k:03d}" for k in range(self.n)]
        self.inst = {}
        for k, name in enumerate(self.names):
            skew = rng.randint(-self.max_skew_ms, self.max_skew_ms) if self.max_skew_ms else 0
            hlc = HLC(name)
            ae = AntiEntropy(
                name, 1, ClusterState(), hlc, self.config, rng=random.Random(self.seed * 7919 + k)
            )
            self.inst[name] = SimInstance(ae, skew, next_tick=self.now + rng.uniform(0, 150))
        for name in self.names:
            out = self.inst[name].ae.set_peers(self.names, self.now)
            if self.announce:
                self._send(name, out)

    # -- helpers ------------------------------------------------------------------------
    def phys(self, name: str) -> int:
        return int(self.now) + self.inst[name].skew_ms

    def write(self, name: str, make: Callable[[ClusterState, Any], LWWMap]) -> LWWMap:
        """Run a local mutation at ``name``: ``make(state, ts)`` returns the delta."""
        i = self.inst[name]
        ts = i.ae.hlc.now(self.phys(name))
        delta = make(i.state, ts)
        res = i.ae.local_write(delta, self.now)
        self._send(name, res.out)
        return delta

    def _send(self, src: str, out: list[tuple[str, bytes]]) -> None:
        i = self.inst[src]
        for dst, data in out:
            i.bytes_sent += len(data)
            i.datagrams_sent += 1
            self.net.send(addr(src), addr(dst), data, self.now)

    def restart(self, name: str, incarnation: int) -> None:
        """Volatile protocol state is lost; the replica (durable) is kept. The instance's
        peers are set at once (as Serf names them at a start), and what that returns (its
        catch-up digests) is sent."""
        old = self.inst[name]
        hlc = HLC(name, last=old.ae.hlc.last)
        ae = AntiEntropy(
            name, incarnation, old.state, hlc, self.config, rng=random.Random(incarnation)
        )
        self.inst[name] = SimInstance(ae, old.skew_ms, next_tick=self.now)
        self._send(name, ae.set_peers(self.names, self.now))

    def serf_view(self, cut: Iterable[str] = ()) -> None:
        """Every running instance is told what Serf would list now: the running instances on
        its side of ``cut`` (a partition: those named against the others) alive, each under
        its incarnation as boot id; the rest failed (still peers)."""
        side = set(cut)
        for name, i in self.inst.items():
            if not i.up:
                continue
            alive = {
                n: str(o.ae.incarnation)
                for n, o in self.inst.items()
                if o.up and (n in side) == (name in side)
            }
            self._send(name, i.ae.set_peers(self.names, self.now, alive))

    def step(self, until: float) -> None:
        """Advance simulated time to ``until``, delivering and ticking in order."""
        while True:
            next_tick = min(i.next_tick for i in self.inst.values())
            due = self.net.next_due()
            t = min(next_tick, due if due is not None else float("inf"))
            if t > until:
                self.now = until
                return
            self.now = max(self.now, t)
            for _, dst, data in self.net.deliver(self.now):
                name = dst[0]
                i = self.inst[name]
                if not i.up:
                    continue
                res = i.ae.receive_untrusted(data, self.phys(name))
                if res.novel is not None:
                    i.received_novel += len(res.novel)
                self._send(name, res.out)
            for name, i in self.inst.items():
                if i.next_tick <= self.now:
                    i.next_tick = self.now + self.config.tick_ms
                    if i.up:
                        self._send(name, i.ae.tick(self.phys(name)))

    def converged(self, names: list[str] | None = None) -> bool:
        group = names or [n for n in self.names if self.inst[n].up]
        first = self.inst[group[0]].state
        return all(self.inst[n].state == first for n in group[1:])

    def run_until_converged(self, max_ms: float, names: list[str] | None = None) -> float | None:
        """Step until the (given) instances hold identical state; return elapsed ms or None."""
        start = self.now
        while self.now - start < max_ms:
            if self.converged(names):
                return self.now - start
            self.step(self.now + 10)
        return self.now - start if self.converged(names) else None
