"""MembershipView (pure), SerfMembership and SerfAgentProcess against real serf agents."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from serfutil import AgentPool, agent_pool, free_port, needs_serf

from gossipmgr.errors import ConfigError, SerfError, SerfUnavailable
from gossipmgr.serf.client import open_serf_client, serf_connector
from gossipmgr.serf.membership import SerfMembership
from gossipmgr.serf.process import SerfAgentProcess, encoded_tags_size
from gossipmgr.serf.view import (
    Absences,
    Instance,
    InstancesChanged,
    MembershipEvent,
    MembershipView,
    NodeEvent,
)
from gossipmgr.testing.wait import until

# -- pure view ------------------------------------------------------------------------------


def test_absences_count_from_first_seen_missing_and_restart_when_listed() -> None:
    a = Absences()
    assert a.young(["n1", "n2"], ["n2"], now=100.0, grace=30.0) == {"n1"}
    assert a.young(["n1", "n2"], ["n2"], now=129.9, grace=30.0) == {"n1"}
    assert a.young(["n1", "n2"], ["n2"], now=130.0, grace=30.0) == set()  # grace over
    # listed again: the clock starts over when it goes missing the next time
    assert a.young(["n1"], ["n1"], now=131.0, grace=30.0) == set()
    assert a.young(["n1"], [], now=140.0, grace=30.0) == {"n1"}
    assert a.young(["n1"], [], now=169.0, grace=30.0) == {"n1"}
    # a name no longer expected is forgotten, and starts over if expected again
    assert a.young([], [], now=170.0, grace=30.0) == set()
    assert a.young(["n1"], [], now=171.0, grace=30.0) == {"n1"}


@given(
    st.lists(
        st.tuples(
            st.sets(st.sampled_from("abcd")),
            st.sets(st.sampled_from("abcd")),
            st.floats(0, 20),
        ),
        max_size=30,
    )
)
def test_absences_property_young_means_missing_for_less_than_grace(steps: Any) -> None:
    """Against a direct model: a name is young iff it was expected and unlisted at every
    call since some call less than ``grace`` ago (and at that call)."""
    a, now, grace = Absences(), 0.0, 10.0
    history: list[tuple[float, set[str]]] = []  # (time, names missing then)
    for expected, listed, dt in steps:
        now += dt
        missing = set(expected) - set(listed)
        history.append((now, missing))
        want = set()
        for n in missing:
            start = now
            for t, miss in reversed(history):
                if n not in miss:
                    break
                start = t
            if now - start < grace:
                want.add(n)
        assert a.young(expected, listed, now, grace) == want


def node(
    name: str, status: str = "alive", serial: str | None = None, **extra: str
) -> dict[str, Any]:
    tags = {"NodeLabel": "host", "NodeSerial": serial or name, "NodeAddr": f"10.0.0.{name[-1]}"}
    tags.update(extra)
    return {"Name": name, "Addr": "127.0.0.1", "Port": 1, "Status": status, "Tags": tags}


def inst(name: str, status: str = "alive", gossip: str = "127.0.0.1:7950") -> dict[str, Any]:
    tags = {"role": "gossipmgr", "gossip": gossip, "api": "http://x", "boot": "b1"}
    return {"Name": name, "Addr": "127.0.0.1", "Port": 1, "Status": status, "Tags": tags}


def kinds(events: list[MembershipEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.name) for e in events if isinstance(e, NodeEvent)]


def test_first_update_discovers_every_alive_node() -> None:
    v = MembershipView()
    events = v.update([node("n2"), node("n1"), node("n3", "failed"), inst("g1")], now=1.0)
    assert kinds(events) == [("discovered", "host-n1"), ("discovered", "host-n2")]
    assert events[-1] == InstancesChanged(
        (Instance("g1", ("127.0.0.1", 7950), "http://x", "b1", "alive"),)
    )
    assert set(v.nodes) == {"host-n1", "host-n2", "host-n3"}
    assert v.nodes["host-n1"].addr == "10.0.0.1" and v.nodes["host-n3"].up is False
    # Same list again: nothing happens.
    assert v.update([node("n2"), node("n1"), node("n3", "failed"), inst("g1")], now=2.0) == []


def test_transitions_table() -> None:
    v = MembershipView()
    v.update([node("n1")], 0)
    assert kinds(v.update([node("n1", "failed")], 1)) == [("disappeared", "host-n1")]
    assert kinds(v.update([node("n1")], 2)) == [("discovered", "host-n1")]
    assert kinds(v.update([node("n1", "leaving")], 3)) == []  # transient
    assert kinds(v.update([node("n1", "left")], 4)) == [("disappeared", "host-n1")]
    assert kinds(v.update([node("n1", "failed")], 5)) == []  # already down
    assert kinds(v.update([node("n1")], 6)) == [("discovered", "host-n1")]
    # A restart that Serf hid (still alive) shows up through the boot tag.
    assert kinds(v.update([node("n1", boot="2")], 7)) == [("discovered", "host-n1")]
    assert v.nodes["host-n1"].since == 7
    # Reaped while up: disappeared first, then reaped.
    assert kinds(v.update([], 8)) == [("disappeared", "host-n1"), ("reaped", "host-n1")]
    assert v.nodes == {}


def test_reap_of_a_down_node_only_reaped() -> None:
    v = MembershipView()
    v.update([node("n1")], 0)
    v.update([node("n1", "left")], 1)
    assert kinds(v.update([], 2)) == [("reaped", "host-n1")]


def test_identity_change_and_tag_loss() -> None:
    v = MembershipView()
    v.update([node("n1")], 0)
    ev = kinds(v.update([node("n1", serial="S9")], 1))
    assert ev == [("disappeared", "host-n1"), ("discovered", "host-S9")]
    # Dropping the node tags makes it stop being a cluster node.
    plain = {"Name": "n1", "Status": "alive", "Tags": {}}
    assert kinds(v.update([plain], 2)) == [("disappeared", "host-S9"), ("reaped", "host-S9")]


def claimant(member: str, addr: str, status: str = "alive") -> dict[str, Any]:
    """A member carrying node rack1-0001's identity with NodeAddr ``addr``."""
    tags = {"NodeLabel": "rack1", "NodeSerial": "0001", "NodeAddr": addr}
    return {"Name": member, "Addr": addr, "Port": 1, "Status": status, "Tags": tags}


