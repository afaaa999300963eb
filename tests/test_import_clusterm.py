"""``gossipmgr import clusterm``: the Bolt reader on files written by Go bolt, and the
import over real HTTP into standalone instances (the holder, and one that forwards to it).

The fixtures in ``fixtures/clusterm-bolt/`` were written by ``gen.go`` there (real
github.com/boltdb/bolt code with clusterm's bucket layout and write sequence); each
``<file>.json`` is what Go bolt itself read back from the file.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from _apiutil import serving, standalone

from gossipmgr.api import create_app
from gossipmgr.cli.client import Client, CliError
from gossipmgr.clusterm.bolt import _LEAF_ELEM, _META, _PAGE_HDR, BUCKET_LEAF, BoltError, BoltFile
from gossipmgr.clusterm.importer import import_clusterm, read_assets
from gossipmgr.config import AnsibleConfig
from gossipmgr.runtime.context import AgentApiContext
from gossipmgr.testing.fakeserf import FakeSerfCluster
from gossipmgr.testing.standalone import shared_key

FIX = Path(__file__).parent / "fixtures" / "clusterm-bolt"

#: gen.go's histories, in order: the status clusterm stored, and what gossipmgr imports.
HISTORY_STATUS = [
    ("Unallocated", "Unallocated"),
    ("Allocated", "Allocated"),
    ("Provisioning", "Provisioning"),
    ("Unallocated", "Unallocated"),
    ("Cancelled", "Cancelled"),
    ("Decommissioned", "Decommissioned"),
    ("Maintenance", "Maintenance"),
    ("Allocated", "Allocated"),
    ("Allocated", "Allocated"),
    ("Incomplete", "Unallocated"),
    ("New", "Unallocated"),
    ("Provisioned", "Unallocated"),
]


def go_view(name: str) -> dict[str, Any]:
    return json.loads((FIX / f"{name}.json").read_text())  # type: ignore[no-any-return]


def large_names() -> list[str]:
    return [f"node{i:03d}-SN{10000 + i:05d}" for i in range(1, 301)]


# --------------------------------------------------------------------------- the reader


@pytest.mark.parametrize("name", ["small.db", "large.db", "overflow.db"])
def test_reader_matches_go_bolt(name: str) -> None:
    go = go_view(name)
    db = BoltFile(FIX / name)
    assert db.buckets() == ["assets"]
    assert db.meta.txid == go["txid"] and db.meta.page_size == go["page_size"]
    got = {k.decode(): v.decode() for k, v in db.items("assets")}
    assert got == go["assets"]


def test_fixtures_cover_the_layouts_and_every_status() -> None:
    assert go_view("small.db")["inline"] is True
    large = go_view("large.db")
    assert large["inline"] is False and large["branch_pages"] > 0 and large["depth"] >= 2
    assert go_view("overflow.db")["leaf_overflow_pages"] > 0
    stored = {json.loads(v)["status"] for v in large["assets"].values()}
    assert stored == {s for s, _ in HISTORY_STATUS}
    assert len(stored) == 9  # every AssetStatus clusterm can store (Any cannot be set)
    states = {json.loads(v)["state"] for v in large["assets"].values()}
    assert states == {"Discovered", "Disappeared", "Unknown"}


def test_reader_picks_the_meta_with_the_higher_txid(tmp_path: Path) -> None:
    """With the newer meta page damaged, the older one (txid - 1) is used, as bolt does;
    undamaged, the newer one wins whichever of the two pages holds it."""
    src = FIX / "small.db"
    ps = BoltFile(src).meta.page_size
    data = bytearray(src.read_bytes())
    txids = [_META.unpack_from(data, off + _PAGE_HDR.size)[8] for off in (0, ps)]  # txid field
    newer = 0 if txids[0] > txids[1] else 1
    assert BoltFile(src).meta.txid == max(txids)
    data[newer * ps + _PAGE_HDR.size + 40] ^= 0xFF  # inside the meta: checksum fails
    bad = tmp_path / "damaged.db"
    bad.write_bytes(bytes(data))
    assert BoltFile(bad).meta.txid == min(txids) == max(txids) - 1


def test_reader_refuses_garbage_and_locked_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\0" * 8192)
    with pytest.raises(BoltError, match="not a Bolt database"):
        BoltFile(junk)
    with pytest.raises(BoltError, match="cannot read"):
        BoltFile(tmp_path / "missing.db")
    cut = tmp_path / "cut.db"
    cut.write_bytes((FIX / "large.db").read_bytes()[: 4096 * 8])
    with pytest.raises(BoltError, match=r"outside the file|past the end"):
        list(BoltFile(cut).items("assets"))
    with pytest.raises(BoltError, match='no bucket "nope"'):
        list(BoltFile(FIX / "small.db").items("nope"))
    # a running clusterm holds bolt's exclusive flock on its file
    live = tmp_path / "live.db"
    shutil.copy(FIX / "small.db", live)
    fd = os.open(live, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(BoltError, match=r"locked by another process.*clusterm"):
            BoltFile(live)
    finally:
        os.close(fd)
    assert BoltFile(live).meta.txid > 0  # lock released: readable


def test_reader_refuses_an_inline_bucket_too_short_for_its_page(tmp_path: Path) -> None:
    """An inline bucket's value is a bucket header and a page; a value cut after the header
    raised struct.error (a traceback from `gossipmgr import clusterm`), not BoltError."""
    b = BoltFile(FIX / "small.db", check_lock=False)
    data = bytearray(b.data)
    eoff = b.meta.root * b.meta.page_size + _PAGE_HDR.size  # the root leaf's first element
    eflags, pos, ksize, _vsize = _LEAF_ELEM.unpack_from(data, eoff)
    assert eflags & BUCKET_LEAF and data[eoff + pos : eoff + pos + ksize] == b"assets"
    _LEAF_ELEM.pack_into(data, eoff, eflags, pos, ksize, 20)  # header + 4 bytes of page
    cut = tmp_path / "cut-inline.db"
    cut.write_bytes(bytes(data))
    with pytest.raises(BoltError, match="shorter than a page header"):
        list(BoltFile(cut).items("assets"))


def test_reading_never_writes(tmp_path: Path) -> None:
    f = tmp_path / "ro.db"
    shutil.copy(FIX / "large.db", f)
    f.chmod(0o400)
    before = (f.read_bytes(), f.stat().st_mtime_ns)
    assets, problems, _ = read_assets(f)
    assert len(assets) == 300 and problems == []
    assert (f.read_bytes(), f.stat().st_mtime_ns) == before


# --------------------------------------------------------------------------- the import


async def _import(url: str, *args: Any, **kw: Any) -> tuple[int, list[str]]:
    """import_clusterm through the real HTTP client, in a thread (it is synchronous)."""
    lines: list[str] = []

    def run() -> int:
        c = Client(url, None, None)
        try:
            return import_clusterm(c, *args, out=lines.append, **kw)
        finally:
            c.close()

    rc = await trio.to_thread.run_sync(run)
    return rc, lines


def _statuses(ctx: AgentApiContext) -> dict[str, tuple[str, str, str]]:
    out = {}
    for rec in ctx.replica.state.nodes():
        out[rec.name] = (
            str(rec.inventory.status),
            str(rec.inventory.state),
            rec.host_group,
        )
    return out


async def test_import_large_inventory_idempotent_and_dry_run(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx:
        # node001 was already discovered here (fresh: its status is imported, the
        # state kept); node002 was moved by a gossipmgr workflow (it is left alone).
        await ctx.jobs.set_monitor_event(
            "discovered",
            [
                {"label": "node001", "serial": "SN10001", "addr": "127.0.1.1"},
                {"label": "node002", "serial": "SN10002", "addr": "127.0.1.2"},
            ],
        )
        await ctx.replica.commit(
            lambda s, ts: s.d_set(
                ("n", "node002-SN10002", "inv"),
                {
                    "status": "Decommissioned",
                    "prev_status": "Cancelled",
                    "state": "Discovered",
                    "prev_state": "Unknown",
                    "epoch": ctx.replica.lease().epoch,  # type: ignore[union-attr]
                },
                ts,
            )
        )
        async with serving(create_app(ctx)) as url:
            db = str(FIX / "large.db")
            before = dict(ctx.replica.state.map.items())
            rc, out = await _import(url, db, dry_run=True)
            assert rc == 0, out
            assert dict(ctx.replica.state.map.items()) == before  # nothing written
            assert "would change node003-SN10003: new node, Provisioning, host-group" in (
                "\n".join(out)
            )
            assert out[-1] == "dry run: nothing was written"

            rc, out = await _import(url, db, host_groups={"node004-SN10004": "service-worker"})
            assert rc == 0, out
            text = "\n".join(out)
            st = _statuses(ctx)
            assert len(st) == 300
            names = large_names()
            for i, name in enumerate(names):
                want = HISTORY_STATUS[i % len(HISTORY_STATUS)][1]
                if name == "node002-SN10002":
                    assert st[name][0] == "Decommissioned"
                    continue
                assert st[name][0] == want, name
                if name != "node001-SN10001":
                    assert st[name][1] == "Unknown"  # Serf has not seen it yet
                hg = "service-worker" if name == "node004-SN10004" else "service-master"
                assert st[name][2] == hg
            assert st["node001-SN10001"][:2] == ("Unallocated", "Discovered")
            assert (
                "left alone node002-SN10002: gossipmgr already moved it to Decommissioned "
                "(from Cancelled); not set to Allocated"
            ) in text
            # cut-off jobs are reported with what to run; the unused statuses noted
            assert (
                "cut off node003-SN10003: Provisioning (clusterm's commission did not "
                "finish); to finish it: gossipmgr node commission node003-SN10003 "
                "-g service-master"
            ) in text
            assert "cut off node005-SN10005: Cancelled (clusterm's decommission" in text
            assert "cut off node007-SN10007: Maintenance (clusterm's update" in text
            assert (
                "note node010-SN10010: clusterm status Incomplete is not one its "
                "workflows set; imported as Unallocated"
            ) in text
            assert "298 node(s) changed, 1 unchanged, 1 left alone, 0 skipped" in text
            # every record written under the lease epoch (fenced like a job's writes)
            epoch = ctx.replica.lease().epoch  # type: ignore[union-attr]
            assert all(r.inventory.epoch == epoch for r in ctx.replica.state.nodes())

            # a second run changes nothing and says so
            before = dict(ctx.replica.state.map.items())
            rc, out = await _import(url, db, host_groups={"node004-SN10004": "service-worker"})
            assert rc == 0
            assert dict(ctx.replica.state.map.items()) == before
            assert out[-1] == "nothing to change: the cluster already has this inventory"
            assert "0 node(s) changed, 299 unchanged, 1 left alone" in out[-2]


async def test_import_through_a_non_holder_is_forwarded(tmp_path: Path) -> None:
    """``a`` holds the lease, ``b`` (same fake Serf cluster, real gossip) forwards to it."""
    kw: dict[str, Any] = {"cluster": FakeSerfCluster(), "encrypt_key_file": shared_key(tmp_path)}
    async with standalone(tmp_path, "a", **kw) as holder:
        async with standalone(tmp_path, "b", claim=False, **kw) as other:
            with trio.fail_after(30):  # the holder's lease reaches b over gossip
                while other.holder_api_url() != holder.agent.api_url:
                    await other.replica.wait_change()
            async with serving(create_app(other)) as ourl:
                rc, out = await _import(ourl, str(FIX / "small.db"))
                assert rc == 0, out
                # written by the holder only (b has them by gossip, if at all yet)
                writers = {e.ts.node for _, e in other.replica.state.map.items()}
                assert writers <= {"a"}, writers
                assert _statuses(holder) == {
                    "cluster-node1-01": ("Unallocated", "Unknown", "service-master"),
                    "cluster-node2-02": ("Allocated", "Unknown", "service-master"),
                    "cluster-node3-03": ("Allocated", "Unknown", "service-master"),
                }


async def test_bad_import_requests_are_refused_and_change_nothing(tmp_path: Path) -> None:
    import httpx

    async with standalone(tmp_path) as ctx:
        async with serving(create_app(ctx)) as url:
            async with httpx.AsyncClient() as c:
                for body, why in [
                    ({"nodes": 3}, '"nodes" must be an array'),
                    ({"nodes": [{"name": "a", "status": "Bogus"}]}, "invalid status 'Bogus'"),
                    (
                        {"nodes": [{"name": "a", "status": "Allocated", "host_group": "x"}]},
                        'invalid or empty host-group specified: "x"',
                    ),
                    (
                        {"nodes": [{"name": "a", "status": "Allocated"}] * 2},
                        'node "a" is listed twice',
                    ),
                    ({"nodes": [], "dry_run": "yes"}, '"dry_run" must be true or false'),
                ]:
                    r = await c.post(url + "/inventory/import", json=body)
                    assert r.status_code == 400, body
                    assert why in r.json()["error"], (body, r.json())
            assert ctx.replica.state.node_names() == []


async def test_import_conf_sets_the_ansible_section(tmp_path: Path) -> None:
    conf = tmp_path / "clusterm.conf"
    conf.write_text(
        json.dumps(
            {
                "ansible": {
                    "playbook_location": "/opt/contiv/ansible",
                    "user": "cluster-admin",
                    "extra_variables": '{"env": {"http_proxy": "p"}, "ntp": "pool"}',
                    "priv_key_file": "",
                },
                "inventory": {"boltdb": {"dbfile": str(FIX / "small.db")}},
            }
        )
    )
    # a config file with no extra-vars of its own: /config lists the file's too
    async with standalone(tmp_path, ansible=AnsibleConfig()) as ctx:
        ctx_cfg = ctx.config()["ansible"]
        assert ctx_cfg.get("user", "") != "cluster-admin"
        async with serving(create_app(ctx)) as url:
            # --boltdb defaults to the file clusterm.conf names
            rc, out = await _import(url, None, str(conf))
            assert rc == 0, out
            ans = ctx.config()["ansible"]
            assert ans["playbook_location"] == "/opt/contiv/ansible"
            assert ans["user"] == "cluster-admin"
            assert json.loads(ans["extra_variables"]) == {
                "env": {"http_proxy": "p"},
                "ntp": "pool",
            }
            assert "3 ansible setting(s) changed" in out[-1]
            rc, out = await _import(url, None, str(conf))
            assert out[-1] == "nothing to change: the cluster already has this inventory"


@pytest.mark.ansible
async def test_an_imported_allocated_node_is_updated_without_a_recommission(
    tmp_path: Path,
) -> None:
    async with standalone(tmp_path) as ctx:
        await ctx.jobs.set_monitor_event(
            "discovered", [{"label": "cluster-node2", "serial": "02", "addr": "127.0.1.2"}]
        )
        async with serving(create_app(ctx)) as url:
            rc, out = await _import(url, str(FIX / "small.db"))
            assert rc == 0, out
            rec = ctx.replica.state.node("cluster-node2-02")
            assert rec is not None and rec.inventory.status == "Allocated"
            job = await ctx.jobs.update(["cluster-node2-02"], "", {})
            with trio.fail_after(120):
                while True:
                    j = ctx.replica.state.job(job["id"])
                    if j is not None and j.status not in ("Queued", "Running"):
                        break
                    await ctx.replica.wait_change()
            assert j.status == "Complete", j
            rec = ctx.replica.state.node("cluster-node2-02")
            assert rec is not None and rec.inventory.status == "Allocated"
            assert rec.inventory.prev_status == "Maintenance"


async def test_cli_import_command(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx:
        async with serving(create_app(ctx)) as url:
            env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
            base = [sys.executable, "-m", "gossipmgr.cli.main", "--url", url, "import", "clusterm"]
            p = await trio.run_process(
                [*base, "--boltdb", str(FIX / "small.db"), "--dry-run"],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
            assert p.returncode == 0, p.stderr
            assert p.stdout.decode().splitlines()[-1] == "dry run: nothing was written"
            assert ctx.replica.state.node_names() == []
            p = await trio.run_process(
                [*base, "--boltdb", str(tmp_path / "nope.db")],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env=env,
            )
            assert p.returncode == 2
            assert b"cannot read" in p.stderr and b"Traceback" not in p.stderr
            with pytest.raises(CliError, match=r"--host-group names node\(s\) not in"):
                await _import(url, str(FIX / "small.db"), host_groups={"x": "service-worker"})
