"""The merge order of each key namespace: which of two entries for one key wins.

``gossipmgr.core.crdt.LWWMap`` ranks every entry it joins with :func:`rank`, which looks the
key's namespace up in ``ORDERS``; a namespace not listed there is plain last-writer-wins
(the larger hybrid timestamp). The table is a constant of this module, so the join means
the same whoever imported what first. The namespaces themselves (their keys and values) are
described in ``gossipmgr.core.state``; docs/design.md has the rules and why.

- *LWW*: ``(timestamp,)``.
- *Lease order* (``("lease",)``): ``(epoch, holder earlier in name order, timestamp)``.
- *Epoch-fenced* (job records and their log chunks, a node's inventory record):
  ``(epoch, timestamp)``, a tombstone above every epoch. A node's other keys (vars,
  host-group, monitoring) are LWW.

A rank must have the same shape for every entry of one key (they are compared).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

from gossipmgr.core.clock import Timestamp

__all__ = [
    "CONFIG",
    "GLOBAL",
    "JOB",
    "JOBLOG",
    "LEASE",
    "NODE",
    "ORDERS",
    "TOMBSTONE_EPOCH",
    "fenced_rank",
    "lease_rank",
    "node_rank",
    "rank",
    "value_epoch",
]

Key = tuple[str, ...]


class Ranked(Protocol):
    """What a rank reads of an entry: ``crdt.Entry`` (this module is below ``crdt``)."""

    @property
    def ts(self) -> Timestamp: ...

    @property
    def value(self) -> Any: ...

    @property
    def deleted(self) -> bool: ...


Rank = Callable[[Key, Ranked], tuple[Any, ...]]

GLOBAL = "g"
NODE = "n"
JOB = "j"
CONFIG = "cfg"
LEASE = "lease"
JOBLOG = "jl"


def value_epoch(value: Any) -> int:
    """The lease epoch a record was written under (-1 when absent or malformed)."""
    if isinstance(value, dict):
        ep = value.get("epoch")
        if type(ep) is int:
            return ep
    return -1


def _name_rank(name: Any) -> tuple[int, ...]:
    # Earlier in sort order must rank HIGHER: negate code points, end with a sentinel above
    # every negated code point so that a prefix ("a") outranks its extensions ("ab").
    s = name if isinstance(name, str) else "\U0010ffff"
    return (*(-ord(c) for c in s), 1)


def lease_rank(key: Key, e: Ranked) -> tuple[Any, ...]:
    v = e.value if not e.deleted else None
    return (value_epoch(v), _name_rank(v.get("holder") if isinstance(v, dict) else None), e.ts)


#: A tombstone in a fenced namespace outranks every epoch: removing a job record from
#: history (or a node from the inventory) is final and cannot be undone by a late writer.
TOMBSTONE_EPOCH = 1 << 62


def fenced_rank(key: Key, e: Ranked) -> tuple[Any, ...]:
    return (TOMBSTONE_EPOCH if e.deleted else value_epoch(e.value), e.ts)


def node_rank(key: Key, e: Ranked) -> tuple[Any, ...]:
    return fenced_rank(key, e) if len(key) == 3 and key[2] == "inv" else (-2, e.ts)


#: namespace -> its order. Namespaces not listed are LWW.
ORDERS: Mapping[str, Rank] = MappingProxyType(
    {LEASE: lease_rank, JOB: fenced_rank, NODE: node_rank, JOBLOG: fenced_rank}
)


def rank(key: Key, e: Ranked) -> tuple[Any, ...]:
    """The rank of entry ``e`` (a ``crdt.Entry``) under ``key``'s namespace order."""
    order = ORDERS.get(key[0]) if key else None
    return order(key, e) if order is not None else (e.ts,)
