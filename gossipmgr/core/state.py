"""The replicated cluster state: one LWW map, read through a typed view.

Every piece of state gossipmgr replicates is an entry of one :class:`~gossipmgr.core.crdt.LWWMap`,
under a key whose first part names its namespace. A nested map (a node's extra-vars) is
flattened into path keys, which *is* a map of LWW maps: concurrent writers of different
variables both survive, and a removal is a tombstone on that one variable.

=====================================  ==========================================  ==========
key                                    value                                       order
=====================================  ==========================================  ==========
``("g", var)``                         global extra-var (any JSON value)           LWW
``("n", node, "v", var)``              the node's own extra-var                    LWW
``("n", node, "hg")``                  the node's host-group (string)              LWW
``("n", node, "inv")``                 ``{status, prev_status, state, prev_state}`` LWW
                                       (``{forgotten: true}``: a forgotten node)
``("n", node, "mon")``                 ``{label, serial, addr}`` from Serf tags     LWW
``("j", job_id)``                      job record (``gossipmgr.core.job``)         LWW
``("cfg", "ansible")``                 the runtime ansible config section          LWW
``("lease",)``                         ``{holder, epoch, expires_ms}``             lease order
=====================================  ==========================================  ==========

Orders (``gossipmgr.core.orders``, the table the map consults): "LWW" is the larger hybrid
timestamp. The *lease order* is ``(epoch, holder earlier in name order, timestamp)``: a
higher epoch always wins; two claims of one epoch (made concurrently on two sides of a
partition) resolve to the holder whose name sorts first, on every replica alike; a renewal
(same holder and epoch) wins by timestamp. Inventory records and job records are
*epoch-fenced*: ranked ``(epoch, timestamp)``, where ``epoch`` is the lease epoch under
which the write was made, so a write by a deposed holder loses to any write made under a
newer lease even when its clock runs ahead. Such losses are counted as ``LWWMap.fenced``.

Inventory status and state live in one register with their previous values so that a
record is never torn (status from one writer, prev_status from another).

Mutators are pure functions returning deltas (small LWW maps); nothing here changes a state
except :meth:`ClusterState.apply`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.core.job import JobRecord
from gossipmgr.core.node import Inventory, Monitoring, NodeRecord
from gossipmgr.core.orders import (
    CONFIG,
    GLOBAL,
    JOB,
    LEASE,
    NODE,
    value_epoch,
)

# Re-exported: the ranks of the namespaces above (callers and docs name them here).
from gossipmgr.core.orders import TOMBSTONE_EPOCH as TOMBSTONE_EPOCH
from gossipmgr.core.orders import fenced_rank as fenced_rank
from gossipmgr.core.orders import lease_rank as lease_rank

#: namespaces a decoder accepts (append-only, like every wire enum)
NAMESPACES = frozenset({GLOBAL, NODE, JOB, CONFIG, LEASE})

LEASE_KEY: Key = (LEASE,)
ANSIBLE_CONFIG_KEY: Key = (CONFIG, "ansible")


def global_key(var: str) -> Key:
    return (GLOBAL, var)


def node_var_key(node: str, var: str) -> Key:
    return (NODE, node, "v", var)


def host_group_key(node: str) -> Key:
    return (NODE, node, "hg")


def inventory_key(node: str) -> Key:
    return (NODE, node, "inv")


def monitoring_key(node: str) -> Key:
    return (NODE, node, "mon")


def job_key(job_id: str) -> Key:
    return (JOB, job_id)


def valid_key(key: Key) -> bool:
    """Structural check of a key's shape (used by the untrusted decoder)."""
    if not key or key[0] not in NAMESPACES:
        return False
    ns, n = key[0], len(key)
    if ns == GLOBAL or ns == JOB:
        return n == 2
    if ns == CONFIG:
        return n == 2 and key[1] == "ansible"
    if ns == LEASE:
        return n == 1
    # NODE
    return (n == 3 and key[2] in ("hg", "inv", "mon")) or (n == 4 and key[2] == "v")


