"""``clusterctl``: a drop-in for contiv/cluster's Go clusterctl, talking to gossipmgr's API.

Same commands, aliases and flags (``management/src/clusterctl/commands.go``), same request
bodies (the Go client's JSON, byte for byte), same output: the Go text/templates of
``get_actions.go`` are reproduced by :func:`render_node` & co. and checked against golden
files rendered by those templates (``tests/fixtures/clusterctl``). Same exit codes: 0 on
success and on usage errors (the Go cli library prints ``Incorrect Usage.`` or
``No help topic for '<x>'`` and exits 0), 1 on any failure, printed as logrus' fatal line
on stderr (``time="..." level=fatal msg="..."``).

Differences, on purpose (docs/migrating-from-clusterm.md): a POST to a daemon that is down
is the same one-line fatal error as a GET (the Go client dereferenced a nil response and
panicked); ``--debug`` (requests on stderr) and the API token (as for ``gossipmgr``:
``$GOSSIPMGR_TOKEN`` and the CLI's other token sources) are gossipmgr's additions.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

import httpx

from gossipmgr import __version__
from gossipmgr.cli.main import Client, CliError, _token
from gossipmgr.config import ANSIBLE_CONFIG_KEYS

DEFAULT_URL = "0.0.0.0:9007"
_START = time.monotonic()

# --------------------------------------------------------------------------- Go's printing


def go_float(f: float) -> str:
    """``fmt.Sprint(float64)``: %g with the shortest digits, exponent when < -4 or >= 6
    (e.g. 1e+06, 1.764437123456e+12, 0.0001, 1e-05)."""
    if f != f:
        return "NaN"
    if f in (float("inf"), float("-inf")):
        return "+Inf" if f > 0 else "-Inf"
    if f == 0:
        return "-0" if str(f).startswith("-") else "0"
    sign = "-" if f < 0 else ""
    r = repr(abs(f))  # shortest round-trip digits, as Go's
    mant, _, exp_s = r.partition("e")
    whole, _, frac = mant.partition(".")
    digits = (whole + frac).lstrip("0")
    lead_zeros = len(whole + frac) - len((whole + frac).lstrip("0"))
    dp = len(whole) - lead_zeros + (int(exp_s) if exp_s else 0)
    digits = digits.rstrip("0") or "0"
    x = dp - 1
    if x < -4 or x >= 6:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{m}e{'-' if x < 0 else '+'}{abs(x):02d}"
    if dp <= 0:
        return f"{sign}0.{'0' * -dp}{digits}"
    if dp >= len(digits):
        return sign + digits + "0" * (dp - len(digits))
    return f"{sign}{digits[:dp]}.{digits[dp:]}"


def go_fmt(v: Any) -> str:
    """``fmt.Sprint`` of a value decoded from JSON into ``interface{}``."""
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return go_float(float(v))
    if isinstance(v, str):
        return v
    if isinstance(v, dict):
        return "map[" + " ".join(f"{k}:{go_fmt(v[k])}" for k in _sorted(v)) + "]"
    if isinstance(v, list):
        return "[" + " ".join(go_fmt(x) for x in v) + "]"
    return str(v)


def _tprint(v: Any) -> str:
    """What ``{{ $v }}`` prints in a text/template: a nil interface is ``<no value>``."""
    return "<no value>" if v is None else go_fmt(v)


def _sorted(m: Mapping[str, Any]) -> list[str]:
    # text/template ranges over a map's keys in sorted (byte) order
    return sorted(m, key=lambda k: k.encode("utf-8", "surrogatepass"))


def _type_print(out: list[str], indent: str, v: Any) -> None:
    if isinstance(v, dict):
        _map_print(out, indent, v)
    elif isinstance(v, list):
        for e in v:
            out.append(f"{indent}{_tprint(e)}\n")
    else:
        out.append(f"{indent}{_tprint(v)}\n")


def _map_print(out: list[str], indent: str, m: Mapping[str, Any]) -> None:
    for k in _sorted(m):
        v = m[k]
        if isinstance(v, (dict, list)):
            out.append(f"{indent}{k}:\n")
            _type_print(out, indent + "    ", v)
        else:
            out.append(f"{indent}{k}: {_tprint(v)}\n")


class TemplateError(Exception):
    """The JSON does not fit the template's type (clusterctl's "failed to parse json")."""


def _section(node: Mapping[str, Any], key: str) -> dict[str, Any]:
    v = node.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise TemplateError(f"{key} is not an object")
    return v


def _node(out: list[str], node: Any) -> None:
    if not isinstance(node, dict):
        raise TemplateError("a node is not an object")
    inv, mon, cfg = (
        _section(node, "inventory_state"),
        _section(node, "monitoring_state"),
        _section(node, "configuration_state"),
    )
    name = _tprint(inv.get("name"))
    indent = f"{name}:    "
    out.append(f"{name}: Inventory State\n")
    _map_print(out, indent, inv)
    out.append(f"{name}: Monitoring State\n")
    _map_print(out, indent, mon)
    out.append(f"{name}: Configuration State\n")
    _map_print(out, indent, cfg)
    out.append("\n")


def render_node(obj: Any) -> str:
    out: list[str] = []
    _node(out, obj)
    return "".join(out)


def render_nodes(obj: Any) -> str:
    if not isinstance(obj, dict):
        raise TemplateError("not an object")
    out: list[str] = []
    for k in _sorted(obj):
        _node(out, obj[k])
    return "".join(out)


def _object(obj: Any) -> dict[str, Any]:
    """What a template ranges over: an object, ``null`` read as an empty one (as the Go
    templates print it)."""
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise TemplateError("not an object")
    return obj


def render_map(obj: Any) -> str:
    """``globalTemplate`` and ``configTemplate``."""
    out: list[str] = []
    _map_print(out, "", _object(obj))
    return "".join(out)


def _job_head(obj: Mapping[str, Any]) -> str:
    return (
        f"\nDescription: {_tprint(obj.get('desc'))}\nStatus: {_tprint(obj.get('status'))}\n"
        f"Error: {_tprint(obj.get('error'))}\n"
    )


def render_job(obj: Any) -> str:
    obj = _object(obj)
    out: list[str] = [_job_head(obj), "Logs:\n"]
    _type_print(out, "    ", obj.get("logs"))
    out.append("\n")
    return "".join(out)


def render_job_short(obj: Any) -> str:
    return _job_head(_object(obj))


def go_json_indent(src: str, indent: str = "    ") -> str:
    """``json.Indent(dst, src, "", indent)``: strings copied as they are, ``{}``/``[]``
    kept compact, leading whitespace dropped, trailing whitespace kept."""
    out: list[str] = []
    depth = 0
    need_indent = False  # an opening bracket waits to see whether it is empty
    i, n = 0, len(src)
    stripped = src.lstrip(" \t\r\n")
    i = n - len(stripped)
    end = len(src.rstrip(" \t\r\n"))
    while i < end:
        c = src[i]
        if c in " \t\r\n":
            i += 1
            continue
        if need_indent and c not in "]}":
            need_indent = False
            depth += 1
            out.append("\n" + indent * depth)
        if c == '"':
            j = i + 1
            while j < end and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append(src[i : j + 1])
            i = j + 1
            continue
        if c in "[{":
            out.append(c)
            need_indent = True
        elif c in "]}":
            if need_indent:
                need_indent = False  # empty: "[]" / "{}"
            else:
                depth -= 1
                out.append("\n" + indent * depth)
            out.append(c)
        elif c == ",":
            out.append(",\n" + indent * depth)
        elif c == ":":
            out.append(": ")
        else:
            out.append(c)
        i += 1
    return "".join(out) + src[end:]


# --------------------------------------------------------------------------- the Go client


def go_quote(s: str) -> str:
    """``strconv.Quote`` (``%q``)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\a":
            out.append("\\a")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\v":
            out.append("\\v")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif not ch.isprintable() and o > 0x7F:
            out.append(f"\\u{o:04x}" if o <= 0xFFFF else f"\\U{o:08x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _needs_no_quoting(text: str) -> bool:
    # logrus' (misnamed) needsQuoting: True when the text is plain
    return all(c.isascii() and (c.isalnum() or c in "-.") for c in text)


def fatal_line(msg: str, *, tty: bool) -> str:
    """logrus' TextFormatter line for ``logrus.Fatalf(msg)``."""
    if tty:
        return f"\x1b[31mFATA\x1b[0m[{int(time.monotonic() - _START):04d}] {msg:<44} \n"
    now = _dt.datetime.now().astimezone().replace(microsecond=0).isoformat()
    now = now.replace("+00:00", "Z")
    m = msg if _needs_no_quoting(msg) else go_quote(msg)
    return f"time={go_quote(now)} level=fatal msg={m} \n"


class GoError(Exception):
    """An error the Go clusterctl would ``logrus.Fatalf`` with this text."""


def api_request_json(
    *,
    nodes: Sequence[str] = (),
    addrs: Sequence[str] = (),
    host_group: str = "",
    extra_vars: str = "",
    config: Mapping[str, Any] | None = None,
) -> str:
    """The Go client's body: ``json.NewEncoder(...).Encode(&APIRequest{...})``."""
    parts = []
    if nodes:
        parts.append('"nodes":' + _go_json(list(nodes)))
    if addrs:
        parts.append('"addrs":' + _go_json(list(addrs)))
    if host_group:
        parts.append('"host_group":' + _go_json(host_group))
    if extra_vars:
        parts.append('"extra_vars":' + _go_json(extra_vars))
    parts.append('"monitor_event":{"name":"","nodes":null}')
    if config is not None:
        parts.append('"config":' + _go_json(config))
    return "{" + ",".join(parts) + "}\n"


def _go_json(v: Any) -> str:
    """encoding/json's compact form: ``<``, ``>``, ``&`` escaped, key order kept."""
    s = json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    s = s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _api_request_repr(
    nodes: Sequence[str] = (),
    addrs: Sequence[str] = (),
    host_group: str = "",
    extra_vars: str = "",
    config: Any = None,
) -> str:
    """``%+v`` of ``*APIRequest`` (in the Go client's error text)."""
    cfg = "<nil>" if config is None else "0x" + "c000000000"
    return (
        f"&{{Nodes:[{' '.join(nodes)}] Addrs:[{' '.join(addrs)}] HostGroup:{host_group} "
        f"ExtraVars:{extra_vars} Job: Event:{{Name: Nodes:[]}} Config:{cfg}}}"
    )


def _lookup(obj: Mapping[str, Any], name: str) -> Any:
    """encoding/json's field match: exact name, else case-insensitive."""
    if name in obj:
        return obj[name]
    for k, v in obj.items():
        if k.lower() == name.lower():
            return v
    return None


def go_config(obj: Any) -> dict[str, Any]:
    """``(&manager.Config{}).MergeFromReader(file)``: the file decoded into clusterm's
    Config struct (unknown keys dropped, missing ones zero), in the struct's field order.
    Raises GoError with clusterm's text for a file that does not decode."""
    if not isinstance(obj, dict):
        raise GoError(
            "failed to parse config json. Error: json: cannot unmarshal "
            f"{_go_kind(obj)} into Go value of type manager.Config"
        )

    def sect(name: str) -> dict[str, Any]:
        v = _lookup(obj, name)
        return v if isinstance(v, dict) else {}

    serf, inv, ans, mgr = sect("serf"), sect("inventory"), sect("ansible"), sect("manager")
    inventory: dict[str, Any] = {}
    for k, fields in (("collins", ("url", "user", "password")), ("boltdb", ("dbfile",))):
        v = _lookup(inv, k)
        if isinstance(v, dict):  # a *Config: present once the file names it
            inventory[k] = {f: str(_lookup(v, f) or "") for f in fields}
    return {
        "serf": {
            "Addr": str(_lookup(serf, "Addr") or ""),
            "AuthKey": str(_lookup(serf, "AuthKey") or ""),
            "Timeout": _lookup(serf, "Timeout") or 0,
        },
        "inventory": inventory,
        "ansible": {k: str(_lookup(ans, k) or "") for k in ANSIBLE_CONFIG_KEYS},
        "manager": {"addr": str(_lookup(mgr, "addr") or "")},
    }


def _go_kind(v: Any) -> str:
    return {list: "array", str: "string", bool: "bool", type(None): "null"}.get(type(v), "number")


class GoClient:
    """clusterm's ``manager.Client`` over gossipmgr's HTTP client (auth, TLS)."""

    def __init__(self, url: str, client: Client, debug: bool = False) -> None:
        self.base = url if "://" in url else f"http://{url}"
        self.base = self.base.rstrip("/")
        self.hostport = self.base.split("://", 1)[1]
        self.http = client.http
        self.debug = debug

    def _url(self, rsrc: str) -> str:
        return f"{self.base}/{rsrc}"

    def _net_error(self, method: str, url: str, exc: httpx.HTTPError) -> GoError:
        why = str(exc) or type(exc).__name__
        if isinstance(exc, httpx.ConnectError) and "refused" in why.lower():
            why = f"dial tcp {self.hostport}: connect: connection refused"
        return GoError(f"{method} {go_quote(url)}: {why}")

    def post(self, rsrc: str, body: str, req_repr: str) -> None:
        url = self._url(rsrc)
        if self.debug:
            print(f"clusterctl: POST {url} {body.strip()}", file=sys.stderr)
        try:
            r = self.http.post(
                url, content=body.encode(), headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise self._net_error("Post", url, exc) from None
        if r.status_code != 200:
            raise GoError(
                f"Request URL: {rsrc} Request Body: {req_repr} Response status: "
                f"{go_quote(_status(r))}. Response body: {r.text}"
            )

    def get(self, rsrc: str) -> bytes:
        url = self._url(rsrc)
        if self.debug:
            print(f"clusterctl: GET {url}", file=sys.stderr)
        try:
            r = self.http.get(url)
        except httpx.HTTPError as exc:
            raise self._net_error("Get", url, exc) from None
        if r.status_code != 200:
            raise GoError(
                f"Request URL: {rsrc} Request Body: <nil> Response status: "
                f"{go_quote(_status(r))}. Response body: {r.text}"
            )
        return r.content

    def stream(self, rsrc: str, write: Callable[[bytes], None]) -> None:
        url = self._url(rsrc)
        try:
            with self.http.stream("GET", url, timeout=httpx.Timeout(None, connect=5.0)) as r:
                if r.status_code != 200:
                    r.read()
                    raise GoError(
                        f"Request URL: {rsrc} Request Body: <nil> Response status: "
                        f"{go_quote(_status(r))}. Response body: {r.text}"
                    )
                for chunk in r.iter_raw():
                    write(chunk)
        except httpx.HTTPError as exc:
            raise self._net_error("Get", url, exc) from None


def _status(r: httpx.Response) -> str:
    """Go's ``resp.Status`` with the standard reason phrase (``404 Not Found``)."""
    import http

    try:
        return f"{r.status_code} {http.HTTPStatus(r.status_code).phrase}"
    except ValueError:
        return f"{r.status_code} {r.reason_phrase}".strip()


# --------------------------------------------------------------------------- commands

_EXTRA = ("extra-vars", "e")
_HG = ("host-group", "g")
_JSON = ("json", "j")
_FOLLOW = ("follow", "f")


class Cmd:
    def __init__(
        self,
        name: str,
        aliases: Sequence[str],
        usage: str,
        action: Callable[[GoClient, list[str], dict[str, Any]], None] | None = None,
        flags: Sequence[tuple[str, str]] = (),
        bool_flags: Sequence[tuple[str, str]] = (),
        subs: Sequence[Cmd] = (),
    ) -> None:
        self.name, self.aliases, self.usage = name, tuple(aliases), usage
        self.action, self.flags, self.bool_flags, self.subs = action, flags, bool_flags, subs

    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


def _unexpected(exptd: str, rcvd: int) -> GoError:
    return GoError(f"command expects {exptd} arg(s) but received {rcvd}")


def _one(args: list[str]) -> None:
    if len(args) != 1:
        raise _unexpected("1", len(args))


def _many(args: list[str]) -> None:
    if len(args) < 1:
        raise _unexpected(">=1", len(args))


def _post_nodes(rsrc: str, validate: Callable[[list[str]], None], hg: bool) -> Any:
    def run(c: GoClient, args: list[str], f: dict[str, Any]) -> None:
        validate(args)
        ev, group = f.get("extra-vars", ""), f.get("host-group", "") if hg else ""
        c.post(
            rsrc,
            api_request_json(nodes=args, host_group=group, extra_vars=ev),
            _api_request_repr(nodes=args, host_group=group, extra_vars=ev),
        )

    return run


def _discover(c: GoClient, args: list[str], f: dict[str, Any]) -> None:
    import ipaddress

    _many(args)
    for a in args:
        try:
            ipaddress.ip_address(a)
        except ValueError:
            raise GoError(f"failed to parse ip address {go_quote(a)}") from None
    ev = f.get("extra-vars", "")
    c.post(
        "discover/nodes",
        api_request_json(addrs=args, extra_vars=ev),
        _api_request_repr(addrs=args, extra_vars=ev),
    )


def _globals_set(c: GoClient, args: list[str], f: dict[str, Any]) -> None:
    if args:
        raise _unexpected("0", len(args))
    ev = f.get("extra-vars", "")
    c.post("globals", api_request_json(extra_vars=ev), _api_request_repr(extra_vars=ev))


def _config_set(c: GoClient, args: list[str], f: dict[str, Any]) -> None:
    _one(args)
    try:
        if args[0] == "-":
            text = sys.stdin.read()
        else:
            with open(args[0], encoding="utf-8") as fh:
                text = fh.read()
    except OSError as exc:
        raise GoError(f"failed to open config file. Error: open {args[0]}: {exc.strerror}")
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise GoError(f"failed to parse config json. Error: {exc}") from None
    cfg = go_config(obj)
    c.post("config", api_request_json(config=cfg), _api_request_repr(config=cfg))


def _get(rsrc: Callable[[str], str], render: Callable[[Any], str], needs_arg: bool) -> Any:
    def run(c: GoClient, args: list[str], f: dict[str, Any]) -> None:
        arg = args[0] if args else ""
        if needs_arg and not arg:
            raise _unexpected("1", 0)
        body = c.get(rsrc(arg))
        if f.get("json"):
            _write(go_json_indent(body.decode("utf-8", "replace")).encode())
            return
        _print_template(body, render)

    return run


def _print_template(body: bytes, render: Callable[[Any], str]) -> None:
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
        out = render(obj)
    except (ValueError, TemplateError) as exc:
        raise GoError(f"failed to parse json: '{text}'. Error: {exc}") from None
    _write(out.encode())


def _write(b: bytes) -> None:
    sys.stdout.buffer.write(b)
    sys.stdout.buffer.flush()


def _job_get(c: GoClient, args: list[str], f: dict[str, Any]) -> None:
    job = args[0] if args else ""
    if not job:
        raise _unexpected("1", 0)
    body = c.get(f"info/job/{job}")
    if f.get("follow"):
        _print_template(body, render_job_short)
        c.stream(f"info/logs/{job}", _write)
        return
    if f.get("json"):
        _write(go_json_indent(body.decode("utf-8", "replace")).encode())
        return
    _print_template(body, render_job)


def _node_cmds(many: bool) -> list[Cmd]:
    v = _many if many else _one
    what = "a set of nodes" if many else "a node"
    return [
        Cmd(
            "commission",
            ["c"],
            f"commission {what}",
            _post_nodes("commission/nodes", v, True),
            [_EXTRA, _HG],
        ),
        Cmd(
            "decommission",
            ["d"],
            f"decommission {what}",
            _post_nodes("decommission/nodes", v, False),
            [_EXTRA],
        ),
        # clusterctl's "nodes update" has only -e (its -g is not defined there)
        Cmd(
            "update",
            ["u"],
            f"update {what}",
            _post_nodes("update/nodes", v, not many),
            [_EXTRA] if many else [_EXTRA, _HG],
        ),
        Cmd(
            "get",
            ["g"],
            "get status information for all nodes" if many else "get node's status information",
            _get(
                (lambda a: "info/nodes") if many else (lambda a: f"info/node/{a}"),
                render_nodes if many else render_node,
                not many,
            ),
            bool_flags=[_JSON],
        ),
    ]


COMMANDS = [
    Cmd("node", ["n"], "node related operation", subs=_node_cmds(False)),
    Cmd("nodes", ["a"], "all nodes related operation", subs=_node_cmds(True)),
    Cmd(
        "global",
        ["g"],
        "set/get global info",
        subs=[
            Cmd(
                "get",
                ["g"],
                "get global info",
                _get(lambda a: "info/globals", render_map, False),
                bool_flags=[_JSON],
            ),
            Cmd("set", ["s"], "set global info", _globals_set, [_EXTRA]),
        ],
    ),
    Cmd(
        "job",
        ["j"],
        "provisioning job info",
        subs=[
            Cmd(
                "get",
                ["g"],
                "get job info. Expects an arg with value 'active' or 'last'",
                _job_get,
                bool_flags=[_JSON, _FOLLOW],
            )
        ],
    ),
    Cmd("discover", ["d"], "provision one or more nodes for discovery", _discover, [_EXTRA]),
    Cmd(
        "config",
        ["c"],
        "set/get clusterm configuration",
        subs=[
            Cmd(
                "get",
                ["g"],
                "get clusterm configuration",
                _get(lambda a: "config", render_map, False),
                bool_flags=[_JSON],
            ),
            Cmd(
                "set",
                ["s"],
                "set clusterm configuration. use '-' as the arg to read JSON configuration "
                "from stdin, else provide a path to the file containing JSON configuration",
                _config_set,
            ),
        ],
    ),
]


# --------------------------------------------------------------------------- arguments


class _Usage(Exception):
    """Print ``text`` on stdout and exit 0, as the Go cli library does."""


def _help(prog: str, path: Sequence[str], cmds: Sequence[Cmd]) -> str:
    lines = [
        "NAME:",
        f"   {' '.join([prog, *path])} - utility to interact with cluster manager",
        "",
        "USAGE:",
        f"   {' '.join([prog, *path])} [global options] command [command options] [arguments...]",
        "",
        "COMMANDS:",
    ]
    for c in cmds:
        lines.append(f"   {', '.join(c.names()):<20}{c.usage}")
    if not path:
        lines += [
            "",
            "GLOBAL OPTIONS:",
            f'   --url, -u "{DEFAULT_URL}"\tcluster manager\'s REST service url',
            "   --debug\t\t\tprint each request on stderr (gossipmgr)",
            "   --help, -h\t\t\tshow help",
            "   --version, -v\t\tprint the version",
        ]
    return "\n".join(lines) + "\n"


def _parse_flags(cmd: Cmd, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Go's flag package after the cli library's reordering: flags may follow args."""
    values: dict[str, Any] = {}
    args: list[str] = []
    names = {n: long for long, short in cmd.flags for n in (long, short)}
    bools = {n: long for long, short in cmd.bool_flags for n in (long, short)}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            args.extend(argv[i + 1 :])
            break
        if a.startswith("-") and a != "-":
            key, eq, val = a.lstrip("-").partition("=")
            if key in bools:
                values[bools[key]] = (val.lower() in ("1", "t", "true")) if eq else True
            elif key in names:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise _Usage("Incorrect Usage.\n")
                    val = argv[i]
                values[names[key]] = val
            elif key in ("help", "h"):
                raise _Usage(f"{cmd.name} - {cmd.usage}\n")
            else:
                raise _Usage("Incorrect Usage.\n")
        else:
            args.append(a)
        i += 1
    return args, values


def _find(cmds: Sequence[Cmd], word: str) -> Cmd | None:
    for c in cmds:
        if word in c.names():
            return c
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run clusterctl. Returns the exit code."""
    prog = sys.argv[0] if sys.argv and sys.argv[0] else "clusterctl"
    argv = list(sys.argv[1:] if argv is None else argv)
    url = DEFAULT_URL
    debug = False
    try:
        # global options, before the command
        while argv and argv[0].startswith("-"):
            a = argv.pop(0)
            key, eq, val = a.lstrip("-").partition("=")
            if key in ("url", "u"):
                if not eq:
                    if not argv:
                        raise _Usage("Incorrect Usage.\n\n" + _help(prog, [], COMMANDS))
                    val = argv.pop(0)
                url = val
            elif key in ("version", "v"):
                print(f"{prog} version {__version__}")
                return 0
            elif key in ("help", "h"):
                raise _Usage(_help(prog, [], COMMANDS))
            elif key == "debug":
                debug = True
            else:
                raise _Usage("Incorrect Usage.\n\n" + _help(prog, [], COMMANDS))
        if not argv:
            raise _Usage(_help(prog, [], COMMANDS))
        cmd = _find(COMMANDS, argv[0])
        if cmd is None:
            raise _Usage(f"No help topic for '{argv[0]}'\n")
        path = [cmd.name]
        rest = argv[1:]
        if cmd.subs:
            if not rest or rest[0] in ("-h", "--help", "help", "h"):
                raise _Usage(_help(prog, path, cmd.subs))
            sub = _find(cmd.subs, rest[0])
            if sub is None:
                raise _Usage(f"No help topic for '{rest[0]}'\n")
            cmd, rest = sub, rest[1:]
        args, flags = _parse_flags(cmd, rest)
    except _Usage as u:
        sys.stdout.write(str(u))
        return 0
    assert cmd.action is not None
    try:
        token, hint = _token_from_env()
        client = Client(url if "://" in url else f"http://{url}", token, None, hint)
    except CliError as exc:
        return _fatal(str(exc))
    try:
        cmd.action(GoClient(url, client, debug), args, flags)
    except GoError as exc:
        return _fatal(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        client.close()
    return 0


def _token_from_env() -> tuple[str | None, str]:
    """The gossipmgr CLI's token search without its flags (clusterctl has none):
    $GOSSIPMGR_TOKEN, $GOSSIPMGR_TOKEN_FILE, then the agent's own token file."""
    import argparse

    return _token(argparse.Namespace(token=None, token_file=None))


def _fatal(msg: str) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.write(fatal_line(msg, tty=sys.stderr.isatty()))
    sys.stderr.flush()
    raise SystemExit(1)


if __name__ == "__main__":
    from gossipmgr.clusterm.clusterctl import main as _main

    sys.exit(_main())
