"""``gossipmgr``: the command line (clusterctl's commands, aliases and flags; contract §4).

Every client command is one or two HTTP calls to a gossipmgr API (``--url``, default
``http://127.0.0.1:9007`` or ``$GOSSIPMGR_URL``) with the sync httpx client. Output is a
plain aligned table (or a short layout) by default and the server's JSON with ``--json``.

Exit codes (clusterctl exited 0 on usage errors and panicked when the daemon was down):

* 0  done (``job get -f``: the job completed)
* 1  the server refused (its ``{"error"}`` text is printed), the daemon cannot be reached
     (one line, no traceback), or a followed job ended Errored
* 2  usage error (argparse), bad local input (an IP that does not parse, an unreadable file)

Hooks for other subcommands: :data:`SUBCOMMAND_MODULES` maps a command name (``agent``,
``demo``) to the module that implements it. The module is imported only when that command
is run (importing the agent pulls in Quart, hypercorn and ansible: ~1 s that every client
command would otherwise pay); its ``add_commands(subparsers)`` registers the real parser
with ``set_defaults(func=...)`` where ``func(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import json
import logging
import os
import ssl
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import httpx

from gossipmgr import __version__

DEFAULT_URL = "http://127.0.0.1:9007"
#: Commands implemented elsewhere: name -> (module with add_commands(sub), one-line help).
SUBCOMMAND_MODULES: dict[str, tuple[str, str]] = {
    "agent": ("gossipmgr.cli.agent", "run the gossipmgr daemon"),
    "demo": ("gossipmgr.demo", "run a local demo cluster through its workflows"),
}
#: Global options that take a value (to find the command word in argv without parsing).
_VALUE_OPTIONS = frozenset({"-u", "--url", "--token", "--token-file", "--cacert"})
#: Requests answer quickly (a job POST returns once launched); following a log is unbounded.
REQUEST_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
FOLLOW_TIMEOUT = httpx.Timeout(None, connect=5.0)
#: How often the TTY progress line is redrawn while following a job.
PROGRESS_EVERY_S = 1.0


class CliError(Exception):
    """One line for the user, then exit ``code`` (1: refused/unreachable, 2: usage)."""

    def __init__(self, text: str, code: int = 1) -> None:
        super().__init__(text)
        self.code = code


# --------------------------------------------------------------------------- HTTP


class Client:
    """A thin sync client: one method per call, errors as CliError with the server's text."""

    def __init__(
        self, url: str, token: str | None, cacert: str | None, auth_hint: str = ""
    ) -> None:
        #: Said after a 401: where the token came from, or why there is none.
        self.auth_hint = auth_hint
        self.url = url.rstrip("/")
        if "://" not in self.url:  # clusterctl took host:port
            self.url = "http://" + self.url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        verify: Any = True
        if cacert:  # httpx 0.28 deprecates verify=<path>
            try:
                verify = ssl.create_default_context(cafile=cacert)
            except (OSError, ssl.SSLError) as exc:
                raise CliError(f"cannot load CA file {cacert}: {exc}", 2) from None
        self.http = httpx.Client(headers=headers, verify=verify, timeout=REQUEST_TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def _unreachable(self, exc: httpx.HTTPError) -> CliError:
        why = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError) and "refused" in why.lower():
            why = "connection refused"
        elif isinstance(exc, httpx.TimeoutException):
            why = f"timed out ({type(exc).__name__})"
        return CliError(f"cannot reach {self.url}: {why}")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        try:
            if body is None:
                r = self.http.request(method, self.url + path)
            else:
                r = self.http.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None
        return self._decode(r)

    def _decode(self, r: httpx.Response) -> Any:
        try:
            obj = r.json()
        except ValueError:
            obj = None
        if r.status_code >= 400:
            text = obj.get("error") if isinstance(obj, dict) else None
            text = str(text) if text else f"HTTP {r.status_code}: {r.text.strip()}"
            if r.status_code == 401 and self.auth_hint:
                text += f" ({self.auth_hint})"
            raise CliError(text)
        return obj

    def stream_lines(self, path: str, on_line: Callable[[str], None]) -> None:
        try:
            with self.http.stream("GET", self.url + path, timeout=FOLLOW_TIMEOUT) as r:
                if r.status_code >= 400:
                    r.read()
                    self._decode(r)
                for line in r.iter_lines():
                    on_line(line)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from None


