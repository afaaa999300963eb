"""gossipmgr.gossip.crypto: keys, sealing, the replay guard; the key file against real Serf."""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gossipmgr.errors import BadPacket, ConfigError
from gossipmgr.gossip.crypto import (
    ANY,
    DEFAULT_MAX_AGE_MS,
    HEADER_LEN,
    MAX_DATAGRAM,
    MAX_PLAINTEXT,
    OVERHEAD,
    REASONS,
    REPLAY_WINDOW,
    Keyring,
    ReplayGuard,
    Sealer,
    generate_key,
    key_id,
    load_key_file,
    load_keyring_file,
    node_id,
)
from gossipmgr.localcluster import free_port
from gossipmgr.serf.process import serf_agent_argv

K1 = bytes(range(32))
K2 = bytes(range(100, 132))
K3 = bytes(range(200, 232))
A = b"node-aaa"
B = b"node-bbb"
NOW = 1_700_000_000_000  # wall-clock ms
BOOT_A = NOW - 60_000
BOOT_B = NOW - 120_000

COUNTER_OFF = 29  # version(1) + key id(4) + sender(8) + recipient(8) + boot(8)


def pair(kr_a: Keyring | None = None, kr_b: Keyring | None = None) -> tuple[Sealer, Sealer]:
    a = Sealer(kr_a or Keyring(K1), A, BOOT_A)
    b = Sealer(kr_b or Keyring(K1), B, BOOT_B)
    return a, b


def reason(fn: object, *args: object) -> str:
    with pytest.raises(BadPacket) as ei:
        fn(*args)  # type: ignore[operator]
    assert ei.value.reason in REASONS
    return ei.value.reason


# --- format and limits ---------------------------------------------------------------------


def test_overhead_and_layout() -> None:
    a, b = pair()
    d = a.seal(b"hello", NOW)
    assert OVERHEAD == 73 and HEADER_LEN == 57
    assert len(d) == 5 + OVERHEAD
    assert MAX_PLAINTEXT == MAX_DATAGRAM - OVERHEAD == 1327
    fields = struct.unpack_from(">B4s8s8sQQQ", d)
    assert fields == (1, key_id(K1), A, ANY, BOOT_A, 0, NOW)
    assert b"hello" not in d  # it is encrypted
    o = b.open_untrusted(d, NOW + 5)
    assert (o.sender_id, o.boot, o.counter, o.plaintext, o.sent_ms) == (A, BOOT_A, 0, b"hello", NOW)
    assert o.recipient == ANY


def test_seal_refuses_oversize_as_caller_bug() -> None:
    a, b = pair()
    biggest = a.seal(b"x" * MAX_PLAINTEXT, NOW)
    assert len(biggest) == MAX_DATAGRAM
    assert b.open_untrusted(biggest, NOW).plaintext == b"x" * MAX_PLAINTEXT
    with pytest.raises(ValueError, match="MAX_PLAINTEXT"):
        a.seal(b"x" * (MAX_PLAINTEXT + 1), NOW)
    with pytest.raises(ValueError):
        a.seal(b"x", -1)


def test_size_and_version_reasons() -> None:
    _, b = pair()
    assert reason(b.open_untrusted, b"", NOW) == "short"
    assert reason(b.open_untrusted, b"\x01" * (OVERHEAD - 1), NOW) == "short"
    assert reason(b.open_untrusted, b"\x02" + b"\x00" * 100, NOW) == "version"
    assert reason(b.open_untrusted, b"\x01" * (MAX_DATAGRAM + 1), NOW) == "too_large"
    assert b.refused.snapshot() == {"short": 2, "too_large": 1, "version": 1}


def test_sealer_and_keyring_validate_arguments() -> None:
    with pytest.raises(ValueError):
        Keyring(b"short")
    with pytest.raises(ValueError):
        Sealer(Keyring(K1), b"7bytes!", 0)
    kr = Keyring(K1, [K2, K1, K2])
    assert kr.keys == (K1, K2)
    assert K1.hex() not in repr(kr) and key_id(K1).hex() in repr(kr)


# --- properties: untrusted bytes, round trip, tampering ------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=MAX_DATAGRAM + 50))
def test_arbitrary_bytes_raise_only_badpacket(data: bytes) -> None:
    _, b = pair()
    with pytest.raises(BadPacket) as ei:
        b.open_untrusted(data, NOW)
    assert ei.value.reason in REASONS


