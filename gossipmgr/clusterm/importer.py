"""``gossipmgr import clusterm``: bring a clusterm inventory and its ansible settings over.

clusterm (contiv/cluster) kept one Bolt file (``inventory.boltdb.dbfile`` in its
``clusterm.conf``): bucket ``assets``, key = node name, value = the JSON
``{"name", "status", "state", "state_desc"}`` (its ``management/src/boltdb/inventory.go``).
It did not keep host-groups: after a restart every node was ``service-master`` again, so
imported nodes get ``--default-host-group`` (that same default) unless named with
``--host-group NODE=GROUP``.

The import is a client of a running cluster: it reads the file here (read-only, see
:mod:`gossipmgr.clusterm.bolt`) and sends ``POST /inventory/import`` (the holder writes every
status under its lease epoch) and, with ``--conf``, ``POST /config`` for the ansible
section. Running it twice changes nothing the second time, and says so.

Statuses:

* Unallocated, Allocated, Decommissioned are imported as they are;
* Provisioning, Cancelled, Maintenance are what a commission, decommission or update
  leaves when clusterm stopped in the middle of it (*cut off*). They are imported as they
  are and reported with the command to run again (a workflow may always start from the
  status it sets itself);
* Incomplete, New, Provisioned (Collins statuses clusterm's workflows never set) are
  imported as Unallocated, with a note;
* anything else is skipped and reported (exit 1); the file is never changed.

The state (Discovered, Disappeared) is not imported: Serf tells gossipmgr which nodes are
alive, and a node new to gossipmgr starts as Unknown until its Serf member is seen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gossipmgr.cli.client import Client, CliError
from gossipmgr.cli.parser import common_options
from gossipmgr.clusterm.bolt import BoltError, BoltFile
from gossipmgr.config import ANSIBLE_CONFIG_KEYS
from gossipmgr.core import inventory as inv
from gossipmgr.core.inventory_import import CUT_OFF

ASSETS_BUCKET = "assets"
#: clusterm statuses gossipmgr imports as Unallocated (never set by clusterm's workflows).
UNUSED_STATUSES = ("Incomplete", "New", "Provisioned")
IMPORTED_STATUSES = (
    inv.UNALLOCATED,
    inv.PROVISIONING,
    inv.ALLOCATED,
    inv.CANCELLED,
    inv.DECOMMISSIONED,
    inv.MAINTENANCE,
)


@dataclass(frozen=True)
class Asset:
    """One clusterm inventory entry as stored."""

    name: str
    status: str
    state: str
    state_desc: str


def read_assets(path: str | Path) -> tuple[list[Asset], list[str], int]:
    """The assets of a clusterm Bolt file: ``(assets, problems, txid)``.

    ``problems`` names the entries that cannot be read (not JSON, no name). Raises
    BoltError when the file is not a readable Bolt file, has no ``assets`` bucket, or is
    locked by a running clusterm."""
    db = BoltFile(path)
    assets: list[Asset] = []
    problems: list[str] = []
    for k, v in db.items(ASSETS_BUCKET):
        key = k.decode("utf-8", "replace")
        try:
            obj = json.loads(v)
        except ValueError as exc:
            problems.append(f"{key}: the stored value is not JSON ({exc})")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{key}: the stored value is not a JSON object")
            continue
        name = obj.get("name") or key
        if not isinstance(name, str):
            problems.append(f"{key}: the stored name is not a string")
            continue
        assets.append(
            Asset(
                name,
                str(obj.get("status", "")),
                str(obj.get("state", "")),
                str(obj.get("state_desc", "")),
            )
        )
    return assets, problems, db.meta.txid


def read_conf(path: str | Path) -> dict[str, Any]:
    """clusterm's JSON ``clusterm.conf`` as an object. Raises CliError (exit 2)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}", 2) from None
    except ValueError as exc:
        raise CliError(f"{path} is not clusterm's JSON configuration: {exc}", 2) from None
    if not isinstance(obj, dict):
        raise CliError(f"{path} is not clusterm's JSON configuration: not an object", 2)
    return obj


def conf_ansible(conf: Mapping[str, Any], path: str = "clusterm.conf") -> dict[str, str]:
    """The ansible keys clusterm.conf sets (clusterm merged them over its built-in
    defaults, skipping empty ones; those defaults were its Vagrant demo's, so keys the
    file leaves out keep gossipmgr's values). Raises CliError for a wrong type."""
    section = conf.get("ansible") or {}
    if not isinstance(section, dict):
        raise CliError(f'{path}: "ansible" must be an object', 2)
    out: dict[str, str] = {}
    for k in ANSIBLE_CONFIG_KEYS:
        v = section.get(k)
        if v in (None, ""):
            continue
        if not isinstance(v, str):
            raise CliError(f'{path}: ansible "{k}" must be a string', 2)
        out[k] = v
    if "extra_variables" in out:
        try:
            ev = json.loads(out["extra_variables"])
        except ValueError as exc:
            raise CliError(
                f'{path}: ansible "extra_variables" must be a string holding a JSON object: {exc}',
                2,
            ) from None
        if not isinstance(ev, dict):
            raise CliError(
                f'{path}: ansible "extra_variables" must be a string holding a JSON object', 2
            )
    return out


