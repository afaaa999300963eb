"""hypercorn's keep-alive idle timer without a scheduling round per request.

hypercorn's trio worker arms a connection's idle timer (``TrioSingleTask``) when a response
is done and disarms it when the next request arrives. Both take a ``trio.Lock`` (a
checkpoint: the task yields to the scheduler) and arming starts the timer's task with
``nursery.start`` (the caller waits until the new task has run): up to three scheduling
rounds per request, one of them (the disarm) between reading a request and handing it to
the app, so on the path of every write's answer. :class:`IdleTimer` does the same job with
no await: arming cancels the previous timer task and starts the next one
(``start_soon``); disarming cancels it. Nothing else changes: the timer runs the same action
hypercorn gives it (close the connection after ``keep_alive_timeout`` idle, or at once when
the server stops), and a disarmed connection is not closed by it.

Installed by ``gossipmgr.api.server.serve`` (hypercorn has no setting for it: the name its
TCP server uses is pointed at this class; every hypercorn server in the process is the
API's). Measured in docs/benchmarks.md ("Write -> visible").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import hypercorn.trio.tcp_server
import trio


class IdleTimer:
    """One connection's idle timer: the interface of hypercorn's ``TrioSingleTask``
    (``restart(task_group, action)``, ``stop()``), without awaiting anything."""

    def __init__(self) -> None:
        self._scope: trio.CancelScope | None = None

    async def restart(self, task_group: Any, action: Callable[[], Awaitable[None]]) -> None:
        """Run ``action`` from now on, cancelling the one running (if any)."""
        if self._scope is not None:
            self._scope.cancel()
        scope = self._scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await action()

        task_group._nursery.start_soon(run)

    async def stop(self) -> None:
        """Cancel the running action (if any)."""
        if self._scope is not None:
            self._scope.cancel()
            self._scope = None


def install() -> None:
    """Make hypercorn's trio connections use :class:`IdleTimer`. Idempotent."""
    setattr(hypercorn.trio.tcp_server, "TrioSingleTask", IdleTimer)  # noqa: B010