# --------------------------------------------------------------------------- output


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """Plain text, left-aligned columns separated by two spaces (like ``kubectl get``)."""
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _out(args: argparse.Namespace, obj: Any, render: Callable[[Any], str]) -> None:
    if args.json:
        print(json.dumps(obj, indent=2, sort_keys=False))
    else:
        text = render(obj)
        if text:
            print(text)


def _node_row(name: str, n: dict[str, Any]) -> list[Any]:
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


NODE_HEADER = ("NAME", "STATUS", "STATE", "HOST-GROUP", "ADDRESS", "PREV-STATUS")


def _render_node(n: dict[str, Any]) -> str:
    name = n.get("inventory_state", {}).get("name", "")
    out = table([_node_row(name, n)], NODE_HEADER)
    ivars = n.get("configuration_state", {}).get("inventory_vars", {})
    if ivars:
        out += "\n\nvars:\n" + "\n".join(f"  {k} = {json.dumps(v)}" for k, v in ivars.items())
    return out


def _render_vars(v: dict[str, Any]) -> str:
    if not v:
        return "(none)"
    return table([[k, json.dumps(x)] for k, x in v.items()], ("KEY", "VALUE"))


def _ts(v: Any) -> str:
    if isinstance(v, int | float) and v > 0:
        secs = v / 1000 if v > 1e11 else v
        return datetime.fromtimestamp(secs, UTC).strftime("%Y-%m-%d %H:%M:%S")
    return "" if v is None else str(v)


def _ago_ms(v: Any) -> str:
    """``last_heard_ms_ago`` (what the agent sends) as "1.2s ago"; empty when unknown."""
    if isinstance(v, int | float) and not isinstance(v, bool):
        return f"{v / 1000:.1f}s ago"
    return ""


def _job_row(j: dict[str, Any]) -> list[Any]:
    return [
        j.get("id", ""),
        j.get("task", j.get("kind", "")),
        j.get("status", ""),
        j.get("runner", ""),
        _ts(j.get("started_ms", j.get("created_ms", j.get("started")))),
        j.get("desc", ""),
        j.get("error", ""),
    ]


JOB_HEADER = ("ID", "TASK", "STATUS", "RUNNER", "STARTED", "DESC", "ERROR")


def _render_job(j: dict[str, Any]) -> str:
    out = table([_job_row(j)], JOB_HEADER)
    logs = j.get("logs")
    if isinstance(logs, list) and logs:
        out += "\n\nlogs:\n" + "\n".join(str(x) for x in logs)
    return out


def _render_lease(lease: dict[str, Any] | None) -> str:
    if not lease:
        return "lease: none (vacant)"
    valid = "valid" if lease.get("valid") else "EXPIRED"
    return (
        f"lease: holder={lease.get('holder')} epoch={lease.get('epoch')} "
        f"expires={lease.get('expires')} ({valid})"
    )


# --------------------------------------------------------------------------- input helpers


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


# --------------------------------------------------------------------------- commands

WORKFLOW_PATH = {
    "commission": "/commission/nodes",
    "decommission": "/decommission/nodes",
    "update": "/update/nodes",
}
SHORT_VERBS = {"c": "commission", "d": "decommission", "u": "update", "g": "get", "s": "set"}


def _verb(args: argparse.Namespace) -> str:
    v: str = args.verb
    return SHORT_VERBS.get(v, v)


def _render_job_started(res: Any) -> str:
    if isinstance(res, dict) and res.get("id"):
        return f"job {res['id']} started ({res.get('status', 'Queued')})"
    return ""


def cmd_node(c: Client, args: argparse.Namespace) -> int:
    verb = _verb(args)
    names: list[str] = [args.name] if args.cmd in ("node", "n") else list(args.names)
    if verb == "forget":
        res = c.call("POST", f"/node/{_q(args.name)}/forget", {"force": bool(args.force)})
        _out(args, res, lambda r: f"forgot {r['forgotten']} ({r['status']}, {r['state']})")
        return 0
    if verb == "get":
        if args.cmd in ("node", "n"):
            _out(args, c.call("GET", f"/info/node/{_q(args.name)}"), _render_node)
            return 0
        nodes = c.call("GET", "/info/nodes")
        if names:
            missing = [n for n in names if n not in nodes]
            nodes = {k: v for k, v in nodes.items() if k in names}
            if missing and not nodes:
                raise CliError(f'node with name or address "{missing[0]}" doesn\'t exists')
        _out(
            args,
            nodes,
            lambda ns: table([_node_row(k, v) for k, v in ns.items()], NODE_HEADER),
        )
        return 0
    body: dict[str, Any] = {"nodes": names, "extra_vars": _extra_vars_arg(args.extra_vars)}
    if verb in ("commission", "update"):
        body["host_group"] = args.host_group or ""
    _out(args, c.call("POST", WORKFLOW_PATH[verb], body), _render_job_started)
    return 0


