"""The client commands: each ``cmd_*(client, args) -> exit code`` is one or two API calls
and prints the result (:mod:`gossipmgr.cli.output`)."""

import argparse
import getpass
import ipaddress
import json
import socket
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from gossipmgr.cli.client import Client, CliError, Unreachable
from gossipmgr.cli.output import (
    out,
    render_history,
    render_job,
    render_job_started,
    render_jobs,
    render_lease,
    render_node,
    render_nodes,
    render_peers,
    render_quorum,
    render_vars,
)

#: How often the TTY progress line is redrawn while following a job.
PROGRESS_EVERY_S = 1.0
#: A followed log whose stream broke is resumed at its next line: at most this many tries
#: in a row without a new line, FOLLOW_RETRY_S more apart each time.
FOLLOW_RETRIES = 5
FOLLOW_RETRY_S = 1.0
WORKFLOW_PATH = {
    "commission": "/commission/nodes",
    "decommission": "/decommission/nodes",
    "update": "/update/nodes",
}
SHORT_VERBS = {"c": "commission", "d": "decommission", "u": "update", "g": "get", "s": "set"}


# --------------------------------------------------------------------------- input helpers


def _q(seg: str) -> str:
    return quote(seg, safe="")


def _verb(args: argparse.Namespace) -> str:
    v: str = args.verb
    return SHORT_VERBS.get(v, v)


