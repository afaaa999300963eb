"""Wire and disk encoding of states and deltas: versioned msgpack, untrusted decoding.

An entry travels as ``[key, ms, logical, node, deleted, value]`` with ``key`` a list of
strings. A delta or a state is ``[VERSION, gc_horizon_ms, [entry, ...]]``.

Everything that reads bytes from outside (the network, a snapshot on disk) goes through a
function ending in ``_untrusted``; those raise nothing but
:class:`~gossipmgr.errors.BadPacket`, whose ``reason`` is a stable metric label. Every size
has a named limit below.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import msgpack

from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import Entry, Key, LWWMap
from gossipmgr.core.orders import GLOBAL, JOB, NODE
from gossipmgr.core.state import valid_key
from gossipmgr.errors import BadPacket

#: Version of the entry/delta encoding. Bump on any incompatible change; decoders refuse
#: versions they do not know (append-only, see docs/design.md "Wire protocol").
VERSION = 1

#: Limits on untrusted input (named, as memberlist's ``maxPushStateBytes``).
MAX_KEY_PART = 256  # characters in one key part (node name, variable name, job id)
MAX_NODE_ID = 128  # characters in a timestamp's node id (instance name)
MAX_VALUE_DEPTH = 32  # nesting of JSON values
MAX_VALUE_ITEMS = 10_000  # total containers' items in one value
MAX_DELTA_BYTES = 64 * 1024 * 1024  # one encoded delta/state (a snapshot can be big)
MAX_ENTRIES = 2_000_000  # entries in one delta/state
MAX_COUNTER = (1 << 63) - 1  # ms and logical fit a signed 64-bit integer
#: Largest msgpack-encoded entry (``[key, ms, logical, node, deleted, value]``) a local write
#: may create: what one gossip message carries (``gossip.protocol.MAX_MESSAGE_BYTES``, 1 MiB,
#: the fragmenter's limit) minus 4 KiB for the message header (sender name, interval).
#: Checked on the encoded entry, not on the JSON that made it: floats grow ~2.2x in msgpack.
MAX_ENTRY_BYTES = 1024 * 1024 - 4096
#: Largest encoded batch (``PATCH /globals``: the entries of one delta, summed): what one
#: gossip message carries, like one entry, so that the eager push delivers a batch to a
#: peer in one message, applied there in one join (all of it visible, or none).
MAX_BATCH_BYTES = MAX_ENTRY_BYTES
#: Most variables one batch may change.
MAX_BATCH_KEYS = 10_000
#: An upper bound of an entry's encoding without its value: list, flags and counters, at
#: most 6 key parts of MAX_KEY_PART characters and a node id of MAX_NODE_ID, 4 bytes each.
_ENTRY_ROOM = 64 + 6 * 5 + 4 * (6 * MAX_KEY_PART + MAX_NODE_ID)
#: Integers msgpack can carry.
MIN_INT = -(2**63)
MAX_INT = 2**64 - 1


def entry_to_wire(key: Key, e: Entry) -> list[Any]:
    return [list(key), e.ts.ms, e.ts.logical, e.ts.node, e.deleted, e.value]


def encode_entries(entries: Iterable[tuple[Key, Entry]], gc_horizon: int = 0) -> bytes:
    body = [VERSION, gc_horizon, [entry_to_wire(k, e) for k, e in entries]]
    return msgpack.packb(body, use_bin_type=True)  # type: ignore[no-any-return]


def encode_map(m: LWWMap) -> bytes:
    return encode_entries(m.items(), m.gc_horizon)


def encode_packed(packed: Sequence[bytes], gc_horizon: int = 0) -> bytes:
    """What :func:`encode_entries` returns, from entries already packed one by one
    (``msgpack.packb(entry_to_wire(k, e))``, as :func:`check_entry` returns them): msgpack
    concatenates, so a commit encodes each entry once, for its size check and its record."""
    p = msgpack.Packer(use_bin_type=True)
    head: bytes = p.pack(VERSION) + p.pack(gc_horizon) + p.pack_array_header(len(packed))
    return b"\x93" + head + b"".join(packed)


def _check_value(v: Any, depth: int, budget: list[int]) -> int:
    """Check ``v`` against the limits; return an upper bound of its msgpack size (a str
    counts 4 bytes per code point, a number 9, a container its 5-byte header)."""
    # Exact types first (what JSON and msgpack produce: restore checks every entry), then
    # isinstance for subclasses.
    t = type(v)
    if t is str:
        return 5 + 4 * len(v)
    if t is bool or v is None:
        return 1
    if depth > MAX_VALUE_DEPTH:
        raise BadPacket("value", f"value nested deeper than {MAX_VALUE_DEPTH} levels")
    if t is dict or (t is not list and isinstance(v, dict)):
        budget[0] -= len(v)
        if budget[0] < 0:
            raise BadPacket("value", f"value has more than {MAX_VALUE_ITEMS} items")
        size = 5
        for k, x in v.items():
            if type(k) is not str and not isinstance(k, str):
                raise BadPacket("value", "object keys must be strings")
            tx = type(x)
            size += (
                5
                + 4 * len(k)
                + (5 + 4 * len(x) if tx is str else _check_value(x, depth + 1, budget))
            )
        return size
    if t is list or isinstance(v, list):
        budget[0] -= len(v)
        if budget[0] < 0:
            raise BadPacket("value", f"value has more than {MAX_VALUE_ITEMS} items")
        size = 5
        for x in v:
            size += 5 + 4 * len(x) if type(x) is str else _check_value(x, depth + 1, budget)
        return size
    if isinstance(v, str):
        return 5 + 4 * len(v)
    if isinstance(v, bool):
        return 1
    if isinstance(v, int):
        if not MIN_INT <= v <= MAX_INT:
            raise BadPacket("value", "integer out of range: must be within -2^63 .. 2^64-1")
        return 9
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadPacket("value", "number out of range: must be a finite double")
        return 9
    raise BadPacket("value", f"unsupported value type {type(v).__name__}")


def check_json_value(v: Any) -> int:
    """Raise BadPacket unless ``v`` is a JSON-like value within the limits: nesting depth
    (``MAX_VALUE_DEPTH``), items (``MAX_VALUE_ITEMS``), integers msgpack carries, finite
    floats. Returns an upper bound of its encoded size."""
    return _check_value(v, 0, [MAX_VALUE_ITEMS])


def check_key(key: Any) -> None:
    """Raise BadPacket("key") unless ``key`` is a known key shape of short strings."""
    is_tuple = type(key) is tuple
    if (not is_tuple and not isinstance(key, list | tuple)) or not 0 < len(key) <= 6:
        raise BadPacket("key", "key must be a list of 1-6 strings")
    for p in key:
        if type(p) is not str or len(p) > MAX_KEY_PART:
            if type(p) is not str:
                raise BadPacket("key", "key must be a list of 1-6 strings")
            raise BadPacket(
                "key", f"name {p[:40]!r}... is {len(p)} characters (limit {MAX_KEY_PART})"
            )
    if not valid_key(key if is_tuple else tuple(key)):
        raise BadPacket("key", f"unknown key shape {tuple(key)[:3]!r}")


def _packed(obj: Any) -> bytes | None:
    try:
        return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]
    except (ValueError, TypeError, OverflowError):  # deep, huge int, lone UTF-16 surrogate
        return None


def _packed_size(obj: Any) -> int | None:
    b = _packed(obj)
    return None if b is None else len(b)


def check_value(v: Any) -> None:
    """A value a local write may store: first its encoded size (``MAX_ENTRY_BYTES``: a
    record must fit one gossip message), then :func:`check_json_value`, then that msgpack
    encodes it at all (a string with a lone UTF-16 surrogate does not). Raises BadPacket
    with reason ``too_large`` or ``value``."""
    size = _packed_size(v)
    if size is not None and size > MAX_ENTRY_BYTES:
        raise BadPacket(
            "too_large",
            f"the value is {size} bytes encoded, more than one gossip message carries "
            f"(limit {MAX_ENTRY_BYTES} bytes)",
        )
    check_json_value(v)
    if size is None:
        raise BadPacket("value", "value cannot be encoded (a string with a lone surrogate?)")


#: Third key parts of the node keys :func:`_from_disk_plain` takes (``state.valid_key``).
_NODE_PARTS_3 = frozenset({"hg", "inv", "mon"})
_NODE_PARTS_4 = frozenset({"v", "h"})
#: The bound the value of an entry read from disk must stay within to skip its encoding.
_PLAIN_VALUE_BOUND = MAX_ENTRY_BYTES - _ENTRY_ROOM


def _plain_key(key: Key) -> bool:
    """A global, job or node key of exact ``str`` parts within ``MAX_KEY_PART``: one
    ``check_key`` accepts (False: not such a key, which proves nothing)."""
    if type(key) is not tuple or not key or type(key[0]) is not str:
        return False
    n = len(key)
    if n == 2:
        ns, a = key
        return (ns == GLOBAL or ns == JOB) and type(a) is str and len(a) <= MAX_KEY_PART
    if n == 3:
        ns, a, b = key
        return (
            ns == NODE
            and type(b) is str
            and b in _NODE_PARTS_3
            and type(a) is str
            and len(a) <= MAX_KEY_PART
        )
    if n == 4:
        ns, a, b, c = key
        return (
            ns == NODE
            and type(b) is str
            and b in _NODE_PARTS_4
            and type(a) is str
            and len(a) <= MAX_KEY_PART
            and type(c) is str
            and len(c) <= MAX_KEY_PART
        )
    return False


def _plain_value_bound(v: Any) -> int:
    """``_check_value``'s bound of a string, or of an object of exact ``str`` keys and
    string, bool, null, in-range int or finite float values; a bound above the limit
    for anything else (``check_entry`` then decides)."""
    t = type(v)
    if t is str:
        return 5 + 4 * len(v)
    if t is not dict or len(v) > MAX_VALUE_ITEMS:
        return MAX_ENTRY_BYTES
    size = 5
    for k, x in v.items():
        if type(k) is not str:
            return MAX_ENTRY_BYTES
        tx = type(x)
        if tx is str:
            size += 10 + 4 * (len(k) + len(x))
        elif tx is bool or x is None:
            size += 6 + 4 * len(k)
        elif (tx is int and MIN_INT <= x <= MAX_INT) or (tx is float and math.isfinite(x)):
            size += 14 + 4 * len(k)
        else:
            return MAX_ENTRY_BYTES
    return size


def _from_disk_plain(key: Key, e: Entry) -> bool:
    """The from-disk check's fast path for the common shapes (a global, job or node key;
    a string or a flat object; a tombstone): True only when :func:`check_entry` with
    ``from_disk`` would return None without raising; False sends the entry to the full
    check (tests/test_codec_from_disk.py compares both)."""
    node = e.ts.node
    if type(node) is not str or len(node) > MAX_NODE_ID or not _plain_key(key):
        return False
    if e.deleted:
        return e.value is None
    return _plain_value_bound(e.value) <= _PLAIN_VALUE_BOUND


def check_entry(key: Key, e: Entry, *, from_disk: bool = False) -> bytes | None:
    """THE rule for what may enter the replicated state from this instance (a local write,
    a restored record): exactly what every peer's :func:`entry_from_wire_untrusted` accepts,
    and small enough to travel in one gossip message once encoded (``MAX_ENTRY_BYTES``).
    Raises BadPacket with reason ``key``, ``value``, ``entry`` or ``too_large``; its detail
    names the limit. Like :func:`check_value`, the size comes first, then the structure.

    ``from_disk``: the entry was decoded from msgpack, so it encodes (its strings are valid
    UTF-8); it is then encoded only when the bound from the walk exceeds the limit, which
    keeps restore fast (most records are far below it).

    Returns the encoded entry when it encoded it (always unless ``from_disk``), so that a
    commit writes those bytes (:func:`encode_packed`) instead of encoding the entry again.
    """
    if from_disk and _from_disk_plain(key, e):
        return None
    return _check_entry(key, e, from_disk)


def _check_entry(key: Key, e: Entry, from_disk: bool) -> bytes | None:
    """:func:`check_entry` without its fast path."""
    check_key(key)
    if from_disk and len(e.ts.node) <= MAX_NODE_ID:
        # The key and timestamp take at most _ENTRY_ROOM bytes (their lengths are bounded),
        # so the value's bound decides; the walk is the check itself when it passes.
        if e.deleted:
            if e.value is not None:
                raise BadPacket("entry", "a tombstone carries no value")
            return None
        try:
            if _check_value(e.value, 0, [MAX_VALUE_ITEMS]) <= MAX_ENTRY_BYTES - _ENTRY_ROOM:
                return None
        except BadPacket:
            pass  # encode it: size first, as below
    packed = _packed(entry_to_wire(key, e))
    size = None if packed is None else len(packed)
    if size is not None and size > MAX_ENTRY_BYTES:
        raise BadPacket(
            "too_large",
            f"the record is {size} bytes encoded, more than one gossip message carries "
            f"(limit {MAX_ENTRY_BYTES} bytes)",
        )
    if e.deleted:
        if e.value is not None:
            raise BadPacket("entry", "a tombstone carries no value")
    else:
        check_json_value(e.value)
    if packed is None:
        raise BadPacket("value", "value cannot be encoded (a string with a lone surrogate?)")
    return packed


def entry_from_wire_untrusted(raw: Any) -> tuple[Key, Entry]:
    """Validate one wire entry. Raises only BadPacket."""
    if not isinstance(raw, list) or len(raw) != 6:
        raise BadPacket("entry", "entry must be a list of 6")
    rkey, ms, logical, node, deleted, value = raw
    if not isinstance(rkey, list):
        raise BadPacket("key", "key must be a list of 1-6 short strings")
    check_key(rkey)
    key: Key = tuple(rkey)
    if (
        type(ms) is not int
        or type(logical) is not int
        or not 0 <= ms <= MAX_COUNTER
        or not 0 <= logical <= MAX_COUNTER
    ):
        raise BadPacket("timestamp", "timestamp fields must be non-negative integers")
    if not isinstance(node, str) or not node or len(node) > MAX_NODE_ID:
        raise BadPacket("timestamp", "timestamp node id must be a short non-empty string")
    if type(deleted) is not bool:
        raise BadPacket("entry", "deleted flag must be a boolean")
    if deleted:
        if value is not None:
            raise BadPacket("entry", "a tombstone carries no value")
    else:
        check_json_value(value)
    return key, Entry(Timestamp(ms, logical, node), value, deleted)


def entries_from_wire_untrusted(raw: Any) -> list[tuple[Key, Entry]]:
    if not isinstance(raw, list):
        raise BadPacket("shape", "entries must be a list")
    if len(raw) > MAX_ENTRIES:
        raise BadPacket("too_large", "too many entries")
    return [entry_from_wire_untrusted(x) for x in raw]


def unpack_untrusted(data: bytes, max_bytes: int = MAX_DELTA_BYTES) -> Any:
    """msgpack-decode untrusted bytes with every limit on. Raises only BadPacket."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadPacket("shape", "not bytes")
    if len(data) > max_bytes:
        raise BadPacket("too_large", f"{len(data)} bytes > {max_bytes}")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
        )
    except Exception as exc:  # msgpack raises a zoo: ExtraData, ValueError, TypeError, ...
        raise BadPacket("msgpack", type(exc).__name__) from None