@settings(max_examples=300)
@given(st.binary(min_size=OVERHEAD - HEADER_LEN, max_size=MAX_DATAGRAM - HEADER_LEN))
def test_valid_looking_header_with_junk_is_auth(rest: bytes) -> None:
    # Reaches the decryption step: right version and a known key id.
    _, b = pair()
    header = struct.pack(">B4s8s8sQQQ", 1, key_id(K1), A, B, BOOT_A, 0, NOW) + b"\x00" * 12
    assert reason(b.open_untrusted, header + rest[: MAX_DATAGRAM - HEADER_LEN], NOW) == "auth"
    assert len(b.guard) == 0  # a forgery never touches replay state


@given(st.binary(max_size=MAX_PLAINTEXT), st.integers(0, 2**40))
def test_round_trip(plaintext: bytes, skew: int) -> None:
    a, b = pair()
    now = NOW + skew
    d = a.seal(plaintext, now)
    assert len(d) == len(plaintext) + OVERHEAD <= MAX_DATAGRAM
    assert b.open_untrusted(d, now).plaintext == plaintext


@settings(max_examples=300)
@given(st.binary(max_size=200), st.data())
def test_any_single_byte_tamper_is_refused(plaintext: bytes, data: st.DataObject) -> None:
    a, b = pair()
    d = bytearray(a.seal(plaintext, NOW))
    i = data.draw(st.integers(0, len(d) - 1), label="index")
    d[i] ^= data.draw(st.integers(1, 255), label="xor")
    expected = "version" if i == 0 else "unknown_key" if 1 <= i < 5 else "auth"
    assert reason(b.open_untrusted, bytes(d), NOW) == expected
    assert len(b.guard) == 0


# --- replay --------------------------------------------------------------------------------


def test_replay_refused_second_time() -> None:
    a, b = pair()
    d = a.seal(b"once", NOW)
    assert b.open_untrusted(d, NOW).plaintext == b"once"
    assert reason(b.open_untrusted, d, NOW + 1) == "replay"
    assert b.refused["replay"] == 1


def test_out_of_order_within_window_and_below_window() -> None:
    a, b = pair()
    ds = [a.seal(str(i).encode(), NOW) for i in range(REPLAY_WINDOW + 10)]
    # Newest first, then older ones still inside the window: all accepted once.
    b.open_untrusted(ds[REPLAY_WINDOW], NOW)
    for i in (5, 1, 900, 3):
        assert b.open_untrusted(ds[i], NOW).counter == i
        assert reason(b.open_untrusted, ds[i], NOW) == "replay"
    # Counter 0 is exactly REPLAY_WINDOW behind the top: below the window.
    assert reason(b.open_untrusted, ds[0], NOW) == "replay"
    # Sliding further leaves 5 behind the window too.
    b.open_untrusted(ds[REPLAY_WINDOW + 9], NOW)
    assert reason(b.open_untrusted, ds[9], NOW) == "replay"
    assert b.open_untrusted(ds[10], NOW).counter == 10  # exactly the last slot still open


def test_sender_restart_new_boot_accepted_older_boot_refused() -> None:
    a1, b = pair()
    old = [a1.seal(b"old", NOW) for _ in range(3)]
    b.open_untrusted(old[0], NOW)
    a2 = Sealer(Keyring(K1), A, BOOT_A + 5_000)  # restarted: counters start at 0 again
    fresh = a2.seal(b"new", NOW + 10)
    assert fresh[COUNTER_OFF : COUNTER_OFF + 8] == old[0][COUNTER_OFF : COUNTER_OFF + 8]
    assert b.open_untrusted(fresh, NOW + 10).boot == BOOT_A + 5_000
    # The old incarnation's datagrams, even unseen ones, are now refused.
    assert reason(b.open_untrusted, old[1], NOW + 11) == "replay"
    assert b.open_untrusted(a2.seal(b"n2", NOW + 12), NOW + 12).counter == 1


def test_stale_and_future_bounds() -> None:
    a, b = pair()
    assert b.open_untrusted(a.seal(b"", NOW), NOW + DEFAULT_MAX_AGE_MS).counter == 0
    assert reason(b.open_untrusted, a.seal(b"", NOW), NOW + DEFAULT_MAX_AGE_MS + 1) == "stale"
    assert b.open_untrusted(a.seal(b"", NOW + DEFAULT_MAX_AGE_MS), NOW).counter == 2
    assert reason(b.open_untrusted, a.seal(b"", NOW + DEFAULT_MAX_AGE_MS + 1), NOW) == "future"


