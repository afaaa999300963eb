"""gossipmgr agents as real processes with embedded serf agents on loopback.

Covers: instances finding each other through Serf and converging on a write, and
`gossipmgr peers` showing when each was last heard; a simulated
node discovered, killed -9 (disappeared) and back (discovered); the Serf agent killed under
a running gossipmgr and recovered; one lease holder, handed over on SIGKILL without losing
a health event; a node our Serf agent does not list given a grace before it is marked
Disappeared. Every process is stopped by the cluster fixture, even on failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
from _bounds import bound
from serfutil import local_cluster

from gossipmgr.localcluster import LocalCluster, wait_for
from gossipmgr.runtime.leaseloop import RECONCILE_EVERY_S, VIEW_SETTLE_S, absent_grace_s

pytestmark = [pytest.mark.serf, pytest.mark.slow]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "cluster", lease_ttl_ms=6_000) as c:
        yield c


def _last_heard(c: LocalCluster, inst: str) -> dict[str, str] | None:
    """``gossipmgr peers`` (the CLI, a subprocess) asking ``inst``: each other instance's
    LAST-HEARD cell; None until every other instance has one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
    env |= {"GOSSIPMGR_URL": c.instances[inst].url, "GOSSIPMGR_TOKEN_FILE": str(c.token_file)}
    cmd = [sys.executable, "-m", "gossipmgr.cli.main", "peers"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    lines = out.stdout.splitlines()
    col = lines[0].index("LAST-HEARD")
    rows = [ln for ln in lines[1:] if ln.strip()]  # a blank line, then the majority line
    cells = {ln.split()[0].lstrip("*"): ln[col:].split("  ")[0].strip() for ln in rows}
    others = {name: v for name, v in cells.items() if name in c.instances and name != inst}
    ok = len(others) == len(c.instances) - 1 and all(others.values())
    return others if ok else None


def node_state(c: LocalCluster, inst: str, node: str) -> str | None:
    nodes = c.get(inst, "/info/nodes")
    rec = nodes.get(node)
    return None if rec is None else str(rec["inventory_state"]["state"])


def node_state_is(c: LocalCluster, inst: str, node: str, want: str) -> bool:
    return node_state(c, inst, node) == want


def _reconciles(c: LocalCluster, inst: str) -> int:
    text = httpx.get(f"{c.instances[inst].url}/metrics", headers=c.headers, timeout=5).text
    for line in text.splitlines():
        if line.startswith("gossipmgr_reconciles_total "):
            return int(float(line.split()[1]))
    raise AssertionError("gossipmgr_reconciles_total missing from /metrics")


def _post_ghost(c: LocalCluster, holder: str) -> None:
    """A monitor event discovers ``ghost-0001``, a node no Serf agent lists."""
    r = c.post(
        holder,
        "/monitor/event",
        {
            "monitor_event": {
                "name": "discovered",
                "nodes": [{"label": "ghost", "serial": "0001", "addr": "127.0.0.77"}],
            }
        },
    )
    assert r.status_code == 200, r.text
    assert node_state(c, holder, "ghost-0001") == "Discovered"


def test_node_discovered_disappears_on_kill_and_comes_back(cluster: LocalCluster) -> None:
    """A node's kill and comeback, and (on the same cluster, its 30 s grace running during
    the comeback's wait) a Discovered node our Serf agent does not list at all: it may just
    not have reached it yet (a join broadcast missed, until the next push-pull): CI once saw
    a new holder mark four live nodes Disappeared this way. It is left alone for 2 push-pull
    intervals (30 s with the local profile used here), then marked Disappeared."""
    cluster.add_instances("g1", "g2")
    holder = wait_for(cluster.holder, 20, "a lease holder")
    assert holder is not None
    t0 = time.monotonic()
    _post_ghost(cluster, holder)
    base = _reconciles(cluster, holder)
    node = cluster.add_node("rack1", "0001")
    for inst in ("g1", "g2"):
        wait_for(
            partial(node_state_is, cluster, inst, node.name, "Discovered"),
            20,
            f"{node.name} discovered at {inst}",
        )
    rec = cluster.get("g2", f"/info/node/{node.name}")
    assert rec["inventory_state"]["status"] == "Unallocated"
    assert rec["monitoring_state"]["serial_number"] == "0001"
    # Two periodic reconciles (5 s apart) pass without touching the ghost, inside the grace.
    # (On a machine so loaded that they took the whole grace, this observation proves
    # nothing: the test says so instead of failing on timing, after the comeback's checks.)
    wait_for(lambda: _reconciles(cluster, holder) >= base + 2, 30, "two more reconciles")
    ghost_conclusive = time.monotonic() - t0 < 30 - 1
    if ghost_conclusive:
        assert node_state(cluster, holder, "ghost-0001") == "Discovered"
    cluster.kill9_node(node.name)
    for inst in ("g1", "g2"):
        wait_for(
            partial(node_state_is, cluster, inst, node.name, "Disappeared"),
            30,
            f"{node.name} disappeared at {inst}",
        )
    cluster.start_node(node.name)
    # A comeback is applied once the holder's Serf view has listed the node alive for 20 s
    # and it has held the lease for 35 s (the local profile's bounds with 3 members;
    # held since the start, so ~25 s after the restart at most), at the next 5 s
    # reconcile: the 30 s this waited before those rules, plus 25 s.
    for inst in ("g1", "g2"):
        wait_for(
            partial(node_state_is, cluster, inst, node.name, "Discovered"),
            55,
            f"{node.name} back at {inst}",
        )
    # ...and the ghost, once missing from Serf for the whole grace, is gone.
    wait_for(
        lambda: node_state(cluster, holder, "ghost-0001") == "Disappeared",
        45,
        "the unknown node to be marked Disappeared after the grace",
    )
    assert time.monotonic() - t0 >= 30 - 1
    if not ghost_conclusive:
        pytest.skip("ghost inconclusive: the two reconciles took the whole 30 s grace")


def test_serf_killed_under_a_running_agent_is_recovered(cluster: LocalCluster) -> None:
    cluster.add_instances("g1")
    cluster.put("g1", "/globals/k", {"value": 1})
    pid = wait_for(lambda: cluster.serf_pid("g1"), 10, "the embedded serf pid")
    os.kill(pid, signal.SIGKILL)
    wait_for(
        lambda: not cluster.get("g1", "/health")["serf"]["healthy"],
        10,
        "/health to report Serf down",
    )
    # still serving what it knows
    assert cluster.get("g1", "/info/globals")["extra_vars"] == {"k": 1}
    wait_for(
        lambda: cluster.get("g1", "/health")["serf"]["healthy"],
        40,
        "the supervisor to restart serf",
    )
    assert cluster.serf_pid("g1") not in (None, pid)
    assert cluster.instances["g1"].alive


def test_holder_sigkill_hands_over_and_loses_no_health_event(cluster: LocalCluster) -> None:
    # Three instances find each other through Serf and converge on a write (this was its
    # own test, on a cluster of its own: the same start, so one cluster proves both).
    cluster.add_instances("g1", "g2", "g3")
    wait_for(
        lambda: all(len(cluster.get(n, "/info/peers")["peers"]) == 3 for n in cluster.instances),
        20,
        "every instance to see three peers",
    )
    r = cluster.put("g2", "/globals/answer", {"value": 42})
    assert r.status_code == 200, r.text
    wait_for(
        lambda: all(
            cluster.get(n, "/info/globals")["extra_vars"].get("answer") == 42
            for n in cluster.instances
        ),
        10,
        "the write to reach every instance",
    )
    # `gossipmgr peers` against a real agent shows when each peer was last heard (issue 15:
    # the CLI read a field the agent does not send, and the LAST-HEARD column was empty).
    wait_for(lambda: _last_heard(cluster, "g1"), 20, "g1 to have heard from g2 and g3")
    heard = _last_heard(cluster, "g1")
    assert heard is not None and sorted(heard) == ["g2", "g3"], heard
    assert all(re.fullmatch(r"\S+ ago", v) for v in heard.values()), heard
    assert wait_for(cluster.holder, 20, "one agreed lease holder") in cluster.instances
    # The holder is SIGKILLed while a node's health event is under way.
    node = cluster.add_node("rack2", "0042")
    wait_for(
        lambda: all(node_state(cluster, n, node.name) == "Discovered" for n in cluster.instances),
        30,
        "node discovered everywhere",
    )
    holder = wait_for(cluster.holder, 20, "one agreed lease holder")
    epoch = cluster.lease(holder)["epoch"]
    survivors = [n for n in cluster.instances if n != holder]
    t0 = time.monotonic()
    cluster.kill9(holder)
    cluster.kill9_node(node.name)  # a health event during the handover
    new = wait_for(
        lambda: (h := cluster.holder(survivors)) not in (None, holder) and h, 30, "a new holder"
    )
    # Serf detection (~5-6 s) + TTL (6 s here) bounds the takeover: checked by bench/bounds.py.
    bound("agent.holder_sigkill_takeover", time.monotonic() - t0, 6 + 6 + 4)
    assert cluster.lease(new)["epoch"] > epoch
    # Normally the new holder's Serf reports the node failed (~5-20 s). Its Serf may also
    # never have heard of the node (the `local` profile retransmits a join broadcast only a
    # few times, and the next push-pull may come after the node died: seen in CI, g2's agent
    # never listed rack2-0042). Then the holder marks it Disappeared once it has missed
    # from its list for the absent grace, after its view settled, at a reconcile.
    within = absent_grace_s(cluster.profile) + VIEW_SETTLE_S + RECONCILE_EVERY_S + 15
    for n in survivors:
        wait_for(
            partial(node_state_is, cluster, n, node.name, "Disappeared"),
            within,
            f"node disappeared at {n} after the handover",
        )


def test_config_file_extra_vars_stay_the_operators_after_post_config(
    cluster: LocalCluster,
) -> None:
    """POST /config used to store a copy of the file's extra-vars in the replicated
    section: a client posting "{}" dropped the operator's (the fence directory among
    them), and once the operator edited an ``ansible_*`` name in the file and reloaded,
    the stale copy counted as a client's and every job was refused."""
    cluster.config_file.write_text(
        cluster.config_file.read_text()
        + "[ansible]\ndiscover_join_timeout_s = 0\n"
        + '[ansible.extra_variables]\nansible_ssh_pipelining = true\nsite = "v1"\n'
    )
    cluster.add_instances("g1")
    wait_for(lambda: cluster.holder(["g1"]) == "g1", 30, "g1 to hold the lease")

    def extra() -> dict[str, object]:
        return dict(json.loads(cluster.get("g1", "/config")["ansible"]["extra_variables"]))

    assert extra() == {"ansible_ssh_pipelining": True, "site": "v1"}
    r = cluster.post("g1", "/config", {"config": {"ansible": {"extra_variables": "{}"}}})
    assert r.status_code == 200, r.text
    assert extra() == {"ansible_ssh_pipelining": True, "site": "v1"}  # not dropped
    r = cluster.post(
        "g1", "/config", {"config": {"ansible": {"extra_variables": '{"site": "v2"}'}}}
    )
    assert r.status_code == 200, r.text
    assert extra() == {"ansible_ssh_pipelining": True, "site": "v2"}  # a client override

    # The operator edits the file and reloads: the new value is the operator's.
    cluster.config_file.write_text(
        cluster.config_file.read_text().replace(
            "ansible_ssh_pipelining = true", "ansible_ssh_pipelining = false"
        )
    )
    proc = cluster.instances["g1"].proc
    assert proc is not None
    os.kill(proc.pid, signal.SIGHUP)
    wait_for(lambda: extra().get("ansible_ssh_pipelining") is False, 20, "the reload")
    r = cluster.post("g1", "/discover/nodes", {"addrs": ["127.0.0.77"]})
    assert r.status_code == 200, r.text
    jid = r.json()["id"]

    def finished() -> dict[str, object] | None:
        rec = dict(cluster.get("g1", f"/info/job/{jid}"))
        return rec if rec.get("status") in ("Complete", "Errored", "Cancelled") else None

    rec = wait_for(finished, 120, "the discover job to end")
    assert rec["status"] == "Complete", rec


def _serf_status(c: LocalCluster, observer: str, member: str) -> str | None:
    out = subprocess.run(
        [
            "serf",
            "members",
            f"-rpc-addr=127.0.0.1:{c.instances[observer].rpc_port}",
            "-format=json",
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    for m in json.loads(out.stdout)["members"]:
        if m["name"] == member:
            return str(m["status"])
    return None


def test_sigterm_stop_is_graceful(cluster: LocalCluster) -> None:
    """Issue 17 cut the stop short twice (Serf's 1 s leave delay, the interpreter's teardown):
    still exit code 0, the log flushed to its last line, the store closed with the write in
    it, and the peer sees the member "left", never "failed"."""
    cluster.add_instances("a0", "a1")
    # "ready" is each Serf up, not joined: a1 stopped before a0 heard of it is never "left"
    # there (a0 saw None for 20 s in CI and on a loaded machine).
    wait_for(lambda: _serf_status(cluster, "a0", "a1") == "alive", 30, "a0's Serf to see a1")
    assert cluster.put("a1", "/globals/kept", {"value": 17}).status_code == 200
    a1 = cluster.instances["a1"]
    assert a1.proc is not None
    a1.proc.send_signal(signal.SIGTERM)
    assert a1.proc.wait(30) == 0
    assert "stopped (exit code" in a1.log()
    seen: list[str | None] = []

    def a1_left() -> bool:
        seen.append(_serf_status(cluster, "a0", "a1"))
        return seen[-1] == "left"

    try:
        wait_for(a1_left, 20, "a0's Serf to see a1 left")
    except TimeoutError as exc:  # say what a0 saw instead
        raise AssertionError(f"{exc}; a0 saw {sorted(set(map(str, seen)))}") from exc
    assert "failed" not in seen, seen
    cluster.start("a1")
    cluster.wait_ready("a1")
    assert cluster.get("a1", "/globals/kept") == {"key": "kept", "value": 17}
