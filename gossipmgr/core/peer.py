"""One gossipmgr instance as ``GET /info/peers`` and ``gossipmgr peers`` show it. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Peer:
    """An instance Serf lists (``in_serf``), or this instance when Serf does not list it.

    ``last_heard_ms_ago`` is None until gossip has been heard from the peer (and always for
    this instance itself). ``auth_failures`` counts its datagrams that failed gossip
    authentication; ``auth_failure_reasons`` splits that count by reason.
    """

    name: str
    api_url: str
    gossip_addr: str | None
    status: str
    self_: bool
    lag: int = 0
    in_serf: bool = True
    resyncing: bool = False
    last_heard_ms_ago: int | None = None
    auth_failures: int = 0
    auth_failure_reasons: Mapping[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSON the API serves (docs/api.md): an instance Serf does not list has no
        gossip figures (no ``resyncing``, ``last_heard_ms_ago`` or auth fields)."""
        shown = {
            "name": self.name,
            "api_url": self.api_url,
            "gossip_addr": self.gossip_addr,
            "status": self.status,
            "self": self.self_,
            "lag": self.lag,
        }
        if not self.in_serf:
            return shown
        return {
            "auth_failures": self.auth_failures,
            "auth_failure_reasons": dict(self.auth_failure_reasons),
            **shown,
            "resyncing": self.resyncing,
            "last_heard_ms_ago": self.last_heard_ms_ago,
        }