def conf_boltdb_file(conf: Mapping[str, Any]) -> str | None:
    """``inventory.boltdb.dbfile`` of clusterm.conf, if set."""
    invc = conf.get("inventory")
    bolt = invc.get("boltdb") if isinstance(invc, dict) else None
    f = bolt.get("dbfile") if isinstance(bolt, dict) else None
    return f if isinstance(f, str) and f else None


def parse_host_groups(items: Sequence[str]) -> dict[str, str]:
    """``NODE=GROUP`` pairs. Raises CliError (exit 2)."""
    out: dict[str, str] = {}
    for item in items:
        node, sep, group = item.partition("=")
        if not sep or not node:
            raise CliError(f"--host-group takes NODE=GROUP, got {item!r}", 2)
        if group not in inv.HOST_GROUPS:
            raise CliError(f'invalid or empty host-group specified: "{group}"', 2)
        out[node] = group
    return out


def _same_extra_vars(a: str, b: str) -> bool:
    try:
        return bool(json.loads(a or "{}") == json.loads(b or "{}"))
    except ValueError:
        return a == b


def _entries(
    assets: Sequence[Asset],
    default_host_group: str,
    host_groups: Mapping[str, str],
    problems: list[str],
) -> tuple[list[dict[str, str]], list[str]]:
    """The ``POST /inventory/import`` entries for ``assets`` and the notes to print; an
    unknown status is added to ``problems`` and skipped."""
    entries: list[dict[str, str]] = []
    notes: list[str] = []
    for a in sorted(assets, key=lambda a: a.name):
        status = a.status
        if status in UNUSED_STATUSES:
            notes.append(
                f"note {a.name}: clusterm status {status} is not one its workflows set; "
                "imported as Unallocated"
            )
            status = inv.UNALLOCATED
        elif status not in IMPORTED_STATUSES:
            problems.append(f"{a.name}: unknown status {status!r}")
            continue
        hg = host_groups.get(a.name, default_host_group)
        entries.append({"name": a.name, "status": status, "host_group": hg})
    return entries, notes


def _change_text(c: Mapping[str, Any]) -> str:
    if c.get("from_status") is None:
        return f"new node, {c['status']}, host-group {c['host_group']}"
    parts = []
    if c["from_status"] != c["status"]:
        parts.append(f"{c['from_status']} -> {c['status']}")
    if c.get("from_host_group") != c["host_group"]:
        parts.append(f"host-group {c['from_host_group']} -> {c['host_group']}")
    return ", ".join(parts)


def _report_nodes(res: Mapping[str, Any], verb: str, out: Callable[[str], None]) -> None:
    """What the server changed and what it left alone, and why."""
    for c in res.get("changed", []):
        out(f"{verb} {c['name']}: {_change_text(c)}")
    for k in res.get("kept", []):
        out(f"left alone {k['name']}: {k['reason']}")


def _report_cut_off(
    res: Mapping[str, Any], entries: Sequence[Mapping[str, str]], out: Callable[[str], None]
) -> None:
    """Every imported node now in the status a cut-off workflow left: how to finish it."""
    kept = {k["name"] for k in res.get("kept", [])}
    for e in entries:
        wf = CUT_OFF.get(e["status"])
        if wf is None or e["name"] in kept:
            continue
        hg = f" -g {e['host_group']}" if wf in ("commission", "update") else ""
        out(
            f"cut off {e['name']}: {e['status']} (clusterm's {wf} did not finish); "
            f"to finish it: gossipmgr node {wf} {e['name']}{hg}"
        )


def _import_conf(
    client: Client,
    conf_obj: Mapping[str, Any],
    conf: str | None,
    *,
    verb: str,
    dry_run: bool,
    out: Callable[[str], None],
) -> int:
    """Bring clusterm.conf's ansible section over; returns how many settings changed."""
    want = conf_ansible(conf_obj, str(conf))
    current = client.call("GET", "/config").get("ansible", {})
    diff = {}
    for k, v in want.items():
        cur = str(current.get(k, ""))
        same = _same_extra_vars(cur, v) if k == "extra_variables" else cur == v
        if not same:
            diff[k] = v
            out(f"{verb} ansible {k}: {cur!r} -> {v!r}")
    for k in ("serf", "manager"):
        if isinstance(conf_obj.get(k), dict) and conf_obj[k]:
            out(f"note {conf}: the {k} section is not imported (see gossipmgr agent options)")
    if diff and not dry_run:
        client.call("POST", "/config", {"config": {"ansible": diff}})
    return len(diff)


