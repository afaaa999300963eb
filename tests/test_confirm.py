"""The confirm before an action (issue 18): its pure rule, its gossip round, its messages,
and the ``gossipmgr_confirm`` action with real ansible against a test socket.

The real agents' part (a holder cut off mid-job is refused) is tests/test_confirm_agent.py.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _udpcluster import cluster
from hypothesis import given, settings
from hypothesis import strategies as st

from gossipmgr.core.clock import HLC
from gossipmgr.core.confirm import REFUSED, Answer, known_instances, verdict
from gossipmgr.core.lease import Lease
from gossipmgr.core.quorum import quorum
from gossipmgr.core.state import LEASE_KEY, ClusterState
from gossipmgr.errors import BadPacket
from gossipmgr.gossip.messages import ACK, PING, PONG, Ping, Pong, decode_untrusted, pack
from gossipmgr.gossip.protocol import AntiEntropy
from gossipmgr.gossip.service import OUTBOX_LIMIT
from gossipmgr.runtime.ansible import AnsibleSettings, Host, RunInputs, run_playbook
from gossipmgr.runtime.confirm import SOCKET_NAME, short_path
from gossipmgr.testing.wait import until

NAMES = ["a", "b", "c", "d", "e"]
DEADLINE_S = 60


# --------------------------------------------------------------------------- the rule
def test_a_strict_majority_of_answers_confirms_and_less_refuses() -> None:
    known = set(NAMES)
    two = {"b": Answer(3, "a"), "c": Answer(3, "a")}
    ok = verdict("a", 3, holds=True, run_live=True, known=known, answers=two)
    assert ok.ok and ok.reason == "majority: 3 of 5 instances answered now (a, b, c)"
    timed = verdict("a", 3, holds=True, run_live=True, known=known, answers=two, took_s=0.0042)
    assert timed.reason == "majority: 3 of 5 instances answered now (a, b, c) in 4 ms"
    one = verdict("a", 3, holds=True, run_live=True, known=known, answers={"b": Answer(3, "a")})
    assert not one.ok
    assert one.reason == ("no majority: 2 of 5 instances answered within 1 s, 3 needed (a, b)")
    # an answer from an instance the majority is not counted over does not count
    odd = verdict("a", 3, holds=True, run_live=True, known=known, answers={"x": Answer(3, "a")})
    assert not odd.ok


def test_a_newer_lease_anywhere_refuses_even_with_a_majority() -> None:
    known = set(NAMES)
    answers = {"b": Answer(3, "a"), "c": Answer(3, "a"), "d": Answer(4, "e")}
    c = verdict("a", 3, holds=True, run_live=True, known=known, answers=answers)
    assert not c.ok and c.reason == f"{REFUSED}d reads a newer lease (epoch 4 held by e)"
    # the same epoch held by another instance (concurrent claims) refuses too
    same = {"b": Answer(3, "b"), "c": Answer(3, "a")}
    assert not verdict("a", 3, holds=True, run_live=True, known=known, answers=same).ok
    # an older lease (our claim has not reached it yet) is no objection
    older = {"b": Answer(2, "e"), "c": Answer(0, "")}
    assert verdict("a", 3, holds=True, run_live=True, known=known, answers=older).ok


def test_no_lease_or_no_run_refuses_and_alone_confirms_without_a_majority() -> None:
    known = {"a", "b"}
    many = {"b": Answer(3, "a")}
    c = verdict("a", 3, holds=False, run_live=True, known=known, answers=many)
    assert not c.ok and "no longer holds the lease at epoch 3" in c.reason
    c = verdict("a", 3, holds=True, run_live=False, known=known, answers=many)
    assert not c.ok and "has ended" in c.reason
    # the two-instance rule / a forced grant: the holder acts alone, by the operator's choice
    c = verdict("a", 3, holds=True, run_live=True, known=known, answers={}, alone_by="solo")
    assert c.ok and c.reason == "solo: 1 of 2 instances answered (a)"
    c = verdict("a", 3, holds=False, run_live=True, known=known, answers={}, alone_by="solo")
    assert not c.ok
    newer = {"b": Answer(4, "b")}
    c = verdict("a", 3, holds=True, run_live=True, known=known, answers=newer, alone_by="solo")
    assert not c.ok


@settings(max_examples=300, deadline=None)
@given(
    st.sets(st.sampled_from(NAMES)),
    st.sets(st.sampled_from(NAMES)),
    st.sets(st.sampled_from(NAMES)),
)
def test_the_instances_counted_are_those_the_majority_rule_counts(
    alive: set[str], failed: set[str], ever: set[str]
) -> None:
    me = "a"
    alive |= {me}
    known = known_instances(me, alive, failed, ever)
    q = quorum(me, alive, dict.fromkeys(failed, 0.0), 0.0, None, None, ever)
    assert len(known) == q.known


# --------------------------------------------------------------------------- the round
def _instance(name: str, lease: Lease | None = None) -> AntiEntropy:
    state = ClusterState()
    if lease is not None:
        state.apply(state.d_set(LEASE_KEY, lease.as_value(), HLC(name).now(1)))
    return AntiEntropy(name, 1, state, HLC(name))


def _deliver(
    to: dict[str, AntiEntropy], out: list[tuple[str, bytes]], now: float
) -> list[tuple[str, bytes]]:
    back: list[tuple[str, bytes]] = []
    for peer, data in out:
        if peer in to:
            back += to[peer].receive_untrusted(data, now).out
    return back


def test_a_round_counts_answers_to_its_own_ping_with_each_peers_lease() -> None:
    a = _instance("a")
    b = _instance("b", Lease("a", 3, 10**12))
    c = _instance("c", Lease("e", 4, 10**12))
    for x in (a, b, c):
        x.set_peers([n for n in "abc" if n != x.name], 0)
    nets = {"a": a, "b": b, "c": c}
    out = a.confirm_ask(["b", "c", "zz"], 7, 1)  # "zz" is no peer: not asked
    assert sorted(p for p, _ in out) == ["b", "c"]
    back = _deliver(nets, out, 2)
    assert a.confirm_answers(7) == {}  # nothing counts before an answer arrives
    _deliver(nets, back[:1], 3)
    assert a.confirm_answers(7) == {"b": Answer(3, "a")}
    assert a.confirm_resend(7) and [p for p, _ in a.confirm_resend(7)] == ["c"]
    _deliver(nets, back[1:], 3)
    assert a.confirm_answers(7) == {"b": Answer(3, "a"), "c": Answer(4, "e")}
    # an answer to another round (an old one, or a forged nonce) does not count
    stray = c.receive_untrusted(pack(PING, "a", 1, [8]), 4).out
    _deliver(nets, stray, 4)
    assert a.confirm_answers(8) == {}
    assert a.counters["confirm_stray"] == 1
    a.confirm_end(7)
    assert a.confirm_answers(7) == {} and not a.confirm_resend(7)


def test_confirm_messages_decode_and_malformed_ones_are_refused() -> None:
    assert decode_untrusted(pack(PING, "a", 1, [5])).body == Ping(5)
    assert decode_untrusted(pack(PONG, "a", 1, [5, 3, "h"])).body == Pong(5, 3, "h")
    for bad in ([5, -1, "h"], [5, 3], [5, 3, 4], ["x", 3, "h"], [5, 3, "h" * 200]):
        with pytest.raises(BadPacket):
            decode_untrusted(pack(PONG, "a", 1, bad))
    with pytest.raises(BadPacket):
        decode_untrusted(pack(PING, "a", 1, []))


# --------------------------------------------------------------------------- over UDP
async def test_a_round_over_udp_and_its_answers_skip_a_full_outbox() -> None:
    """A round between real services on loopback. Then the answer of an instance whose
    outbox is full: it used to queue behind (and, full, be dropped with) thousands of
    other datagrams (the partition suite saw 8,191 dropped after a heal, and confirms of
    the majority side refused); a confirm's PING/PONG now have a queue of their own."""
    key = os.urandom(32)
    async with cluster(list("abc"), [key] * 3) as svcs:
        a, b, _ = svcs
        a.ask(a.ae.confirm_ask(["b", "c"], 11, a.replica.now_ms()))
        await until(lambda: set(a.ae.confirm_answers(11)) == {"b", "c"}, 30, "the answers")
    # b, stopped, with a full outbox: a PONG (and a PING) still gets queued
    backlog = [("a", pack(ACK, "b", 1, [0]))] * OUTBOX_LIMIT
    b.ask([*backlog, ("a", pack(PONG, "b", 1, [11, 0, ""])), ("a", pack(PING, "b", 1, [12]))])
    assert b.replica.counters["outbox_dropped"] == 0


