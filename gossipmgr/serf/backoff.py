"""Exponential backoff for retry loops: the first delay is ``low``, each next one doubles,
capped at ``high``; ``reset`` after a success (or a long healthy run) starts over.

One helper for every retry loop around Serf: the membership poller and event stream, the
supervised ``serf agent`` child, and the agent's restarts of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Delays in seconds. Raises ValueError unless both are positive and finite."""

    low: float
    high: float
    #: the delay ``next`` returns next
    current: float = field(init=False)

    def __post_init__(self) -> None:
        for value in (self.low, self.high):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"a backoff delay must be a positive number, not {value!r}")
        self.current = self.low

    def next(self) -> float:
        """The delay to wait now; the one after it doubles (up to ``high``)."""
        delay = self.current
        self.current = min(self.current * 2, self.high)
        return delay

    def reset(self) -> None:
        self.current = self.low
