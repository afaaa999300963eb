"""What a start waits for before the web stack's import takes the CPU (issue 17, restart
catch-up; docs/design.md, "Start and stop"): the answers to its ``SINCE`` requests, then a
pause in the reads the front serves (``Agent._first_reads``). Each wait has a bound; the
first is woken by each answer, the second looks at the front's count once per pause
window (and is ended at once by a request that waits for the web stack)."""

from __future__ import annotations

from collections.abc import Callable

import trio

from gossipmgr.gossip.protocol import AntiEntropy


async def since_answered(ae: AntiEntropy, now_ms: Callable[[], float], cap_s: float) -> None:
    """Until the start's ``SINCE`` requests are answered or given up
    (``AntiEntropy.since_waiting``), at most ``cap_s``: woken by each complete answer
    (``on_since_end``) and at the protocol's own deadline (``since_wait_until``)."""
    with trio.move_on_after(cap_s):
        while (until := ae.since_wait_until(now := now_ms())) is not None:
            answer = trio.Event()
            ae.on_since_end = answer.set
            with trio.move_on_after((until - now) / 1000):
                await answer.wait()
    ae.on_since_end = None


async def pause_in(
    answered: Callable[[], int], wanted: trio.Event, quiet_s: float, cap_s: float
) -> None:
    """Until ``answered()`` (the front's count of requests answered) stays the same for
    ``quiet_s``, at most ``cap_s``; at once when ``wanted`` is set (a request waits for
    the web stack)."""
    with trio.move_on_after(cap_s):
        seen = -1
        while answered() != seen and not wanted.is_set():
            seen = answered()
            with trio.move_on_after(quiet_s):
                await wanted.wait()
