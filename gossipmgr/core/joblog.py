"""A job's whole log, replicated in bounded chunks. Pure.

The runner of a job cuts its log into chunks, each the value of one fenced entry::

    ("jl", job_id, "<index:06d>")  ->  {"epoch": E, "first": F, "lines": [...], "bytes": B}
                                        (+ "end": true on the last chunk of an ended job,
                                           "truncated": true on the chunk with the marker)

``first`` is the line number (0-based) of ``lines[0]`` in the whole log, so a line's number
is the same on every instance: that is the *offset* a follower resumes from. A chunk holds
at most CHUNK_LINES lines and CHUNK_BYTES bytes of text (a line alone is cut to
LINE_CHARS), far below what one gossip message carries. The runner rewrites the last (open)
chunk as lines arrive and never changes a chunk once the next one exists; each flush writes
the chunks it changed and the job record's ``log_count`` in one commit, so a replica that
has the record's count has (or is about to get) the lines it counts.

Past the job's cap (``job_log_max_bytes``) one marker line says the log was truncated and
the chunk carrying it is marked ``truncated``; later lines stay in the runner's log file
only. A job's chunks are removed (tombstones) when its record leaves the history, and the
logs of older jobs go first when the kept logs pass a total budget (:func:`d_trim_logs`).

:class:`LogChunks` is the writer's side, :func:`read` the reader's: both see values only,
never a clock, a file or a socket.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.core.orders import JOBLOG

#: Lines and bytes (UTF-8, a newline each) of one chunk; one line alone is cut to
#: LINE_CHARS characters (at most 4 bytes each), so a chunk stays far below a message.
CHUNK_LINES: Final = 1_000
CHUNK_BYTES: Final = 32 * 1024
LINE_CHARS: Final = 8 * 1024
#: The default cap of one job's replicated log (``job_log_max_bytes``).
DEFAULT_MAX_BYTES: Final = 2 * 1024 * 1024
#: The replicated logs of the newest jobs are kept while their total stays within this many
#: times the per-job cap; older ones are removed first (their records stay).
TOTAL_CAPS: Final = 16

_INDEX_RE: Final = re.compile(r"[0-9]{6}")
MAX_INDEX: Final = 999_999


def log_key(job_id: str, index: int) -> Key:
    return (JOBLOG, job_id, f"{index:06d}")


def valid_index(part: str) -> bool:
    """A chunk index as a key part: exactly six digits (so keys sort by index)."""
    return _INDEX_RE.fullmatch(part) is not None


def cut(line: str, limit: int = LINE_CHARS) -> str:
    return line if len(line) <= limit else line[: limit - 3] + "..."


def line_bytes(line: str) -> int:
    return len(line.encode("utf-8", "replace")) + 1


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk as read from a replica (:func:`chunk_of` checked its shape)."""

    first: int
    lines: tuple[str, ...]
    size: int
    end: bool
    truncated: bool

    @property
    def stop(self) -> int:
        """The line number after the chunk's last line."""
        return self.first + len(self.lines)


def chunk_of(value: object) -> Chunk | None:
    """The chunk in a replicated value; None for any other shape (forged by a key holder:
    a reader treats it as not there yet)."""
    if not isinstance(value, dict):
        return None
    first, lines, size = value.get("first"), value.get("lines"), value.get("bytes", 0)
    if type(first) is not int or first < 0 or type(size) is not int:
        return None
    if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
        return None
    return Chunk(
        first, tuple(lines), size, value.get("end") is True, value.get("truncated") is True
    )


Getter = Callable[[Key], Any]


def chunk_at(get: Getter, job_id: str, index: int) -> Chunk | None:
    if not 0 <= index <= MAX_INDEX:
        return None
    return chunk_of(get(log_key(job_id, index)))


# --------------------------------------------------------------------------- writing


@dataclass
class _Open:
    index: int
    first: int
    lines: list[str] = field(default_factory=list)
    size: int = 0
    truncated: bool = False
    end: bool = False

    def value(self, epoch: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "epoch": epoch,
            "first": self.first,
            "lines": list(self.lines),
            "bytes": self.size,
        }
        if self.truncated:
            out["truncated"] = True
        if self.end:
            out["end"] = True
        return out


