"""Who is in the cluster, from Serf's member list.

Two kinds of members matter (everything else is ignored):

- **gossipmgr instances**: tag ``role=gossipmgr`` plus ``gossip`` ("ip:port"), ``api``
  ("http(s)://...") and ``boot`` (a per-start id). :attr:`MembershipView.instances` lists
  the alive ones sorted by name (Serf's list comes in random Go map order).
- **cluster nodes**: tags ``NodeLabel``, ``NodeSerial`` and ``NodeAddr`` (clusterm's
  convention); the node is named ``"<label>-<serial>"``.

Node events (the transition rules, in one place)::

    serf status seen          node was up?   event
    alive (new/back/changed)  no             discovered
    alive, same identity      yes            -
    alive, new addr or boot   yes            discovered    (a restart; Serf hides fast flaps,
                                                            the boot tag makes them visible)
    failed                    yes            disappeared
    left                      yes            disappeared   (see below)
    leaving                   any            -             (transient; wait for left/failed)
    gone from the list        any            disappeared if it was up, then reaped
    first update after start  -              discovered for every alive node member

**Duplicate identities.** A node's identity is ``<label>-<serial>``; Serf keeps member
*names* unique, not tags, so a second member (a stale one, or anyone with the Serf key) can
carry an existing node's ``NodeLabel``/``NodeSerial`` with another ``NodeAddr``. Taking
both at their word flipped the node's address back and forth, and ansible would have
targeted the impostor. One member *owns* an identity; the others claiming it are
*conflicts*: logged once, listed in :attr:`MembershipView.conflicts` (``/health``,
``gossipmgr_serf_identity_conflicts``), and they produce no node events. The owner is:

1. the member *named* ``<label>-<serial>`` (clusterm's convention), while Serf lists it
   alive (or leaving): Serf refuses a second alive member of one name, so nobody else can
   hold that name while the node is up, and the choice survives our restarts;
2. else the current owner, while Serf lists it at all: a failed or departed owner keeps
   its identity (its node is Disappeared, not re-addressed), so killing or cutting off a
   node does not hand its identity, and ansible's target, to whoever claims it next;
3. else (no owner yet, or Serf forgot it: reaped, or removed by an operator with
   ``serf force-leave -prune <member>``) the member named ``<label>-<serial>`` in any
   status, then the alive claimant seen first, then by member name. That is how an
   operator accepts a node re-provisioned under another member name while the old member
   is still listed.

A member whose ``<label>-<serial>`` is longer than ``codec.MAX_KEY_PART`` (Serf tags hold
512 bytes) is not a node here: logged once, no events (the state could not hold its name).

``left`` counts as disappeared: after a graceful leave the node is as unreachable as after
a failure. clusterm ignored ``member-leave``, leaving such nodes "discovered" forever; we
think that was wrong. ``reaped`` is not an inventory change (the node had already
disappeared); it is emitted so the caller can log it. A node seen for the first time in a
non-alive state emits nothing.

:class:`MembershipView` is pure (takes the member list and ``now``, returns events);
``gossipmgr.serf.membership.SerfMembership`` is the trio service that feeds it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from gossipmgr.core.codec import MAX_KEY_PART
from gossipmgr.serf.addr import split_hostport

__all__ = [
    "NODE_TAGS",
    "PROFILE_TIMING",
    "PUSH_PULL_S",
    "ROLE_GOSSIPMGR",
    "ROLE_TAG",
    "Absences",
    "Conflict",
    "Instance",
    "InstancesChanged",
    "MembershipEvent",
    "MembershipView",
    "NodeEvent",
    "NodeEventKind",
    "NodeInfo",
    "ProfileTiming",
    "comeback_bounds",
    "push_pull_interval_s",
    "suspicion_max_s",
]

log = logging.getLogger("gossipmgr.serf")

ROLE_TAG: Final = "role"
ROLE_GOSSIPMGR: Final = "gossipmgr"
NODE_TAGS: Final = ("NodeLabel", "NodeSerial", "NodeAddr")

NodeEventKind = Literal["discovered", "disappeared", "reaped"]


@dataclass(frozen=True, slots=True)
class ProfileTiming:
    """memberlist's failure-detection timing of one Serf profile (hashicorp/memberlist
    0.2.x ``DefaultLocalConfig``/``DefaultLANConfig``/``DefaultWANConfig``, which
    ``serf agent -profile=`` selects; Serf 0.9 changes none of these)."""

    push_pull_s: float  # PushPullInterval (below 33 members; pushPullScale above)
    probe_s: float  # ProbeInterval
    suspicion_mult: int  # SuspicionMult
    suspicion_max_mult: int  # SuspicionMaxTimeoutMult


PROFILE_TIMING: Final[Mapping[str, ProfileTiming]] = {
    "local": ProfileTiming(15.0, 1.0, 3, 6),
    "lan": ProfileTiming(30.0, 1.0, 4, 6),
    "wan": ProfileTiming(60.0, 5.0, 6, 6),
}

#: memberlist's full-state exchange (push-pull) interval per Serf profile. A member whose
#: join broadcast missed our agent reaches it at the latest with the next push-pull; the
#: ``local`` profile retransmits broadcasts only ``2 * log(N+1)`` times, and on loopback we
#: measured an agent that learnt of 4 new nodes only 19 s after the others (1 run in 12).
PUSH_PULL_S: Final[Mapping[str, float]] = {p: t.push_pull_s for p, t in PROFILE_TIMING.items()}


def push_pull_interval_s(timing: ProfileTiming, members: int) -> float:
    """memberlist's push-pull period with ``members`` members (``pushPullScale``: the base
    interval up to 32 members, times ``ceil(log2(n) - log2(32)) + 1`` above)."""
    if members <= 32:
        return timing.push_pull_s
    return timing.push_pull_s * (math.ceil(math.log2(members) - 5.0) + 1)


def suspicion_max_s(timing: ProfileTiming, members: int) -> float:
    """The longest a suspected member stays alive in a view: memberlist's suspicion timer
    starts at ``SuspicionMaxTimeoutMult * SuspicionMult * max(1, log10(n)) * ProbeInterval``
    and only shrinks (to a sixth) as other agents confirm the suspicion (Lifeguard)."""
    scale = max(1.0, math.log10(max(1, members)))
    return timing.suspicion_max_mult * timing.suspicion_mult * scale * timing.probe_s


def comeback_bounds(profile: str, members: int) -> tuple[float, float]:
    """``(alive_s, held_s)``: how long a node back from Disappeared must have been alive in
    the holder's Serf view, and the holder must have held the lease, before the comeback is
    applied (``core.reconcile.comebacks_waiting``), for ``members`` Serf members (an
    unknown profile: lan).

    An agent that missed a node's death lists it alive with a higher incarnation than the
    others' "dead", so their "dead" never corrects it. Its first push-pull once it receives
    again (within one push-pull period) spreads that "alive" to every agent; the node is
    then probed (within a probe interval, and the probe takes one more to fail) and
    suspected, and declared dead at the latest when the suspicion timer runs out; that
    broadcast corrects every view, the stale agent's too. So a view that re-listed the node
    alive is corrected within ``alive_s`` = 2 probe intervals + the longest suspicion, and a
    holder whose own agent had missed the death (it could not hold while it could not
    receive: no majority) within ``held_s`` = one push-pull period more."""
    timing = PROFILE_TIMING.get(profile, PROFILE_TIMING["lan"])
    alive = 2 * timing.probe_s + suspicion_max_s(timing, members)
    return alive, push_pull_interval_s(timing, members) + alive


@dataclass(frozen=True, slots=True)
class Instance:
    """An alive gossipmgr instance, as advertised in its Serf tags."""

    name: str
    gossip_addr: tuple[str, int]
    api_url: str
    boot_id: str
    status: str


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """A cluster node's inventory-relevant change (see the module's table)."""

    kind: NodeEventKind
    name: str
    label: str
    serial: str
    addr: str


@dataclass(frozen=True, slots=True)
class InstancesChanged:
    """The alive gossipmgr instance list changed; ``instances`` is the new list."""

    instances: tuple[Instance, ...]


MembershipEvent = NodeEvent | InstancesChanged


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What we know of one cluster node member."""

    name: str
    label: str
    serial: str
    addr: str
    boot: str
    status: str
    member: str  # the Serf member name
    up: bool  # our last event for it was "discovered"
    since: float  # ``now`` of the update that last changed ``status`` or identity


