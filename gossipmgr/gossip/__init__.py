"""Gossip between gossipmgr instances. Import from the submodules; this package re-exports
nothing.

Layering, bottom up (each layer owned by its module; pure ones take ``now`` as an argument):

- ``datagram``  PURE: the datagram size budget and ``Counters``, shared by all below.
- ``keys``      PURE: key files, key ids, the ``Keyring``.
- ``crypto``    PURE: AES-256-GCM sealing, replay guard. Untrusted bytes -> BadPacket.
- ``transport`` trio UDP sockets; the ``Transport`` protocol that
  ``gossipmgr.testing.network.InMemoryTransport`` also satisfies.
- ``messages``  PURE: the anti-entropy messages as frozen records; one decoder of untrusted
  bytes, the encoder, fragmentation.
- ``encoder``, ``peers``, ``protocol``  PURE: the anti-entropy state machine (sans-I/O).
- ``service``   the trio loop: owns the protocol object, feeds it datagrams, timer ticks
  and the replica's local writes (through ``ReplicaPort``; the replica knows no gossip).
"""
