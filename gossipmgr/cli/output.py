"""What the CLI prints: plain aligned tables and short layouts of the API's JSON.

Every renderer takes the server's JSON as decoded and returns text; ``--json`` prints the
JSON itself instead (:func:`out`).
"""

import argparse
import json
import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

NODE_HEADER = ("NAME", "STATUS", "STATE", "HOST-GROUP", "ADDRESS", "PREV-STATUS")
JOB_HEADER = ("ID", "TASK", "STATUS", "RUNNER", "STARTED", "DESC", "ERROR")
PEER_HEADER = ("NAME", "STATUS", "API", "GOSSIP", "LAG", "LAST-HEARD", "AUTH-FAIL")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Plain text, left-aligned columns separated by two spaces (like ``kubectl get``)."""
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def out(args: argparse.Namespace, obj: Any, render: Callable[[Any], str]) -> None:
    """Print ``obj`` as JSON with ``--json``, else ``render(obj)`` (nothing when empty)."""
    if args.json:
        print(json.dumps(obj, indent=2, sort_keys=False))
    else:
        text = render(obj)
        if text:
            print(text)


def ts(v: Any) -> str:
    """A timestamp (seconds or milliseconds since the epoch) as UTC ``YYYY-mm-dd HH:MM:SS``."""
    if isinstance(v, int | float) and v > 0:
        secs = v / 1000 if v > 1e11 else v
        return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return "" if v is None else str(v)


def ago(ms: Any) -> str:
    """A duration in milliseconds (``last_heard_ms_ago``) as ``0.4s ago``, ``42s ago``,
    ``3m05s ago`` or ``2h07m ago``; empty when there is none (``null``: the instance itself,
    or a peer not heard from yet)."""
    if not isinstance(ms, int | float) or isinstance(ms, bool) or not 0 <= ms < math.inf:
        return ""
    secs = ms / 1000
    if secs < 10:
        return f"{secs:.1f}s ago"
    whole = int(secs)
    if whole < 60:
        return f"{whole}s ago"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s ago"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m ago"


# --------------------------------------------------------------------------- nodes, vars


def node_row(name: str, n: dict[str, Any]) -> list[Any]:
    inv = n.get("inventory_state", {})
    conf = n.get("configuration_state", {})
    mon = n.get("monitoring_state", {})
    return [
        name,
        inv.get("status", ""),
        inv.get("state", ""),
        conf.get("host_group", ""),
        mon.get("management_address", ""),
        inv.get("prev_status", ""),
    ]


def render_nodes(nodes: dict[str, Any]) -> str:
    return table([node_row(k, v) for k, v in nodes.items()], NODE_HEADER)


def render_node(n: dict[str, Any]) -> str:
    name = n.get("inventory_state", {}).get("name", "")
    text = table([node_row(name, n)], NODE_HEADER)
    ivars = n.get("configuration_state", {}).get("inventory_vars", {})
    if ivars:
        text += "\n\nvars:\n" + "\n".join(f"  {k} = {json.dumps(v)}" for k, v in ivars.items())
    return text


HISTORY_HEADER = ("WHEN", "EVENT", "STATUS", "STATE", "INSTANCE", "EPOCH", "TOKEN", "JOB", "WHY")


def render_history(r: dict[str, Any]) -> str:
    """GET /info/node/{name}/history as a table, newest first."""
    rows = [
        [
            ts(h.get("ms")),
            h.get("event"),
            _moved(h.get("prev_status"), h.get("status")),
            _moved(h.get("prev_state"), h.get("state")),
            h.get("instance"),
            h.get("epoch"),
            h.get("token") or "-",
            h.get("job") or "-",
            h.get("reason"),
        ]
        for h in r.get("history", [])
    ]
    return table(rows, HISTORY_HEADER) if rows else f"no history for {r.get('name')}"


def _moved(a: Any, b: Any) -> str:
    return str(b) if a == b else f"{a} -> {b}"


def render_vars(v: dict[str, Any]) -> str:
    if not v:
        return "(none)"
    return table([[k, json.dumps(x)] for k, x in v.items()], ("KEY", "VALUE"))


# --------------------------------------------------------------------------- jobs


def job_row(j: dict[str, Any]) -> list[Any]:
    return [
        j.get("id", ""),
        j.get("task", j.get("kind", "")),
        f"{j['status']} #{j['queue_position']}" if "queue_position" in j else j.get("status", ""),
        j.get("runner", ""),
        ts(j.get("started_ms", j.get("created_ms", j.get("started")))),
        j.get("desc", ""),
        j.get("error", ""),
    ]


def render_jobs(r: dict[str, Any]) -> str:
    return table([job_row(j) for j in r["jobs"]], JOB_HEADER)


def render_job(j: dict[str, Any]) -> str:
    text = table([job_row(j)], JOB_HEADER)
    logs = j.get("logs")
    if isinstance(logs, list) and logs:
        text += "\n\nlogs:\n" + "\n".join(str(x) for x in logs)
    return text


def render_job_started(res: Any) -> str:
    if isinstance(res, dict) and res.get("id"):
        if res.get("status") == "Queued":
            return f"job {res['id']} queued (position {res.get('queue_position', '?')})"
        return f"job {res['id']} started ({res.get('status', 'Queued')})"
    return ""


# --------------------------------------------------------------------------- peers, lease


def render_lease(lease: dict[str, Any] | None) -> str:
    if not lease:
        return "lease: none (vacant)"
    valid = "valid" if lease.get("valid") else "EXPIRED"
    forced = f" forced by {lease['forced_by']}" if lease.get("forced_by") else ""
    return (
        f"lease: holder={lease.get('holder')} epoch={lease.get('epoch')} "
        f"expires={lease.get('expires')} ({valid}){forced}"
    )


def render_quorum(q: Any) -> str:
    """The majority line (``core/quorum.py``) of /info/lease or /info/peers; "" if absent."""
    if not isinstance(q, dict) or not q.get("reason"):
        return ""
    tail = "" if q.get("may_hold") else " (this instance cannot hold the lease)"
    return f"\n{q['reason']}{tail}"


def peer_row(p: dict[str, Any], self_name: Any) -> list[Any]:
    """One row of ``gossipmgr peers`` from one entry of ``GET /info/peers``."""
    return [
        ("*" if p.get("name") == self_name else "") + str(p.get("name", "")),
        p.get("status", ""),
        p.get("api_url", ""),
        p.get("gossip_addr", ""),
        p.get("lag", ""),
        ago(p.get("last_heard_ms_ago")),
        p.get("auth_failures", 0) or "",
    ]


def _peer_warnings(r: dict[str, Any]) -> list[str]:
    peers = r.get("peers", [])
    notes = [
        f"warning: {p.get('name')}: {p['auth_failures']} gossip datagrams failed "
        f"authentication ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}): "
        "its gossip key differs from ours"
        for p in peers
        if p.get("auth_failures")
        for reasons in [p.get("auth_failure_reasons") or {}]
    ]
    named = {str(p.get("name")) for p in peers if p.get("auth_failures")}
    notes += [
        f"warning: {w}"
        for w in r.get("warnings", [])
        if not any(str(w).startswith(f"gossip from {n} (") for n in named)
    ]
    return notes


def render_peers(r: dict[str, Any]) -> str:
    """``GET /info/peers`` (plus /health's ``warnings``): the peer table, a warning line
    per problem, then the lease."""
    rows = [peer_row(p, r.get("self")) for p in r.get("peers", [])]
    text = table(rows, PEER_HEADER)
    notes = _peer_warnings(r)
    lease = render_lease(r.get("lease")) + render_quorum(r.get("quorum"))
    return text + "".join("\n" + n for n in notes) + "\n\n" + lease
