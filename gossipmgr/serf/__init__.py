"""gossipmgr's Serf layer: RPC framing (pure), a trio RPC client, agent supervision and
the membership view. See docs/serf.md."""

from gossipmgr.serf.client import SerfClient, open_serf_client, serf_connector
from gossipmgr.serf.membership import SerfMembership
from gossipmgr.serf.process import SerfAgentProcess
from gossipmgr.serf.view import Instance, InstancesChanged, MembershipView, NodeEvent, NodeInfo

__all__ = [
    "Instance",
    "InstancesChanged",
    "MembershipView",
    "NodeEvent",
    "NodeInfo",
    "SerfAgentProcess",
    "SerfClient",
    "SerfMembership",
    "open_serf_client",
    "serf_connector",
]
