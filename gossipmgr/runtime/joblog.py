"""Job logs: the runner's log file, the replicated chunks, and following them live.

The instance that runs a job writes every line of it to ``work_dir/jobs/<id>.log``, keeps
the last LOG_TAIL_LINES of them (each cut to LOG_LINE_CHARS) for the job record's
``log_tail``, and cuts the whole log into chunks (``gossipmgr.core.joblog``) that the run
replicates with the record (``gossipmgr.runtime.jobrun``). Every instance serves and
follows a job's log from those chunks (:func:`follow_log`): the same lines under the same line
numbers everywhere, also after the runner is gone. A job whose log has no chunks (removed
to stay within the budget, or run by a version before the chunks) shows its record's tail.

Ownership: a :class:`Run` belongs to the JobManager that started it; it opens and closes
its file. The followers here only read.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Final

import trio

from gossipmgr.core import joblog as chunks
from gossipmgr.core.job import JobRecord
from gossipmgr.runtime.replica import Replica

#: Lines of a job's log kept in its replicated record: enough for `job get last` to show
#: why it failed, small enough that a record stays one datagram-sized entry.
LOG_TAIL_LINES: Final = 20
LOG_LINE_CHARS: Final = 200
#: Lines GET /info/job answers with from the runner's full log (the tail of it).
INFO_LOG_LINES: Final = 10_000


def trim(line: str, limit: int = LOG_LINE_CHARS) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def encodable(text: str) -> str:
    """``text`` with any lone UTF-16 surrogate (ansible output of bytes that are not UTF-8
    arrives so) replaced: neither the log file nor msgpack can encode one."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


@dataclass
class Run:
    """One job this instance runs: its cancel event, log file and live followers."""

    job_id: str
    kind: str
    epoch: int
    path: Path
    cancel: trio.Event = field(default_factory=trio.Event)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL_LINES))
    count: int = 0
    dirty: bool = False
    fenced: bool = False
    #: why the fence watcher stopped the run ("" while it runs)
    fenced_why: str = ""
    done: bool = False
    file: IO[str] | None = None
    changed: trio.Event = field(default_factory=trio.Event)
    #: the cap of the replicated log (``job_log_max_bytes``)
    max_bytes: int = chunks.DEFAULT_MAX_BYTES
    #: the run's confirm socket (``runtime.confirm``), given to its ansible runs; None
    #: while it is not served
    confirm_socket: Path | None = None
    log: chunks.LogChunks = field(init=False)

    def __post_init__(self) -> None:
        self.log = chunks.LogChunks(
            self.max_bytes,
            f"[gossipmgr: log truncated: it passed job_log_max_bytes ({self.max_bytes} "
            f"bytes); the rest is only in {self.path} on the instance that ran the job]",
        )

    def line(self, text: str) -> None:
        text = encodable(text)
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()
        self.log.add(text)
        self.tail.append(trim(text))
        self.count += 1
        self.dirty = True
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


#: How long a follower of an ended job waits for lines its record counts but this replica
#: does not hold yet (a gossip message still under way) before it ends with a note.
GAP_WAIT_S: Final = 5.0


def replicated_lines(replica: Replica, rec: JobRecord) -> list[str]:
    """The last INFO_LOG_LINES of the job's replicated log; its record's tail without one."""
    get = replica.state.map.get
    if chunks.has_log(get, rec.id):
        return chunks.all_lines(get, rec.id)[-INFO_LOG_LINES:]
    return list(rec.log_tail)


def _tail_from(rec: JobRecord, offset: int) -> list[str]:
    """The lines of the record's tail numbered ``offset`` or later, after a note."""
    first = rec.log_count - len(rec.log_tail)  # the number of log_tail[0]
    note = (
        f"[gossipmgr: the full log of job {rec.id} is not kept (removed to stay within the "
        "log budget, or written by an older version); its last lines follow]"
    )
    return [note, *rec.log_tail[max(0, offset - first) :]]


async def follow_log(replica: Replica, job_id: str, offset: int = 0) -> AsyncIterator[str]:
    """The job's log from line ``offset`` (0-based; lines before it are skipped), live
    until the job ends, from the replicated chunks, never a line twice: a client that
    counted N lines resumes with ``offset=N``."""
    get = replica.state.map.get
    cur = chunks.seek(get, job_id, offset)
    while True:
        rec = replica.state.job(job_id)
        if rec is None:
            return
        get = replica.state.map.get
        if not rec.active and rec.log_count > 0 and not chunks.has_log(get, job_id):
            for line in _tail_from(rec, offset):
                yield line
            return
        lines, cur, complete = chunks.read(get, job_id, cur)
        for line in lines:
            yield line
        if complete or (not rec.active and cur.offset >= rec.log_count):
            return
        if rec.active:
            await replica.wait_change()
            continue
        with trio.move_on_after(GAP_WAIT_S) as waited:
            await replica.wait_change()
        if waited.cancelled_caught:
            missing = rec.log_count - cur.offset
            yield f"[gossipmgr: {missing} more lines of this log have not reached this instance]"
            return