def test_fresh_receiver_refuses_datagrams_sent_before_it_started() -> None:
    # A captured datagram replayed to a just-restarted receiver passes any bitmap (no
    # state); the receiver's start time (boot) is the floor for senders it does not know.
    a, _ = pair()
    captured = a.seal(b"captured", NOW)
    restarted = Sealer(Keyring(K1), B, NOW + 1_000)
    assert reason(restarted.open_untrusted, captured, NOW + 2_000) == "stale"
    assert restarted.open_untrusted(a.seal(b"live", NOW + 2_000), NOW + 2_000).plaintext == b"live"


def test_datagram_sealed_for_one_node_opens_only_there() -> None:
    # Without the recipient id, A's ack meant for B could be replayed once to C.
    kr = Keyring(K1)
    a = Sealer(kr, node_id("a"), BOOT_A)
    b = Sealer(kr, node_id("b"), BOOT_B)
    c = Sealer(kr, node_id("c"), BOOT_B)
    for_b = a.seal(b"ack 41", NOW, to=node_id("b"))
    assert reason(c.open_untrusted, for_b, NOW) == "misdirected"
    assert c.refused.snapshot() == {"misdirected": 1}
    o = b.open_untrusted(for_b, NOW)
    assert (o.plaintext, o.recipient) == (b"ack 41", node_id("b"))
    to_anyone = a.seal(b"hello all", NOW)
    assert b.open_untrusted(to_anyone, NOW).plaintext == c.open_untrusted(to_anyone, NOW).plaintext
    assert node_id("a") == node_id("a") != node_id("b") and len(node_id("a")) == 8
    with pytest.raises(ValueError):
        a.seal(b"x", NOW, to=b"short")
    with pytest.raises(ValueError):
        Sealer(kr, ANY, 0)


def test_own_datagram_reflected_is_refused() -> None:
    a, _ = pair()
    assert reason(a.open_untrusted, a.seal(b"me", NOW), NOW) == "replay"


def test_lru_eviction_is_bounded_and_does_not_reopen_replay() -> None:
    kr = Keyring(K1)
    b = Sealer(kr, B, BOOT_B, max_senders=2)
    senders = [Sealer(kr, f"sender-{i}".encode(), BOOT_A) for i in range(3)]
    first = [s.seal(b"x", NOW + i) for i, s in enumerate(senders)]
    for i, d in enumerate(first):
        b.open_untrusted(d, NOW + i)
    assert len(b.guard) == 2 and senders[0].sender_id not in b.guard
    # sender-0 was forgotten, yet its old datagram cannot be replayed ...
    assert reason(b.open_untrusted, first[0], NOW + 5) == "stale"
    # ... while its new datagrams are accepted.
    assert b.open_untrusted(senders[0].seal(b"y", NOW + 5), NOW + 5).counter == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-80, 40), min_size=1, max_size=3000),
    st.sampled_from([64, 128, REPLAY_WINDOW]),
)
def test_bitmap_matches_set_model(steps: list[int], window: int) -> None:
    # Model: accept c iff never accepted and c > top - window (top = highest accepted).
    guard = ReplayGuard(window=window)
    seen: set[int] = set()
    top = -1
    c = 100
    for step in steps:
        c = max(0, c + step)
        expect = c not in seen and (top < 0 or c > top - window)
        try:
            guard.check_and_update(A, 1, c, NOW)
            got = True
        except BadPacket as exc:
            assert exc.reason == "replay"
            got = False
        assert got == expect, (c, top)
        if got:
            seen.add(c)
            top = max(top, c)


# --- keys and rotation ---------------------------------------------------------------------


def test_rotation_without_downtime() -> None:
    old_sender, _ = pair(Keyring(K1))
    # Step 1: every node installs K2 as accepted; step 2: K2 becomes primary.
    _, b = pair(kr_b=Keyring(K2, [K1]))
    assert b.open_untrusted(old_sender.seal(b"old key", NOW), NOW).plaintext == b"old key"
    new_sender = Sealer(Keyring(K2, [K1]), b"node-ccc", BOOT_A)
    d_new = new_sender.seal(b"new key", NOW)
    assert d_new[1:5] == key_id(K2)
    assert b.open_untrusted(d_new, NOW).plaintext == b"new key"
    # A node still on K1-only cannot read K2 yet: that is why step 1 comes first.
    _, k1_only = pair()
    assert reason(k1_only.open_untrusted, d_new, NOW) == "unknown_key"
    # Step 3: K1 removed; a K1 datagram is then refused.
    b.keyring = Keyring(K2)
    assert reason(b.open_untrusted, old_sender.seal(b"late", NOW), NOW) == "unknown_key"


