"""The cut-over from clusterm, end to end, on real hosts (network namespaces on a bridge).

The fleet runs as contiv/ansible provisions it (``roles/serf/templates/serf.j2``): every node
a ``serf agent -node=<label>-<serial> -discover <cluster> -iface <if> -tag NodeLabel=...
-tag NodeSerial=... -tag NodeAddr=...``, unencrypted, found by mDNS, no ``--join``
anywhere. Three gossipmgr instances arrive beside it with ``--serf-no-encrypt
--serf-discover <cluster> --serf-iface <if>`` (``bench/netns.py``'s contiv mode): they must
find the nodes and each other by mDNS alone, and every node must reach the inventory of
every instance, while the instances' own gossip stays sealed and ``/health`` warns that
Serf is not.

Needs root, iproute2 and serf (skipped otherwise); every namespace, link and process is
removed even when the test fails (the cluster's ``close`` runs in ``finally``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.netns import NetnsCluster, node_name, sh, unavailable_reason, wait_for  # noqa: E402

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.serf,
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=f"cut-over e2e skipped: {REASON}"),
]

MDNS_CLUSTER = "mycluster"  # contiv/ansible's serf_cluster_name default
#: The nodes, named as in clusterm's inventory fixture (tests/fixtures/clusterm-bolt).
NODE_IDS = [("cluster-node1", "01"), ("cluster-node2", "02")]


def agent_config(root: Path) -> Path:
    """Jobs run their playbooks on the runner itself (ansible_connection=local)."""
    path = root / "agent.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[ansible.host_vars]\n"
        'ansible_connection = "local"\n'
        'ansible_python_interpreter = "{{ ansible_playbook_python }}"\n'
        f'gossipmgr_demo_root = "{root / "hosts"}/{{{{ inventory_hostname }}}}"\n'
    )
    return path


def test_contiv_fleet_joined_by_mdns_reaches_every_inventory(tmp_path: Path) -> None:
    c = NetnsCluster(
        3,
        len(NODE_IDS),
        root=tmp_path / "cluster",
        mdns=MDNS_CLUSTER,
        node_ids=NODE_IDS,
        agent_args=["--config", str(agent_config(tmp_path / "cluster"))],
    )
    prefix = c.prefix
    clients: dict[str, Any] = {}
    try:
        c.setup(timeout=60)
        nodes = sorted(node_name(h) for h in c.nodes.values())
        clients = {n: c.client(n) for n in sorted(c.instances)}

        def inventories() -> bool:
            return all(sorted(cl.get("/info/nodes")) == nodes for cl in clients.values())

        wait_for(inventories, 60, "every node in every instance's inventory", 0.25)
        for name, cl in clients.items():
            recs = cl.get("/info/nodes")
            for h in c.nodes.values():
                rec = recs[node_name(h)]
                mon = rec["monitoring_state"]
                assert mon["label"] == h.label and mon["serial_number"] == h.serial, rec
                assert mon["management_address"] == h.addr, rec  # the NodeAddr tag
                assert rec["inventory_state"]["status"] == "Unallocated", rec
            health = cl.get("/health")
            assert health["serf"]["encrypted"] is False, health
            assert health["serf"]["discover"] == MDNS_CLUSTER
            assert any("serf is unencrypted" in w for w in health["warnings"]), health
            # Gossip between instances stays sealed and works: nobody fails to open it.
            assert health["gossip"]["auth_failures"] == [], (name, health["gossip"])
        # Found by mDNS: no instance was given a --join, no node a join either.
        for h in c.hosts:
            assert not any(a.startswith(("--join", "-join", "-retry-join")) for a in h.argv)
    except BaseException:
        for h in c.hosts:
            print(f"--- {h.name} log tail ---\n{h.log()}")
        raise
    finally:
        for cl in clients.values():
            cl.close()
        c.close()
    assert prefix not in sh("ip", "netns", "list").stdout
    assert f"{prefix}br" not in sh("ip", "-o", "link", "show").stdout