def _parse_instance(m: Mapping[str, Any]) -> Instance | None:
    tags = m.get("Tags") or {}
    if tags.get(ROLE_TAG) != ROLE_GOSSIPMGR:
        return None
    name = m.get("Name")
    gossip = tags.get("gossip", "")
    try:
        addr = split_hostport(str(gossip))
    except ValueError as exc:
        log.warning(
            "serf member %r: role=gossipmgr with bad gossip tag %r (%s); ignored", name, gossip, exc
        )
        return None
    if not isinstance(name, str):  # update() passes named members only
        return None
    return Instance(
        name=name,
        gossip_addr=addr,
        api_url=str(tags.get("api", "")),
        boot_id=str(tags.get("boot", "")),
        status=str(m.get("Status", "")),
    )


@dataclass(frozen=True, slots=True)
class Conflict:
    """A Serf member claiming a node identity another member owns (module docstring)."""

    member: str
    name: str  # the identity, ``<label>-<serial>``
    addr: str  # the NodeAddr it claims (never used)
    status: str
    owner: str  # the member that owns the identity

    def as_json(self) -> dict[str, str]:
        return {
            "member": self.member,
            "node": self.name,
            "addr": self.addr,
            "status": self.status,
            "owner": self.owner,
        }


_HOLDS: Final = ("alive", "leaving")  # statuses in which an owner keeps its identity

