"""gossipmgr: a highly available, peer-to-peer cluster manager (clusterm's successor)."""

__version__ = "0.1.0"