# --------------------------------------------------------------------------- real ansible
PLAYBOOK = """\
- hosts: all
  gather_facts: false
  roles:
    - gossipmgr_fence
- hosts: all
  gather_facts: false
  tasks:
    - gossipmgr_confirm:
    - ansible.builtin.raw: echo "acted {{ inventory_hostname }}" >> {{ marker | quote }}
"""


async def _serve(
    directory: Path,
    answer: Callable[[dict[str, Any]], dict[str, Any]],
    asked: list[Any],
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    import socket

    directory.mkdir(mode=0o700)
    raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    short_path(directory, SOCKET_NAME, raw.bind)
    raw.listen(4)
    task_status.started()
    with trio.socket.from_stdlib_socket(raw) as sock:
        while True:
            conn, _ = await sock.accept()
            async with trio.SocketStream(conn) as s:
                data = b""
                while b"\n" not in data:
                    data += await s.receive_some(4096)
                q = json.loads(data)
                asked.append(q)
                await s.send_all((json.dumps(answer(q)) + "\n").encode())


@pytest.mark.ansible
async def test_the_confirm_action_acts_only_on_a_yes(tmp_path: Path) -> None:
    """Four runs of one playbook (the role in a first play, then a standalone
    ``gossipmgr_confirm`` before an action in a second): a yes acts; a no fails the host
    with the instance's reason, which becomes the step's error; a socket nobody serves
    fails alike; a run without gossipmgr's socket is not confirmed (as a run by hand)."""
    book = tmp_path / "book"
    book.mkdir()
    (book / "site.yml").write_text(PLAYBOOK)
    marker = tmp_path / "marker"
    # a deep directory: the socket's path is longer than a unix socket's limit
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    settings_ = AnsibleSettings(
        playbook_dir=book,
        host_vars={"ansible_connection": "local", "ansible_python_interpreter": sys.executable},
        extra_variables={"marker": str(marker), "gossipmgr_fence_dir": str(tmp_path / "fence")},
        timeout_s=DEADLINE_S,
    )
    inputs = RunInputs([Host("n1", "127.0.0.1", "n1", "all")], settings_, {}, {})
    fence = {"gossipmgr_epoch": 3, "gossipmgr_holder": "a", "gossipmgr_job": "J3"}
    asked: list[Any] = []

    def answer(q: dict[str, Any]) -> dict[str, Any]:
        ok = not (tmp_path / "refuse").exists()
        return {"ok": ok, "reason": "majority: test" if ok else "no majority: 1 of 3 (test)"}

    async def run(sock: Path | None, lines: list[str]) -> Any:
        with trio.fail_after(DEADLINE_S):
            return await run_playbook(
                "site.yml",
                inputs,
                log=lines.append,
                cancel=trio.Event(),
                work_root=tmp_path / "work",
                product_vars=fence,
                confirm_socket=sock,
            )

    async with trio.open_nursery() as nursery:
        await nursery.start(_serve, deep / "c", answer, asked)
        sock = deep / "c" / SOCKET_NAME
        lines: list[str] = []
        yes = await run(sock, lines)
        assert yes.status == "successful", lines
        assert marker.read_text() == "acted n1\n"
        assert asked == [{"epoch": 3, "job": "J3", "host": "n1"}] * 2  # the role's, then ours

        (tmp_path / "refuse").touch()
        no = await run(sock, lines)
        assert (no.status, no.error) == ("failed", "no majority: 1 of 3 (test)")
        assert marker.read_text() == "acted n1\n"  # not acted again
        nursery.cancel_scope.cancel()

    gone = await run(sock, lines)
    assert gone.status == "failed"
    assert gone.error.startswith("no majority: the job's gossipmgr instance did not answer")
    assert marker.read_text() == "acted n1\n"

    by_hand = await run(None, lines)
    assert by_hand.status == "successful"
    assert marker.read_text() == "acted n1\nacted n1\n"
    assert len(asked) == 3  # nobody was asked
