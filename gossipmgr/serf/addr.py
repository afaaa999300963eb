"""The one parser of ``HOST:PORT`` strings (command-line addresses, Serf's bind and RPC
addresses, the ``gossip`` tag other instances advertise).

The rule: the port is what follows the *last* colon, decimal digits, 1-65535 (0 too where
``any_port`` says the address is one we bind, where 0 lets the kernel pick a free port);
the host is everything before it, an IPv6 literal written in brackets (``[::1]:7946``,
brackets removed), and must not be empty. Names are not resolved here.
"""

from __future__ import annotations

__all__ = ["split_hostport"]


def split_hostport(value: str, *, any_port: bool = False) -> tuple[str, int]:
    """``"host:port"`` -> ``(host, port)``. Raises ValueError saying what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("expected HOST:PORT")
    if not (0 if any_port else 1) <= int(port) <= 65535:
        raise ValueError(f"port {port} out of range")
    host = host.strip("[]")
    if not host:
        raise ValueError("no host")
    return host, int(port)