def _read_inventory(
    boltdb: str | None,
    conf_obj: Mapping[str, Any] | None,
    host_groups: Mapping[str, str],
) -> tuple[str, list[Asset], list[str], int]:
    """Read the Bolt file (``boltdb``, else the one clusterm.conf names): ``(path, assets,
    problems, txid)``. Raises CliError (exit 2), also for ``host_groups`` naming a node
    the file does not hold."""
    if boltdb is None and conf_obj is not None:
        boltdb = conf_boltdb_file(conf_obj)
    if boltdb is None:
        raise CliError("--boltdb FILE is needed (clusterm.conf names no inventory.boltdb)", 2)
    try:
        assets, problems, txid = read_assets(boltdb)
    except BoltError as exc:
        raise CliError(str(exc), 2) from None
    unknown = sorted(set(host_groups) - {a.name for a in assets})
    if unknown:
        raise CliError(f"--host-group names node(s) not in {boltdb}: {', '.join(unknown)}", 2)
    return boltdb, assets, problems, txid


def import_clusterm(
    client: Client,
    boltdb: str | None,
    conf: str | None = None,
    *,
    default_host_group: str = inv.MASTER,
    host_groups: Mapping[str, str] | None = None,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Import a clusterm inventory (and, with ``conf``, its ansible settings) into the
    cluster ``client`` talks to. Prints one line per change; returns the exit code: 0,
    or 1 when some entries could not be read or the server refused. Raises CliError."""
    host_groups = dict(host_groups or {})
    if default_host_group not in inv.HOST_GROUPS:
        raise CliError(f'invalid or empty host-group specified: "{default_host_group}"', 2)
    conf_obj = read_conf(conf) if conf else None
    boltdb, assets, problems, txid = _read_inventory(boltdb, conf_obj, host_groups)
    verb = "would change" if dry_run else "changed"
    out(f"clusterm inventory {boltdb}: {len(assets)} node(s), transaction {txid}")
    entries, notes = _entries(assets, default_host_group, host_groups, problems)
    res = client.call("POST", "/inventory/import", {"nodes": entries, "dry_run": dry_run})
    _report_nodes(res, verb, out)
    for n in notes:
        out(n)
    _report_cut_off(res, entries, out)
    for p in problems:
        out(f"skipped {p}")
    conf_changes = 0
    if conf_obj is not None:
        conf_changes = _import_conf(client, conf_obj, conf, verb=verb, dry_run=dry_run, out=out)
    changed = len(res.get("changed", []))
    summary = (
        f"{changed} node(s) {verb}, {len(res.get('unchanged', []))} "
        f"unchanged, {len(res.get('kept', []))} left alone, {len(problems)} skipped"
    )
    if conf_obj is not None:
        summary += f"; {conf_changes} ansible setting(s) {verb}"
    out(summary)
    if changed + conf_changes == 0 and not problems:
        out("nothing to change: the cluster already has this inventory")
    elif dry_run:
        out("dry run: nothing was written")
    return 1 if problems else 0


def add_commands(sub: Any) -> None:
    """``gossipmgr import clusterm`` (the command line's hook, gossipmgr.cli.parser)."""
    p = sub.add_parser("import", help="import another manager's inventory")
    vs = p.add_subparsers(dest="verb", metavar="SOURCE")
    vs.required = True
    vp = vs.add_parser(
        "clusterm",
        parents=[common_options()],
        help="clusterm's boltdb inventory and clusterm.conf's ansible settings",
    )
    vp.add_argument("--boltdb", metavar="FILE", help="clusterm's inventory.boltdb.dbfile")
    vp.add_argument("--conf", metavar="FILE", help="clusterm.conf (JSON): the ansible section")
    vp.add_argument(
        "--default-host-group",
        default="service-master",
        help="host-group of the imported nodes (default service-master, as clusterm)",
    )
    vp.add_argument(
        "--host-group",
        action="append",
        metavar="NODE=GROUP",
        help="host-group of one node (repeatable)",
    )
    vp.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    vp.set_defaults(func=cmd_import, client_command=True)


def cmd_import(c: Client, args: Any) -> int:
    """The ``gossipmgr import clusterm`` command."""
    return import_clusterm(
        c,
        args.boltdb,
        args.conf,
        default_host_group=args.default_host_group,
        host_groups=parse_host_groups(args.host_group or []),
        dry_run=args.dry_run,
    )
