"""The change feed's pure part (gossipmgr.core.feed): key text, the history ring, event ids,
where a resuming client starts, and a Hypothesis model of clients that read, disconnect and
resume while changes are appended."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import Entry
from gossipmgr.core.feed import (
    Cursor,
    History,
    comment_frame,
    key_text,
    parse_event_id,
    stream_token,
)
from gossipmgr.core.history import history_key
from gossipmgr.core.joblog import log_key
from gossipmgr.core.state import (
    ANSIBLE_CONFIG_KEY,
    LEASE_KEY,
    global_key,
    host_group_key,
    inventory_key,
    job_key,
    monitoring_key,
    node_var_key,
)


def _e(i: int, deleted: bool = False) -> Entry:
    return Entry(Timestamp(1000 + i, 0, "w"), None if deleted else {"i": i}, deleted)


def test_key_text_covers_every_namespace() -> None:
    assert key_text(global_key("a/b")) == "globals/a/b"
    assert key_text(node_var_key("rack/7-1", "v")) == "nodes/rack/7-1/extra_vars/v"
    assert key_text(host_group_key("n-1")) == "nodes/n-1/host_group"
    assert key_text(inventory_key("n-1")) == "nodes/n-1/inventory"
    assert key_text(monitoring_key("n-1")) == "nodes/n-1/monitoring"
    assert key_text(job_key("123-g1")) == "jobs/123-g1"
    assert key_text(history_key("n-1", "5-0-g1")) == "nodes/n-1/history/5-0-g1"
    assert key_text(log_key("123-g1", 7)) == "jobs/123-g1/log/000007"
    assert key_text(ANSIBLE_CONFIG_KEY) == "config/ansible"
    assert key_text(LEASE_KEY) == "lease"
    assert key_text(("zz", "a", "b")) == "zz/a/b"  # a namespace of a newer version


def test_frames_put_delete_and_ids() -> None:
    h = History(stream_token("i1", 123), 4)
    h.append([(global_key("x"), _e(1)), (global_key("x"), _e(2, deleted=True))])
    put, delete = h.get(1), h.get(2)
    assert put is not None and delete is not None
    text = put.frame.decode()
    assert text.startswith(f"id: {h.stream}-1\nevent: put\ndata: ")
    assert json.loads(text.split("data: ")[1]) == {
        "key": "globals/x",
        "value": {"i": 1},
        "writer": "w",
        "ms": 1001,
    }
    text = delete.frame.decode()
    assert "event: delete\n" in text and '"value"' not in text
    assert parse_event_id(f"{h.stream}-2") == (h.stream, 2)
    assert comment_frame("keepalive") == b": keepalive\n\n"


def test_a_value_json_cannot_carry_is_rendered_never_raised() -> None:
    h = History(stream_token("i1", 1), 4)
    odd = Entry(Timestamp(1, 0, "w"), {(1, 2): float("nan")})
    h.append([(global_key("odd"), odd), (global_key("b"), Entry(Timestamp(2, 0, "w"), b"\x01"))])
    c1, c2 = h.get(1), h.get(2)
    assert c1 is not None and c2 is not None
    assert json.loads(c1.frame.decode().split("data: ")[1])["unrenderable"] is True
    assert json.loads(c2.frame.decode().split("data: ")[1])["value"] == "01"


def test_stream_tokens_differ_by_name_and_incarnation() -> None:
    assert stream_token("i1", 5) != stream_token("i2", 5)
    assert stream_token("i1", 5) != stream_token("i1", 6)
    parse_event_id(stream_token("i1", 2**70) + "-1")  # an absurd incarnation still parses


@pytest.mark.parametrize("bad", ["", "zzz", "1-2", "abc.12345678-", "abc.12345678-x", "a-1-2"])
def test_start_refuses_text_that_is_no_event_id(bad: str) -> None:
    with pytest.raises(ValueError):
        History("abc.12345678", 4).start(bad)


def test_start_resets_when_history_is_gone_or_foreign() -> None:
    h = History(stream_token("i1", 1), 3)
    assert h.start(None).seq == 0 and not h.start(None).reset
    h.append((global_key(str(i)), _e(i)) for i in range(5))  # 1..5 appended, 3..5 kept
    assert h.oldest == 3
    assert h.start(f"{h.stream}-2") == h.start(f"{h.stream}-2")
    ok = h.start(f"{h.stream}-2")  # 3.. still held: resume
    assert ok.seq == 2 and not ok.reset
    gone = h.start(f"{h.stream}-1")  # 2 is gone
    assert gone.seq == 5 and "no longer kept" in gone.reset
    future = h.start(f"{h.stream}-9")
    assert future.seq == 5 and "never sent" in future.reset
    other = h.start(f"{stream_token('i1', 2)}-3")  # a restarted instance's id
    assert other.seq == 5 and "another run" in other.reset


def test_history_holds_a_bounded_number_of_bytes() -> None:
    h = History(stream_token("i1", 1), 100, max_bytes=1000)
    big = Entry(Timestamp(1, 0, "w"), "x" * 300)
    h.append((global_key(str(i)), big) for i in range(10))
    assert h.head == 10 and h.bytes <= 1000 and h.held == 2
    assert h.get(8) is None and h.get(9) is not None
    h.append([(global_key("huge"), Entry(Timestamp(2, 0, "w"), "y" * 5000))])
    assert h.held == 1 and h.get(11) is not None  # the newest is always kept
    assert "no longer kept" in h.start(f"{h.stream}-9").reset
    assert not h.start(f"{h.stream}-10").reset


def test_cursor_is_cut_off_once_it_falls_behind_the_ring() -> None:
    h = History("s.00000000", 4)
    c = Cursor("", 0)
    h.append((global_key(str(i)), _e(i)) for i in range(4))
    got = c.take(h)
    assert got is not None and [x.seq for x in got] == [1, 2, 3, 4]
    h.append((global_key(str(i)), _e(i)) for i in range(5))  # 5..9: 5 is gone
    assert c.take(h) is None
    assert c.behind(h) == 5


KEYS = [
    global_key("a"),
    global_key("a/b"),
    global_key("ab"),
    node_var_key("a/b", "x"),
    host_group_key("n"),
    job_key("j1"),
    LEASE_KEY,
]
PREFIXES = ["", "globals/", "globals/a/", "globals/a", "nodes/a/b/", "jobs/", "lease"]

op = st.one_of(
    st.tuples(st.just("write"), st.lists(st.sampled_from(range(len(KEYS))), max_size=6)),
    st.tuples(st.just("read"), st.integers(1, 8)),
    st.tuples(st.just("reconnect"), st.booleans()),
)


class Client:
    """A client of the model: what it was sent since its origin, and the last id it saw."""

    def __init__(self, h: History, prefix: str) -> None:
        self.h, self.prefix = h, prefix
        self.origin = 0
        self.last_id = ""
        self.got: list[int] = []
        self.cursor: Cursor | None = None
        self.resets = 0

    def connect(self, keep_id: bool) -> None:
        since = self.last_id if keep_id and self.last_id else None
        lost = since is not None and parse_event_id(since)[1] + 1 < self.h.oldest
        s = self.h.start(since)
        assert bool(s.reset) == lost  # told exactly when changes it had not seen are gone
        if since is None or s.reset:
            self.resets += bool(s.reset)
            self.origin, self.got = s.seq, []  # a new start: it re-reads the state
        else:
            assert s.seq == parse_event_id(since)[1]
        self.cursor = Cursor(self.prefix, s.seq)
        self.last_id = s.event_id

    def read(self, n: int) -> None:
        if self.cursor is None:
            return
        taken = self.cursor.take(self.h, n)
        if taken is None:  # cut off: a change it was owed is gone
            assert self.cursor.pos + 1 < self.h.oldest
            self.cursor = None
            return
        for c in taken:
            assert c.key.startswith(self.prefix)
            self.got.append(c.seq)
            self.last_id = self.h.event_id(c.seq)

    def check(self, log: list[tuple[int, str]], upto: int) -> None:
        """Exactly the matching changes in (origin, upto], once each, in commit order."""
        owed = [s for s, k in log if self.origin < s <= upto and k.startswith(self.prefix)]
        assert self.got == owed


op = st.one_of(
    st.tuples(st.just("write"), st.lists(st.sampled_from(range(len(KEYS))), max_size=6)),
    st.tuples(st.just("read"), st.integers(1, 8)),
    st.tuples(st.just("reconnect"), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(
    capacity=st.integers(1, 12),
    max_bytes=st.one_of(st.just(1 << 30), st.integers(100, 1500)),
    prefix=st.sampled_from(PREFIXES),
    ops=st.lists(op, max_size=40),
)
def test_resuming_client_gets_every_change_once_in_order_or_is_told(
    capacity: int, max_bytes: int, prefix: str, ops: list[tuple[str, object]]
) -> None:
    """A client that reads some changes, disconnects (keeping the last id it saw, or not)
    and resumes receives, between resets, exactly the matching changes committed after its
    start, each once, in commit order; it is reset exactly when changes it had not seen were
    dropped from the ring, and cut off only then."""
    h = History(stream_token("i1", 7), capacity, max_bytes)  # by count, or bytes too
    log: list[tuple[int, str]] = []  # every change ever appended: (seq, key text)
    client = Client(h, prefix)
    client.connect(False)
    for kind, arg in ops:
        if kind == "write":
            assert isinstance(arg, list)
            batch = [(KEYS[i], _e(len(log) + n)) for n, i in enumerate(arg)]
            h.append(batch)
            log += [(len(log) + n + 1, key_text(k)) for n, (k, _) in enumerate(batch)]
        elif kind == "read":
            assert isinstance(arg, int)
            client.read(arg)
        else:
            client.connect(bool(arg))
        client.check(log, client.got[-1] if client.got else client.origin)
    client.connect(True)  # drain: a last reconnect, then read everything
    client.read(len(log) + 1)
    client.check(log, h.head)
