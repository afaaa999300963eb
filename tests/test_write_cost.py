"""What a local write costs the writer, pinned by counts (no timing): the front parses a
keep-alive client's repeated header lines once (``api.wire.FieldsMemo``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gossipmgr.api.wire import FieldsMemo, Head, parse_head

LINES = [
    b"Host: 127.0.0.1:8080",
    b"host: other",
    b"Authorization: Bearer abc",
    b"Content-Type: application/json",
    b"Content-Length: 12",
    b"Content-Length: 0",
    b"Content-Length: 1x",
    b"Connection: close",
    b"Connection: upgrade",
    b"Transfer-Encoding: chunked",
    b" folded",
    b"X-Bare: a\nb",
    b"X-Cr: a\rb",
    b"Bad Name: x",
    b"Accept: */*",
]
REQUEST_LINES = [
    b"PUT /globals/k HTTP/1.1",
    b"GET /globals/a%2Fb HTTP/1.1",
    b"GET /health HTTP/1.1",
]


def _as_tuple(h: Head | None) -> tuple[object, ...] | None:
    if h is None:
        return None
    return (h.method, h.path, h.size, h.authorization, h.content_type, h.length, h.close)


@given(
    st.lists(
        st.tuples(st.sampled_from(REQUEST_LINES), st.lists(st.sampled_from(LINES), max_size=5)),
        max_size=12,
    )
)
def test_a_memo_reads_every_head_as_a_fresh_parse_does(
    heads: list[tuple[bytes, list[bytes]]],
) -> None:
    memo = FieldsMemo()
    for line, fields in heads:
        buf = b"\r\n".join([line, *fields]) + b"\r\n\r\nbody"
        end = buf.find(b"\r\n\r\n")
        assert _as_tuple(parse_head(buf, end, memo)) == _as_tuple(parse_head(buf, end))


def test_repeated_header_lines_are_parsed_once_and_a_changed_line_anew() -> None:
    memo = FieldsMemo()
    block = b"Host: h\r\nAuthorization: Bearer t\r\nContent-Length: 2"
    for i in range(5):
        buf = b"PUT /globals/k%d HTTP/1.1\r\n%s\r\n\r\n{}" % (i, block)
        head = parse_head(buf, buf.find(b"\r\n\r\n"), memo)
        assert head is not None and head.path == f"/globals/k{i}" and head.length == 2
    assert memo.hits == 4
    # the same request with a smuggling header: declined (handed to hypercorn), not memoized
    bad = b"PUT /globals/k HTTP/1.1\r\n%s\r\nTransfer-Encoding: chunked\r\n\r\n" % block
    assert parse_head(bad, bad.find(b"\r\n\r\n"), memo) is None
    assert memo.hits == 4