def addrs(events: list[MembershipEvent]) -> list[tuple[str, str]]:
    return [(e.kind, e.addr) for e in events if isinstance(e, NodeEvent)]


def test_a_second_member_with_a_nodes_identity_never_takes_its_address() -> None:
    v = MembershipView()
    real = claimant("rack1-0001", "10.0.0.1")
    assert addrs(v.update([real], 0)) == [("discovered", "10.0.0.1")]
    # An impostor whose name sorts first joins, with another address: no event, reported.
    fake = claimant("0-evil", "10.6.6.6")
    for t in range(1, 6):
        assert addrs(v.update([fake, real], t)) == []
        assert v.nodes["rack1-0001"].addr == "10.0.0.1"
    assert set(v.conflicts) == {"0-evil"} and v.conflicts_total == 1
    c = v.conflicts["0-evil"]
    assert (c.name, c.addr, c.owner) == ("rack1-0001", "10.6.6.6", "rack1-0001")
    # The real node fails or leaves: it is down, and its identity stays with it.
    assert addrs(v.update([fake, claimant("rack1-0001", "10.0.0.1", "failed")], 7)) == [
        ("disappeared", "10.0.0.1")
    ]
    assert addrs(v.update([fake, claimant("rack1-0001", "10.0.0.1", "left")], 8)) == []
    assert v.nodes["rack1-0001"].addr == "10.0.0.1" and "0-evil" in v.conflicts
    # It comes back.
    assert addrs(v.update([fake, real], 9)) == [("discovered", "10.0.0.1")]
    # Only once Serf forgets it (reaped, or `serf force-leave -prune`) does the identity
    # pass to the other claimant, as for a node re-provisioned under a new member name.
    assert addrs(v.update([fake], 10)) == [
        ("disappeared", "10.0.0.1"),
        ("discovered", "10.6.6.6"),
    ]
    assert v.conflicts == {} and v.nodes["rack1-0001"].member == "0-evil"


