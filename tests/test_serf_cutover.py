"""Joining a Serf cluster as it is, and saying so loudly when Serf or the keys are wrong.

Pure: the ``--serf-*`` options and their refusals; the embedded agent's argv (no keyring
when unencrypted, ``-discover``/``-iface``).

Real processes on loopback (``serf agent`` children, ``gossipmgr agent`` subprocesses):

- an instance started with ``--serf-no-encrypt`` joins a node whose Serf runs without a key
  (as contiv/ansible starts it) and the node reaches the inventory; ``/health`` warns;
- an external Serf agent (``--serf-rpc``) whose node name is not ``--name`` is refused at
  start with both names; one named right is used, and its missing encryption is warned;
- two instances in one Serf whose gossip keys differ: ``/info/peers``, ``/health``,
  ``gossipmgr peers`` and ``/metrics`` name the peer whose datagrams fail authentication,
  with a counter;
- with Serf encrypted by the gossip key (the default), an unencrypted node (the cut-over's
  original symptom) and an instance with another key never become members: ``/health``
  says whose Serf traffic is refused, and why, from the agent's own log.

The mDNS (``--serf-discover``/``--serf-iface``) path needs network namespaces: see
``tests/test_cutover_e2e.py``. Every process is stopped by its test, even on failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from serfutil import AgentPool, agent_pool

from gossipmgr.agent import SERF_UNENCRYPTED_WARNING
from gossipmgr.cli import main as cli
from gossipmgr.config import load
from gossipmgr.errors import ConfigError
from gossipmgr.gossip.crypto import generate_key
from gossipmgr.localcluster import HOST, LocalCluster, free_port, wait_for
from gossipmgr.serf.process import SerfAgentProcess
from gossipmgr.serf.refusals import MAX_SOURCES, SerfRefusals

# -------------------------------------------------------------------------------- options


def test_serf_options_parse_and_iface_defaults_bind_to_the_interface() -> None:
    cfg = load(
        None,
        {"serf_no_encrypt": True, "serf_discover": "mycluster", "serf_iface": "eth1"},
    )
    assert cfg.serf_no_encrypt and cfg.serf_discover == "mycluster" and cfg.serf_iface == "eth1"
    # Serf refuses a bind address that is not on -iface: 0.0.0.0 lets it pick, as contiv's
    # nodes run it.
    assert cfg.serf_bind == "0.0.0.0:7946"
    explicit = load(None, {"serf_iface": "eth1", "serf_bind": "10.0.0.5:17946"})
    assert explicit.serf_bind == "10.0.0.5:17946"
    assert load(None, {}).serf_bind == "127.0.0.1:7946"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            {"serf_no_encrypt": True, "serf_encrypt_key_file": Path("/k")},
            "serf-no-encrypt and serf-encrypt-key-file contradict",
        ),
        (
            {"serf_rpc": "127.0.0.1:17373", "serf_discover": "c"},
            "serf-discover configure the embedded Serf agent",
        ),
        (
            {"serf_rpc": "127.0.0.1:17373", "serf_no_encrypt": True},
            "serf-no-encrypt configure the embedded Serf agent",
        ),
        ({"serf_discover": "my.cluster"}, "serf-discover must be"),
        ({"serf_iface": "a b"}, "serf-iface must be a network interface name"),
    ],
)
def test_serf_option_refusals(overrides: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(None, overrides)


def test_embedded_agent_argv_unencrypted_with_mdns(tmp_path: Path) -> None:
    p = SerfAgentProcess(
        name="gm1",
        bind="0.0.0.0:17946",
        rpc="127.0.0.1:17373",
        data_dir=tmp_path,
        encrypt_key=None,
        discover="mycluster",
        iface="eth1",
    )
    argv = p.prepare()
    assert "-discover=mycluster" in argv and "-iface=eth1" in argv
    assert not any(a.startswith(("-keyring-file", "-encrypt")) for a in argv)
    assert not (tmp_path / "keyring.json").exists()
    key = generate_key()
    q = SerfAgentProcess(
        name="gm1", bind="127.0.0.1:1", rpc="127.0.0.1:2", data_dir=tmp_path, encrypt_key=key
    )
    argv = q.prepare()
    assert f"-keyring-file={tmp_path / 'keyring.json'}" in argv
    assert not any(a.startswith(("-discover", "-iface")) for a in argv)


# Log lines as serf 0.8.2 wrote them in a live run (two keys, one agent unencrypted).
SERF_LOG = [
    "2026/11/29 17:20:30 [ERR] memberlist: failed to receive: Encryption is configured but "
    "remote state is not encrypted from=10.0.0.7:54156\n",
    "2026/11/29 17:20:30 [ERR] memberlist: failed to receive: No installed keys could decrypt "
    "the message from=10.0.0.8:54162\n",
    "2026/11/29 17:20:31 [ERR] memberlist: failed to receive: No installed keys could decrypt "
    "the message from=10.0.0.8:54190\n",
    "2026/11/29 17:20:30 [WARN] agent: Join failed: 1 error occurred:\n\t* Failed to join "
    "10.0.0.1: Remote state is encrypted and encryption is not configured\n\n, retrying in 1s",
    "2026/11/29 17:20:30 [ERR] memberlist: failed to receive: EOF from=10.0.0.9:1\n",
    "2026/11/29 17:20:30 [INFO] serf: EventMemberJoin: a 10.0.0.1\n",
]


def test_serf_refusals_parse_serfs_own_lines() -> None:
    r = SerfRefusals()
    assert [r.feed(line, 1_000) for line in SERF_LOG] == [True, True, True, True, False, False]
    snap = {(x["source"], x["direction"]): x for x in r.snapshot(3_000)}
    assert set(snap) == {("10.0.0.7", "received"), ("10.0.0.8", "received"), ("10.0.0.1", "join")}
    assert snap[("10.0.0.8", "received")]["count"] == 2
    assert snap[("10.0.0.8", "received")]["hint"] == "a Serf agent with another key"
    assert "--serf-no-encrypt" in snap[("10.0.0.7", "received")]["hint"]
    assert snap[("10.0.0.1", "join")]["last_ms_ago"] == 2_000


@given(st.lists(st.text(max_size=200), max_size=40), st.integers(0, 100))
def test_serf_refusals_take_any_text_and_stay_bounded(lines: list[str], n: int) -> None:
    r = SerfRefusals()
    for line in lines:
        r.feed(line, 0)  # never raises: log lines are cluster input
    for i in range(n):
        assert r.feed(
            f"[ERR] memberlist: Decrypt packet failed: No installed keys could decrypt the "
            f"message from=10.1.{i // 256}.{i % 256}:7946",
            i,
        )
    snap = r.snapshot(n)
    assert len(snap) <= MAX_SOURCES
    if n:  # the most recent source is always kept
        assert any(x["source"] == f"10.1.{(n - 1) // 256}.{(n - 1) % 256}" for x in snap)


# -------------------------------------------------------------------------------- helpers


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _agent_argv(name: str, data: Path, *extra: str) -> tuple[list[str], str]:
    api = f"{HOST}:{free_port()}"
    argv = [
        sys.executable,
        "-m",
        "gossipmgr.cli.main",
        "agent",
        "--name",
        name,
        "--data-dir",
        str(data),
        "--api-addr",
        api,
        "--gossip-addr",
        f"{HOST}:{free_port()}",
        *extra,
    ]
    return argv, f"http://{api}"


@pytest.fixture
def pool(tmp_path: Path) -> Iterator[AgentPool]:
    with agent_pool(tmp_path / "serf") as p:
        yield p


def _dump(c: LocalCluster) -> None:
    for inst in c.instances.values():
        print(f"--- {inst.name} log tail ---\n{inst.log()[-4000:]}")


# ------------------------------------------------------------ external agent named otherwise


@pytest.mark.serf
def test_external_serf_agent_named_otherwise_is_refused_with_both_names(
    tmp_path: Path, pool: AgentPool
) -> None:
    serf = pool.start("some-node", profile="local")
    argv, _ = _agent_argv("gm-a", tmp_path / "gm-a", "--serf-rpc", f"{HOST}:{serf.rpc_port}")
    # subprocess.run kills the agent if it does not exit in time (it used to run on
    # silently, with no lease and no replication).
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode != 0, r.stderr[-2000:]
    assert "'some-node'" in r.stderr and "'gm-a'" in r.stderr, r.stderr[-2000:]
    assert "--serf-rpc" in r.stderr


@pytest.mark.serf
def test_external_serf_agent_named_otherwise_is_refused_with_an_rpc_auth_file(
    tmp_path: Path, pool: AgentPool
) -> None:
    """The name check must use the RPC secret from --serf-rpc-auth-file (the recommended
    form): it used --serf-rpc-auth only, got "Authentication required", logged a warning
    and let the misnamed instance run on silently."""
    secret = "rpc-" + os.urandom(8).hex()
    serf = pool.start("some-node", profile="local", config={"rpc_auth": secret})
    secret_file = tmp_path / "rpc.auth"
    secret_file.write_text(secret + "\n")
    secret_file.chmod(0o600)
    argv, _ = _agent_argv(
        "gm-a",
        tmp_path / "gm-a",
        "--serf-rpc",
        f"{HOST}:{serf.rpc_port}",
        "--serf-rpc-auth-file",
        str(secret_file),
    )
    r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=_env())
    assert r.returncode != 0, r.stderr[-2000:]
    assert "'some-node'" in r.stderr and "'gm-a'" in r.stderr, r.stderr[-2000:]


@pytest.mark.serf
@pytest.mark.slow
def test_external_serf_agent_named_right_is_used_and_unencrypted_is_warned(
    tmp_path: Path, pool: AgentPool
) -> None:
    serf = pool.start("gm-b", profile="local")
    argv, url = _agent_argv("gm-b", tmp_path / "gm-b", "--serf-rpc", f"{HOST}:{serf.rpc_port}")
    with open(tmp_path / "gm-b.log", "wb") as logf:
        proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, env=_env())
    try:

        def healthy() -> dict[str, Any] | None:
            assert proc.poll() is None, (tmp_path / "gm-b.log").read_text()[-3000:]
            h = httpx.get(f"{url}/health", timeout=2).json()
            return h if h["serf"]["healthy"] and h["serf"]["encrypted"] is not None else None

        h = wait_for(healthy, 30, "gm-b to serve with its external Serf")
        assert h["serf"]["embedded"] is False and h["serf"]["encrypted"] is False
        assert any("is unencrypted" in w for w in h["warnings"]), h["warnings"]
        # The agent made its own token at first start (a default install): read it there.
        token = (tmp_path / "gm-b" / "api.token").read_text().strip()
        auth = {"Authorization": f"Bearer {token}"}
        wait_for(
            lambda: httpx.get(f"{url}/info/lease", headers=auth).json()["is_holder"],
            30,
            "the lease",
        )
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ------------------------------------------------------------ mismatched gossip keys


@pytest.mark.serf
@pytest.mark.slow
def test_serf_no_encrypt_joins_a_contiv_node_and_mismatched_gossip_keys_are_named(
    tmp_path: Path, pool: AgentPool, capsys: pytest.CaptureFixture[str]
) -> None:
    # A node as contiv/ansible's serf.j2 starts it: no -encrypt, clusterm's tags.
    node = pool.start(
        "rack1-0001",
        tags={"NodeLabel": "rack1", "NodeSerial": "0001", "NodeAddr": HOST},
        profile="local",
    )
    # One unencrypted Serf cluster (a shared --serf-encrypt-key-file is the same case), two
    # gossip keys: the instances meet in Serf but cannot open each other's gossip.
    c = LocalCluster(tmp_path / "cluster", extra_args=["--serf-no-encrypt", "--join", node.bind])
    try:
        c.add_instance("gm-a")
        c.key_file = tmp_path / "other.key"
        c.key_file.write_text(generate_key() + "\n")
        c.add_instance("gm-b")
        c.wait_ready("gm-a")
        c.wait_ready("gm-b")

        def failing(me: str, other: str) -> dict[str, Any] | None:
            peers = {p["name"]: p for p in c.get(me, "/info/peers")["peers"]}
            p = peers.get(other)
            return p if p is not None and p.get("auth_failures", 0) > 0 else None

        for me, other in (("gm-a", "gm-b"), ("gm-b", "gm-a")):
            p = wait_for(partial(failing, me, other), 30, f"{me} to name {other}")
            assert p["auth_failure_reasons"].get("unknown_key", 0) > 0, p
            h = c.get(me, "/health")
            [a] = [a for a in h["gossip"]["auth_failures"] if a["peer"] == other]
            assert a["count"] > 0 and a["claimed"] == other
            assert a["source"] == p["gossip_addr"]
            assert any(
                f"gossip from {other} " in w and "fails authentication" in w for w in h["warnings"]
            ), h["warnings"]
            metrics = httpx.get(f"{c.instances[me].url}/metrics", headers=c.headers, timeout=5).text
            assert f'gossipmgr_gossip_auth_failures_total{{peer="{other}",' in metrics
            # The CLI in-process (over real HTTP): a subprocess per call costs seconds here.
            capsys.readouterr()
            assert (
                cli.main(["peers", "--url", c.instances[me].url, "--token-file", str(c.token_file)])
                == 0
            )
            out = capsys.readouterr().out
            assert "AUTH-FAIL" in out
            assert f"warning: {other}: " in out and "failed authentication" in out, out
            assert f"warning: {SERF_UNENCRYPTED_WARNING}" in out, out
            assert f"warning: gossip from {other} (" not in out  # said once, per peer
            assert (
                cli.main(
                    [
                        "peers",
                        "--json",
                        "--url",
                        c.instances[me].url,
                        "--token-file",
                        str(c.token_file),
                    ]
                )
                == 0
            )
            rows = json.loads(capsys.readouterr().out)["peers"]
            assert [r["name"] for r in rows if r.get("auth_failures")] == [other]
        # The unencrypted node reached the inventory (of the lease holder: with no gossip
        # between them, each instance ends up holding a lease of its own).
        wait_for(
            lambda: any("rack1-0001" in c.get(n, "/info/nodes") for n in ("gm-a", "gm-b")),
            30,
            "the unencrypted node to reach an inventory",
        )
        health = c.get("gm-a", "/health")
        assert health["serf"]["encrypted"] is False
        assert SERF_UNENCRYPTED_WARNING in health["warnings"]
        assert "serf is unencrypted (--serf-no-encrypt)" in c.instances["gm-a"].log()
    except BaseException:
        _dump(c)
        raise
    finally:
        c.close()


@pytest.mark.serf
@pytest.mark.slow
def test_serf_refusals_are_named_on_health(
    tmp_path: Path, pool: AgentPool, capsys: pytest.CaptureFixture[str]
) -> None:
    c = LocalCluster(tmp_path / "cluster")  # Serf encrypted with the gossip key (default)
    try:
        c.add_instance("gm-a")
        c.wait_ready("gm-a")
        # A node as contiv starts it (no key) joining the instance: before, the inventory
        # just stayed empty and only the node's log said why.
        pool.start(
            "rack1-0001",
            tags={"NodeLabel": "rack1", "NodeSerial": "0001", "NodeAddr": HOST},
            config={"retry_join": [c.instances["gm-a"].serf_bind], "retry_interval": "1s"},
        )
        # An instance with another key (gossip and Serf share it): it never becomes a
        # member, so only Serf's layer can say so.
        c.key_file = tmp_path / "other.key"
        c.key_file.write_text(generate_key() + "\n")
        c.add_instance("gm-b")
        c.wait_ready("gm-b")

        def warned() -> list[str] | None:
            ws = [w for w in c.get("gm-a", "/health")["warnings"] if w.startswith("serf traffic")]
            texts = " | ".join(ws)
            ok = "remote state is not encrypted" in texts and "another key" in texts
            return ws if ok else None

        ws = wait_for(warned, 30, "gm-a to warn about both refused Serf agents")
        assert any(
            "Encryption is configured but remote state is not encrypted" in w
            and "--serf-no-encrypt" in w
            for w in ws
        ), ws
        assert any("No installed keys could decrypt the message" in w for w in ws), ws
        refused = c.get("gm-a", "/health")["serf"]["refused"]
        assert {r["source"] for r in refused} == {HOST}, refused
        assert all(r["count"] > 0 and r["direction"] == "received" for r in refused)
        assert c.get("gm-a", "/info/nodes") == {}
        capsys.readouterr()
        assert (
            cli.main(["peers", "--url", c.instances["gm-a"].url, "--token-file", str(c.token_file)])
            == 0
        )
        out = capsys.readouterr().out
        assert f"warning: serf traffic from {HOST} refused" in out, out
        # The joining side names its target and the reason too.
        wait_for(
            lambda: any(
                r["direction"] == "join" and "No installed keys" in r["reason"]
                for r in c.get("gm-b", "/health")["serf"]["refused"]
            ),
            30,
            "gm-b to name its failing join",
        )
    except BaseException:
        _dump(c)
        raise
    finally:
        c.close()