def _extra_vars_arg(text: str | None) -> str:
    """-e: a JSON object given inline, or @FILE; sent as clusterm's string form."""
    if not text:
        return ""
    if text.startswith("@"):
        try:
            with open(text[1:], encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise CliError(f"cannot read extra-vars file {text[1:]}: {exc.strerror}", 2)
    return text


def _value_arg(text: str) -> Any:
    """`global set KEY VALUE`: VALUE as JSON when it parses (1, true, {"a":1}), else a string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _read_file_arg(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", 2)


# --------------------------------------------------------------------------- nodes


def _nodes_get(c: Client, args: argparse.Namespace, names: list[str]) -> None:
    if args.cmd in ("node", "n"):
        out(args, c.call("GET", f"/info/node/{_q(args.name)}"), render_node)
        return
    nodes = c.call("GET", "/info/nodes")
    if names:
        missing = [n for n in names if n not in nodes]
        nodes = {k: v for k, v in nodes.items() if k in names}
        if missing and not nodes:
            raise CliError(f'node with name or address "{missing[0]}" doesn\'t exists')
    out(args, nodes, render_nodes)


def cmd_node(c: Client, args: argparse.Namespace) -> int:
    verb = _verb(args)
    names: list[str] = [args.name] if args.cmd in ("node", "n") else list(args.names)
    if verb == "forget":
        res = c.call("POST", f"/node/{_q(args.name)}/forget", {"force": bool(args.force)})
        out(args, res, lambda r: f"forgot {r['forgotten']} ({r['status']}, {r['state']})")
        return 0
    if verb == "get":
        _nodes_get(c, args, names)
        return 0
    if verb == "history":
        query = f"?limit={args.limit}" if args.limit is not None else ""
        out(args, c.call("GET", f"/info/node/{_q(args.name)}/history{query}"), render_history)
        return 0
    body: dict[str, Any] = {"nodes": names, "extra_vars": _extra_vars_arg(args.extra_vars)}
    if verb == "upgrade":
        out(args, c.call("POST", "/upgrade/nodes", _upgrade_body(args, body)), render_job_started)
        return 0
    if verb in ("commission", "update"):
        body["host_group"] = args.host_group or ""
    if args.check:
        body["check"] = True
    if args.queue:
        body["queue"] = True
    out(args, c.call("POST", WORKFLOW_PATH[verb], body), render_job_started)
    return 0


def _upgrade_body(args: argparse.Namespace, body: dict[str, Any]) -> dict[str, Any]:
    if bool(args.all) == bool(args.names):
        raise CliError("nodes upgrade: give node names or --all (not both)", 2)
    if args.all:
        body = {"all": True, "extra_vars": body["extra_vars"]}
    batch = args.batch
    if batch is not None:
        body["batch"] = int(batch) if batch.isdigit() else batch
    body["max_fail"] = args.max_fail
    if args.queue:
        body["queue"] = True
    return body


def cmd_discover(c: Client, args: argparse.Namespace) -> int:
    for a in args.addrs:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise CliError(f'failed to parse ip address "{a}"', 2)
    body: dict[str, Any] = {
        "addrs": list(args.addrs),
        "extra_vars": _extra_vars_arg(args.extra_vars),
    }
    if args.queue:
        body["queue"] = True
    out(args, c.call("POST", "/discover/nodes", body), render_job_started)
    return 0


# --------------------------------------------------------------------------- globals, config


def _global_set(c: Client, args: argparse.Namespace) -> None:
    if args.key is None:
        res = c.call("POST", "/globals", {"extra_vars": _extra_vars_arg(args.extra_vars)})
        out(args, res, lambda r: render_vars(r["extra_vars"]))
        return
    if args.value is None:
        raise CliError("global set KEY VALUE: VALUE is missing", 2)
    if args.extra_vars:
        raise CliError("give either KEY VALUE or --extra-vars, not both", 2)
    res = c.call("PUT", f"/globals/{_q(args.key)}", {"value": _value_arg(args.value)})
    out(args, res, lambda r: f"{r['key']} = {json.dumps(r['value'])}")


def _global_set_many(c: Client, args: argparse.Namespace) -> None:
    """`global set-many FILE|-`: a JSON object {name: value | null} in one PATCH /globals
    (one write: all of it is applied or none; null removes the variable)."""
    text = _read_file_arg(args.file)
    try:
        changes = json.loads(text)
    except ValueError as exc:
        raise CliError(f"{args.file} is not valid JSON: {exc}", 2)
    if not isinstance(changes, dict):
        raise CliError(f"{args.file} must be a JSON object of name: value (null removes)", 2)
    res = c.call("PATCH", "/globals", changes)
    out(args, res, lambda r: f"set {r['set']}, deleted {r['deleted']}")


def cmd_global(c: Client, args: argparse.Namespace) -> int:
    verb = _verb(args)
    if verb == "set-many":
        _global_set_many(c, args)
        return 0
    if verb == "get":
        if args.key:
            out(args, c.call("GET", f"/globals/{_q(args.key)}"), lambda r: json.dumps(r["value"]))
        else:
            out(args, c.call("GET", "/info/globals"), lambda r: render_vars(r["extra_vars"]))
        return 0
    if verb == "set":
        _global_set(c, args)
        return 0
    # delete
    res = c.call("DELETE", f"/globals/{_q(args.key)}")
    out(args, res, lambda r: f"deleted {r['key']}")
    return 0


def cmd_config(c: Client, args: argparse.Namespace) -> int:
    verb = _verb(args)
    if verb == "get":
        cfg = c.call("GET", "/config")
        print(json.dumps(cfg, indent=2))
        return 0
    text = _read_file_arg(args.file)
    try:
        cfg = json.loads(text)
    except ValueError as exc:
        raise CliError(f"config {args.file} is not valid JSON: {exc}", 2)
    if not isinstance(cfg, dict):
        raise CliError("config must be a JSON object", 2)
    if "config" in cfg and len(cfg) == 1:
        cfg = cfg["config"]
    res = c.call("POST", "/config", {"config": cfg})
    out(args, res, lambda r: "config updated")
    return 0


# --------------------------------------------------------------------------- jobs


def cmd_job(c: Client, args: argparse.Namespace) -> int:
    verb = _verb(args)
    if verb == "cancel":
        if args.job:
            res = c.call("POST", "/job/cancel", {"job": args.job})
        else:
            res = c.call("POST", "/job/cancel")
        out(args, res, lambda r: f"job {r.get('id', '')}: cancel requested ({r.get('status')})")
        return 0
    label = args.job
    if not args.follow:
        out(args, c.call("GET", f"/info/job/{_q(label)}"), render_job)
        return 0
    return follow_job(c, args, label)


def follow_job(c: Client, args: argparse.Namespace, label: str) -> int:
    """Stream a job's log lines to stdout; progress on stderr when it is a TTY; final status.

    A stream that breaks (the instance stopped) or ends while the job still runs is resumed
    at the next line (``?offset=``): no line is lost or printed twice."""
    job = c.call("GET", f"/info/job/{_q(label)}")
    job_id = str(job.get("id") or label)
    t0 = time.monotonic()
    offset = max(0, int(getattr(args, "offset", 0) or 0))
    count = 0
    tty = sys.stderr.isatty()
    last_draw = 0.0

    def on_line(line: str) -> None:
        nonlocal count, last_draw, offset
        count += 1
        offset += 1
        if tty:
            sys.stderr.write("\r\033[K")
        print(line, flush=True)
        now = time.monotonic()
        if tty and now - last_draw >= PROGRESS_EVERY_S / 4:
            last_draw = now
            sys.stderr.write(f"[running {int(now - t0)}s, {count} lines]")
            sys.stderr.flush()

    final = _stream_log(c, job_id, lambda: offset, on_line)
    if tty:
        sys.stderr.write("\r\033[K")
    status = final.get("status", "?")
    err = final.get("error") or ""
    if args.json:
        print(json.dumps(final, indent=2))
    else:
        took = time.monotonic() - t0
        print(f"job {job_id}: {status}{(': ' + err) if err else ''} ({count} lines, {took:.1f}s)")
    return 0 if status == "Complete" else 1


def _stream_log(
    c: Client, job_id: str, offset: Callable[[], int], on_line: Callable[[str], None]
) -> Any:
    """Follow the log from ``offset()`` until the job ended; return its final record. A
    stream that broke, or ended while the job still runs (its instance stopped), is resumed
    at ``offset()``: at most FOLLOW_RETRIES tries in a row that bring no new line."""
    tries = 0
    while True:
        start = offset()
        try:
            c.stream_lines(f"/info/logs/{_q(job_id)}?offset={start}", on_line)
            final = c.call("GET", f"/info/job/{_q(job_id)}")
        except Unreachable as exc:
            tries = 0 if offset() > start else tries + 1
            if tries > FOLLOW_RETRIES:
                raise
            print(f"[{exc}; resuming at line {offset()}]", file=sys.stderr, flush=True)
            time.sleep(FOLLOW_RETRY_S * tries)
            continue
        if final.get("status") not in ("Queued", "Running"):
            return final
        tries = 0 if offset() > start else tries + 1
        if tries > FOLLOW_RETRIES:
            return final
        time.sleep(FOLLOW_RETRY_S * tries)


def cmd_jobs(c: Client, args: argparse.Namespace) -> int:
    out(args, c.call("GET", "/info/jobs"), render_jobs)
    return 0


# --------------------------------------------------------------------------- peers, lease


def cmd_peers(c: Client, args: argparse.Namespace) -> int:
    res = c.call("GET", "/info/peers")
    try:
        # /health's warnings (an unencrypted Serf, refused Serf traffic, ...): shown here too.
        warnings = c.call("GET", "/health").get("warnings")
    except (CliError, AttributeError):
        warnings = None
    if isinstance(res, dict) and isinstance(warnings, list):
        res["warnings"] = [str(w) for w in warnings]
    out(args, res, render_peers)
    return 0


def cmd_lease(c: Client, args: argparse.Namespace) -> int:
    if getattr(args, "action", "show") == "reset":
        r = c.call("POST", "/lease/reset", {"force": bool(args.force)})
        out(
            args,
            r,
            lambda r: (
                "previous " + render_lease(r.get("previous")) + "\nnow vacant at epoch "
                f"{r['lease']['epoch']}: the first live candidate claims the next one"
            ),
        )
        return 0
    if getattr(args, "action", "show") == "take":
        by = f"{getpass.getuser()}@{socket.gethostname()}"
        r = c.call("POST", "/lease/take", {"force": bool(args.force), "by": by})
        out(
            args,
            r,
            lambda r: (
                "previous "
                + render_lease(r.get("previous"))
                + "\nnow "
                + render_lease(r.get("lease"))
            ),
        )
        return 0
    out(
        args,
        c.call("GET", "/info/lease"),
        lambda r: render_lease(r.get("lease")) + render_quorum(r.get("quorum")),
    )
    return 0


CLIENT_COMMANDS = frozenset(
    {
        cmd_node,
        cmd_global,
        cmd_job,
        cmd_jobs,
        cmd_discover,
        cmd_config,
        cmd_peers,
        cmd_lease,
    }
)
