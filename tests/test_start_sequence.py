"""The start sequence (issue 17, restart catch-up and start time; docs/design.md, "Start
and stop"): a restarted instance pulls what it missed from the peers it last knew before
Serf names them, and a request that arrives while the web stack is still loading waits in
the bound socket's backlog and is answered.

Standalone instances: the agent's own wiring over a fake Serf (gossip over real UDP on
loopback, the API over real HTTP).
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from functools import partial
from pathlib import Path

import httpx
import pytest
import trio
import trustme

import gossipmgr.agent
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.state import ClusterState, global_key
from gossipmgr.runtime.peerfile import PeerFile
from gossipmgr.testing.fakeserf import FakeSerfCluster
from gossipmgr.testing.standalone import (
    START_TIMEOUT_S,
    build,
    fake_serf,
    shared_key,
    standalone_agent,
    standalone_config,
)
from gossipmgr.testing.wait import until


def _set_global(var: str, value: object, st: ClusterState, ts: Timestamp) -> LWWMap:
    return st.d_set(global_key(var), value, ts)


async def _restart_after_a_missed_write(
    tmp_path: Path, serf_healthy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """i1 and i2 run (one fake Serf cluster); i2 stops; i1 writes; i2 starts again on its
    data dir with a Serf of its own that has not joined the cluster: unreachable
    (``serf_healthy`` false) or reachable and listing only i2 (an agent that has not
    joined yet). i2 must get the write from the peer its data dir remembers. i1 saw i2
    leave, so it starts nothing towards i2: the pull is i2's. And i2's web stack starts
    loading only once its catch-up request was answered (the write is in its state by then)
    or given up after the pull timeout (a machine loaded enough to delay the answer that
    long); the wait's own bound is raised out of the way."""
    real_import = gossipmgr.agent._import_web_stack
    at_import: list[object] = []
    cluster = FakeSerfCluster()
    key = shared_key(tmp_path)
    cfg1 = standalone_config(tmp_path, "i1", encrypt_key_file=key)
    cfg2 = standalone_config(tmp_path, "i2", encrypt_key_file=key)
    async with standalone_agent(cfg1, cluster) as i1:
        async with standalone_agent(cfg2, cluster, claim=False) as i2:
            gossip = i2.gossip
            assert gossip is not None

            def knows_i1() -> bool:
                return "i1" in gossip.addrs

            await until(knows_i1, START_TIMEOUT_S)
        saved, alive = PeerFile(cfg2.data_dir / "peers.json").load()
        assert set(saved) == {"i1"} and set(alive) == {"i1"}
        await i1.replica.commit(partial(_set_global, "missed", "while i2 was down"))

        again = build(cfg2)  # a fake Serf alone: it never lists i1

        def recording_import() -> None:
            assert again.gossip is not None
            ae, now = again.gossip.ae, again.replica.now_ms()
            gave_up = any(
                ps.since_req and now - ps.since_ms >= ae.cfg.pull_timeout_ms
                for ps in ae.peers.values()
            )
            at_import.append("gave up" if gave_up else again.replica.state.globals().get("missed"))
            real_import()

        monkeypatch.setattr(gossipmgr.agent, "_import_web_stack", recording_import)
        monkeypatch.setattr(gossipmgr.agent, "CATCH_UP_FIRST_S", START_TIMEOUT_S)
        fake_serf(again).set_healthy(serf_healthy)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(START_TIMEOUT_S):
                await nursery.start(
                    lambda task_status: again.run(signals=False, task_status=task_status)
                )

            def caught_up() -> bool:
                return again.replica.state.globals().get("missed") == "while i2 was down"

            await until(caught_up, START_TIMEOUT_S)
            await until(lambda: at_import, START_TIMEOUT_S, "the web stack's import")
            assert at_import in (["while i2 was down"], ["gave up"])
            assert again.membership is not None
            assert again.membership.healthy is serf_healthy
            assert "i1" not in again.replica.candidates  # Serf never named it
            nursery.cancel_scope.cancel()
        # Serf's views that named no other instance did not overwrite the peer file.
        assert set(PeerFile(cfg2.data_dir / "peers.json").load()[0]) == {"i1"}


async def test_a_restart_catches_up_from_its_last_peers_before_serf_is_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serf unreachable the whole time: before, gossip peers came from Serf only, and the
    restarted instance waited for it."""
    await _restart_after_a_missed_write(tmp_path, False, monkeypatch)


async def test_a_restart_keeps_its_last_peers_until_serf_names_another_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serf up but not joined yet (it lists only this instance): its view does not empty
    the peer set the restart is catching up from."""
    await _restart_after_a_missed_write(tmp_path, True, monkeypatch)


async def test_a_request_during_the_web_stack_import_is_answered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API address is bound before Quart and hypercorn are imported: a client that
    connects and sends its request meanwhile is not refused; it is answered once the
    server runs."""
    release = threading.Event()
    real_import = gossipmgr.agent._import_web_stack

    def held_import() -> None:
        release.wait(START_TIMEOUT_S)
        real_import()

    monkeypatch.setattr(gossipmgr.agent, "_import_web_stack", held_import)
    agent = build(standalone_config(tmp_path, "i1"))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(agent.run, signals=False))
        await until(lambda: agent.api_url != "" and agent.gossip is not None, START_TIMEOUT_S)
        host, port = agent.api_url.removeprefix("http://").rsplit(":", 1)

        def ask() -> bytes:
            with socket.create_connection((host, int(port)), timeout=START_TIMEOUT_S) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert not agent.ready.is_set()  # sent while the import is held
                release.set()
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
            return b"".join(chunks)

        answer = await trio.to_thread.run_sync(ask)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(body)["name"] == "i1"
        nursery.cancel_scope.cancel()


def test_the_peer_file_keeps_the_last_peer_set_and_ignores_a_bad_one(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    pf = PeerFile(path)
    assert pf.load() == ({}, {})  # no file: nothing to catch up from
    pf.save({"b": ("127.0.0.1", 7001), "c": ("::1", 7002)}, {"b": "18c"})
    assert PeerFile(path).load() == ({"b": ("127.0.0.1", 7001), "c": ("::1", 7002)}, {"b": "18c"})
    stamp = path.stat().st_mtime_ns
    pf.save({"b": ("127.0.0.1", 7001), "c": ("::1", 7002)}, {"b": "18c"})
    assert path.stat().st_mtime_ns == stamp  # unchanged: not rewritten
    for bad in (
        "{",
        "[]",
        '{"version": 1, "peers": {"b": "nohost"}, "alive": {}}',
        '{"version": 1, "peers": {"b": "h:99999"}, "alive": {}}',
        '{"version": 9, "peers": {}, "alive": {}}',
    ):
        path.write_text(bad)
        assert PeerFile(path).load() == ({}, {}), bad


async def test_the_agent_serves_tls_on_the_socket_it_bound_first(tmp_path: Path) -> None:
    """With ``tls_cert``/``tls_key`` the socket bound before the web stack loads is served
    over TLS, and the URL the agent advertises says https."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile, cafile = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    cfg = standalone_config(tmp_path, "i1", tls_cert=certfile, tls_key=keyfile)
    async with standalone_agent(cfg) as agent:
        assert agent.api_url.startswith("https://127.0.0.1:")
        tls = ssl.create_default_context(cafile=cafile)
        async with httpx.AsyncClient(verify=tls) as c:
            r = await c.get(agent.api_url + "/health")
        assert r.status_code == 200 and r.json()["name"] == "i1"
