"""HTTP/1.1 on the wire for the front (``api.front``): a strict parser of the request heads
it answers itself, and a response's bytes exactly as hypercorn (h11) writes them.

Strict on purpose: :func:`parse_head` accepts one narrow form of request and returns None
for anything else, and the front then hands the connection, with every byte it has read,
to hypercorn, which answers it as it always did. So the front never reads a request
differently from hypercorn; at worst it declines one hypercorn would take. It accepts:

* a request line ``GET|PUT|DELETE SP target SP HTTP/1.1``: HTTP/1.1 only (no HTTP/1.0, no
  HTTP/2 preface), the target in origin form of visible ASCII, whose path (percent-decoded
  as hypercorn decodes it) is ``/health`` or ``/info/globals`` (GET only) or
  ``/globals/{key}`` (a key the routes' converter matches); a query string is allowed
  (none of these routes reads one, as none of their Quart views does);
* header lines ``name: value``, each ending in CRLF (a bare CR or LF anywhere in the head:
  declined), the name a token, no space before the colon, no obs-fold (a line that starts
  with a space or tab), the value visible ASCII with inner spaces and tabs;
* exactly one Host; at most one Authorization, Content-Type, Content-Length and
  Connection; Content-Length digits only, at most ``MAX_BODY_BYTES``, 0 on a GET or DELETE;
  Connection ``keep-alive`` or ``close`` only;
* no Transfer-Encoding (a request smuggling attempt needs it or a second
  Content-Length), Expect, Upgrade or HTTP2-Settings;
* a head of at most :data:`MAX_HEAD` bytes (hypercorn's limit is 16 KiB; a larger head
  goes to hypercorn, which answers it as it does).
"""

from __future__ import annotations

import re
import time
from urllib.parse import unquote
from wsgiref.handlers import format_date_time

from gossipmgr.api.hot import HEALTH, INFO_GLOBALS, KEY, PREFIX
from gossipmgr.api.values import MAX_BODY_BYTES

#: The largest request head the front reads itself (h11, in hypercorn: 16 KiB).
MAX_HEAD = 8 * 1024
#: What a request the front answers may start with: a read that does not fit is handed
#: over at once (a POST, a TLS hello, an HTTP/2 preface).
STARTS = (b"GET /", b"PUT /", b"DELETE /")
#: hypercorn's ``keep_alive_max_requests``: the answer to the 1000th request on one
#: connection says ``connection: close``, and the connection closes.
MAX_REQUESTS = 1000
SERVER = b"hypercorn-h11"

_METHODS = {b"GET": "GET", b"PUT": "PUT", b"DELETE": "DELETE"}
_TARGET = re.compile(rb"/[\x21-\x7e]*")
_FIELD = re.compile(
    rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e](?:[\t\x20-\x7e]*[\x21-\x7e])?)?)[ \t]*"
)
_DECLINED = frozenset((b"transfer-encoding", b"expect", b"upgrade", b"http2-settings", b"te"))
_ONCE = frozenset((b"authorization", b"content-type", b"content-length", b"connection"))


class Head:
    """A request head the front answers: its method, path (decoded), the headers it uses,
    the body's length, whether the client asked to close, and the head's size in bytes."""

    __slots__ = ("authorization", "close", "content_type", "length", "method", "path", "size")

    def __init__(self, method: str, path: str, size: int) -> None:
        self.method = method
        self.path = path
        self.size = size
        self.authorization = ""
        self.content_type = ""
        self.length = 0
        self.close = False


def plausible(buf: bytes) -> bool:
    """Whether ``buf``, the start of a request whose head is not complete yet, may still
    become one the front answers (a bare LF already makes it one it declines)."""
    start = buf[:8]
    if not any(s.startswith(start) or start.startswith(s) for s in STARTS):
        return False
    return buf.count(b"\n") == buf.count(b"\r\n") and len(buf) <= MAX_HEAD


