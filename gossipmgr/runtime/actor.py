"""Who asked: the name of the API token behind the request being served.

The API's token check sets it (``gossipmgr.api.boundary``) for the task that serves the
request, so every mutation the request makes below it (a job's ``requested_by``, a node's
history entry) knows the token name without passing it through every signature. Outside a
request (Serf events, the holder's own scans, the lease loop) it is "".
"""

from __future__ import annotations

from contextvars import ContextVar, Token

_ASKED_BY: ContextVar[str] = ContextVar("gossipmgr_asked_by", default="")


def asked_by() -> str:
    """The token name of the request being served ("" outside a request, or without auth)."""
    return _ASKED_BY.get()


def set_asked_by(name: str) -> Token[str]:
    """Name the token of the request the current task serves (the API's token check)."""
    return _ASKED_BY.set(name)