def _q(seg: str) -> str:
    from urllib.parse import quote

    return quote(seg, safe="")


def cmd_global(c: Client, args: argparse.Namespace) -> int:
    verb = _verb(args)
    if verb == "get":
        if args.key:
            _out(args, c.call("GET", f"/globals/{_q(args.key)}"), lambda r: json.dumps(r["value"]))
        else:
            _out(args, c.call("GET", "/info/globals"), lambda r: _render_vars(r["extra_vars"]))
        return 0
    if verb == "set":
        if args.key is not None:
            if args.value is None:
                raise CliError("global set KEY VALUE: VALUE is missing", 2)
            if args.extra_vars:
                raise CliError("give either KEY VALUE or --extra-vars, not both", 2)
            res = c.call("PUT", f"/globals/{_q(args.key)}", {"value": _value_arg(args.value)})
            _out(args, res, lambda r: f"{r['key']} = {json.dumps(r['value'])}")
        else:
            res = c.call("POST", "/globals", {"extra_vars": _extra_vars_arg(args.extra_vars)})
            _out(args, res, lambda r: _render_vars(r["extra_vars"]))
        return 0
    # delete
    res = c.call("DELETE", f"/globals/{_q(args.key)}")
    _out(args, res, lambda r: f"deleted {r['key']}")
    return 0


def cmd_job(c: Client, args: argparse.Namespace) -> int:
    verb = _verb(args)
    if verb == "cancel":
        _out(args, c.call("POST", "/job/cancel"), lambda r: "cancel requested")
        return 0
    label = args.job
    if not args.follow:
        _out(args, c.call("GET", f"/info/job/{_q(label)}"), _render_job)
        return 0
    return follow_job(c, args, label)


def follow_job(c: Client, args: argparse.Namespace, label: str) -> int:
    """Stream a job's log lines to stdout; progress on stderr when it is a TTY; final status."""
    job = c.call("GET", f"/info/job/{_q(label)}")
    job_id = str(job.get("id") or label)
    t0 = time.monotonic()
    count = 0
    tty = sys.stderr.isatty()
    last_draw = 0.0

    def on_line(line: str) -> None:
        nonlocal count, last_draw
        count += 1
        if tty:
            sys.stderr.write("\r\033[K")
        print(line, flush=True)
        now = time.monotonic()
        if tty and now - last_draw >= PROGRESS_EVERY_S / 4:
            last_draw = now
            sys.stderr.write(f"[running {int(now - t0)}s, {count} lines]")
            sys.stderr.flush()

    c.stream_lines(f"/info/logs/{_q(job_id)}", on_line)
    if tty:
        sys.stderr.write("\r\033[K")
    final = c.call("GET", f"/info/job/{_q(job_id)}")
    status = final.get("status", "?")
    err = final.get("error") or ""
    if args.json:
        print(json.dumps(final, indent=2))
    else:
        took = time.monotonic() - t0
        print(f"job {job_id}: {status}{(': ' + err) if err else ''} ({count} lines, {took:.1f}s)")
    return 0 if status == "Complete" else 1


def cmd_jobs(c: Client, args: argparse.Namespace) -> int:
    _out(
        args,
        c.call("GET", "/info/jobs"),
        lambda r: table([_job_row(j) for j in r["jobs"]], JOB_HEADER),
    )
    return 0


def cmd_discover(c: Client, args: argparse.Namespace) -> int:
    for a in args.addrs:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise CliError(f'failed to parse ip address "{a}"', 2)
    body = {"addrs": list(args.addrs), "extra_vars": _extra_vars_arg(args.extra_vars)}
    _out(args, c.call("POST", "/discover/nodes", body), _render_job_started)
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
    _out(args, res, lambda r: "config updated")
    return 0


