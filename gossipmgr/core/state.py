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
``("n", node, "h", id)``               one entry of the node's history             LWW
                                       (``gossipmgr.core.history``)
``("j", job_id)``                      job record (``gossipmgr.core.job``)         LWW
``("jl", job_id, index)``              a chunk of the job's log                    fenced
                                       (``gossipmgr.core.joblog``)
``("cfg", "ansible")``                 the runtime ansible config section          LWW
``("lease",)``                         ``{holder, epoch, expires_ms}``             lease order
=====================================  ==========================================  ==========

Orders (``gossipmgr.core.orders``, the table the map consults): "LWW" is the larger hybrid
timestamp. The *lease order* is ``(epoch, holder earlier in name order, timestamp)``: a
higher epoch always wins; two claims of one epoch (made concurrently on two sides of a
partition) resolve to the holder whose name sorts first, on every replica alike; a renewal
(same holder and epoch) wins by timestamp. Inventory records, job records and job log
chunks are *epoch-fenced*: ranked ``(epoch, timestamp)``, where ``epoch`` is the lease
epoch under which the write was made, so a write by a deposed holder loses to any write
made under a newer lease even when its clock runs ahead. Such losses are counted as
``LWWMap.fenced``.

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
from gossipmgr.core.history import Cause, d_history, is_history_key, newest
from gossipmgr.core.job import ACTIVE, JobRecord
from gossipmgr.core.node import Inventory, Monitoring, NodeRecord
from gossipmgr.core.orders import (
    CONFIG,
    GLOBAL,
    JOB,
    JOBLOG,
    LEASE,
    NODE,
    value_epoch,
)

# Re-exported: the ranks of the namespaces above (callers and docs name them here).
from gossipmgr.core.orders import TOMBSTONE_EPOCH as TOMBSTONE_EPOCH
from gossipmgr.core.orders import fenced_rank as fenced_rank
from gossipmgr.core.orders import lease_rank as lease_rank

#: namespaces a decoder accepts (append-only, like every wire enum)
NAMESPACES = frozenset({GLOBAL, NODE, JOB, CONFIG, LEASE, JOBLOG})

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
    if ns == JOBLOG:
        return n == 3 and len(key[2]) == 6 and key[2].isascii() and key[2].isdigit()
    # NODE
    return (n == 3 and key[2] in ("hg", "inv", "mon")) or (n == 4 and key[2] in ("v", "h"))


