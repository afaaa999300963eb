"""One long-lived thread for the store's group commits (``Store._flush``).

Each group commit (write a batch, fdatasync, write its commit slot, fdatasync) blocks, so it
runs off the trio thread. ``trio.to_thread.run_sync`` did that hand-off per batch: a
capacity limiter, a copied context, a thread from trio's cache named and renamed for the
job, an outcome delivered back: ~130 µs of CPU per hand-off on the loaded 2-core machine of
docs/benchmarks.md, where a single-key write costs a few ms in all. :class:`FlushThread`
keeps one thread per store waiting on a queue and wakes the waiting task directly
(``trio.lowlevel.reschedule`` through the run's token): ~80 µs on the same machine. The
wake-ups themselves (one each way) are the same; what is gone is the bookkeeping around
them.

The caller's semantics are those of a shielded ``to_thread.run_sync``: :meth:`run` cannot be
cancelled (a batch once taken is finished for every appender in it), returns what the
function returns and raises what it raises. Jobs run one at a time, in the order given
(the store's flush lock already serialises them). Compaction's snapshot writes keep using
trio's thread cache: a snapshot being written must not hold up the commits behind it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio


class FlushThread:
    """A thread running one blocking job at a time for trio tasks (see the module docstring).

    Started by the first :meth:`run`; :meth:`stop` ends it once its queue is empty (the
    store stops it when it closes). A daemon thread: an instance abandoned without
    :meth:`stop` (a test's crashed store) leaves a thread waiting on an empty queue, not a
    process that cannot exit."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any], None]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread; its result, or what it raised. Not cancellable."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        token = trio.lowlevel.current_trio_token()
        task = trio.lowlevel.current_task()

        def deliver(result: Any) -> None:
            token.run_sync_soon(trio.lowlevel.reschedule, task, result)

        self._jobs.put((lambda: fn(*args), deliver))

        def abort(_: Any) -> trio.lowlevel.Abort:
            return trio.lowlevel.Abort.FAILED  # the job runs to its end: wait for it

        return await trio.lowlevel.wait_task_rescheduled(abort)

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, deliver = job
            result = outcome.capture(fn)
            del fn, job
            deliver(result)

    def stop(self) -> None:
        """End the thread after the jobs already queued. Idempotent."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None