def cmd_peers(c: Client, args: argparse.Namespace) -> int:
    def render(r: dict[str, Any]) -> str:
        rows = [
            [
                ("*" if p.get("name") == r.get("self") else "") + str(p.get("name", "")),
                p.get("status", ""),
                p.get("api_url", ""),
                p.get("gossip_addr", ""),
                p.get("lag", ""),
                _ago_ms(p.get("last_heard_ms_ago")),
                p.get("auth_failures", 0) or "",
            ]
            for p in r.get("peers", [])
        ]
        t = table(rows, ("NAME", "STATUS", "API", "GOSSIP", "LAG", "LAST-HEARD", "AUTH-FAIL"))
        notes = [
            f"warning: {p.get('name')}: {p['auth_failures']} gossip datagrams failed "
            f"authentication ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items()))}): "
            "its gossip key differs from ours"
            for p in r.get("peers", [])
            if p.get("auth_failures")
            for reasons in [p.get("auth_failure_reasons") or {}]
        ]
        named = {str(p.get("name")) for p in r.get("peers", []) if p.get("auth_failures")}
        notes += [
            f"warning: {w}"
            for w in r.get("warnings", [])
            if not any(str(w).startswith(f"gossip from {n} (") for n in named)
        ]
        return t + "".join("\n" + n for n in notes) + "\n\n" + _render_lease(r.get("lease"))

    res = c.call("GET", "/info/peers")
    try:
        # /health's warnings (an unencrypted Serf, refused Serf traffic, ...): shown here too.
        warnings = c.call("GET", "/health").get("warnings")
    except (CliError, AttributeError):
        warnings = None
    if isinstance(res, dict) and isinstance(warnings, list):
        res["warnings"] = [str(w) for w in warnings]
    _out(args, res, render)
    return 0


def cmd_lease(c: Client, args: argparse.Namespace) -> int:
    if getattr(args, "action", "show") == "reset":
        r = c.call("POST", "/lease/reset", {"force": bool(args.force)})
        _out(
            args,
            r,
            lambda r: (
                "previous " + _render_lease(r.get("previous")) + "\nnow vacant at epoch "
                f"{r['lease']['epoch']}: the first live candidate claims the next one"
            ),
        )
        return 0
    _out(args, c.call("GET", "/info/lease"), lambda r: _render_lease(r.get("lease")))
    return 0


# --------------------------------------------------------------------------- the parser


def cmd_import(c: Client, args: argparse.Namespace) -> int:
    from gossipmgr.clusterm.importer import (
        cmd_import as run,  # imports the Bolt reader only when used
    )

    return run(c, args)


def _common() -> argparse.ArgumentParser:
    """Global flags, also accepted after the command (SUPPRESS: do not override the
    value given before it with a default)."""
    p = argparse.ArgumentParser(add_help=False)
    S = argparse.SUPPRESS
    p.add_argument(
        "-u", "--url", default=S, help=f"API URL (default {DEFAULT_URL}, $GOSSIPMGR_URL)"
    )
    p.add_argument("--token", default=S, help="bearer token ($GOSSIPMGR_TOKEN)")
    p.add_argument(
        "--token-file",
        default=S,
        help="file holding the bearer token ($GOSSIPMGR_TOKEN_FILE; default "
        "$GOSSIPMGR_DATA_DIR/api.token or /var/lib/gossipmgr/api.token)",
    )
    p.add_argument("--cacert", default=S, help="CA bundle to verify an https API")
    p.add_argument("-j", "--json", action="store_true", default=S, help="print JSON")
    p.add_argument("--debug", action="store_true", default=S, help="log each request")
    return p


