"""What every gossip layer shares about a datagram: its size budget and event counters.

The bottom of ``gossipmgr.gossip``: the transport (which moves datagrams), the crypto layer
(which seals them) and the protocol (which fills them) all import it, and it imports none of
them, so the transport does not depend on the layers above it.
"""

from __future__ import annotations

import collections

__all__ = ["MAX_DATAGRAM", "Counters"]

# memberlist keeps UDP packets to 1400 B so they fit a 1500 B Ethernet MTU with IP/UDP
# headers and some tunnel headroom; we use the same budget for the whole sealed datagram.
MAX_DATAGRAM = 1400


class Counters(collections.Counter[str]):
    """Event counts by short label (e.g. BadPacket reasons, "sent", "dropped").

    A ``collections.Counter`` (missing keys read as 0) with two conveniences; pure, so the
    protocol, transports and tests can all use it. ``snapshot()`` returns a plain sorted dict
    for logs and metrics.
    """

    def incr(self, key: str, n: int = 1) -> None:
        self[key] += n

    def snapshot(self) -> dict[str, int]:
        return {k: self[k] for k in sorted(self)}