class ClusterState:
    """The replica: an LWW map plus an index of keys by node for fast node reads."""

    def __init__(self, entries: LWWMap | None = None) -> None:
        self.map = LWWMap()
        self._by_node: dict[str, set[Key]] = {}
        # Keys of the small namespaces, so reads of globals and jobs never scan the map.
        self._by_ns: dict[str, set[Key]] = {GLOBAL: set(), JOB: set()}
        #: The highest lease epoch any fenced record (inventory, job) was written under.
        #: The lease must never trail it (see ``lease.decide``'s ``floor``).
        self.max_record_epoch = 0
        if entries is not None:
            self.map.gc_horizon = entries.gc_horizon
            self.apply(entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ClusterState) and self.map == other.map

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return len(self.map)

    def adopt(self, m: LWWMap) -> None:
        """Take ``m`` as the whole state (restore into an empty replica): no re-join."""
        if len(self.map):
            raise ValueError("adopt() needs an empty replica")
        self.map = m
        for k, e in m.items():
            self._index(k, e)

    def apply(self, delta: LWWMap | Iterable[tuple[Key, Entry]]) -> LWWMap:
        """Join a delta (or state) in; return the novel part (see ``LWWMap.join``)."""
        novel = self.map.join(delta)
        for k, e in novel.items():
            self._index(k, e)
        return novel

    def _index(self, k: Key, e: Entry) -> None:
        if k[0] == NODE:
            self._by_node.setdefault(k[1], set()).add(k)
            if len(k) == 3 and k[2] == "inv" and not e.deleted:
                self.max_record_epoch = max(self.max_record_epoch, value_epoch(e.value))
        elif k[0] in self._by_ns:
            self._by_ns[k[0]].add(k)
            if k[0] == JOB and not e.deleted:
                self.max_record_epoch = max(self.max_record_epoch, value_epoch(e.value))

    def _live(self, ns: str) -> Iterator[tuple[Key, Any]]:
        for k in self._by_ns[ns]:
            e = self.map.entry(k)
            if e is not None and not e.deleted:
                yield k, e.value

    # -- reads ---------------------------------------------------------------------------
    def globals(self) -> dict[str, Any]:
        return {k[1]: v for k, v in sorted(self._live(GLOBAL))}

    def node_names(self) -> list[str]:
        """Nodes that have an inventory record (not a forgotten one), sorted."""
        return sorted(n for n in self._by_node if self.has_node(n))

    def has_node(self, name: str) -> bool:
        # A forgotten node's inventory record is a marker {"forgotten": true, "epoch"},
        # not a tombstone: a tombstone in this fenced namespace would outrank every later
        # write, and the node could never be discovered again under its name.
        e = self.map.entry(inventory_key(name))
        return (
            e is not None
            and not e.deleted
            and not (isinstance(e.value, dict) and e.value.get("forgotten"))
        )

    def node(self, name: str) -> NodeRecord | None:
        if not self.has_node(name):
            return None
        inv = Inventory()
        mon: Monitoring | None = None
        hg = ""
        nvars: dict[str, Any] = {}
        for k in self._by_node.get(name, ()):
            e = self.map.entry(k)
            if e is None or e.deleted:
                continue
            # A record of another shape (forged by a key holder, or written by another
            # version) reads as absent: readers, the reconcile among them, never raise.
            match k[2]:
                case "inv":
                    inv = Inventory.from_value(e.value)
                case "mon":
                    mon = Monitoring.from_value(e.value)
                case "hg":
                    hg = str(e.value)
                case "v":
                    nvars[k[3]] = e.value
        return NodeRecord(name, inv, mon, hg, nvars)

    def nodes(self) -> Iterator[NodeRecord]:
        for n in self.node_names():
            rec = self.node(n)
            if rec is not None:
                yield rec

    def jobs(self) -> dict[str, JobRecord]:
        """Every job record by id, in id order. A value of another shape (forged by a key
        holder) is no job: see :meth:`job`."""
        out: dict[str, JobRecord] = {}
        for k, v in sorted(self._live(JOB)):
            rec = _job_at(k[1], v)
            if rec is not None:
                out[k[1]] = rec
        return out

    def job(self, job_id: str) -> JobRecord | None:
        """The record under ``("j", job_id)``; None for a value that is not a job record's
        shape (:meth:`JobRecord.from_value`) or that names another id than its key's."""
        return _job_at(job_id, self.map.get(job_key(job_id)))

    def ansible_config(self) -> dict[str, Any] | None:
        v = self.map.get(ANSIBLE_CONFIG_KEY)
        return dict(v) if isinstance(v, dict) else None

    def lease(self) -> dict[str, Any] | None:
        """The raw lease entry; a value that is not a map (forged) reads as absent, as the
        node, job and config readers do."""
        v = self.map.get(LEASE_KEY)
        return dict(v) if isinstance(v, dict) else None

    def max_timestamp(self) -> Timestamp | None:
        return self.map.max_timestamp()

    # -- mutators: each returns a delta; apply it separately ------------------------------
    @staticmethod
    def d_set(key: Key, value: Any, ts: Timestamp) -> LWWMap:
        return LWWMap({key: Entry(ts, value)})

    @staticmethod
    def d_remove(key: Key, ts: Timestamp) -> LWWMap:
        return LWWMap({key: Entry(ts, None, True)})

    def d_replace_globals(self, new: Mapping[str, Any], ts: Timestamp) -> LWWMap:
        """Replace every global extra-var (clusterm's POST /globals): sets + tombstones."""
        return self._replace(self.globals(), new, global_key, ts)

    def d_replace_node_vars(self, node: str, new: Mapping[str, Any], ts: Timestamp) -> LWWMap:
        rec = self.node(node)
        old = dict(rec.vars) if rec else {}
        return self._replace(old, new, lambda v: node_var_key(node, v), ts)

    @staticmethod
    def _replace(
        old: Mapping[str, Any], new: Mapping[str, Any], key_of: Any, ts: Timestamp
    ) -> LWWMap:
        d = LWWMap()
        entries: list[tuple[Key, Entry]] = [(key_of(k), Entry(ts, v)) for k, v in new.items()]
        entries += [(key_of(k), Entry(ts, None, True)) for k in old if k not in new]
        d.join(entries)
        return d


def _job_at(job_id: str, value: Any) -> JobRecord | None:
    # Every record gossipmgr writes sits under its own id's key. One that names another id
    # (forged) would be found by a reader of the list and missed by a lookup of its id: an
    # active one could then never be ended, and blocked every request.
    rec = JobRecord.from_value(value)
    return rec if rec is not None and rec.id == job_id else None


def combine(*deltas: LWWMap) -> LWWMap:
    """Join several deltas into one (for one atomic, one-record-on-disk change)."""
    out = LWWMap.lazy()
    for d in deltas:
        out.merge(d.items())
    return out
