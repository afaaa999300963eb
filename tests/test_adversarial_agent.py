"""Adversarial cases against real gossipmgr agents (each with its embedded ``serf agent``)
on loopback: oversized datagrams, a forged far-future lease, members posing as gossipmgr
instances, and a second Serf member claiming an existing node's identity.

Every process is stopped by the cluster fixture, even on failure.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from serfutil import local_cluster

from gossipmgr.core.lease import MAX_EPOCH, Lease
from gossipmgr.core.state import LEASE_KEY
from gossipmgr.gossip.crypto import load_keyring_file
from gossipmgr.gossip.service import GossipService
from gossipmgr.gossip.transport import open_udp_transport
from gossipmgr.localcluster import HOST, LocalCluster, free_port, wait_for
from gossipmgr.runtime.replica import Replica

pytestmark = [pytest.mark.serf, pytest.mark.slow]

TTL_MS = 6_000


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path / "cluster", lease_ttl_ms=TTL_MS) as c:
        yield c


def metric(c: LocalCluster, inst: str, name: str) -> float:
    """One sample of /metrics (``name`` includes its labels), 0 when absent."""
    text = httpx.get(f"{c.instances[inst].url}/metrics", headers=c.headers, timeout=5).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_oversized_datagrams_are_dropped_and_counted_in_metrics(cluster: LocalCluster) -> None:
    cluster.add_instance("g1")
    cluster.wait_ready("g1")
    port = cluster.instances["g1"].gossip_port
    name = 'gossipmgr_gossip_dropped_total{reason="recv_too_large"}'
    assert metric(cluster, "g1", name) == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for size in (1_401, 9_000, 65_507):  # 65,507: the largest IPv4 UDP payload
            s.sendto(b"\xa5" * size, (HOST, port))
    wait_for(lambda: metric(cluster, "g1", name) == 3, 10, "three drops counted in /metrics")
    assert cluster.get("g1", "/health")["status"] == "serving"


def forge_lease(c: LocalCluster, target: str, lease: Lease) -> None:
    """Write ``lease`` into ``target``'s replica as a gossip-key holder would: a sealed
    delta from an instance nobody lists ("0-mallory")."""
    forge_entry(c, target, lease.as_value(), lambda: c.lease(target).get("holder") == lease.holder)


def forge_entry(c: LocalCluster, target: str, value: Any, reached: Callable[[], bool]) -> None:
    """Write ``value`` as the lease entry into ``target``'s replica (as ``forge_lease``),
    gossiping until ``reached()``."""

    async def main() -> None:
        rep = Replica("0-mallory", data_dir=None)
        rep.open()
        async with open_udp_transport(HOST, 0) as tr:
            svc = GossipService(rep, tr, load_keyring_file(c.key_file), boot_ms=rep.now_ms())
            async with trio.open_nursery() as nursery:
                await nursery.start(svc.run)
                svc.set_peers({target: (HOST, c.instances[target].gossip_port)})
                await rep.commit(lambda st, ts: st.d_set(LEASE_KEY, value, ts))
                # Poll the target's API from a thread while the forger keeps gossiping.
                await trio.to_thread.run_sync(
                    lambda: wait_for(reached, 10, "the forged lease to reach the target")
                )
                nursery.cancel_scope.cancel()

    trio.run(main)


def cli(c: LocalCluster, inst: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gossipmgr.cli.main",
            "--url",
            c.instances[inst].url,
            "--token-file",
            str(c.token_file),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_forged_far_future_lease_holds_one_ttl_at_most_and_can_be_reset(
    cluster: LocalCluster,
) -> None:
    cluster.add_instance("g1")
    cluster.wait_ready("g1")
    wait_for(lambda: cluster.holder(["g1"]) == "g1", 20, "g1 to hold the lease")
    epoch = cluster.lease("g1")["epoch"]
    year = 365 * 86_400_000
    forged = Lease("0-mallory", epoch + 1, int(time.time() * 1000) + year)
    forge_lease(cluster, "g1", forged)
    seen = cluster.lease("g1")
    assert seen["epoch"] == epoch + 1
    # Read as expiring one TTL (+ skew) after it was written, not in a year.
    assert seen["expires_ms"] <= int(time.time() * 1000) + TTL_MS + 500
    # Counted by g1's lease loop, which may not have run since the entry arrived.
    wait_for(
        lambda: metric(cluster, "g1", "gossipmgr_lease_bounded_total") == 1,
        10,
        "the bounded lease to be counted",
    )
    # ...so g1 claims it back: the next epoch, well within the year.
    wait_for(lambda: cluster.holder(["g1"]) == "g1", 3 * TTL_MS / 1000, "g1 to reclaim")
    assert cluster.lease("g1")["epoch"] == epoch + 2

    # The operator's reset: refused while g1 acts, unless forced; then g1 claims again.
    r = cli(cluster, "g1", "lease", "reset")
    assert r.returncode == 1 and "g1 holds a valid lease" in r.stderr, r
    assert cluster.lease("g1")["epoch"] == epoch + 2
    r = cli(cluster, "g1", "lease", "reset", "--force")
    assert r.returncode == 0, r
    assert "now vacant at epoch" in r.stdout
    wait_for(lambda: cluster.lease("g1")["epoch"] == epoch + 4, 10, "a claim past the reset")
    assert cluster.holder(["g1"]) == "g1"


def test_a_malformed_lease_entry_is_claimed_past_and_can_be_reset(
    cluster: LocalCluster,
) -> None:
    """A lease entry with an epoch but no valid expiry still wins the merge by its epoch.
    It used to read as no lease at all: g1 claimed epoch 1 every 250 ms, lost every time
    (and logged "claimed the lease" each time), and a reset lost too: no holder, for good."""
    cluster.add_instance("g1")
    cluster.wait_ready("g1")
    wait_for(lambda: cluster.holder(["g1"]) == "g1", 20, "g1 to hold the lease")
    epoch = cluster.lease("g1")["epoch"]
    forged = {"holder": "0-mallory", "epoch": epoch + 1}  # no expires_ms
    forge_entry(cluster, "g1", forged, lambda: cluster.lease("g1").get("epoch") != epoch)
    wait_for(lambda: cluster.lease("g1").get("epoch") == epoch + 2, 10, "a claim past it")
    assert cluster.holder(["g1"]) == "g1"
    r = cli(cluster, "g1", "lease", "reset", "--force")
    assert r.returncode == 0, r
    wait_for(lambda: cluster.lease("g1").get("epoch") == epoch + 4, 10, "a claim past the reset")
    assert cluster.holder(["g1"]) == "g1"


def test_a_lease_expiring_before_year_1_does_not_break_health(cluster: LocalCluster) -> None:
    """/health, /info/lease and /info/peers show the lease's expiry as a date; one before
    year 1 answered 500 on all three, for good when nothing can outbid the epoch."""
    cluster.add_instance("g1")
    cluster.wait_ready("g1")
    wait_for(lambda: cluster.holder(["g1"]) == "g1", 20, "g1 to hold the lease")
    forged = Lease("0-mallory", MAX_EPOCH, -(2**62))

    def reached() -> bool:
        r = httpx.get(f"{cluster.instances['g1'].url}/info/lease", headers=cluster.headers)
        return r.status_code != 200 or (r.json()["lease"] or {}).get("epoch") == MAX_EPOCH

    forge_entry(cluster, "g1", forged.as_value(), reached)
    for path in ("/health", "/info/lease", "/info/peers"):
        r = httpx.get(f"{cluster.instances['g1'].url}{path}", headers=cluster.headers)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])
        assert r.json()["lease"]["epoch"] == MAX_EPOCH
        assert r.json()["lease"]["expires_ms"] == 0


def test_members_posing_as_instances_do_not_delay_takeover(cluster: LocalCluster) -> None:
    """Three bare serf agents tagged role=gossipmgr, named to sort before every instance
    and running no gossipmgr; the holder is killed: the survivor takes over without
    waiting a TTL per impostor (the old rule: three TTLs, 18 s here, past the expiry)."""
    cluster.add_instance("g1")
    cluster.add_instance("g2")
    for n in ("g1", "g2"):
        cluster.wait_ready(n)
    for i in range(3):
        cluster.add_member(
            f"0-phantom-{i}",
            {
                "role": "gossipmgr",
                "gossip": f"{HOST}:{free_port()}",
                "api": f"http://{HOST}:{free_port()}",
                "boot": "1",
            },
        )
    wait_for(
        lambda: all(len(cluster.get(n, "/info/peers")["peers"]) == 5 for n in ("g1", "g2")),
        30,
        "both instances to list the three impostors",
    )
    holder = wait_for(lambda: cluster.holder(["g1", "g2"]), 20, "a lease holder")
    survivor = "g2" if holder == "g1" else "g1"
    wait_for(
        lambda: cluster.lease(survivor)["holder"] == holder, 10, "the survivor to see the holder"
    )
    epoch = cluster.lease(survivor)["epoch"]
    cluster.instances[holder].proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
    cluster.instances[holder].proc.wait(10)  # type: ignore[union-attr]
    # Serf sees the leave (watchdog) in about a second, the renewals are overdue 1.5 s after
    # the last one: well inside one TTL, where the old order needed expiry + 3 TTLs.
    wait_for(
        lambda: cluster.holder([survivor]) == survivor,
        TTL_MS / 1000 + 3,
        f"{survivor} to take over ahead of the impostors",
    )
    assert cluster.lease(survivor)["epoch"] > epoch


def test_a_member_with_a_nodes_identity_or_a_too_long_name_moves_nothing_stops_no_reconcile(
    cluster: LocalCluster,
) -> None:
    """A second member claiming an existing node's identity is reported and never moves it.

    And a member whose node name is too long does not stop reconciliation: Serf tags may
    hold up to 512 bytes, so a member (anyone, on an unencrypted Serf) can carry a NodeLabel
    whose node name is longer than gossip's key limit (256). The holder's reconcile writes
    all its repairs in one commit: with that name among them every reconcile was refused,
    for every node, for as long as the member stayed. (Two tests once, each on its own
    cluster waiting two reconciles; one cluster and one wait prove both.)"""
    cluster.add_instance("g1")
    cluster.wait_ready("g1")
    wait_for(lambda: cluster.holder(["g1"]) == "g1", 20, "g1 to hold the lease")
    node = cluster.add_node("rack1", "0001", addr=HOST)

    def addr() -> str | None:
        rec = cluster.get("g1", "/info/nodes").get(node.name)
        return None if rec is None else str(rec["monitoring_state"]["management_address"])

    wait_for(lambda: addr() == HOST, 30, "the node discovered at its address")
    # Named to sort first, same NodeLabel/NodeSerial, another NodeAddr.
    cluster.add_member(
        "0-impostor", {"NodeLabel": "rack1", "NodeSerial": "0001", "NodeAddr": "127.0.0.2"}
    )
    conflicts = wait_for(
        lambda: cluster.get("g1", "/health")["serf"]["identity_conflicts"],
        30,
        "the impostor reported on /health",
    )
    assert conflicts == [
        {
            "member": "0-impostor",
            "node": node.name,
            "addr": "127.0.0.2",
            "status": "alive",
            "owner": node.name,
        }
    ]
    assert metric(cluster, "g1", "gossipmgr_serf_identity_conflicts") == 1
    cluster.add_member("long", {"NodeLabel": "x" * 300, "NodeSerial": "1", "NodeAddr": HOST})
    wait_for(
        lambda: "x" * 40 in cluster.instances["g1"].log(),  # logged either way
        30,
        "g1 to see the member",
    )
    # Two reconciles against Serf later (every 5 s), the node still has its own address,
    # and no name over the key limit was written.
    done = metric(cluster, "g1", "gossipmgr_reconciles_total")
    wait_for(
        lambda: metric(cluster, "g1", "gossipmgr_reconciles_total") >= done + 2,
        30,
        "two more reconciles",
    )
    assert addr() == HOST
    assert metric(cluster, "g1", "gossipmgr_serf_identity_conflicts_total") == 1
    assert all(len(name) <= 256 for name in cluster.get("g1", "/info/nodes"))