class ClusterState:
    """The replica: an LWW map plus indexes of its live entries, kept as entries are joined.

    Reads cost what they return: one global, one job or one node touches only its own
    entries, and a listing (nodes, globals, jobs) only the live records of its namespace,
    never the map's other entries or its tombstones. Every index holds *live* entries only,
    so dropping tombstones (``LWWMap.gc``) never leaves one stale; each is updated from the
    winning entry alone (:meth:`_index`), on every path that changes the map (``apply``,
    ``adopt``, the constructor). :meth:`index_snapshot` and :func:`rebuilt_index` let a
    test check them against a full rebuild.
    """

    def __init__(self, entries: LWWMap | None = None) -> None:
        self.map = LWWMap()
        #: node -> its live keys (a forgotten node's marker included; not its history)
        self._by_node: dict[str, set[Key]] = {}
        #: node -> the ids of its live history entries (``gossipmgr.core.history``)
        self._history: dict[str, set[str]] = {}
        #: nodes with a live, not forgotten, inventory record
        self._nodes: set[str] = set()
        #: management address (the live monitoring record's) -> nodes monitored there
        self._by_addr: dict[str, set[str]] = {}
        self._addr_of: dict[str, str] = {}
        #: live global names and job ids; the ids whose record says Queued or Running
        self._globals: set[str] = set()
        self._jobs: set[str] = set()
        self._active_jobs: set[str] = set()
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
        """Take ``m`` as the whole state (restore into an empty replica): no re-join.

        The indexes are built in one pass over the live entries, the same as :meth:`_index`
        of each entry in turn but without its calls (the restore runs before serving): an
        empty replica's indexes have nothing a tombstone could remove."""
        if len(self.map):
            raise ValueError("adopt() needs an empty replica")
        self.map = m
        by_node, epoch = self._by_node, self.max_record_epoch
        for k, e in m.items():
            if e.deleted:
                continue
            ns = k[0]
            if ns == NODE:
                name = k[1]
                if is_history_key(k):
                    self._history.setdefault(name, set()).add(k[3])
                    continue
                keys = by_node.get(name)
                if keys is None:
                    by_node[name] = {k}
                else:
                    keys.add(k)
                if len(k) == 3 and k[2] != "hg":
                    epoch = self._adopt_node_record(name, k[2], e.value, epoch)
            elif ns == GLOBAL:
                self._globals.add(k[1])
            elif ns == JOB:
                self._jobs.add(k[1])
                if _active(e.value):
                    self._active_jobs.add(k[1])
                epoch = max(epoch, value_epoch(e.value))
        self.max_record_epoch = epoch

    def _adopt_node_record(self, name: str, part: str, value: Any, epoch: int) -> int:
        if part == "inv":
            if not _forgotten(value):
                self._nodes.add(name)
            return max(epoch, value_epoch(value))
        if part == "mon" and (addr := _mon_addr(value)):
            self._addr_of[name] = addr
            self._by_addr.setdefault(addr, set()).add(name)
        return epoch

    def apply(self, delta: LWWMap | Iterable[tuple[Key, Entry]]) -> LWWMap:
        """Join a delta (or state) in; return the novel part (see ``LWWMap.join``)."""
        novel = self.map.join(delta)
        for k, e in novel.items():
            self._index(k, e)
        return novel

    def gc(self, horizon_ms: int) -> int:
        """Drop tombstones older than ``horizon_ms`` (the indexes hold live entries only)."""
        return self.map.gc(horizon_ms)

    def _index(self, k: Key, e: Entry) -> None:
        """Bring the indexes in line with ``e``, now the entry under ``k``."""
        live = not e.deleted
        ns = k[0]
        if ns == GLOBAL:
            _mark(self._globals, k[1], live)
        elif ns == JOB:
            _mark(self._jobs, k[1], live)
            _mark(self._active_jobs, k[1], live and _active(e.value))
            if live:
                self.max_record_epoch = max(self.max_record_epoch, value_epoch(e.value))
        elif ns == NODE:
            self._index_node(k, e)

    def _index_node(self, k: Key, e: Entry) -> None:
        name, live = k[1], not e.deleted
        if is_history_key(k):
            _mark_in(self._history, name, k[3], live)
            return
        keys = self._by_node.get(name)
        if live:
            if keys is None:
                keys = self._by_node[name] = set()
            keys.add(k)
        elif keys is not None:
            keys.discard(k)
            if not keys:
                del self._by_node[name]
        if len(k) != 3:
            return
        if k[2] == "inv":
            _mark(self._nodes, name, live and not _forgotten(e.value))
            if live:
                self.max_record_epoch = max(self.max_record_epoch, value_epoch(e.value))
        elif k[2] == "mon":
            self._index_addr(name, _mon_addr(e.value) if live else "")

    def _index_addr(self, name: str, addr: str) -> None:
        old = self._addr_of.pop(name, "")
        if old:
            names = self._by_addr[old]
            names.discard(name)
            if not names:
                del self._by_addr[old]
        if addr:
            self._addr_of[name] = addr
            self._by_addr.setdefault(addr, set()).add(name)

    def index_snapshot(self) -> dict[str, Any]:
        """The indexes as plain values (for tests: compare with :func:`rebuilt_index`)."""
        return {
            "by_node": {n: set(ks) for n, ks in self._by_node.items()},
            "nodes": set(self._nodes),
            "by_addr": {a: set(ns) for a, ns in self._by_addr.items()},
            "globals": set(self._globals),
            "jobs": set(self._jobs),
            "history": {n: set(ids) for n, ids in self._history.items()},
            "active_jobs": set(self._active_jobs),
        }

    # -- reads ---------------------------------------------------------------------------
    def globals(self) -> dict[str, Any]:
        """Every global extra-var, in name order."""
        get = self.map.get
        return {v: get(global_key(v)) for v in sorted(self._globals)}

    def has_global(self, var: str) -> bool:
        return var in self._globals

    def global_value(self, var: str) -> Any:
        """The global ``var``'s value (None when absent: ask :meth:`has_global` first, a
        value may be JSON null)."""
        return self.map.get(global_key(var))

    def node_names(self) -> list[str]:
        """Nodes that have an inventory record (not a forgotten one), sorted."""
        return sorted(self._nodes)

    def node_count(self) -> int:
        return len(self._nodes)

    def has_node(self, name: str) -> bool:
        # A forgotten node's inventory record is a marker {"forgotten": true, "epoch"},
        # not a tombstone: a tombstone in this fenced namespace would outrank every later
        # write, and the node could never be discovered again under its name.
        return name in self._nodes

    def nodes_at(self, addr: str) -> list[str]:
        """Nodes whose monitoring record gives ``addr`` as their management address (forgotten
        ones too: :meth:`node` tells), in name order."""
        return sorted(self._by_addr.get(addr, ()))

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

    def history(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The node's history entries, newest first, at most ``limit`` (forgotten nodes keep
        theirs): ``gossipmgr.core.history.newest``."""
        get = self.map.get
        ids = self._history.get(name, ())
        return newest(((i, get((NODE, name, "h", i))) for i in ids), limit)

    def has_history(self, name: str) -> bool:
        return name in self._history

    def d_history(self, delta: LWWMap, ts: Timestamp, cause: Cause, limit: int) -> LWWMap:
        """``delta`` with a history entry for each inventory change in it, and the
        tombstones that keep each node to ``limit`` entries (``core.history``)."""
        return combine(delta, d_history(self.map, self._history, delta, ts, cause, limit))

    def nodes(self) -> Iterator[NodeRecord]:
        for n in self.node_names():
            rec = self.node(n)
            if rec is not None:
                yield rec

    def jobs(self) -> dict[str, JobRecord]:
        """Every job record by id, in id order. A value of another shape (forged by a key
        holder) is no job: see :meth:`job`."""
        out: dict[str, JobRecord] = {}
        get = self.map.get
        for i in sorted(self._jobs):
            rec = _job_at(i, get(job_key(i)))
            if rec is not None:
                out[i] = rec
        return out

    def active_jobs(self) -> list[JobRecord]:
        """The Queued and Running job records, in id order: from their index, so a caller
        on every write (the holder's orphan scan) never reads the job history."""
        get = self.map.get
        recs = (_job_at(i, get(job_key(i))) for i in sorted(self._active_jobs))
        return [r for r in recs if r is not None and r.active]

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

    def d_patch_globals(self, changes: Mapping[str, Any], ts: Timestamp) -> LWWMap:
        """Set several globals and remove others in one delta (``PATCH /globals``): a value
        of None removes the variable (a tombstone, only for one that exists: removing an
        absent one changes nothing), any other value sets it."""
        d = LWWMap.lazy()  # a delta: never digested, so never hashed
        d.merge(
            (global_key(k), Entry(ts, None, True) if v is None else Entry(ts, v))
            for k, v in changes.items()
            if v is not None or k in self._globals
        )
        return d

    def d_replace_node_vars(self, node: str, new: Mapping[str, Any], ts: Timestamp) -> LWWMap:
        rec = self.node(node)
        old = dict(rec.vars) if rec else {}
        return self._replace(old, new, lambda v: node_var_key(node, v), ts)

    @staticmethod
    def _replace(
        old: Mapping[str, Any], new: Mapping[str, Any], key_of: Any, ts: Timestamp
    ) -> LWWMap:
        d = LWWMap.lazy()  # a delta: never digested, so never hashed
        entries: list[tuple[Key, Entry]] = [(key_of(k), Entry(ts, v)) for k, v in new.items()]
        entries += [(key_of(k), Entry(ts, None, True)) for k in old if k not in new]
        d.merge(entries)
        return d


def _mark(s: set[str], name: str, present: bool) -> None:
    if present:
        s.add(name)
    else:
        s.discard(name)


def _mark_in(index: dict[str, set[str]], name: str, item: str, present: bool) -> None:
    items = index.get(name)
    if present:
        index.setdefault(name, set()).add(item)
    elif items is not None:
        items.discard(item)
        if not items:
            del index[name]


def _active(value: Any) -> bool:
    # Any JSON passes the wire checks: a status that is a list or a map (unhashable) must
    # read as not active, not raise out of a join (the gossip receive loop) or a restore.
    if not isinstance(value, dict):
        return False
    status = value.get("status")
    return isinstance(status, str) and status in ACTIVE


def _mon_addr(value: Any) -> str:
    """A monitoring record's management address ("" for a value that is not a map)."""
    return str(value.get("addr", "")) if isinstance(value, dict) else ""


def _forgotten(value: Any) -> bool:
    return isinstance(value, dict) and bool(value.get("forgotten"))


def rebuilt_index(m: LWWMap) -> dict[str, Any]:
    """The indexes of :class:`ClusterState` computed afresh from every entry of ``m``, by the
    definitions of the reads they serve (the reference for :meth:`ClusterState.index_snapshot`)."""
    out: dict[str, Any] = {"by_node": {}, "nodes": set(), "by_addr": {}, "globals": set()}
    out["jobs"], out["active_jobs"] = set(), set()
    out["history"] = {}
    for k, v in m.live():
        if k[0] == GLOBAL:
            out["globals"].add(k[1])
        elif k[0] == JOB:
            out["jobs"].add(k[1])
            if _active(v):
                out["active_jobs"].add(k[1])
        elif k[0] == NODE and is_history_key(k):
            out["history"].setdefault(k[1], set()).add(k[3])
        elif k[0] == NODE:
            out["by_node"].setdefault(k[1], set()).add(k)
            if k[2] == "inv" and not _forgotten(v):
                out["nodes"].add(k[1])
            elif k[2] == "mon" and (mon := Monitoring.from_value(v)) is not None and mon.addr:
                out["by_addr"].setdefault(mon.addr, set()).add(k[1])
    return out


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
