"""Pure tests of gossipmgr.serf.rpc framing with hand-made msgpack frames (no sockets)."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gossipmgr.errors import SerfAuthError, SerfError, SerfProtocolError
from gossipmgr.serf.rpc import (
    NO_BODY_ERRORS,
    REQUEST_BODY,
    RESPONSE_BODY,
    Frame,
    SerfRpcProtocol,
    encode_request,
    error_for,
)


def pack(*objs: object) -> bytes:
    return b"".join(msgpack.packb(o, use_bin_type=True) for o in objs)


def hdr(seq: int, error: str = "") -> dict[str, object]:
    return {"Seq": seq, "Error": error}


def unpack_all(data: bytes) -> list[object]:
    unp = msgpack.Unpacker(raw=False)
    unp.feed(data)
    return list(unp)


def feed_all(proto: SerfRpcProtocol, data: bytes, step: int | None = None) -> list[Frame]:
    frames: list[Frame] = []
    if step is None:
        proto.receive_data(data)
        return proto.next_frames()
    for i in range(0, len(data), step):
        proto.receive_data(data[i : i + step])
        frames += proto.next_frames()
    return frames


# -- encoding -------------------------------------------------------------------------------


def test_encode_header_only_and_with_body() -> None:
    assert unpack_all(encode_request("members", 7)) == [{"Command": "members", "Seq": 7}]
    assert unpack_all(encode_request("handshake", 1, {"Version": 1})) == [
        {"Command": "handshake", "Seq": 1},
        {"Version": 1},
    ]


def test_payload_is_bin_type() -> None:
    data = encode_request("event", 3, {"Name": "x", "Payload": b"\xff\x00", "Coalesce": False})
    unp = msgpack.Unpacker(raw=True)
    unp.feed(data)
    objs = list(unp)
    assert objs[1][b"Payload"] == b"\xff\x00"
    assert data.count(b"\xc4\x02\xff\x00") == 1  # bin8 marker, not a str


@pytest.mark.parametrize("command", ["members", "leave", "list-keys", "stats"])
def test_body_forbidden_for_bodyless_commands(command: str) -> None:
    with pytest.raises(ValueError, match="takes no request body"):
        encode_request(command, 1, {})


@pytest.mark.parametrize("command", sorted(REQUEST_BODY))
def test_body_required(command: str) -> None:
    with pytest.raises(ValueError, match="needs a request body"):
        encode_request(command, 1, None)


def test_unknown_command_and_bad_seq() -> None:
    with pytest.raises(ValueError, match="unknown serf RPC command"):
        encode_request(" get-coordinate", 1, {"Node": "x"})  # asyncserf's bug
    with pytest.raises(ValueError, match="uint64"):
        encode_request("members", -1)


def test_protocol_assigns_increasing_seqs() -> None:
    p = SerfRpcProtocol(first_seq=1000)
    s1, d1 = p.send("members")
    s2, _ = p.send("stats")
    assert (s1, s2) == (1000, 1001)
    assert unpack_all(d1) == [{"Command": "members", "Seq": 1000}]
    assert dict(p.outstanding) == {1000: "members", 1001: "stats"}


# -- decoding -------------------------------------------------------------------------------


def test_header_only_reply() -> None:
    p = SerfRpcProtocol()
    seq, _ = p.send("tags", {"Tags": {}, "DeleteTags": []})
    [f] = feed_all(p, pack(hdr(seq)))
    assert (f.seq, f.command, f.kind, f.error, f.body, f.final) == (
        seq,
        "tags",
        "reply",
        "",
        None,
        True,
    )
    assert seq not in p.outstanding


@pytest.mark.parametrize("command", sorted(RESPONSE_BODY))
def test_body_replies_wait_for_body(command: str) -> None:
    p = SerfRpcProtocol()
    seq, _ = p.send(command, {"Key": "k"} if command in REQUEST_BODY else None)
    assert feed_all(p, pack(hdr(seq))) == []  # header alone: body still expected
    [f] = feed_all(p, pack({"Num": 1}))
    assert f.body == {"Num": 1} and f.final and f.kind == "reply"


def test_join_error_still_has_body() -> None:
    p = SerfRpcProtocol()
    seq, _ = p.send("join", {"Existing": ["127.0.0.9:1"], "Replay": False})
    [f] = feed_all(p, pack(hdr(seq, "1 error occurred"), {"Num": 0}))
    assert f.error == "1 error occurred" and f.body == {"Num": 0}


@pytest.mark.parametrize("error", sorted(NO_BODY_ERRORS))
def test_no_body_after_dispatcher_errors(error: str) -> None:
    p = SerfRpcProtocol()
    seq, _ = p.send("members")
    seq2, _ = p.send("stats")
    # The next header must be read as a header, not as the members body.
    frames = feed_all(p, pack(hdr(seq, error), hdr(seq2), {"serf": {}}))
    assert [(f.seq, f.error, f.body) for f in frames] == [
        (seq, error, None),
        (seq2, "", {"serf": {}}),
    ]


def test_stream_ack_then_records_until_stop() -> None:
    p = SerfRpcProtocol()
    s, _ = p.send("stream", {"Type": "*"})
    m, _ = p.send("members")
    data = pack(
        hdr(s),
        hdr(s), {"Event": "user", "Name": "a", "Payload": b"1"},
        hdr(m), {"Members": []},
        hdr(s), {"Event": "member-join", "Members": []},
    )  # fmt: skip
    frames = feed_all(p, data)
    assert [(f.seq, f.kind, f.final) for f in frames] == [
        (s, "ack", False),
        (s, "record", False),
        (m, "reply", True),
        (s, "record", False),
    ]
    stop, _ = p.send("stop", {"Stop": s})
    # A record the agent queued before handling stop may still arrive after the stop reply.
    frames = feed_all(p, pack(hdr(stop), hdr(s), {"Event": "user", "Name": "late"}))
    assert [(f.seq, f.kind, f.retired) for f in frames] == [
        (stop, "reply", False),
        (s, "record", True),
    ]
    assert s not in p.outstanding


def test_stream_ack_error_is_final() -> None:
    p = SerfRpcProtocol()
    s, _ = p.send("stream", {"Type": "bogus"})
    [f] = feed_all(p, pack(hdr(s, "Invalid event filter")))
    assert f.kind == "ack" and f.final and f.error == "Invalid event filter"
    assert s not in p.outstanding


def test_query_ends_at_done() -> None:
    p = SerfRpcProtocol()
    q, _ = p.send("query", {"Name": "q"})
    data = pack(
        hdr(q),
        hdr(q), {"Type": "ack", "From": "n1", "Payload": None},
        hdr(q), {"Type": "response", "From": "n2", "Payload": b"r"},
        hdr(q), {"Type": "done", "From": "", "Payload": None},
    )  # fmt: skip
    frames = feed_all(p, data)
    assert [(f.kind, f.final) for f in frames] == [
        ("ack", False),
        ("record", False),
        ("record", False),
        ("record", True),
    ]
    assert q not in p.outstanding
    with pytest.raises(SerfProtocolError, match="unknown seq"):
        feed_all(p, pack(hdr(q)))


def test_query_records_from_the_agents_closed_channels_are_dropped() -> None:
    # At the query's deadline Serf closes its ack and response channels (serf.go's
    # registerQueryResponse) while the agent's stream loop may not have seen its own timer
    # yet: it then reads zero values from the closed channels and sends them as records,
    # ``{"Type": "response", "From": "", "Payload": None}`` and ``{"Type": "ack", "From": ""}``,
    # until its done timer wins (ipc_query_response_stream.go; hashicorp/serf issue 408).
    p = SerfRpcProtocol()
    q, _ = p.send("query", {"Name": "q", "RequestAck": True})
    empties = [
        (hdr(q), {"Type": kind, "From": "", "Payload": None}) for kind in ("response", "ack") * 40
    ]
    data = pack(
        hdr(q),
        hdr(q), {"Type": "ack", "From": "n1", "Payload": None},
        hdr(q), {"Type": "response", "From": "n1", "Payload": b"r"},
        *[obj for pair in empties for obj in pair],
        hdr(q), {"Type": "done", "From": "", "Payload": None},
    )  # fmt: skip
    frames = feed_all(p, data, step=7)
    assert [(f.kind, f.body and f.body["Type"], f.final) for f in frames] == [
        ("ack", None, False),
        ("record", "ack", False),
        ("record", "response", False),
        ("record", "done", True),
    ]
    assert p.dropped_empty_records == 80
    assert q not in p.outstanding


def test_unknown_seq_is_desync() -> None:
    p = SerfRpcProtocol()
    with pytest.raises(SerfProtocolError, match="unknown seq 5"):
        feed_all(p, pack(hdr(5)))


@pytest.mark.parametrize(
    "obj",
    [[1, 2], {"Seq": "1", "Error": ""}, {"Seq": 1, "Error": 3}, "x"],
)
def test_bad_headers(obj: object) -> None:
    p = SerfRpcProtocol()
    p.send("members")
    with pytest.raises(SerfProtocolError):
        feed_all(p, pack(obj))


def test_non_map_body() -> None:
    p = SerfRpcProtocol()
    seq, _ = p.send("members")
    with pytest.raises(SerfProtocolError, match="not a map"):
        feed_all(p, pack(hdr(seq), [1]))


def test_undecodable_bytes() -> None:
    p = SerfRpcProtocol()
    p.send("members")
    with pytest.raises(SerfProtocolError, match="undecodable"):
        feed_all(p, b"\xc1")  # 0xc1 is "never used" in msgpack


SCRIPT = pack(
    hdr(1),  # handshake
    hdr(2),  # stream ack
    hdr(2), {"Event": "user", "Name": "e", "Payload": b"\x00" * 300},
    hdr(3), {"Members": [{"Name": "n1", "Addr": b"\x7f\x00\x00\x01", "Tags": {"a": "b"}}]},
    hdr(4, "Authentication required"),
    hdr(5), {"Coord": {"Vec": [0.0] * 8}, "Ok": True},
)  # fmt: skip


def scripted() -> SerfRpcProtocol:
    p = SerfRpcProtocol()
    p.send("handshake", {"Version": 1})
    p.send("stream", {"Type": "*"})
    p.send("members")
    p.send("stats")
    p.send("get-coordinate", {"Node": "n1"})
    return p


def test_split_at_every_byte() -> None:
    whole = feed_all(scripted(), SCRIPT)
    assert [(f.seq, f.kind) for f in whole] == [
        (1, "reply"),
        (2, "ack"),
        (2, "record"),
        (3, "reply"),
        (4, "reply"),
        (5, "reply"),
    ]
    assert feed_all(scripted(), SCRIPT, step=1) == whole
    for cut in range(1, len(SCRIPT)):
        p = scripted()
        got = feed_all(p, SCRIPT[:cut]) + feed_all(p, SCRIPT[cut:])
        assert got == whole, cut


@given(st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60))
def test_arbitrary_chunking(sizes: list[int]) -> None:
    p = scripted()
    frames: list[Frame] = []
    pos = 0
    for n in sizes * (len(SCRIPT) // max(1, sum(sizes)) + 1):
        p.receive_data(SCRIPT[pos : pos + n])
        frames += p.next_frames()
        pos += n
    p.receive_data(SCRIPT[pos:])
    frames += p.next_frames()
    assert frames == feed_all(scripted(), SCRIPT)


# -- error mapping --------------------------------------------------------------------------


def test_error_mapping() -> None:
    assert isinstance(error_for("members", "Authentication required"), SerfAuthError)
    assert isinstance(error_for("auth", "Invalid authentication token"), SerfAuthError)
    e = error_for("stream", "Invalid event filter")
    assert type(e) is SerfError and str(e) == "serf stream: Invalid event filter"
