"""Job logs: the runner's log file, the replicated tail, and following either live.

The instance that runs a job writes every line of it to ``work_dir/jobs/<id>.log`` and keeps
the last LOG_TAIL_LINES of them (each cut to LOG_LINE_CHARS) for the job record's
``log_tail``, which reaches every replica. Following a job (``GET /info/logs/<id>``) reads
the file where the job runs or ran, and the replicated tail elsewhere.

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
    done: bool = False
    file: IO[str] | None = None
    changed: trio.Event = field(default_factory=trio.Event)

    def line(self, text: str) -> None:
        text = encodable(text)
        if self.file is not None:
            self.file.write(text + "\n")
            self.file.flush()
        self.tail.append(trim(text))
        self.count += 1
        self.dirty = True
        self.wake()

    def wake(self) -> None:
        self.changed.set()
        self.changed = trio.Event()


def local_lines(path: Path) -> list[str] | None:
    """The last INFO_LOG_LINES of a log file, or None when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    return text.splitlines()[-INFO_LOG_LINES:]


async def follow_file(path: Path, run: Run | None) -> AsyncIterator[str]:
    """The lines of a log file; while ``run`` (writing it) is not done, live ones too."""
    pos = 0
    partial = ""
    while True:
        # Read before checking done: the last lines are written before done is set.
        changed = run.changed if run is not None else None
        done = run is None or run.done
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                f.seek(pos)
                chunk = f.read()
                pos = f.tell()
        except FileNotFoundError:
            chunk = ""
        *lines, partial = (partial + chunk).split("\n")
        for line in lines:
            yield line
        if done:
            if partial:
                yield partial
            return
        assert changed is not None
        await changed.wait()


async def follow_record(replica: Replica, job_id: str) -> AsyncIterator[str]:
    """The replicated tail of a job, until the job ends or its record goes. A gap of more
    than LOG_TAIL_LINES between two updates is reported as one "lines skipped" line."""
    seen = 0
    while True:
        rec = replica.state.job(job_id)
        if rec is None:
            return
        first = rec.log_count - len(rec.log_tail)  # index of log_tail[0]
        if rec.log_count > seen:
            if first > seen:
                yield f"... {first - seen} lines skipped ..."
                seen = first
            for line in rec.log_tail[seen - first :]:
                yield line
            seen = rec.log_count
        if not rec.active:
            return
        await replica.wait_change()