class LogChunks:
    """The runner's side: lines in, chunk values out (the ones changed since the last
    :meth:`take`). ``max_bytes`` caps the replicated log; ``truncation_note`` is the marker
    line written once past it."""

    def __init__(self, max_bytes: int, truncation_note: str) -> None:
        self.max_bytes = max_bytes
        self.note = truncation_note
        self.lines = 0  # replicated lines (the marker included)
        self.bytes = 0
        self.truncated = False
        self._chunks: dict[int, _Open] = {}  # the open one and any not yet written
        self._open: _Open | None = None
        self._next = 0  # the index of the first chunk this writer opens
        self._dirty: set[int] = set()

    def continue_after(self, chunk: Chunk, index: int, size: int) -> None:
        """Go on with a log another runner wrote up to ``chunk`` (its last, at ``index``;
        ``size`` bytes in all): the next line opens chunk ``index + 1`` and is numbered
        ``chunk.stop`` (a job resumed by a new holder, ``gossipmgr.runtime.upgrade``)."""
        self.lines, self.bytes, self._next = chunk.stop, size, index + 1
        self.truncated = chunk.truncated

    def add(self, line: str) -> bool:
        """Add one line; False when it is past the cap (the marker was added instead, once)."""
        if self.truncated:
            return False
        line = cut(line)
        size = line_bytes(line)
        if self.bytes + size > self.max_bytes:
            self._append(cut(self.note), line_bytes(cut(self.note)))
            self.truncated = True
            assert self._open is not None
            self._open.truncated = True
            return False
        self._append(line, size)
        return True

    def _append(self, line: str, size: int) -> None:
        ch = self._open
        if ch is None or (
            ch.lines and (ch.size + size > CHUNK_BYTES or len(ch.lines) >= CHUNK_LINES)
        ):
            index = self._next if ch is None else ch.index + 1
            ch = self._open = self._chunks[index] = _Open(index, self.lines)
        ch.lines.append(line)
        ch.size += size
        self.lines += 1
        self.bytes += size
        self._dirty.add(ch.index)

    def end(self) -> None:
        """The job ended: the last chunk says so (written by the final flush)."""
        if self._open is None:
            self._open = self._chunks[self._next] = _Open(self._next, self.lines)
        self._open.end = True
        self._dirty.add(self._open.index)

    @property
    def dirty(self) -> bool:
        return bool(self._dirty)

    def take(self, epoch: int) -> list[tuple[int, dict[str, Any]]]:
        """The changed chunks as (index, value), values copied now; call :meth:`written`
        or :meth:`failed` with their indexes once the commit carrying them returned."""
        out = [(i, self._chunks[i].value(epoch)) for i in sorted(self._dirty)]
        self._dirty.clear()
        return out

    def written(self, indexes: Iterable[int]) -> None:
        """Those chunks are committed: a full one (not the open one) is forgotten here."""
        for i in indexes:
            if i not in self._dirty and self._open is not None and i != self._open.index:
                self._chunks.pop(i, None)

    def failed(self, indexes: Iterable[int]) -> None:
        """The commit failed: the next flush carries those chunks again."""
        self._dirty.update(i for i in indexes if i in self._chunks)


def d_chunks(job_id: str, chunks: Sequence[tuple[int, dict[str, Any]]], ts: Any) -> LWWMap:
    """The delta writing ``chunks`` (from :meth:`LogChunks.take`) under ``ts``."""
    return LWWMap({log_key(job_id, i): Entry(ts, v) for i, v in chunks})


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a reader is: the chunk it reads and the number of the next line it wants."""

    index: int = 0
    offset: int = 0


def seek(get: Getter, job_id: str, offset: int) -> Cursor:
    """A cursor at line ``offset`` (0: the start), at the chunk that holds it (or the last
    chunk there is before it)."""
    index = 0
    while (nxt := chunk_at(get, job_id, index + 1)) is not None and nxt.first <= offset:
        index += 1
    return Cursor(index, offset)


def read(get: Getter, job_id: str, cur: Cursor) -> tuple[list[str], Cursor, bool]:
    """The lines from ``cur`` on that the replica holds without a gap, the cursor after
    them, and whether the log is complete there (its end or its truncation marker read).

    A chunk is left for the next once the next one's ``first`` is not past the line wanted:
    a chunk that arrived before the last lines of the one it follows (a gap) waits for
    them; one that starts at or before a cursor past what this replica held when it was
    sought (a client resuming here at an offset it read elsewhere) is where it goes on."""
    out: list[str] = []
    index, pos = cur.index, cur.offset
    while (ch := chunk_at(get, job_id, index)) is not None and ch.first <= pos:
        if pos < ch.stop:
            out.extend(ch.lines[pos - ch.first :])
            pos = ch.stop
        if pos >= ch.stop and (ch.end or ch.truncated):
            return out, Cursor(index, pos), True
        nxt = chunk_at(get, job_id, index + 1)
        if nxt is None or nxt.first > pos:
            break
        index += 1
    return out, Cursor(index, pos), False


def has_log(get: Getter, job_id: str) -> bool:
    """Whether the replica holds any chunk of the job's log (its first)."""
    return chunk_at(get, job_id, 0) is not None


def all_lines(get: Getter, job_id: str) -> list[str]:
    """Every line of the job's log the replica holds without a gap, from the start."""
    return read(get, job_id, Cursor())[0]


def chunk_indexes(get: Getter, job_id: str) -> list[int]:
    """The indexes of the job's chunks present, from 0 up to the first one missing."""
    n = 0
    while n <= MAX_INDEX and get(log_key(job_id, n)) is not None:
        n += 1
    return list(range(n))


def log_size(get: Getter, job_id: str) -> int:
    """Bytes of the job's replicated log, as its chunks' ``bytes`` say (read alone, not
    the lines: this runs at every job start over every kept job's chunks)."""
    total = 0
    for i in chunk_indexes(get, job_id):
        v = get(log_key(job_id, i))
        size = v.get("bytes") if isinstance(v, dict) else 0
        total += size if type(size) is int and size > 0 else 0
    return total


def d_remove_log(get: Getter, job_id: str, ts: Any) -> LWWMap:
    """Tombstones for every chunk of the job's log."""
    return LWWMap({log_key(job_id, i): Entry(ts, None, True) for i in chunk_indexes(get, job_id)})


def d_trim_logs(
    get: Getter, dropped: Iterable[str], kept_newest_first: Iterable[str], budget: int, ts: Any
) -> LWWMap:
    """Tombstones for the logs of ``dropped`` jobs (their records leave the history), and
    for the logs of the oldest kept jobs past ``budget`` bytes in total (newest kept first)."""
    out = LWWMap()
    for j in dropped:
        out.join(d_remove_log(get, j, ts).items())
    total = 0
    for j in kept_newest_first:
        size = log_size(get, j)
        total += size
        if total > budget and size:
            out.join(d_remove_log(get, j, ts).items())
    return out
