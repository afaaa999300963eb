"""Every exception gossipmgr raises, in one tree.

Errors are raised once, where they happen, and translated once, at a boundary
(the API's error handler maps ``status_hint`` to an HTTP status; the CLI prints
``str(exc)`` and exits non-zero; the gossip receive loop drops and counts
``BadPacket`` by ``reason``).

::

    GossipmgrError
    ├── ConfigError                 bad option or config key (one line, exit 2)
    ├── BadPacket                   untrusted bytes failed to decode/decrypt/verify (.reason)
    ├── ClockError                  remote HLC timestamp too far ahead (refused, counted)
    ├── StoreError                  durability failure: the write is NOT acknowledged
    │   └── CorruptFile             a snapshot/log file failed its checksum or version check
    ├── SerfError                   the Serf agent answered with an error string
    │   ├── SerfUnavailable         cannot connect / connection lost
    │   ├── SerfAuthError           "Authentication required" / "Invalid authentication token"
    │   └── SerfProtocolError       the stream desynchronised or an unexpected reply came
    ├── JobError                    running a playbook failed to start
    ├── StaleEpoch                  an action carried a lease epoch older than the current one
    └── RequestError                a user request was refused (carries .status_hint)
        ├── BadRequest         400  malformed input
        ├── NotFound           404  unknown node or job
        ├── Conflict           409  busy (active job) or illegal transition
        ├── CheckFailed        422  a workflow pre-check failed (clusterm's texts)
        ├── Unauthorized       401  missing/invalid token
        ├── Forbidden          403  refused by policy (an extra-var a client may not set)
        └── Unavailable        503  the request needs Serf/the lease holder and it is down
"""

from __future__ import annotations


class GossipmgrError(Exception):
    """Base of every gossipmgr error."""


class ConfigError(GossipmgrError):
    """A bad command-line option or config file key/value."""


class BadPacket(GossipmgrError):
    """Untrusted bytes were rejected. ``reason`` is a short stable label used as a metric key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class ClockError(GossipmgrError):
    """A remote timestamp is more than ``max_offset`` ahead of local physical time."""


class StoreError(GossipmgrError):
    """A durability operation failed; the write it belonged to is not acknowledged."""


class CorruptFile(StoreError):
    """A data file failed its magic/version/checksum check. ``path`` names the file."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(f"{path}: {why}")
        self.path = path
        self.why = why


class SerfError(GossipmgrError):
    """The Serf agent answered a request with an error string."""


class SerfUnavailable(SerfError):
    """The Serf agent cannot be reached, or the connection to it was lost."""


class SerfAuthError(SerfError):
    """The Serf agent requires (another) RPC auth key."""


class SerfProtocolError(SerfError):
    """The RPC stream could not be decoded or an unexpected reply arrived."""


class JobError(GossipmgrError):
    """A job could not be run."""


class StaleEpoch(GossipmgrError):
    """An action carried a lease epoch older than the current one and was refused."""

    def __init__(self, got: int, current: int, what: str = "action") -> None:
        super().__init__(f"stale lease epoch {got} < {current}: {what} refused")
        self.got = got
        self.current = current


class RequestError(GossipmgrError):
    """A user request was refused. ``status_hint`` is the HTTP status the API answers with."""

    status_hint = 400


class BadRequest(RequestError):
    status_hint = 400


class Unauthorized(RequestError):
    status_hint = 401


class NotFound(RequestError):
    status_hint = 404


class Conflict(RequestError):
    status_hint = 409


class CheckFailed(RequestError):
    status_hint = 422


class Forbidden(RequestError):
    """The request is understood but refused by policy (e.g. an ansible variable an API
    client may not set)."""

    status_hint = 403


class Unavailable(RequestError):
    status_hint = 503
