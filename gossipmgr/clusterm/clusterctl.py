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

The parts: :mod:`~gossipmgr.clusterm.gotext` (Go's printing),
:mod:`~gossipmgr.clusterm.templates` (the output templates),
:mod:`~gossipmgr.clusterm.goclient` (the Go client's requests and errors); this module holds
the commands and their argument parsing.
"""

import ipaddress
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from gossipmgr import __version__
from gossipmgr.cli.client import Client, CliError, find_token
from gossipmgr.clusterm.goclient import (
    GoClient,
    GoError,
    api_request_json,
    api_request_repr,
    go_config,
)
from gossipmgr.clusterm.gotext import fatal_line, go_json_indent, go_quote
from gossipmgr.clusterm.templates import (
    TemplateError,
    render_job,
    render_job_short,
    render_map,
    render_node,
    render_nodes,
)

DEFAULT_URL = "0.0.0.0:9007"

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
        subs: Sequence["Cmd"] = (),
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
            api_request_repr(nodes=args, host_group=group, extra_vars=ev),
        )

    return run


def _discover(c: GoClient, args: list[str], f: dict[str, Any]) -> None:
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
        api_request_repr(addrs=args, extra_vars=ev),
    )


def _globals_set(c: GoClient, args: list[str], f: dict[str, Any]) -> None:
    if args:
        raise _unexpected("0", len(args))
    ev = f.get("extra-vars", "")
    c.post("globals", api_request_json(extra_vars=ev), api_request_repr(extra_vars=ev))


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
    c.post("config", api_request_json(config=cfg), api_request_repr(config=cfg))


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


def _flag(cmd: Cmd, argv: list[str], i: int, values: dict[str, Any], names: dict[str, str]) -> int:
    """Read the flag at ``argv[i]`` into ``values``; return the index of the last word used."""
    bools = {n: long for long, short in cmd.bool_flags for n in (long, short)}
    key, eq, val = argv[i].lstrip("-").partition("=")
    if key in bools:
        values[bools[key]] = (val.lower() in ("1", "t", "true")) if eq else True
        return i
    if key in names:
        if not eq:
            i += 1
            if i >= len(argv):
                raise _Usage("Incorrect Usage.\n")
            val = argv[i]
        values[names[key]] = val
        return i
    if key in ("help", "h"):
        raise _Usage(f"{cmd.name} - {cmd.usage}\n")
    raise _Usage("Incorrect Usage.\n")


def _parse_flags(cmd: Cmd, argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Go's flag package after the cli library's reordering: flags may follow args."""
    values: dict[str, Any] = {}
    args: list[str] = []
    names = {n: long for long, short in cmd.flags for n in (long, short)}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            args.extend(argv[i + 1 :])
            break
        if a.startswith("-") and a != "-":
            i = _flag(cmd, argv, i, values, names)
        else:
            args.append(a)
        i += 1
    return args, values


def _find(cmds: Sequence[Cmd], word: str) -> Cmd | None:
    for c in cmds:
        if word in c.names():
            return c
    return None


def _global_options(prog: str, argv: list[str]) -> tuple[str, bool]:
    """The options before the command (consumed from ``argv``): (url, debug). Raises
    _Usage for help, the version, or an option clusterctl does not know."""
    url = DEFAULT_URL
    debug = False
    while argv and argv[0].startswith("-"):
        key, eq, val = argv.pop(0).lstrip("-").partition("=")
        if key in ("url", "u"):
            if not eq and not argv:
                raise _Usage("Incorrect Usage.\n\n" + _help(prog, [], COMMANDS))
            url = val if eq else argv.pop(0)
        elif key in ("version", "v"):
            raise _Usage(f"{prog} version {__version__}\n")
        elif key in ("help", "h"):
            raise _Usage(_help(prog, [], COMMANDS))
        elif key == "debug":
            debug = True
        else:
            raise _Usage("Incorrect Usage.\n\n" + _help(prog, [], COMMANDS))
    return url, debug


def _command(prog: str, argv: list[str]) -> tuple[Cmd, list[str]]:
    """The command (or subcommand) ``argv`` names and the words after it."""
    if not argv:
        raise _Usage(_help(prog, [], COMMANDS))
    cmd = _find(COMMANDS, argv[0])
    if cmd is None:
        raise _Usage(f"No help topic for '{argv[0]}'\n")
    rest = argv[1:]
    if not cmd.subs:
        return cmd, rest
    if not rest or rest[0] in ("-h", "--help", "help", "h"):
        raise _Usage(_help(prog, [cmd.name], cmd.subs))
    sub = _find(cmd.subs, rest[0])
    if sub is None:
        raise _Usage(f"No help topic for '{rest[0]}'\n")
    return sub, rest[1:]


def main(argv: Sequence[str] | None = None) -> int:
    """Run clusterctl. Returns the exit code."""
    prog = sys.argv[0] if sys.argv and sys.argv[0] else "clusterctl"
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        url, debug = _global_options(prog, words)
        cmd, rest = _command(prog, words)
        args, flags = _parse_flags(cmd, rest)
    except _Usage as u:
        sys.stdout.write(str(u))
        return 0
    assert cmd.action is not None
    try:
        # The gossipmgr CLI's token search without its flags (clusterctl has none).
        token, hint = find_token()
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


def _fatal(msg: str) -> NoReturn:
    sys.stdout.flush()
    sys.stderr.write(fatal_line(msg, tty=sys.stderr.isatty()))
    sys.stderr.flush()
    raise SystemExit(1)


if __name__ == "__main__":
    sys.exit(main())