def parse_head(buf: bytes, end: int, memo: FieldsMemo | None = None) -> Head | None:
    """The head ``buf[:end]`` (``buf[end:end + 4]`` is its blank line), or None when the
    front declines it (module docstring). ``memo``: the connection's :class:`FieldsMemo`
    (the header lines of a keep-alive client repeat byte for byte)."""
    if end > MAX_HEAD:
        return None
    first = buf.find(b"\r\n", 0, end)
    if first < 0:
        line, block = buf[:end], b""
    else:
        line, block = buf[:first], buf[first + 2 : end]
    if b"\r" in line or b"\n" in line:
        return None
    req = _request_line(line, end + 4)
    if req is None:
        return None
    fields = memo.fields(block) if memo is not None else _fields(block)
    if fields is None:
        return None
    req.authorization, req.content_type, req.length, req.close = fields
    if req.length and req.method != "PUT":
        return None
    return req


#: What the header lines say: Authorization, Content-Type, Content-Length, client close.
Fields = tuple[str, str, int, bool]


class FieldsMemo:
    """The header lines last read on one connection and what :func:`_fields` made of
    them: a client sends the same lines request after request (its Host, Authorization,
    Content-Type, a Content-Length that changes with the body's size), so the same bytes
    are not parsed again. Equal bytes, equal result: the parse reads nothing else."""

    __slots__ = ("_block", "_fields", "hits")

    def __init__(self) -> None:
        self._block: bytes | None = None
        self._fields: Fields | None = None
        #: heads whose lines were the last ones (tests, benchmarks)
        self.hits = 0

    def fields(self, block: bytes) -> Fields | None:
        if block == self._block:
            self.hits += 1
            return self._fields
        self._block, self._fields = block, _fields(block)
        return self._fields


def _request_line(line: bytes, size: int) -> Head | None:
    parts = line.split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or _TARGET.fullmatch(parts[1]) is None:
        return None
    method = _METHODS.get(parts[0])
    if method is None:
        return None
    # hypercorn's scope["path"]: the target up to "?", percent-decoded (UTF-8, errors
    # replaced) by the same function
    path = unquote(parts[1].partition(b"?")[0].decode("ascii"))
    if method == "GET" and path in (HEALTH, INFO_GLOBALS):
        return Head(method, path, size)
    if path.startswith(PREFIX) and KEY.fullmatch(path, len(PREFIX)) is not None:
        return Head(method, path, size)
    return None


def _fields(block: bytes) -> Fields | None:
    """What the header lines ``block`` (CRLF between them) say; None declines the
    request (a bare CR or LF included)."""
    crlf = block.count(b"\r\n")
    if block.count(b"\r") != crlf or block.count(b"\n") != crlf:
        return None
    seen: set[bytes] = set()
    hosts = 0
    authorization = content_type = ""
    length = 0
    close = False
    for line in block.split(b"\r\n") if block else ():
        m = _FIELD.fullmatch(line)
        if m is None:
            return None
        name = m[1].lower()
        value = m[2]
        if name in _DECLINED or (name in _ONCE and name in seen):
            return None
        seen.add(name)
        if name == b"host":
            hosts += 1
        elif name == b"authorization":
            authorization = value.decode("ascii")
        elif name == b"content-type":
            content_type = value.decode("ascii")
        elif name == b"content-length":
            if not value.isdigit() or len(value) > 9 or int(value) > MAX_BODY_BYTES:
                return None
            length = int(value)
        elif name == b"connection":
            token = value.lower()
            if token not in (b"keep-alive", b"close"):
                return None
            close = token == b"close"
    if hosts != 1:
        return None
    return authorization, content_type, length, close


class Dates:
    """The Date header hypercorn writes (``wsgiref``'s format), made once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def now(self) -> bytes:
        t = time.time()
        if int(t) != self._second:
            self._second = int(t)
            self._value = format_date_time(t).encode("ascii")
        return self._value


def response(
    status: int,
    body: bytes,
    headers: list[tuple[bytes, bytes]],
    date: bytes,
    *,
    client_close: bool,
    last: bool,
) -> bytes:
    """A response's bytes as hypercorn writes them through h11: the app's headers, then
    Date and Server (and ``connection: close`` on the connection's last request); when
    the client asked to close, h11 drops any Connection header and appends its own."""
    hs = [*headers, (b"date", date), (b"server", SERVER)]
    if last:
        hs.append((b"connection", b"close"))
    if client_close:
        hs = [h for h in hs if h[0] != b"connection"]
        hs.append((b"Connection", b"close"))
    lines = b"".join(b"%s: %s\r\n" % h for h in hs)
    return b"HTTP/1.1 %d \r\n%s\r\n%s" % (status, lines, body)
