"""Serf traffic our agent refuses for encryption reasons, per source, from its own log.

A Serf agent whose key differs, or that encrypts when we do not (or the reverse), never
becomes a member: Serf only logs it. clusterm's operators met it as an empty inventory
("Remote state is encrypted and encryption is not configured" in the node's log). This
module makes it visible on ``/health``: :class:`SerfRefusals` (pure) parses the agent's log
lines, :func:`watch_refusals` (trio) feeds it from the RPC ``monitor`` stream.

Lines recognised (memberlist/serf 0.8.2; any other line is ignored)::

    [ERR] memberlist: failed to receive: <reason> from=<ip>:<port>      TCP (join, push-pull)
    [ERR] memberlist: Decrypt packet failed: <reason> from=<ip>:<port>  UDP
    ... Failed to join <ip>:<port>: <reason>                            our own join attempt

and only when the reason is about encryption (the three texts in ``HINTS``, or one naming a
key). A TCP source port is ephemeral, so sources are kept by IP; a join target by ip:port.
At most ``MAX_SOURCES`` (source, reason) pairs are kept, the least recently seen dropped.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Final

import trio

from gossipmgr.errors import SerfError
from gossipmgr.serf.client import SerfClient

__all__ = ["HINTS", "SerfRefusals", "watch_refusals"]

log = logging.getLogger("gossipmgr.serf")

#: Serf's texts -> what they mean for the operator.
HINTS: Final = {
    "No installed keys could decrypt the message": "a Serf agent with another key",
    "Encryption is configured but remote state is not encrypted": (
        "an unencrypted Serf agent (contiv's nodes run so: --serf-no-encrypt joins them)"
    ),
    "Remote state is encrypted and encryption is not configured": (
        "an encrypted Serf agent while ours is not (--serf-encrypt-key-file)"
    ),
}
MAX_SOURCES: Final = 64
_RECEIVED = re.compile(
    r"memberlist: (?:failed to receive|Decrypt packet failed): (?P<reason>.+?) "
    r"from=(?P<src>\[?[0-9A-Fa-f.:]+?\]?):\d+\s*$"
)
_JOIN = re.compile(r"Failed to join (?P<src>\S+?): (?P<reason>[^\n]+)")


@dataclass
class Refusal:
    source: str
    reason: str
    count: int
    last_ms: int
    joining: bool  # our agent's own join attempt failed (else: traffic we received)


def _relevant(reason: str) -> bool:
    if any(text in reason for text in HINTS):
        return True
    return re.search(r"encrypt|decrypt|key", reason, re.I) is not None


class SerfRefusals:
    """Counts of encryption refusals per (source, reason). Pure: time is passed in."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], Refusal] = {}

    def feed(self, line: str, now_ms: int) -> bool:
        """Account one log line; True if it was a refusal."""
        found: list[tuple[str, str, bool]] = []
        m = _RECEIVED.search(line)
        if m is not None:
            found.append((m["src"].strip("[]"), m["reason"].strip(), False))
        found += [(j["src"], j["reason"].strip(), True) for j in _JOIN.finditer(line)]
        hit = False
        for src, reason, joining in found:
            if not _relevant(reason):
                continue
            hit = True
            key = (src, reason)
            r = self._seen.pop(key, None)
            if r is None:
                r = Refusal(src, reason, 0, now_ms, joining)
                if len(self._seen) >= MAX_SOURCES:
                    del self._seen[next(iter(self._seen))]
            self._seen[key] = r  # most recent last
            r.count += 1
            r.last_ms = now_ms
        return hit

    def snapshot(self, now_ms: int) -> list[dict[str, Any]]:
        return [
            {
                "source": r.source,
                "reason": r.reason,
                "hint": next((h for t, h in HINTS.items() if t in r.reason), ""),
                "count": r.count,
                "direction": "join" if r.joining else "received",
                "last_ms_ago": max(0, now_ms - r.last_ms),
            }
            for r in sorted(self._seen.values(), key=lambda r: (r.source, r.reason))
        ]


async def watch_refusals(
    connect: Callable[[], AbstractAsyncContextManager[SerfClient]],
    refusals: SerfRefusals,
    now_ms: Callable[[], int],
    *,
    retry_s: float = 2.0,
) -> None:
    """Feed ``refusals`` from the agent's log (``monitor`` at WARN) forever.

    Serf being down is not an error here: the membership service reports that; this one
    just reconnects every ``retry_s``.
    """
    while True:
        try:
            async with connect() as client, client.monitor("WARN") as lines:
                await _feed(lines, refusals, now_ms)
        except (SerfError, OSError) as exc:
            log.debug("serf log monitor down: %s", exc)
        await trio.sleep(retry_s)


async def _feed(
    lines: AsyncIterator[dict[str, Any]], refusals: SerfRefusals, now_ms: Callable[[], int]
) -> None:
    async for rec in lines:
        text = rec.get("Log")
        if isinstance(text, str) and refusals.feed(text, now_ms()):
            log.debug("serf refused: %s", text.strip())
