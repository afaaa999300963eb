"""The change feed's pure part (``GET /watch``): keys as text, the history of committed
changes, event ids, and where a (re)connecting client starts.

Every entry of a delta committed to the local replica (a local write's novel part, or the
novel part of a delta received by gossip) is one :class:`Change`, numbered in commit order
by a sequence that starts at 1 with every instance start. The :class:`History` keeps the
last ``capacity`` of them in a ring: appending is O(1) per change whatever the number of
clients, and a client is no more than a cursor into the ring (:class:`Cursor`), so a slow
client holds no copy of anything. A client whose cursor falls further behind than the ring
holds has missed changes: it is cut off (:data:`CUTOFF_REASON`), never stalled on.

Event ids are ``<stream>-<seq>``: ``stream`` names this instance's run (its name's hash and
its incarnation, the start time in ms, :func:`stream_token`), so an id a client saved
against an earlier run, or against another instance, is recognised as foreign and answered
with a reset instead of a silent gap (:meth:`History.start`).

Nothing here reads a clock or does I/O; the trio part is ``gossipmgr.runtime.watch``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gossipmgr.core.crdt import Entry, Key
from gossipmgr.core.orders import CONFIG, GLOBAL, JOB, JOBLOG, LEASE, NODE

#: Changes kept by default (``watch_history`` in the agent's configuration).
DEFAULT_HISTORY = 10_000
#: Most changes one client is sent in one chunk (one write to its connection).
MAX_BATCH = 256
#: Most bytes of rendered events the history holds (values may be up to 1 MiB each).
MAX_HISTORY_BYTES = 64 * 1024 * 1024

_NODE_PARTS = {"hg": "host_group", "inv": "inventory", "mon": "monitoring"}
_ID_RE = re.compile(r"^([0-9a-f]{1,16}\.[0-9a-f]{8})-([0-9]{1,19})$")


def key_text(key: Key) -> str:
    """The documented text form of a state key (docs/api.md, "Watching changes"):

    ``globals/<var>``, ``nodes/<name>/extra_vars/<var>``, ``nodes/<name>/host_group``,
    ``nodes/<name>/inventory``, ``nodes/<name>/monitoring``, ``nodes/<name>/history/<id>``,
    ``jobs/<id>``, ``jobs/<id>/log/<chunk>``, ``config/<section>``, ``lease``. Names are not
    escaped (a global or a node name may hold ``/``); a namespace this version does not
    know is its parts joined by ``/``."""
    ns = key[0] if key else ""
    if ns == GLOBAL and len(key) == 2:
        return "globals/" + key[1]
    if ns == NODE and len(key) == 4 and key[2] == "v":
        return f"nodes/{key[1]}/extra_vars/{key[3]}"
    if ns == NODE and len(key) == 3 and key[2] in _NODE_PARTS:
        return f"nodes/{key[1]}/{_NODE_PARTS[key[2]]}"
    if ns == NODE and len(key) == 4 and key[2] == "h":
        return f"nodes/{key[1]}/history/{key[3]}"
    if ns == JOB and len(key) == 2:
        return "jobs/" + key[1]
    if ns == JOBLOG and len(key) == 3:
        return f"jobs/{key[1]}/log/{key[2]}"
    if ns == CONFIG and len(key) == 2:
        return "config/" + key[1]
    if ns == LEASE and len(key) == 1:
        return "lease"
    return "/".join(key)


def stream_token(name: str, incarnation: int) -> str:
    """The id prefix of one run of one instance: its start time (ms, hex) and a hash of its
    name, so two instances started in the same millisecond still differ."""
    tag = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
    return f"{incarnation & 0xFFFF_FFFF_FFFF_FFFF:x}.{tag}"


def parse_event_id(text: str) -> tuple[str, int]:
    """``(stream, seq)`` of an event id. Raises ValueError (with the reason) when ``text``
    is not one (the API answers 400)."""
    m = _ID_RE.match(text.strip())
    if m is None:
        raise ValueError(f"not an event id of this feed: {text[:80]!r}")
    return m.group(1), int(m.group(2))


def _jsonable(v: Any) -> Any:
    # Values are JSON-like (codec.check_entry), bytes only from a forged entry: shown, not
    # raised on.
    return v.hex() if isinstance(v, bytes | bytearray) else repr(v)


#: One encoder for every event (``json.dumps`` with options builds one per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_jsonable, allow_nan=False)


@dataclass(frozen=True, slots=True)
class Change:
    """One committed entry, as the feed sends it: its Server-Sent Event, rendered once when
    it is recorded (the history then holds bytes whose size it counts, never a reference to
    a value the state has since dropped)."""

    seq: int
    key: str
    deleted: bool
    frame: bytes


def change_data(key: str, e: Entry) -> dict[str, Any]:
    """An event's ``data`` object: ``key``, ``value`` (a put only), ``writer`` (the instance
    whose write it is) and ``ms`` (its hybrid timestamp's wall-clock part)."""
    d: dict[str, Any] = {"key": key}
    if not e.deleted:
        d["value"] = e.value
    d["writer"] = e.ts.node
    d["ms"] = e.ts.ms
    return d


def render_change(stream: str, seq: int, key: Key, e: Entry) -> Change:
    text = key_text(key)
    kind = "delete" if e.deleted else "put"
    data = change_data(text, e)
    try:
        body = _ENCODER.encode(data)
    except (TypeError, ValueError, RecursionError):
        # Not reachable through codec.check_entry (string keys, finite numbers, 32 levels);
        # a feed listener must never raise into a commit.
        data["value"] = None
        data["unrenderable"] = True
        body = json.dumps(data, separators=(",", ":"))
    frame = f"id: {stream}-{seq}\nevent: {kind}\ndata: {body}\n\n"
    return Change(seq, text, e.deleted, frame.encode("utf-8", "surrogatepass"))


def event_frame(kind: str, data: dict[str, Any], event_id: str | None = None) -> bytes:
    """A control event (``reset``, ``cutoff``): one ``data`` line of JSON."""
    head = f"id: {event_id}\n" if event_id else ""
    body = json.dumps(data, separators=(",", ":"))
    return f"{head}event: {kind}\ndata: {body}\n\n".encode()


def comment_frame(text: str, event_id: str | None = None) -> bytes:
    """An SSE comment (ignored by clients; keeps proxies from closing an idle stream). With
    ``event_id``, an ``id:`` line follows: it sets the client's last event id (what it sends
    back on reconnect) without dispatching an event."""
    tail = f"id: {event_id}\n\n" if event_id else "\n"
    return f": {text}\n{tail}".encode()


def cutoff_reason(behind: int, held: int) -> str:
    return (
        f"the client fell {behind} changes behind and the feed holds the last {held}: it "
        "did not read fast enough; re-read the state, then watch again"
    )


@dataclass(frozen=True)
class Start:
    """Where a new stream starts: after ``seq`` (``event_id`` names that position), with a
    ``reset`` reason when the client asked for history that is gone."""

    seq: int
    event_id: str
    reset: str = ""


class History:
    """The last ``capacity`` changes, numbered in commit order (sequence from 1), and no
    more than ``max_bytes`` of rendered events (the newest is always kept)."""

    def __init__(
        self, stream: str, capacity: int = DEFAULT_HISTORY, max_bytes: int = MAX_HISTORY_BYTES
    ) -> None:
        if capacity < 1:
            raise ValueError("the history must hold at least one change")
        self.stream = stream
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._ring: list[Change | None] = [None] * capacity
        #: sequence of the newest change (0: none yet), of the oldest held
        self.head = 0
        self.oldest = 1
        #: bytes of the events held
        self.bytes = 0

    @property
    def held(self) -> int:
        return self.head - self.oldest + 1

    def event_id(self, seq: int) -> str:
        return f"{self.stream}-{seq}"

    def append(self, entries: Iterable[tuple[Key, Entry]]) -> int:
        """Record each entry as a change; returns how many."""
        n = 0
        ring, cap = self._ring, self.capacity
        for k, e in entries:
            self.head += 1
            c = render_change(self.stream, self.head, k, e)
            if self.head - self.oldest >= cap:  # full: the slot holds the oldest
                self._drop_oldest()
            ring[self.head % cap] = c
            self.bytes += len(c.frame)
            while self.bytes > self.max_bytes and self.oldest < self.head:
                self._drop_oldest()
            n += 1
        return n

    def _drop_oldest(self) -> None:
        slot = self.oldest % self.capacity
        old = self._ring[slot]
        if old is not None:
            self.bytes -= len(old.frame)
        self._ring[slot] = None
        self.oldest += 1

    def get(self, seq: int) -> Change | None:
        """The change numbered ``seq``, None when it is not (or no longer) held."""
        if seq < self.oldest or seq > self.head:
            return None
        return self._ring[seq % self.capacity]

    def start(self, since: str | None) -> Start:
        """Where a client that last saw ``since`` (an event id; None: a new client) starts.

        A new client starts at the head (changes from now on). A client resuming from an id
        of this run whose successors are all still held resumes right after it. Otherwise
        (another run or instance, history gone, an id ahead of the head) it is told to
        reset and starts at the head. Raises ValueError for text that is not an event id.
        """
        now = Start(self.head, self.event_id(self.head))
        if since is None:
            return now
        stream, seq = parse_event_id(since)
        if stream != self.stream:
            why = (
                f"event {since} is from another run of this instance or from another "
                "instance; the changes since then are not known here"
            )
        elif seq > self.head:
            why = f"event {since} was never sent by this run of the instance"
        elif seq + 1 < self.oldest:
            why = (
                f"the changes after {since} are no longer kept (the feed holds the last "
                f"{self.held})"
            )
        else:
            return Start(seq, self.event_id(seq))
        return Start(self.head, self.event_id(self.head), why + "; re-read the state")


@dataclass
class Cursor:
    """One client's position: the last sequence it was sent, and its key prefix."""

    prefix: str
    pos: int

    def behind(self, history: History) -> int:
        return history.head - self.pos

    def take(self, history: History, limit: int = MAX_BATCH) -> list[Change] | None:
        """The next changes after ``pos`` that match ``prefix`` (at most ``limit``), moving
        ``pos`` past every change looked at; None when the client fell behind what the
        history holds (it is cut off: :func:`cutoff_reason`)."""
        if self.pos + 1 < history.oldest:
            return None
        out: list[Change] = []
        prefix = self.prefix
        while self.pos < history.head and len(out) < limit:
            self.pos += 1
            c = history.get(self.pos)
            if c is not None and c.key.startswith(prefix):
                out.append(c)
        return out