def test_wrong_key_same_id_fails_auth() -> None:
    a, _ = pair(Keyring(K1))
    b = Sealer(Keyring(K3), B, BOOT_B)
    d = bytearray(a.seal(b"secret", NOW))
    assert reason(b.open_untrusted, bytes(d), NOW) == "unknown_key"
    d[1:5] = key_id(K3)  # claim the receiver's key: the tag still cannot verify
    assert reason(b.open_untrusted, bytes(d), NOW) == "auth"


def test_generate_key_shape() -> None:
    k = generate_key()
    assert len(base64.b64decode(k, validate=True)) == 32
    assert k != generate_key()


def serf_keygen() -> str:
    return subprocess.run(
        ["serf", "keygen"], check=True, capture_output=True, text=True, timeout=10
    ).stdout.strip()


@pytest.mark.serf
def test_load_key_file_from_serf_keygen(tmp_path: Path) -> None:
    text = serf_keygen()
    p = tmp_path / "gossip.key"
    p.write_text(text + "\n")
    key = load_key_file(p)
    assert key == base64.b64decode(text) and len(key) == 32
    assert load_keyring_file(p).keys == (key,)


@pytest.mark.serf
def test_load_serf_keyring_json_list(tmp_path: Path) -> None:
    keys = [serf_keygen(), generate_key(), serf_keygen()]
    p = tmp_path / "keyring.json"
    p.write_text(json.dumps(keys))
    kr = load_keyring_file(p)
    assert kr.primary == base64.b64decode(keys[0]) == load_key_file(p)
    assert kr.keys == tuple(base64.b64decode(k) for k in keys)


@pytest.mark.serf
def test_real_serf_agent_accepts_our_keyring_file(tmp_path: Path) -> None:
    """One key file serves both: serf agent -keyring-file reads the file gossipmgr reads."""
    ours = generate_key()
    theirs = serf_keygen()
    p = tmp_path / "keyring.json"
    p.write_text(json.dumps([ours, theirs]))
    kr = load_keyring_file(p)
    bind, rpc = free_port(), free_port()  # TCP and UDP free
    argv = serf_agent_argv(
        "keytest", f"127.0.0.1:{bind}", f"127.0.0.1:{rpc}", keyring_file=p, log_level="warn"
    )
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        listed = ""
        while time.monotonic() < deadline:
            r = subprocess.run(
                ["serf", "keys", "-list", f"-rpc-addr=127.0.0.1:{rpc}"],
                capture_output=True, text=True, timeout=10,
            )  # fmt: skip
            if r.returncode == 0:
                listed = r.stdout
                break
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.1)  # polling a condition with a deadline, not papering over a race
        assert ours in listed and theirs in listed, listed
        assert kr.primary == base64.b64decode(ours)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout:
            proc.stdout.close()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("", "empty key file"),
        ("not base64 at all!", "not valid base64"),
        (base64.b64encode(os.urandom(16)).decode(), "key is 16 bytes, need 32"),
        ("[]", "non-empty list"),
        ('{"a": 1}', "non-empty list of base64 keys"),
        ("[1]", "entry 0 is not a string"),
        (json.dumps([generate_key(), "???"]), "keyring entry 1: not valid base64"),
        ("[not json", "not a base64 key nor a JSON list"),
    ],
    # Fixed ids: two of the contents are random, and pytest-xdist's workers must collect
    # the same test names.
    ids=["empty", "not-base64", "16-bytes", "empty-list", "map", "not-str", "bad-entry", "junk"],
)
def test_bad_key_files_name_path_and_why(tmp_path: Path, content: str, why: str) -> None:
    p = tmp_path / "bad.key"
    p.write_text(content)
    with pytest.raises(ConfigError) as ei:
        load_key_file(p)
    msg = str(ei.value)
    assert str(p) in msg and why in msg
    for word in content.split():
        if len(word) > 12:
            assert word not in msg  # key material never leaks into errors


def test_missing_key_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read key file"):
        load_key_file(tmp_path / "absent.key")


# --- replays across restarts of either side ------------------------------------------------


