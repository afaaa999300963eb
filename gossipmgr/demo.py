"""``gossipmgr demo``: a whole gossipmgr cluster on this machine, walked through its paces.

It starts three gossipmgr instances (each with its own Serf agent) and four simulated
cluster nodes (Serf agents with clusterm's node tags) on loopback, then runs:
discover (a fifth node, whose Serf agent the demo starts while the job waits for
it to join) -> commission a master and a worker -> update -> decommission, each a real
ansible job (sample playbooks acting on files under the demo directory); it kills the
lease holder with SIGKILL and shows the takeover with the state intact; it restarts that
instance and shows it restoring from disk and catching up. With ``--keep`` the cluster
stays up for the CLI until Ctrl-C. Ctrl-C at any point tears everything down: no process
and (unless ``--dir`` was given) no file is left behind.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from gossipmgr.localcluster import LocalCluster, wait_for

NAMES = ("g1", "g2", "g3")
NODES = (("rack1", "0001"), ("rack1", "0002"), ("rack1", "0003"), ("rack1", "0004"))
#: The node the discover step finds: its Serf agent joins while the job waits for it.
DISCOVERED, DISCOVERED_ADDR = ("rack2", "0001"), "127.0.0.99"


class Demo:
    def __init__(self, root: Path, *, quiet: bool = False) -> None:
        self.root = root
        self.quiet = quiet
        self.cluster = LocalCluster(root, lease_ttl_ms=6_000)
        self.t0 = time.monotonic()

    # -- printing ----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", flush=True)

    def step(self, title: str) -> None:
        print(f"\n== {title}", flush=True)

    def show_nodes(self, via: str) -> None:
        nodes = self.cluster.get(via, "/info/nodes")
        print(f"   {'NODE':<12} {'STATUS':<15} {'STATE':<12} {'HOST-GROUP':<15} ADDR")
        for name, rec in sorted(nodes.items()):
            inv, cfg = rec["inventory_state"], rec["configuration_state"]
            addr = rec["monitoring_state"].get("management_address", "")
            print(
                f"   {name:<12} {inv['status']:<15} {inv['state']:<12} "
                f"{cfg.get('host_group', ''):<15} {addr}"
            )

    # -- helpers -----------------------------------------------------------------------------
    def holder(self) -> str:
        holder: str = wait_for(self.cluster.holder, 30, "the instances to agree on a lease holder")
        return holder

    def run_job(
        self,
        via: str,
        path: str,
        body: dict[str, Any],
        what: str,
        then: Callable[[], object] | None = None,
    ) -> dict[str, Any]:
        r = self.cluster.post(via, path, body)
        if r.status_code != 200:
            raise RuntimeError(f"{what}: HTTP {r.status_code}: {r.text}")
        job = r.json()
        jid = job.get("id", "")
        self.say(f"{what}: job {jid} accepted via {via} (runs on the lease holder)")
        if then is not None:
            then()

        def finished() -> dict[str, Any] | None:
            rec = dict(self.cluster.get(via, f"/info/job/{jid}"))
            return rec if rec.get("status") in ("Complete", "Errored", "Cancelled") else None

        rec: dict[str, Any] = wait_for(finished, 180, f"job {jid} to finish")
        self.say(
            f"{what}: job {jid} {rec['status']} on {rec.get('runner')} "
            f"(epoch {rec.get('epoch')}){': ' + rec['error'] if rec.get('error') else ''}"
        )
        if rec["status"] != "Complete":
            raise RuntimeError(f"{what} failed: {rec.get('error')}")
        return rec

    def node_status(self, via: str, node: str) -> str:
        return str(self.cluster.get(via, f"/info/node/{node}")["inventory_state"]["status"])

    # -- the walk-through ---------------------------------------------------------------------
    def run(self, keep: bool) -> None:
        self.start_instances()
        names = self.discover_nodes()
        self.replicate_a_global()
        self.workflows(names)
        holder, new = self.kill_the_holder(master=names[0])
        self.restart(holder, new)
        print("\nDemo complete.", flush=True)
        if keep:
            self.keep()

    def start_instances(self) -> None:
        c = self.cluster
        self.step("1. Three gossipmgr instances, each with its own Serf agent")
        for n in NAMES:
            c.add_instance(n)
        for n in NAMES:
            c.wait_ready(n)
            self.say(f"{n}: API {c.instances[n].url}  (data in {c.instances[n].data_dir})")
        holder = self.holder()
        self.say(f"lease holder: {holder}, epoch {c.lease(holder)['epoch']}")

    def discover_nodes(self) -> list[str]:
        c = self.cluster
        self.step("2. Four cluster nodes join Serf and are discovered")
        names = [c.add_node(label, serial).name for label, serial in NODES]

        def all_discovered(at: str) -> bool:
            nodes = c.get(at, "/info/nodes")
            return all(
                x in nodes and nodes[x]["inventory_state"]["state"] == "Discovered" for x in names
            )

        for n in NAMES:
            wait_for(partial(all_discovered, n), 30, f"every node to be discovered at {n}")
        self.say("every instance shows the same inventory:")
        self.show_nodes("g3")
        return names

    def replicate_a_global(self) -> None:
        c = self.cluster
        self.step("3. Replicated settings: a global extra-var written at g2, read at g3")
        c.put("g2", "/globals/ntp_server", {"value": "pool.ntp.org"}).raise_for_status()
        wait_for(
            lambda: c.get("g3", "/info/globals")["extra_vars"].get("ntp_server"),
            10,
            "the global to reach g3",
        )
        self.say(f"g3 sees {c.get('g3', '/info/globals')['extra_vars']}")

    def workflows(self, names: list[str]) -> None:
        c = self.cluster
        self.step("4. Workflows, each an ansible job on the lease holder")
        # A discover job runs the discover playbook, then waits until a Serf agent with
        # NodeAddr=<the address> joins (on a real node the playbook installs and starts
        # it). Here the demo starts that node agent once the job is accepted.
        self.run_job(
            "g2",
            "/discover/nodes",
            {"addrs": [DISCOVERED_ADDR]},
            f"discover {DISCOVERED_ADDR}",
            then=lambda: c.add_node(*DISCOVERED, addr=DISCOVERED_ADDR),
        )
        master, worker = names[0], names[1]
        self.run_job(
            "g1",
            "/commission/nodes",
            {"nodes": [master], "host_group": "service-master", "extra_vars": '{"demo": "master"}'},
            f"commission {master} as master",
        )
        self.run_job(
            "g3",
            "/commission/nodes",
            {"nodes": [worker], "host_group": "service-worker"},
            f"commission {worker} as worker",
        )
        self.run_job(
            "g2",
            "/update/nodes",
            {"nodes": [worker], "host_group": "service-master"},
            f"update {worker} to service-master",
        )
        self.run_job("g1", "/decommission/nodes", {"nodes": [worker]}, f"decommission {worker}")
        self.show_nodes("g1")

    def kill_the_holder(self, master: str) -> tuple[str, str]:
        """SIGKILL the lease holder; returns (the killed one, the new holder)."""
        c = self.cluster
        self.step("5. Kill the lease holder with SIGKILL: another instance takes over")
        holder = self.holder()
        before = c.get(holder, "/info/nodes")
        epoch = c.lease(holder)["epoch"]
        survivors = [n for n in NAMES if n != holder]
        t = time.monotonic()
        c.kill9(holder)
        self.say(f"killed {holder} (epoch {epoch})")
        new = wait_for(
            lambda: (h := c.holder(survivors)) not in (None, holder) and h, 40, "a new lease holder"
        )
        self.say(
            f"{new} took the lease, epoch {c.lease(new)['epoch']}, "
            f"{time.monotonic() - t:.1f} s after the kill"
        )
        after = c.get(new, "/info/nodes")

        def statuses(nodes: dict[str, Any]) -> dict[str, tuple[str, str]]:
            return {
                k: (v["inventory_state"]["status"], v["inventory_state"]["state"])
                for k, v in nodes.items()
            }

        same = statuses(before) == statuses(after)
        self.say(f"inventory at {new} identical to before the kill: {same}")
        if not same:
            raise RuntimeError("state changed across the takeover")
        self.run_job(
            survivors[0],
            "/update/nodes",
            {"nodes": [master]},
            f"update {master} under the new holder",
        )
        return holder, new

    def restart(self, holder: str, new: str) -> None:
        c = self.cluster
        self.step(f"6. Restart {holder}: it restores from disk, then catches up")
        c.start(holder)
        c.wait_ready(holder)
        health = c.get(holder, "/health")
        self.say(
            f"{holder} restored {health['entries']} entries from disk in "
            f"{health['durability']['restore_seconds'] * 1000:.0f} ms"
        )
        wait_for(
            lambda: c.get(holder, "/info/nodes") == c.get(new, "/info/nodes"),
            30,
            f"{holder} to catch up",
        )
        self.say(f"{holder} caught up: its inventory equals {new}'s")
        self.show_nodes(holder)

    def keep(self) -> None:
        urls = "  ".join(f"{n}={i.url}" for n, i in self.cluster.instances.items())
        print(
            f"\nThe cluster keeps running ({urls}). Try, in another terminal:\n"
            f"  export GOSSIPMGR_URL={self.cluster.instances['g1'].url}\n"
            f"  export GOSSIPMGR_TOKEN_FILE={self.cluster.token_file}\n"
            "  .venv/bin/gossipmgr nodes get\n"
            "  .venv/bin/gossipmgr peers\n"
            "  .venv/bin/gossipmgr jobs\n"
            "  .venv/bin/gossipmgr global set region eu-west\n"
            f"Data: {self.root}. Press Ctrl-C to tear everything down.",
            flush=True,
        )
        while True:
            time.sleep(3600)


def cmd_demo(args: argparse.Namespace) -> int:
    made = args.dir is None
    root = Path(tempfile.mkdtemp(prefix="gossipmgr-demo-")) if made else Path(args.dir)
    demo = Demo(root)
    code = 0
    try:
        demo.run(args.keep)
    except KeyboardInterrupt:
        print("\ninterrupted: tearing down", file=sys.stderr)
        code = 130
    except (RuntimeError, TimeoutError) as exc:
        print(f"\ngossipmgr demo: {exc}", file=sys.stderr)
        for name, inst in demo.cluster.instances.items():
            print(f"--- {name} log tail ---\n{inst.log()[-2500:]}", file=sys.stderr)
        code = 1
    finally:
        demo.cluster.close()
        if made:
            shutil.rmtree(root, ignore_errors=True)
        print("all demo processes stopped" + (", files removed" if made else ""), flush=True)
    return code


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a local demo cluster (3 instances, 4 nodes) through its workflows",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument(
        "--keep", action="store_true", help="leave the cluster running for the CLI until Ctrl-C"
    )
    p.add_argument(
        "--dir",
        help="keep the demo's files here (default: a temporary directory removed at the end)",
    )
    p.set_defaults(func=cmd_demo)
