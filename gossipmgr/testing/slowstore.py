"""A store whose fsync a test holds: the appends of ``Replica.commit`` wait at a gate.

:class:`GatedStore` stands in for ``gossipmgr.runtime.store.Store`` behind a replica (set as
its store before any write) where a test needs to act while a write is between its hand-off
to the log and the end of its fsync: e.g. "a peer sees a write before the writer's fsync
completes". Each :meth:`append` records its bytes, then waits until the test opens the gate
(:meth:`release`); :meth:`fail_next` makes the waiting appends raise ``StoreError`` instead,
as a data directory that refused the write. Pure logic with trio events, no files.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from gossipmgr.errors import StoreError


class GatedStore:
    """The part of ``Store``'s interface a replica uses, with a gate before every ack."""

    def __init__(self) -> None:
        self.records: list[bytes] = []
        #: appends waiting at the gate now
        self.waiting = 0
        self.log_bytes = 0
        self._gate = trio.Event()
        self._error: str | None = None
        self._queued: list[Callable[[], None]] = []

    def hold(self) -> None:
        """Shut the gate: appends from now on wait for :meth:`release`."""
        if self._gate.is_set():
            self._gate = trio.Event()

    def release(self) -> None:
        """Open the gate: waiting appends finish (acknowledged)."""
        self._gate.set()

    def fail_next(self, reason: str) -> None:
        """Open the gate with an error: the appends waiting (and later ones) raise
        StoreError with ``reason``, as a refused write."""
        self._error = reason
        self._gate.set()

    def when_queued(self, fn: Callable[[], None]) -> None:
        self._queued.append(fn)

    async def append(self, record: bytes) -> None:
        self.records.append(bytes(record))
        queued, self._queued = self._queued, []
        for fn in queued:  # Store's: once its flush has the record (here: at once)
            fn()
        self.waiting += 1
        try:
            await self._gate.wait()
        finally:
            self.waiting -= 1
        if self._error is not None:
            raise StoreError(f"append not acknowledged: {self._error}")
        self.log_bytes += len(record)

    async def aclose(self) -> None:
        self.release()
