"""Gossip: datagram security (``crypto``), byte transports (``transport``) and, above them,
the anti-entropy protocol. Import from the submodules; this package re-exports nothing.

Layering (each layer owned by its module, pure ones take ``now`` as an argument):

- ``crypto``    PURE: keys, AES-256-GCM sealing, replay guard. Untrusted bytes -> BadPacket.
- ``transport`` trio UDP sockets; the ``Transport`` protocol that
  ``gossipmgr.testing.network.InMemoryTransport`` also satisfies.
"""