def test_first_seen_owns_an_identity_when_no_member_has_its_name() -> None:
    v = MembershipView()
    assert addrs(v.update([claimant("m-b", "10.0.0.2")], 0)) == [("discovered", "10.0.0.2")]
    assert addrs(v.update([claimant("m-a", "10.0.0.1"), claimant("m-b", "10.0.0.2")], 1)) == []
    assert v.nodes["rack1-0001"].member == "m-b" and set(v.conflicts) == {"m-a"}
    # The member named after the node, once alive, owns it whatever came first.
    named = claimant("rack1-0001", "10.0.0.9")
    ev = addrs(v.update([claimant("m-a", "10.0.0.1"), claimant("m-b", "10.0.0.2"), named], 2))
    assert ev == [("disappeared", "10.0.0.2"), ("discovered", "10.0.0.9")]
    assert set(v.conflicts) == {"m-a", "m-b"}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["alive", "failed", "left", "leaving"]),
            st.lists(
                st.tuples(
                    st.sampled_from(["0-evil", "zz-evil", "rack1-0001x"]),
                    st.sampled_from(["alive", "failed", "left", "leaving"]),
                ),
                max_size=3,
                unique_by=lambda t: t[0],
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_while_the_node_is_listed_no_other_member_moves_its_address(steps: Any) -> None:
    """Model: the real member rack1-0001 stays listed (any status) while impostors come
    and go in any status: every event for the node carries the real address."""
    v = MembershipView()
    for t, (status, others) in enumerate(steps):
        members = [claimant("rack1-0001", "10.0.0.1", status)]
        members += [claimant(m, f"10.6.6.{i}", st_) for i, (m, st_) in enumerate(others)]
        for kind, addr in addrs(v.update(members, float(t))):
            assert addr == "10.0.0.1", (kind, addr)
        assert v.nodes["rack1-0001"].addr == "10.0.0.1"
        assert set(v.conflicts) == {m for m, _ in others}


def test_instances_sorted_alive_and_validated() -> None:
    v = MembershipView()
    events = v.update(
        [inst("g2"), inst("g1"), inst("g3", "failed"), inst("bad", gossip="nope"), node("n1")], 0
    )
    assert [i.name for i in v.instances] == ["g1", "g2"]
    assert sum(isinstance(e, InstancesChanged) for e in events) == 1
    assert [
        e for e in v.update([inst("g1"), inst("g2")], 1) if isinstance(e, InstancesChanged)
    ] == []
    changed = v.update([inst("g1")], 2)
    assert changed == [InstancesChanged((v.instances[0],))] and v.instances[0].name == "g1"


def test_malformed_records_are_skipped() -> None:
    v = MembershipView()
    junk: list[dict[str, Any]] = [
        {"Status": "alive"},
        {"Name": 5},
        {"Name": "x", "Tags": {"NodeLabel": "a", "NodeSerial": "", "NodeAddr": "1"}},
        {"Name": "y", "Tags": {"role": "gossipmgr", "gossip": "h:99999"}, "Status": "alive"},
    ]
    assert kinds(v.update(junk, 0)) == [] and v.instances == ()


# -- live ------------------------------------------------------------------------------------

serf_live = [pytest.mark.serf, needs_serf]


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[AgentPool]:
    with agent_pool(tmp_path / "agents") as p:
        yield p


async def next_node_event(
    events: trio.MemoryReceiveChannel[MembershipEvent], within: float
) -> NodeEvent:
    with trio.fail_after(within):
        async for ev in events:
            if isinstance(ev, NodeEvent):
                return ev
    raise AssertionError("subscription closed")  # pragma: no cover


@pytest.mark.serf
@needs_serf
async def test_node_discovered_killed_restarted(pool: AgentPool) -> None:
    observer = pool.start("observer")
    tags = {"NodeLabel": "rack1", "NodeSerial": "SN42", "NodeAddr": "10.1.1.42"}
    target = pool.start("target", tags=tags, join=[observer])
    membership = SerfMembership(serf_connector("127.0.0.1", observer.rpc_port), poll_interval=0.1)
    events = membership.subscribe()
    async with trio.open_nursery() as nursery:
        await nursery.start(membership.run)
        ev = await next_node_event(events, 5)
        assert ev == NodeEvent("discovered", "rack1-SN42", "rack1", "SN42", "10.1.1.42")
        assert membership.healthy and membership.nodes["rack1-SN42"].status == "alive"

        t0 = trio.current_time()
        target.kill9()
        ev = await next_node_event(events, 15)
        lag = trio.current_time() - t0
        assert (ev.kind, ev.name) == ("disappeared", "rack1-SN42")
        assert 2 < lag < 12  # failure detection, not an instant artefact
        assert membership.nodes["rack1-SN42"].status == "failed"

        pool.restart(target)
        ev = await next_node_event(events, 10)
        assert (ev.kind, ev.name) == ("discovered", "rack1-SN42")
        nursery.cancel_scope.cancel()


@pytest.mark.serf
@needs_serf
async def test_membership_survives_serf_down_at_start() -> None:
    membership = SerfMembership(serf_connector("127.0.0.1", free_port(), timeout=1))
    async with trio.open_nursery() as nursery:
        with trio.fail_after(5):
            await nursery.start(membership.run)  # returns although Serf is down
        assert not membership.healthy
        assert "cannot connect" in membership.last_error
        assert membership.instances == () and membership.nodes == {}
        nursery.cancel_scope.cancel()


def supervised(tmp: Path, name: str, **kw: Any) -> SerfAgentProcess:
    bind_port = free_port()
    kw.setdefault("profile", "local")
    return SerfAgentProcess(
        name=name,
        bind=f"127.0.0.1:{bind_port}",
        rpc=f"127.0.0.1:{free_port()}",
        data_dir=tmp / name,
        serf_binary="/usr/bin/serf",
        backoff_min=0.2,
        **kw,
    )


@pytest.mark.serf
@needs_serf
async def test_supervised_restart_health_and_graceful_leave(
    pool: AgentPool, tmp_path: Path
) -> None:
    observer = pool.start("observer")
    agent = supervised(
        tmp_path,
        "g1",
        tags={"role": "gossipmgr", "gossip": "127.0.0.1:7950", "api": "http://127.0.0.1:1"},
        retry_join=[observer.bind],
        retry_interval_s=0.5,
    )
    connect = serf_connector("127.0.0.1", agent.rpc_port, timeout=1)
    membership = SerfMembership(connect, poll_interval=0.1)
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(15):
                await nursery.start(agent.run)
            await nursery.start(membership.run)
            assert membership.healthy
            await until(lambda: [i.name for i in membership.instances] == ["g1"], 5)
            assert membership.instances[0].gossip_addr == ("127.0.0.1", 7950)
            async with connect() as c:
                await c.tags(set={"boot": "runtime-1"})  # must survive the restart

            pid = agent.pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await until(lambda: not membership.healthy, 5)
            assert membership.last_error
            await until(lambda: agent.ready and membership.healthy, 15)
            assert agent.starts == 2 and agent.pid != pid
            async with connect() as c:
                assert (await c.stats())["tags"]["boot"] == "runtime-1"
            assert json.loads((tmp_path / "g1" / "tags.json").read_text())["boot"] == "runtime-1"

            async with open_serf_client("127.0.0.1", observer.rpc_port) as obs:

                async def g1_alive() -> bool:
                    members = {m["Name"]: m["Status"] for m in await obs.members()}
                    return members.get("g1") == "alive"

                await until(g1_alive, 10)
                nursery.cancel_scope.cancel()  # graceful stop: SIGINT -> leave
        assert agent.pid is None
        # Peers see "left", never "failed", although the stop cut Serf's own 1 s
        # propagate delay short (issue 17). (These checks ran inside the nursery before,
        # after its cancel: they never ran.)
        seen: list[str] = []
        async with open_serf_client("127.0.0.1", observer.rpc_port) as obs:

            async def g1_left() -> bool:
                members = {m["Name"]: m["Status"] for m in await obs.members()}
                seen.append(members["g1"])
                return bool(members["g1"] == "left")

            await until(g1_left, 20)
        assert "failed" not in seen, seen
    finally:
        assert agent.pid is None  # run() always reaps its child


@pytest.mark.serf
@needs_serf
async def test_supervised_encryption_keyring_rotation(tmp_path: Path) -> None:
    k1 = base64.b64encode(b"1" * 32).decode()
    k2 = base64.b64encode(b"2" * 32).decode()
    agent = supervised(tmp_path, "enc", encrypt_key=k1, rpc_auth="tok")
    async with trio.open_nursery() as nursery:
        with trio.fail_after(15):
            await nursery.start(agent.run)
        ring = tmp_path / "enc" / "keyring.json"
        assert json.loads(ring.read_text()) == [k1]
        async with open_serf_client("127.0.0.1", agent.rpc_port, "tok") as c:
            assert (await c.stats())["serf"]["encrypted"] == "true"
            await c.install_key(k2)
            await c.use_key(k2)
            await c.remove_key(k1)
            assert await c.list_keys() == {k2: 1}
        assert json.loads(ring.read_text()) == [k2]  # the agent persisted the rotation
        nursery.cancel_scope.cancel()


@pytest.mark.serf
@needs_serf
async def test_first_start_failure_raises(tmp_path: Path) -> None:
    agent = supervised(tmp_path, "bad")
    busy = trio.socket.socket()
    await busy.bind(("127.0.0.1", agent.rpc_port))
    busy.listen()  # RPC port taken: the agent exits at once
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(15), pytest.raises(SerfUnavailable, match="did not come up"):
                await nursery.start(agent.run)
    finally:
        busy.close()
    assert agent.pid is None


def test_config_errors(tmp_path: Path) -> None:
    big = {"role": "gossipmgr", "x": "y" * 500}
    with pytest.raises(ConfigError, match=f"encode to {encoded_tags_size(big)} bytes"):
        supervised(tmp_path, "n", tags=big)
    with pytest.raises(ConfigError, match="base64"):
        supervised(tmp_path, "n", encrypt_key="not base64!")
    with pytest.raises(ConfigError, match="16, 24 or 32"):
        supervised(tmp_path, "n", encrypt_key=base64.b64encode(b"short").decode())
    with pytest.raises(ConfigError, match="ip:port"):
        supervised(tmp_path, "n", retry_join=["nohost"])
    with pytest.raises(ConfigError, match="profile"):
        supervised(tmp_path, "n", profile="fast")


@pytest.mark.serf
@needs_serf
async def test_encoded_tags_size_matches_serf_limit(pool: AgentPool) -> None:
    # Our size estimate (1 magic byte + old-spec msgpack map) must put the boundary exactly
    # where the agent does.
    ag = pool.start("sizer")
    base = {"role": "gossipmgr", "gossip": "127.0.0.3:7950"}
    fits, too_big = {**base, "x": "y" * 468}, {**base, "x": "y" * 469}
    assert (encoded_tags_size(fits), encoded_tags_size(too_big)) == (512, 513)
    async with open_serf_client("127.0.0.1", ag.rpc_port) as c:
        await c.tags(set=fits)
        with pytest.raises(SerfError, match="exceeds limit of 512 bytes"):
            await c.tags(set=too_big)


@pytest.mark.parametrize(
    ("value", "any_port", "want"),
    [
        ("127.0.0.1:7000", False, ("127.0.0.1", 7000)),
        ("[::1]:7000", False, ("::1", 7000)),
        ("host.example:1", False, ("host.example", 1)),
        ("0.0.0.0:0", True, ("0.0.0.0", 0)),
        ("0.0.0.0:0", False, None),
        ("127.0.0.1:65536", True, None),
        ("127.0.0.1:", False, None),
        (":7000", False, None),
        ("[]:7000", False, None),
        ("127.0.0.1:7x", False, None),
        ("nohost", True, None),
    ],
)
def test_one_host_port_rule(value: str, any_port: bool, want: tuple[str, int] | None) -> None:
    """Config addresses, Serf's bind/RPC addresses and the gossip tag share one parser."""
    from gossipmgr.config import split_addr
    from gossipmgr.serf.addr import split_hostport
    from gossipmgr.serf.process import parse_hostport
    from gossipmgr.serf.view import MembershipView

    if want is None:
        with pytest.raises(ValueError):
            split_hostport(value, any_port=any_port)
    else:
        assert split_hostport(value, any_port=any_port) == want
    if any_port:
        with pytest.raises(ConfigError) if want is None else contextlib.nullcontext():
            split_addr(value, "addr")
    else:
        with pytest.raises(ConfigError) if want is None else contextlib.nullcontext():
            assert parse_hostport(value, "serf bind") == want
        tags = {"role": "gossipmgr", "gossip": value}
        view = MembershipView()
        view.update([{"Name": "g1", "Status": "alive", "Tags": tags}], 0.0)
        assert [i.gossip_addr for i in view.instances] == ([want] if want else [])


def test_serf_agent_argv_is_the_supervised_childs() -> None:
    from gossipmgr.serf.process import serf_agent_argv

    argv = serf_agent_argv(
        "n1",
        "127.0.0.1:1",
        "127.0.0.1:2",
        profile="lan",
        tags={"NodeLabel": "a"},
        keyring_file=Path("/k.json"),
        retry_join=["127.0.0.1:3"],
        retry_interval_s=1,
    )
    assert argv == [
        "serf",
        "agent",
        "-node=n1",
        "-bind=127.0.0.1:1",
        "-rpc-addr=127.0.0.1:2",
        "-profile=lan",
        "-tag=NodeLabel=a",
        "-keyring-file=/k.json",
        "-retry-join=127.0.0.1:3",
        "-retry-interval=1s",
    ]
