"""The one way tests wait: poll a condition until it holds, with a deadline, never a bare sleep.

- :func:`wait_for` (synchronous, for agents in other processes): ``localcluster``'s own,
  re-exported here, because the demo uses it too and the product never imports this package.
- :func:`until` (under trio): the same for conditions that change in other tasks or
  processes; the predicate may be a plain function or a coroutine function.

Both return the predicate's first truthy value and raise ``TimeoutError`` naming what was
awaited when the deadline passes.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from gossipmgr.localcluster import wait_for

__all__ = ["until", "wait_for"]

T = TypeVar("T")


async def until(
    pred: Callable[[], T | Awaitable[T]],
    within: float,
    what: str = "the condition",
    *,
    step: float = 0.05,
) -> T:
    """Poll ``pred`` every ``step`` seconds until it returns something truthy; return that.

    Polling is the point: the state lives in other tasks or processes that cannot notify us.
    Raises ``TimeoutError`` naming ``what`` after ``within`` seconds.
    """
    with trio.move_on_after(within):
        while True:
            got = pred()
            value: T = await got if inspect.isawaitable(got) else got  # type: ignore[assignment]
            if value:
                return value
            await trio.sleep(step)
    raise TimeoutError(f"timed out after {within:g} s waiting for {what}")
