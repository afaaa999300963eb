"""The cut-over from clusterm, end to end, on real hosts (network namespaces on a bridge).

The fleet runs as contiv/ansible provisions it (``roles/serf/templates/serf.j2``): every node
a ``serf agent -node=<label>-<serial> -discover <cluster> -iface <if> -tag NodeLabel=...
-tag NodeSerial=... -tag NodeAddr=...``, unencrypted, found by mDNS, no ``--join``
anywhere. Three gossipmgr instances arrive beside it with ``--serf-no-encrypt
--serf-discover <cluster> --serf-iface <if>`` (``bench/netns.py``'s contiv mode): they must
find the nodes and each other by mDNS alone, and every node must reach the inventory of
every instance, while the instances' own gossip stays sealed and ``/health`` warns that
Serf is not.

Then clusterm's inventory is imported (``gossipmgr import clusterm --boltdb`` of the fixture
written by Go bolt, ``tests/fixtures/clusterm-bolt/small.db``); ``clusterctl nodes get``
(the drop-in, a real process in each instance's namespace) shows every imported status on
every instance; and an update job (clusterm's update: cleanup, then configure) runs on the
imported Allocated node without a re-commission, where before the import it was refused.

Needs root, iproute2 and serf (skipped otherwise); every namespace, link and process is
removed even when the test fails (the cluster's ``close`` runs in ``finally``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.netns import (  # noqa: E402
    API_PORT,
    NetnsCluster,
    node_name,
    sh,
    unavailable_reason,
    wait_for,
)

REASON = unavailable_reason()
pytestmark = [
    pytest.mark.netns,
    pytest.mark.serf,
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=f"cut-over e2e skipped: {REASON}"),
]

MDNS_CLUSTER = "mycluster"  # contiv/ansible's serf_cluster_name default
#: clusterm's inventory, written by Go bolt with clusterm's layout (its README says how).
BOLTDB = ROOT / "tests" / "fixtures" / "clusterm-bolt" / "small.db"
#: What Go bolt read back from it: asset name -> clusterm's JSON Asset.
ASSETS = {
    name: json.loads(raw)
    for name, raw in json.loads(BOLTDB.with_name("small.db.json").read_text())["assets"].items()
}
#: The nodes that run (named as in the fixture); the third asset's node is gone (Disappeared).
NODE_IDS = [("cluster-node1", "01"), ("cluster-node2", "02")]
#: The imported Allocated node that is alive: it gets the update job.
UPDATED = "cluster-node2-02"


def run_in(c: NetnsCluster, inst: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """A console command (``gossipmgr``, ``clusterctl``) as a real process in the
    instance's namespace: the installed script when there is one, else ``python -m``; it
    finds the cluster's token through ``$GOSSIPMGR_TOKEN_FILE``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
    # The cluster's API token, as an operator exports it (the default path is not ours).
    env["GOSSIPMGR_TOKEN_FILE"] = str(c.token_file)
    script = Path(sys.executable).parent / argv[0]
    module = {"gossipmgr": "gossipmgr.cli.main", "clusterctl": "gossipmgr.clusterm.clusterctl"}[
        argv[0]
    ]
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", module]
    return subprocess.run(
        ["ip", "netns", "exec", c.host(inst).ns, *cmd, *argv[1:]],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def url_of(c: NetnsCluster, inst: str) -> str:
    return f"{c.host(inst).addr}:{API_PORT}"


def agent_config(root: Path) -> Path:
    """Jobs run their playbooks on the runner itself (ansible_connection=local)."""
    path = root / "agent.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[ansible.host_vars]\n"
        'ansible_connection = "local"\n'
        'ansible_python_interpreter = "{{ ansible_playbook_python }}"\n'
        f'gossipmgr_demo_root = "{root / "hosts"}/{{{{ inventory_hostname }}}}"\n'
        # Each simulated node's fence record under the test's directory, not the host's
        # /var/lib/gossipmgr/fence (shared by every run on this machine).
        f'gossipmgr_fence_dir = "{root / "hosts"}/{{{{ inventory_hostname }}}}/fence"\n'
    )
    return path


def test_cut_over_a_contiv_fleet_by_mdns_import_clusterctl_and_update(tmp_path: Path) -> None:
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

        # Before the import every node is Unallocated: clusterm's Allocated node would need a
        # re-commission (site.yml on a production node) before anything else could run.
        r = run_in(c, "h1", "clusterctl", "-u", url_of(c, "h1"), "node", "update",
                   UPDATED)  # fmt: skip
        assert r.returncode == 1 and "level=fatal" in r.stderr, (r.stdout, r.stderr)
        # ---- import clusterm's inventory through one instance (a non-holder is forwarded)
        r = run_in(
            c, "h3", "gossipmgr", "import", "clusterm", "--boltdb", str(BOLTDB),
            "--url", f"http://{url_of(c, 'h3')}",
        )  # fmt: skip
        assert r.returncode == 0, (r.stdout, r.stderr)
        want = {name: a["status"] for name, a in ASSETS.items()}
        assert want[UPDATED] == "Allocated" and len(set(want.values())) > 1, want

        def imported() -> bool:
            for cl in clients.values():
                recs = cl.get("/info/nodes")
                got = {n: recs[n]["inventory_state"]["status"] for n in want if n in recs}
                if got != want:
                    return False
            return True

        wait_for(imported, 30, "every imported status on every instance", 0.25)
        # ---- clusterctl (the drop-in) on every instance: the Go template's status lines
        for inst in sorted(c.instances):
            r = run_in(c, inst, "clusterctl", "-u", url_of(c, inst), "nodes", "get")
            assert r.returncode == 0, (inst, r.stdout, r.stderr)
            for name, status in want.items():
                assert f"{name}:    status: {status}\n" in r.stdout, (inst, name, r.stdout)
        # ---- an update job on the imported Allocated node, with no re-commission
        hosts = c.root / "hosts"  # type: ignore[operator]
        r = run_in(c, "h2", "clusterctl", "-u", url_of(c, "h2"), "node", "update",
                   UPDATED)  # fmt: skip
        assert r.returncode == 0, (r.stdout, r.stderr)
        cl = clients["h2"]

        def finished() -> dict[str, Any] | None:
            job = cl.get("/info/job/last")
            return job if job.get("status") not in (None, "Queued", "Running") else None

        job = wait_for(finished, 120, "the update job to finish", 0.5)
        assert job is not None
        assert job["status"] == "Complete" and job["workflow"] == "update", job
        assert (hosts / UPDATED / "configured").exists(), job  # update's configure ran
        workflows = [j["workflow"] for j in cl.get("/info/jobs")["jobs"]]
        assert "commission" not in workflows, workflows

        def updated_everywhere() -> bool:
            for x in clients.values():
                inv = x.get("/info/nodes")[UPDATED]["inventory_state"]
                if (inv["status"], inv["prev_status"]) != ("Allocated", "Maintenance"):
                    return False
            return True

        wait_for(updated_everywhere, 30, "the updated node Allocated (from Maintenance) everywhere")
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
