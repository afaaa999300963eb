"""Node records: the typed, read-only view of one node's replicated entries. Pure.

A node is several entries of the replicated map (``gossipmgr.core.state``): its inventory
register ``("n", node, "inv")``, its Serf tags ``("n", node, "mon")``, its host-group
``("n", node, "hg")`` and its own extra-vars ``("n", node, "v", var)``. :class:`NodeRecord`
gathers them; :class:`Inventory` and :class:`Monitoring` parse the two map-valued ones.

The values arrive by gossip from any key holder (or from another version), so a parse never
raises: a value that is not a map reads as absent (every field at its default), a missing
field reads as its default, and a field of another type reads as its text (``str()``), which
is what the readers did before these records existed. What a record writes
(:meth:`Inventory.to_value`, :meth:`Monitoring.to_value`) is exactly the stored shape, field
order included, so data directories of earlier versions read and compare the same.

The vocabulary of statuses and states lives here, below the lifecycle rules
(``gossipmgr.core.inventory``) that use it, because a record's defaults need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final

from gossipmgr.core.orders import value_epoch

# --------------------------------------------------------------------------- vocabulary

INCOMPLETE: Final = "Incomplete"
UNALLOCATED: Final = "Unallocated"
PROVISIONING: Final = "Provisioning"
ALLOCATED: Final = "Allocated"
CANCELLED: Final = "Cancelled"
DECOMMISSIONED: Final = "Decommissioned"
MAINTENANCE: Final = "Maintenance"

STATUSES: Final = (
    INCOMPLETE,
    UNALLOCATED,
    PROVISIONING,
    ALLOCATED,
    CANCELLED,
    DECOMMISSIONED,
    MAINTENANCE,
)

UNKNOWN: Final = "Unknown"
DISCOVERED: Final = "Discovered"
DISAPPEARED: Final = "Disappeared"
STATES: Final = (UNKNOWN, DISCOVERED, DISAPPEARED)

MASTER: Final = "service-master"
WORKER: Final = "service-worker"
HOST_GROUPS: Final = (MASTER, WORKER)


def _text(value: dict[str, Any], name: str, default: str) -> str:
    return str(value.get(name, default))


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Inventory:
    """The inventory register ``{status, prev_status, state, prev_state, epoch}``.

    One register, so a reader never sees a status from one writer and its ``prev_status``
    from another. ``epoch`` is the lease epoch the register was written under."""

    status: str = INCOMPLETE
    prev_status: str = INCOMPLETE
    state: str = UNKNOWN
    prev_state: str = UNKNOWN
    epoch: int = -1

    @classmethod
    def from_value(cls, value: object) -> Inventory:
        if not isinstance(value, dict):
            return cls()
        return cls(
            _text(value, "status", INCOMPLETE),
            _text(value, "prev_status", INCOMPLETE),
            _text(value, "state", UNKNOWN),
            _text(value, "prev_state", UNKNOWN),
            value_epoch(value),
        )

    def to_value(self) -> dict[str, Any]:
        """The stored shape."""
        return {**self.to_json(), "epoch": self.epoch}

    def to_json(self) -> dict[str, str]:
        """The served shape (``inventory_state`` without its name): no epoch."""
        return {
            "status": self.status,
            "prev_status": self.prev_status,
            "state": self.state,
            "prev_state": self.prev_state,
        }

    def with_status(self, to: str, epoch: int) -> Inventory:
        """Status ``to`` (the old one becomes ``prev_status``), written under ``epoch``.
        Unchecked: the lifecycle's table is consulted by its callers."""
        return replace(self, status=to, prev_status=self.status, epoch=epoch)

    def with_state(self, to: str, epoch: int) -> Inventory:
        """State ``to`` (the old one becomes ``prev_state``), written under ``epoch``."""
        return replace(self, state=to, prev_state=self.state, epoch=epoch)


@dataclass(frozen=True, slots=True)
class Monitoring:
    """What Serf's tags say of a node: ``{label, serial, addr}``."""

    label: str = ""
    serial: str = ""
    addr: str = ""

    @classmethod
    def from_value(cls, value: object) -> Monitoring | None:
        """None for a value that is not a map (it reads as absent)."""
        if not isinstance(value, dict):
            return None
        return cls(_text(value, "label", ""), _text(value, "serial", ""), _text(value, "addr", ""))

    def to_value(self) -> dict[str, str]:
        """The stored shape."""
        return {"label": self.label, "serial": self.serial, "addr": self.addr}

    def to_json(self) -> dict[str, str]:
        """The served shape (clusterm's ``monitoring_state``)."""
        return {
            "label": self.label,
            "serial_number": self.serial,
            "management_address": self.addr,
        }


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A read-only snapshot of one node's replicated parts.

    ``monitoring`` is None while the node has no (map-valued) monitoring entry, e.g. a node
    imported from clusterm that Serf has not reported yet."""

    name: str
    inventory: Inventory = Inventory()
    monitoring: Monitoring | None = None
    host_group: str = ""
    vars: Mapping[str, Any] = field(default_factory=dict)

    @property
    def addr(self) -> str:
        """The management address ("" while Serf has not reported the node)."""
        return self.monitoring.addr if self.monitoring is not None else ""
