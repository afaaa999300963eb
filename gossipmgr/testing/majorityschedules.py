"""The seeded schedules of the lease simulation. Pure.

:func:`run_schedule` draws, from its seed, 2-7 instances over ``MajoritySim``'s simulated
network and one or two faults (partitions, isolations whose Serf view notices nothing,
holder crashes, two-instance clusters with the solo bound), a cluster node killed, heals;
and in about one schedule in four first the "missed death" fault (:func:`missed_death`).
``majoritysim.check_schedule`` checks the properties. ``tests/test_majority.py`` runs 100
seeds, ``bench/majority_sim.py`` 1,000 and more.
"""

from __future__ import annotations

import random

from gossipmgr.serf.view import PROFILE_TIMING, push_pull_interval_s, suspicion_max_s
from gossipmgr.testing.majoritysim import MajoritySim, check_schedule

__all__ = ["MISSED_DEATH_SHARE", "missed_death", "run_schedule", "schedule"]

#: The share of schedules that start with the "missed death" fault.
MISSED_DEATH_SHARE = 0.25


def missed_death(sim: MajoritySim, rng: random.Random) -> float:
    """An instance ("deaf") cannot receive when the node dies, and the holder goes soon
    after it receives again; returns the simulated ms by which every view is right again.

    The deaf one is cut off (its Serf view notices nothing) and the node is killed; the
    holder marks it Disappeared. Its agent keeps listing the node alive, with a higher
    incarnation than the others' "dead", so nothing the others say corrects it: once it
    receives again, its first push-pull (within one push-pull period, lan profile) makes
    every agent list the node alive again, until a probe (within two probe intervals)
    and a suspicion (up to its maximum, a third of the time exactly that: no agent
    confirms) declare it dead, which every view takes, the deaf one's too. So its view
    is wrong for up to push-pull + 2 probes + the longest suspicion after it receives
    again (``serf.view.comeback_bounds``' ``held_s``). Most of the time the deaf instance
    is next in the claim order, and the holder then crashes or is cut off within 25 s:
    the deaf one takes over with that view."""
    live = [x for x in sim.names if x not in sim.crashed]
    holders = [x for x in live if sim.holding(sim.inst[x])]
    others = sorted(set(live) - set(holders))
    deaf = others[0] if rng.random() < 0.75 else rng.choice(others)
    sim.partition([set(sim.names) - {deaf}, {deaf}], slow={deaf: 3_600_000.0})
    sim.run(rng.uniform(500, 1_500))
    timing, members = PROFILE_TIMING["lan"], len(sim.names) + len(sim.nodes)
    longest = suspicion_max_s(timing, members)
    suspicion = longest if rng.random() < 1 / 3 else rng.uniform(longest / 6, longest)
    heal_at = sim.now + rng.uniform(2_000, 12_000)
    push_pull_at = heal_at + rng.uniform(0, push_pull_interval_s(timing, members) * 1000)
    fixed_at = push_pull_at + (rng.uniform(0, 2 * timing.probe_s) + suspicion) * 1000
    node = sim.nodes[0]
    sim.missed_death(deaf, node, fixed_at)
    sim.kill_node(node)
    sim.stale_alive([x for x in sim.names if x != deaf], node, push_pull_at, fixed_at)
    sim.run(heal_at - sim.now)
    sim.heal()
    if rng.random() < 0.8:
        sim.run(rng.uniform(0, 25_000))
        holders = [x for x in sim.names if x not in sim.crashed and sim.holding(sim.inst[x])]
        if holders and holders != [deaf]:
            if rng.random() < 0.5:
                sim.crash(holders[0])
            else:
                sim.partition([set(sim.names) - {holders[0]}, {holders[0]}])
    return fixed_at


def run_schedule(seed: int, comeback: tuple[float, float] | None = None) -> None:
    """One seeded schedule (:func:`schedule`), then the checks."""
    check_schedule(seed, *schedule(seed, comeback))


def schedule(
    seed: int, comeback: tuple[float, float] | None = None
) -> tuple[MajoritySim, float | None]:
    """One seeded schedule: 2-7 instances, one or two faults (partitions, isolations with
    Serf views that notice nothing, holder crashes), a node killed, heals. ``comeback``:
    the simulation's comeback bounds (default: production's). Returns the simulation and
    the two-instance rule's bound."""
    rng = random.Random(seed)
    n = 2 + seed % 6  # 2 to 7 instances: even sizes too
    solo = 1.0 if n == 2 and rng.random() < 0.5 else None
    sim = MajoritySim(
        seed,
        n,
        drop=rng.choice([0.0, 0.05, 0.2]),
        solo_after_s=solo,
        stale_ms=(0.0, 2_500.0),
        comeback=comeback,
    )
    sim.run(4_000)
    # Its own generator, so that the schedules without it stay what they were.
    fault = random.Random(f"missed death {seed}")
    fixed_at = missed_death(sim, fault) if fault.random() < MISSED_DEATH_SHARE else 0.0
    kinds = ["partition", "isolate", "crash", "partition_and_crash"]
    killed = bool(sim.killed)
    for _ in range(rng.randint(1, 2)):
        kind = rng.choice(kinds)
        live = [x for x in sim.names if x not in sim.crashed]
        if kind in ("partition", "partition_and_crash") and len(live) > 1:
            rng.shuffle(live)
            cut = rng.randint(1, len(live) - 1)
            sim.partition([set(live[:cut]), set(live[cut:])])
        elif kind == "isolate":
            # Half the time its Serf view notices nothing for the whole fault (Lifeguard).
            slow = {live[0]: 60_000.0} if rng.random() < 0.5 else {}
            sim.partition([set(sim.names) - {live[0]}, {live[0]}], slow=slow)
        if kind in ("crash", "partition_and_crash") and len(live) > 1:
            holders = [x for x in live if sim.holding(sim.inst[x])]
            sim.crash(min(holders or live))
        sim.run(rng.uniform(500, 1_500))
        if not killed:
            sim.kill_node(sim.nodes[0])
            killed = True
        sim.run(rng.uniform(500, 3_000))
        sim.heal()
        sim.run(rng.uniform(0, 2_000))
    # Views settle (<= 1.5 s + 2.5 s stale, every stale "alive" over), 3 s quiet, reconcile.
    sim.run(max(sim.now, fixed_at) - sim.now + 9_000)
    return sim, solo
