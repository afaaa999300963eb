"""One long-lived thread for the store's group commits (``Store._flush``).

Each group commit (write a batch and its commit record, fdatasync) blocks, so it runs off
the trio thread. ``trio.to_thread.run_sync`` did that hand-off per batch: a
capacity limiter, a copied context, a thread from trio's cache named and renamed for the
job, an outcome delivered back: ~130 µs of CPU per hand-off on the loaded 2-core machine of
docs/benchmarks.md, where a single-key write costs a few ms in all. :class:`FlushThread`
keeps one thread per store waiting on a queue and wakes the waiting task directly
(``trio.lowlevel.reschedule`` through the run's token): ~80 µs on the same machine. The
wake-ups themselves (one each way) are the same; what is gone is the bookkeeping around
them. A job is handed over with its function, arguments, run token and task in one tuple
(no closures made per job).

:meth:`when_queued` runs a callback on the trio thread once the next job is in the
thread's hands, before its caller waits (or once the caller starts waiting for the flush
before it: :meth:`run_queued`): a local write's push to the peers then leaves while the
thread makes the write durable, in the writer's own step, not ahead of the fsync's start.

When the thread has had no job for ``idle_s`` after the last one it calls ``on_idle`` (the
store then moves its commit slot up to the end of the log: docs/storage-format.md).

The caller's semantics are those of a shielded ``to_thread.run_sync``: :meth:`run` cannot be
cancelled (a batch once taken is finished for every appender in it), returns what the
function returns and raises what it raises. Jobs run one at a time, in the order given
(the store's flush lock already serialises them). Compaction's snapshot writes keep using
trio's thread cache: a snapshot being written must not hold up the commits behind it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio
from trio.lowlevel import (
    Abort,
    current_task,
    current_trio_token,
    reschedule,
    wait_task_rescheduled,
)

log = logging.getLogger("gossipmgr.store")

#: a job: the function, its arguments, and the trio run and task to wake with its outcome
_Job = tuple[Callable[..., Any], tuple[Any, ...], trio.lowlevel.TrioToken, trio.lowlevel.Task]


def _not_cancellable(_: Any) -> Abort:
    return Abort.FAILED  # the job runs to its end: wait for it


class FlushThread:
    """A thread running one blocking job at a time for trio tasks (see the module docstring).

    Started by the first :meth:`run`; :meth:`stop` ends it once its queue is empty (the
    store stops it when it closes). A daemon thread: an instance abandoned without
    :meth:`stop` (a test's crashed store) leaves a thread waiting on an empty queue, not a
    process that cannot exit."""

    def __init__(
        self, name: str, *, on_idle: Callable[[], None] | None = None, idle_s: float = 0.0
    ) -> None:
        self.name = name
        #: called in the thread once no job came for ``idle_s`` after the last one (the
        #: store commits the log's end then); must not raise
        self.on_idle = on_idle
        self.idle_s = idle_s
        self._jobs: queue.SimpleQueue[_Job | None]
        self._jobs = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._queued: list[Callable[[], None]] = []

    def when_queued(self, fn: Callable[[], None]) -> None:
        """Call ``fn()`` (on the trio thread; it must not raise) once the next job is
        handed to the thread, or at the next :meth:`run_queued`, whichever comes first."""
        self._queued.append(fn)

    def run_queued(self) -> None:
        """Run the :meth:`when_queued` callbacks now (their caller is about to wait). One
        that raises is logged: a job once handed over must be waited for."""
        queued, self._queued = self._queued, []
        for fn in queued:
            try:
                fn()
            except Exception:
                log.exception("%s: a callback failed", self.name)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` in the thread; its result, or what it raised. Not cancellable."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((fn, args, current_trio_token(), current_task()))
        if self._queued:
            self.run_queued()
        return await wait_task_rescheduled(_not_cancellable)

    def _work(self) -> None:
        get, idle = self._jobs.get, False
        while True:
            try:
                job = get(timeout=self.idle_s) if idle else get()
            except queue.Empty:
                idle = False
                if self.on_idle is not None:
                    self.on_idle()
                continue
            if job is None:
                return
            fn, args, token, task = job
            result = outcome.capture(fn, *args)
            del fn, args, job
            token.run_sync_soon(reschedule, task, result)
            idle = self.on_idle is not None

    def stop(self) -> None:
        """End the thread after the jobs already queued. Idempotent."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread = None