def _command_word(argv: Sequence[str]) -> str | None:
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in _VALUE_OPTIONS:
            skip = True
        elif not a.startswith("-"):
            return a
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole parser; ``argv`` only decides which external command module to import."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="gossipmgr",
        description="gossipmgr: highly available cluster manager (clusterctl compatible)",
    )
    parser.add_argument(
        "-u", "--url", default=None, help=f"API URL (default $GOSSIPMGR_URL, else {DEFAULT_URL})"
    )
    parser.add_argument("--token", default=None, help="bearer token (default $GOSSIPMGR_TOKEN)")
    parser.add_argument(
        "--token-file",
        default=None,
        help="read the bearer token from a file (default $GOSSIPMGR_TOKEN_FILE, else "
        "$GOSSIPMGR_DATA_DIR/api.token, else /var/lib/gossipmgr/api.token when readable)",
    )
    parser.add_argument("--cacert", default=None, help="CA bundle to verify an https API")
    parser.add_argument(
        "-j",
        "--json",
        action="store_true",
        default=False,
        help="print the server's JSON instead of tables",
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=False,
        help="log each HTTP request on stderr (agent: --log-level debug)",
    )
    parser.add_argument("--version", action="version", version=f"gossipmgr {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True

    def ev(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-e",
            "--extra-vars",
            default="",
            help="extra-vars as a JSON object (or @FILE), e.g. '{\"a\": 1}'",
        )

    def hg(p: argparse.ArgumentParser) -> None:
        p.add_argument("-g", "--host-group", default="", help="service-master or service-worker")

    for cmd, alias, many in (("node", "n", False), ("nodes", "a", True)):
        p = sub.add_parser(cmd, aliases=[alias], help=f"{'several nodes' if many else 'one node'}")
        vs = p.add_subparsers(dest="verb", metavar="VERB")
        vs.required = True
        for verb, short in (
            ("commission", "c"),
            ("decommission", "d"),
            ("update", "u"),
            ("get", "g"),
        ):
            vp = vs.add_parser(verb, aliases=[short], parents=[common])
            if many:
                vp.add_argument("names", nargs="*" if verb == "get" else "+", metavar="NAME")
            else:
                vp.add_argument("name", metavar="NAME")
            if verb != "get":
                ev(vp)
            if verb in ("commission", "update"):
                hg(vp)
            vp.set_defaults(func=cmd_node)
        if not many:
            vp = vs.add_parser(
                "forget",
                parents=[common],
                help="remove a node that is gone (Disappeared) from the inventory",
            )
            vp.add_argument("name", metavar="NAME")
            vp.add_argument("--force", action="store_true", help="also a Discovered (alive) node")
            vp.set_defaults(func=cmd_node)

    p = sub.add_parser("global", aliases=["g"], help="global extra-vars")
    vs = p.add_subparsers(dest="verb", metavar="VERB")
    vs.required = True
    vp = vs.add_parser("get", aliases=["g"], parents=[common])
    vp.add_argument("key", nargs="?", metavar="KEY")
    vp.set_defaults(func=cmd_global)
    vp = vs.add_parser(
        "set",
        aliases=["s"],
        parents=[common],
        help="set -e JSON (replace all) or set KEY VALUE (one)",
    )
    vp.add_argument("key", nargs="?", metavar="KEY")
    vp.add_argument("value", nargs="?", metavar="VALUE")
    ev(vp)
    vp.set_defaults(func=cmd_global)
    vp = vs.add_parser("delete", aliases=["rm"], parents=[common])
    vp.add_argument("key", metavar="KEY")
    vp.set_defaults(func=cmd_global)

    p = sub.add_parser("job", aliases=["j"], help="a job: get active|last|ID, cancel")
    vs = p.add_subparsers(dest="verb", metavar="VERB")
    vs.required = True
    vp = vs.add_parser("get", aliases=["g"], parents=[common])
    vp.add_argument("job", metavar="active|last|ID")
    vp.add_argument("-f", "--follow", action="store_true", help="stream the log until it ends")
    vp.set_defaults(func=cmd_job)
    vp = vs.add_parser("cancel", parents=[common])
    vp.set_defaults(func=cmd_job)

    p = sub.add_parser("jobs", parents=[common], help="job history")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("discover", aliases=["d"], parents=[common], help="discover nodes by IP")
    p.add_argument("addrs", nargs="+", metavar="IP")
    ev(p)
    p.set_defaults(func=cmd_discover)

    p = sub.add_parser("config", aliases=["c"], help="daemon configuration")
    vs = p.add_subparsers(dest="verb", metavar="VERB")
    vs.required = True
    vp = vs.add_parser("get", aliases=["g"], parents=[common])
    vp.set_defaults(func=cmd_config)
    vp = vs.add_parser("set", aliases=["s"], parents=[common])
    vp.add_argument("file", metavar="FILE|-")
    vp.set_defaults(func=cmd_config)

    p = sub.add_parser("import", help="import another manager's inventory")
    vs = p.add_subparsers(dest="verb", metavar="SOURCE")
    vs.required = True
    vp = vs.add_parser(
        "clusterm",
        parents=[common],
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
    vp.set_defaults(func=cmd_import)

    p = sub.add_parser("peers", parents=[common], help="gossipmgr instances and the lease")
    p.set_defaults(func=cmd_peers)
    p = sub.add_parser("lease", parents=[common], help="the lease: show, or reset")
    p.add_argument(
        "action",
        nargs="?",
        choices=["show", "reset"],
        default="show",
        help="reset: vacate the lease one epoch up, deposing its holder (docs/design.md)",
    )
    p.add_argument(
        "--force", action="store_true", help="reset even while an alive instance holds it"
    )
    p.set_defaults(func=cmd_lease)

    word = _command_word(argv)
    for name, (mod, help_text) in SUBCOMMAND_MODULES.items():
        if name == word and add_module_commands(sub, mod):
            continue
        # placeholder for --help; never selected when the module exists (imported above)
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=_missing_module(name, mod))
    return parser


def _missing_module(name: str, module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise CliError(f"the {name} command is not available ({module} is not installed)", 2)

    return run


def add_module_commands(sub: Any, module: str) -> bool:
    """The hook for the agent and the demo: ``module.add_commands(subparsers)`` if the
    module exists and defines it. Its parsers ``set_defaults(func=f)`` with ``f(args) ->
    int``; such commands are called without an HTTP client (``args.client_cmd`` unset)."""
    try:
        m = importlib.import_module(module)
    except ImportError as exc:
        if exc.name != module:  # the module exists but one of ITS imports failed: say so
            raise
        return False
    add = getattr(m, "add_commands", None)
    if add is None:
        return False
    add(sub)
    return True


CLIENT_COMMANDS = {
    cmd_node,
    cmd_global,
    cmd_job,
    cmd_jobs,
    cmd_discover,
    cmd_config,
    cmd_peers,
    cmd_lease,
    cmd_import,
}


#: The agent's default data directory; its api.token is the CLI's last token source.
DEFAULT_DATA_DIR = "/var/lib/gossipmgr"
TOKEN_FILE_NAME = "api.token"


def default_token_file() -> str:
    """``$GOSSIPMGR_DATA_DIR/api.token``, else ``/var/lib/gossipmgr/api.token``."""
    data_dir = os.environ.get("GOSSIPMGR_DATA_DIR") or DEFAULT_DATA_DIR
    return os.path.join(data_dir, TOKEN_FILE_NAME)


def _read_token_file(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except OSError as exc:
        raise CliError(f"cannot read token file {path}: {exc.strerror}", 2) from None


def _token(args: argparse.Namespace) -> tuple[str | None, str]:
    """(token, where it came from or why there is none). First found wins: --token,
    --token-file, $GOSSIPMGR_TOKEN, $GOSSIPMGR_TOKEN_FILE, then the agent's own token file
    (:func:`default_token_file`), which only the agent's user (and root) can read."""
    if args.token:
        return str(args.token), "token from --token"
    if args.token_file:
        return _read_token_file(args.token_file), f"token from {args.token_file}"
    if os.environ.get("GOSSIPMGR_TOKEN"):
        return os.environ["GOSSIPMGR_TOKEN"], "token from $GOSSIPMGR_TOKEN"
    env_file = os.environ.get("GOSSIPMGR_TOKEN_FILE")
    if env_file:
        return _read_token_file(env_file), f"token from $GOSSIPMGR_TOKEN_FILE={env_file}"
    path = default_token_file()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None, f"token from {path}"
    except OSError as exc:
        # Not an error yet: an agent with no_auth needs none. Said if the server asks.
        return None, f"no token: cannot read {path}: {exc.strerror}"


def _fail(text: str, code: int) -> NoReturn:
    print(f"gossipmgr: {text}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Returns the exit code (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    func = args.func
    if args.debug:
        if func in CLIENT_COMMANDS:  # httpx logs every request at INFO
            logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        elif getattr(args, "log_level", "absent") is None:  # the agent's own option
            args.log_level = "debug"
    try:
        if func not in CLIENT_COMMANDS:
            return int(func(args))
        url = args.url or os.environ.get("GOSSIPMGR_URL") or DEFAULT_URL
        token, hint = _token(args)
        client = Client(url, token, args.cacert, hint)
        try:
            return int(func(client, args))
        finally:
            client.close()
    except CliError as exc:
        _fail(str(exc), exc.code)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except BrokenPipeError:
        # `gossipmgr job get -f active | head`: the reader left; not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy: modules that raise
    # gossipmgr.cli.main.CliError (the import command) must raise the class main catches.
    from gossipmgr.cli.main import main as _main

    sys.exit(_main())