_Claim = tuple[str, str, Mapping[str, Any]]
"""(member, status, tags) of a member carrying a node identity."""


@dataclass(slots=True)
class _Scan:
    """One member list, sorted out (``MembershipView._scan``)."""

    instances: list[Instance] = field(default_factory=list)
    failed: list[Instance] = field(default_factory=list)
    claims: dict[str, list[_Claim]] = field(default_factory=dict)  # identity -> claimants
    listed: set[str] = field(default_factory=set)  # members carrying a usable identity
    too_long: set[str] = field(default_factory=set)


class MembershipView:
    """Pure membership state: feed it member lists, get events back. Never awaits."""

    def __init__(self) -> None:
        self._nodes: dict[str, NodeInfo] = {}  # keyed by Serf member name
        self._instances: tuple[Instance, ...] = ()
        self._failed_instances: tuple[Instance, ...] = ()
        self._first = True
        self._owner: dict[str, str] = {}  # identity -> owning member
        self._first_seen: dict[str, float] = {}  # member -> first update that listed it
        self._conflicts: dict[str, Conflict] = {}
        self._too_long: set[str] = set()  # members whose node name is over MAX_KEY_PART
        self._statuses: frozenset[tuple[str, str]] = frozenset()
        #: ``now`` of the last update whose member list differed from the one before (a
        #: member joined, changed status or was reaped): how long the view has been quiet.
        self.changed_at = 0.0
        #: Members found conflicting so far (each counted once per episode).
        self.conflicts_total = 0

    @property
    def members(self) -> int:
        """How many members Serf listed last (any status, instances and nodes alike)."""
        return len(self._statuses)

    @property
    def conflicts(self) -> dict[str, Conflict]:
        """Members claiming an identity another member owns, keyed by member name."""
        return dict(self._conflicts)

    @property
    def instances(self) -> tuple[Instance, ...]:
        """Alive gossipmgr instances, sorted by name."""
        return self._instances

    @property
    def failed_instances(self) -> tuple[Instance, ...]:
        """gossipmgr instances Serf marks failed (not those that left), sorted by name."""
        return self._failed_instances

    @property
    def nodes(self) -> dict[str, NodeInfo]:
        """Every known cluster node member (any status), keyed by ``<label>-<serial>``."""
        return {info.name: info for info in self._nodes.values()}

    def update(self, members: Iterable[Mapping[str, Any]], now: float) -> list[MembershipEvent]:
        """Apply one full ``members`` list (normalised records) taken at ``now``.

        Returns node events (sorted by node name per kind of step) and, if the alive instance
        list changed (or on the first update), one :class:`InstancesChanged`. Malformed
        records are skipped, never raised on: member tags are cluster input.
        """
        members = list(members)
        statuses = frozenset(
            (m["Name"], str(m.get("Status", ""))) for m in members if isinstance(m.get("Name"), str)
        )
        if statuses != self._statuses or self._first:
            self._statuses, self.changed_at = statuses, now
        scan = self._scan(members, now)
        events, seen = self._assign(scan.claims, now)
        self._owner = {n: o for n, o in self._owner.items() if n in scan.claims}
        self._first_seen = {m: t for m, t in self._first_seen.items() if m in scan.listed}
        for member in sorted(set(self._nodes) - seen):
            info = self._nodes.pop(member)
            if info.up:
                events.append(self._event("disappeared", info))
            events.append(self._event("reaped", info))
        self._failed_instances = tuple(scan.failed)
        new_instances = tuple(scan.instances)
        if self._first or new_instances != self._instances:
            self._instances = new_instances
            events.append(InstancesChanged(new_instances))
        self._first = False
        return events

    def _scan(self, members: Iterable[Mapping[str, Any]], now: float) -> _Scan:
        """Sort one member list into instances and node identity claims."""
        scan = _Scan()
        for m in sorted(
            (m for m in members if isinstance(m.get("Name"), str)), key=lambda m: str(m["Name"])
        ):
            member = str(m["Name"])
            status = str(m.get("Status", ""))
            inst = _parse_instance(m)
            if inst is not None and status == "alive":
                scan.instances.append(inst)
            elif inst is not None and status == "failed":
                scan.failed.append(inst)
            tags = m.get("Tags") or {}
            if not all(isinstance(tags.get(k), str) and tags.get(k) for k in NODE_TAGS):
                continue  # not (or no longer) a cluster node: handled as vanished below
            name = f"{tags['NodeLabel']}-{tags['NodeSerial']}"
            if len(name) > MAX_KEY_PART:
                # Serf tags hold up to 512 bytes; the replicated state holds node names up
                # to MAX_KEY_PART. Such a member is not a node here: as a node, every write
                # naming it is refused, and the holder's reconcile (one commit for all
                # nodes) with it.
                scan.too_long.add(member)
                if member not in self._too_long:
                    log.warning(
                        "serf membership: member %s claims node %s..., a name of %d "
                        "characters (limit %d): ignored",
                        member,
                        name[:40],
                        len(name),
                        MAX_KEY_PART,
                    )
                continue
            scan.listed.add(member)
            self._first_seen.setdefault(member, now)
            scan.claims.setdefault(name, []).append((member, status, tags))
        self._too_long = scan.too_long
        return scan

    def _assign(
        self, claims: dict[str, list[_Claim]], now: float
    ) -> tuple[list[MembershipEvent], set[str]]:
        """Give each identity its owner; returns the owners' node events and the members
        that own one. The other claimants become this update's conflicts."""
        events: list[MembershipEvent] = []
        seen: set[str] = set()
        conflicts: dict[str, Conflict] = {}
        for name in sorted(claims):
            owner = self._pick_owner(name, claims[name])
            previous = self._owner.get(name)
            self._owner[name] = owner
            if previous is not None and previous != owner:
                events += self._moved(name, previous, owner)
            for member, status, tags in claims[name]:
                if member == owner:
                    seen.add(member)
                    events += self._node_step(member, status, tags, now)
                    continue
                conflicts[member] = self._conflict(member, name, status, tags, owner)
        self._conflicts = conflicts
        return events, seen

    def _moved(self, name: str, previous: str, owner: str) -> list[MembershipEvent]:
        # The identity moves: the old owner's record goes first (it is down, or gone), so
        # the new owner's "discovered" is the last word.
        events: list[MembershipEvent] = []
        old = self._nodes.get(previous)
        if old is not None and old.name == name:
            del self._nodes[previous]
            if old.up:
                events.append(self._event("disappeared", old))
        log.warning(
            "serf membership: node %s now belongs to member %s (was %s)", name, owner, previous
        )
        return events

    def _conflict(
        self, member: str, name: str, status: str, tags: Mapping[str, Any], owner: str
    ) -> Conflict:
        c = Conflict(member, name, str(tags["NodeAddr"]), status, owner)
        if member not in self._conflicts:
            self.conflicts_total += 1
            log.warning(
                "serf membership: member %s claims node %s (NodeAddr %s) owned by "
                "member %s: ignored while %s holds it",
                member,
                name,
                c.addr,
                owner,
                owner,
            )
        return c

    def _pick_owner(self, name: str, claims: Sequence[tuple[str, str, Mapping[str, Any]]]) -> str:
        """Which member owns identity ``name`` (rules in the module docstring)."""
        status = {member: st for member, st, _ in claims}
        if status.get(name) in _HOLDS:
            return name
        current = self._owner.get(name)
        if current in status:
            return current
        return min(
            status,
            key=lambda m: (m != name, status[m] != "alive", self._first_seen.get(m, 0.0), m),
        )

    def _node_step(
        self, member: str, status: str, tags: Mapping[str, Any], now: float
    ) -> list[MembershipEvent]:
        label, serial, addr = (str(tags[k]) for k in NODE_TAGS)
        boot = str(tags.get("boot", ""))
        name = f"{label}-{serial}"
        old = self._nodes.get(member)
        events: list[MembershipEvent] = []
        up = old.up if old is not None else False
        if old is not None and old.up and old.name != name:
            # The member now claims another identity: the old node is gone.
            events.append(self._event("disappeared", old))
            up = False
        identity_changed = old is None or (old.name, old.addr, old.boot) != (name, addr, boot)
        if status == "alive":
            if not up or identity_changed:
                up = True
                info = NodeInfo(name, label, serial, addr, boot, status, member, up, now)
                events.append(self._event("discovered", info))
        elif status in ("failed", "left") and up:
            up = False
            info = NodeInfo(name, label, serial, addr, boot, status, member, up, now)
            events.append(self._event("disappeared", info))
        since = now if old is None or identity_changed or old.status != status else old.since
        self._nodes[member] = NodeInfo(name, label, serial, addr, boot, status, member, up, since)
        return events

    @staticmethod
    def _event(kind: NodeEventKind, info: NodeInfo) -> NodeEvent:
        return NodeEvent(kind, info.name, info.label, info.serial, info.addr)


class Absences:
    """How long each expected node has been missing from our Serf member list. Pure.

    Our Serf agent's list can lag the cluster's: a member whose join broadcast missed our
    agent is absent until the next push-pull (:data:`PUSH_PULL_S`). A node Serf *lists* as
    failed or left is a health event; a node it does not list at all is only "not known
    here yet" until it has stayed absent for a grace period of our own observation.
    """

    def __init__(self) -> None:
        self._since: dict[str, float] = {}

    def young(
        self, expected: Iterable[str], listed: Iterable[str], now: float, grace: float
    ) -> set[str]:
        """Expected names absent from ``listed`` for less than ``grace`` (counted from
        the first call that saw each one absent; a name listed again starts over)."""
        here = set(listed)
        self._since = {n: self._since.get(n, now) for n in expected if n not in here}
        return {n for n, t in self._since.items() if now - t < grace}