def decode_map_trusted(data: bytes) -> LWWMap:
    """Decode a state this instance wrote itself (a snapshot or log record that already
    passed its file checksum): structure checks only, no deep value validation, digests
    deferred (``LWWMap.lazy``). Restore-time speed matters: it runs before serving.

    Raises BadPacket on a malformed structure (the caller names the file).
    """
    # No MAX_DELTA_BYTES cap here: that bounds one message from the network, while a
    # snapshot holds the whole state (the store bounds it, MAX_SNAPSHOT). With the cap, a
    # state of more than 64 MiB was written by compaction and then refused at restore.
    obj = unpack_untrusted(data, max_bytes=len(data))
    if not isinstance(obj, list) or len(obj) != 3 or obj[0] != VERSION:
        raise BadPacket("shape", "a state is [version, gc_horizon, entries]")
    _, horizon, raw = obj
    if type(horizon) is not int or not isinstance(raw, list):
        raise BadPacket("shape", "bad state header")
    try:
        entries = {
            tuple(k): Entry(Timestamp(ms, lg, node), None if dl else v, dl)
            for k, ms, lg, node, dl, v in raw
        }
    except (TypeError, ValueError) as exc:
        raise BadPacket("entry", f"malformed entry ({exc})") from None
    if len(entries) == len(raw):  # each key once, as every state we write: no join needed
        return LWWMap.lazy_of(entries, horizon)
    # A key repeated: the join decides which entry stays, whatever the order on disk.
    m = LWWMap.lazy()
    m.gc_horizon = horizon
    m.merge(
        (tuple(k), Entry(Timestamp(ms, lg, node), None if dl else v, dl))
        for k, ms, lg, node, dl, v in raw
    )
    return m


def decode_map_untrusted(data: bytes, max_bytes: int = MAX_DELTA_BYTES) -> LWWMap:
    """Decode a delta or state. Raises only BadPacket; never returns a partial map."""
    obj = unpack_untrusted(data, max_bytes)
    if not isinstance(obj, list) or len(obj) != 3:
        raise BadPacket("shape", "a delta is [version, gc_horizon, entries]")
    version, horizon, raw_entries = obj
    if version != VERSION:
        raise BadPacket("version", f"unknown encoding version {version!r}")
    if type(horizon) is not int or not 0 <= horizon <= MAX_COUNTER:
        raise BadPacket("shape", "gc horizon must be a non-negative integer")
    entries = entries_from_wire_untrusted(raw_entries)
    m = LWWMap()
    m.gc_horizon = horizon
    m.join(entries)
    return m