def test_datagrams_captured_before_a_receiver_restart_are_refused_after_it_hears_again() -> None:
    # The restarted receiver hears the sender again (same boot, counter 46): its window
    # starts there, so counters 0-45 look new to the bitmap. The floor (its own start) must
    # refuse them anyway, and count them.
    a, b = pair()
    captured = [a.seal(f"d{i}".encode(), NOW + i) for i in range(46)]
    for i, d in enumerate(captured):
        b.open_untrusted(d, NOW + i)
    restarted = Sealer(Keyring(K1), B, NOW + 1_000)
    assert restarted.open_untrusted(a.seal(b"fresh", NOW + 1_500), NOW + 1_500).counter == 46
    for d in captured:
        assert reason(restarted.open_untrusted, d, NOW + 2_000) == "stale"
    assert restarted.refused.snapshot() == {"stale": 46}
    # Sent after the restart, still inside the window: accepted once, then a replay.
    later = [a.seal(b"later", NOW + 1_600 + i) for i in range(2)]
    assert restarted.open_untrusted(later[1], NOW + 1_700).counter == 48
    assert restarted.open_untrusted(later[0], NOW + 1_700).counter == 47
    assert reason(restarted.open_untrusted, later[0], NOW + 1_800) == "replay"


def test_datagrams_captured_before_a_sender_restart_are_refused() -> None:
    a1, b = pair()
    delivered = [a1.seal(b"old", NOW + i) for i in range(10)]
    undelivered = [a1.seal(b"old, never delivered", NOW + 10 + i) for i in range(10)]
    for d in delivered:
        b.open_untrusted(d, NOW)
    for d in delivered:  # the same incarnation: the bitmap
        assert reason(b.open_untrusted, d, NOW + 100) == "replay"
    a2 = Sealer(Keyring(K1), A, NOW + 1_000)
    assert b.open_untrusted(a2.seal(b"new", NOW + 1_000), NOW + 1_000).boot == NOW + 1_000
    for d in delivered + undelivered:  # an older incarnation
        assert reason(b.open_untrusted, d, NOW + 1_100) == "replay"
    assert b.refused.snapshot() == {"replay": 30}


def test_eviction_then_hearing_the_sender_again_does_not_reopen_its_old_counters() -> None:
    kr = Keyring(K1)
    b = Sealer(kr, B, BOOT_B, max_senders=1)
    s0, s1 = Sealer(kr, b"sender-0", BOOT_A), Sealer(kr, b"sender-1", BOOT_A)
    old = [s0.seal(b"x", NOW + i) for i in range(5)]
    for d in old:
        b.open_untrusted(d, NOW + 5)
    b.open_untrusted(s1.seal(b"y", NOW + 6), NOW + 6)  # evicts sender-0
    b.open_untrusted(s0.seal(b"z", NOW + 7), NOW + 7)  # heard again: window starts at 5
    for d in old:
        assert reason(b.open_untrusted, d, NOW + 8) == "stale"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("sdarR"), st.integers(0, 10_000)), max_size=60))
@example([("s", 0), ("a", 0), ("r", 0), ("s", 0), ("a", 1)])  # heard again, then replayed
@example([("s", 0), ("s", 0), ("d", 0), ("R", 0), ("s", 0), ("r", 0), ("a", 2), ("a", 1)])
def test_no_datagram_is_accepted_twice_across_restarts_of_either_side(
    steps: list[tuple[str, int]],
) -> None:
    """Model: an attacker captures every datagram and replays any of them at any time,
    while either side restarts. Each datagram is accepted at most once over all the
    receiver's incarnations (clocks agree; restarts take at least 1 ms)."""
    now = NOW
    sender = Sealer(Keyring(K1), A, now)
    receiver = Sealer(Keyring(K1), B, now)
    captured: list[bytes] = []
    accepted: set[bytes] = set()
    for op, arg in steps:
        now += 1 + arg % 50
        if op == "s":  # the sender sends; the network may or may not deliver it now
            captured.append(sender.seal(b"m", now, to=B))
        elif op in "da" and captured:  # deliver one, or replay all (from a rotating start)
            k = arg % len(captured)
            for d in [captured[k]] if op == "d" else captured[k:] + captured[:k]:
                try:
                    receiver.open_untrusted(d, now)
                except BadPacket:
                    continue
                assert d not in accepted, "a captured datagram was accepted twice"
                accepted.add(d)
        elif op == "r":
            receiver = Sealer(Keyring(K1), B, now)
        elif op == "R":
            sender = Sealer(Keyring(K1), A, now)
