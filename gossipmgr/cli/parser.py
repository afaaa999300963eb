"""The ``gossipmgr`` argument parser: clusterctl's commands, aliases and flags, and ours.

Hooks for the commands of higher layers: :data:`SUBCOMMAND_MODULES` maps a command name
(``import``, ``agent``, ``demo``) to the module that implements it. The module is imported
only when that command is run (importing the agent pulls in Quart, hypercorn and ansible:
~1 s that every client command would otherwise pay), so this package never imports the
layers above it; its ``add_commands(subparsers)`` registers the real parser with
``set_defaults(func=...)``: ``func(args) -> int``, or, with ``client_command=True`` too,
``func(client, args) -> int`` called with the client the global options describe (as the
commands of :mod:`gossipmgr.cli.commands`). Until then the command has a placeholder
parser (its help line only).
"""

import argparse
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from gossipmgr import __version__
from gossipmgr.cli import commands as cmds
from gossipmgr.cli import tokens as cli_tokens
from gossipmgr.cli.client import CliError
from gossipmgr.cli.watch import add_watch_command

DEFAULT_URL = "http://127.0.0.1:9007"
#: Commands implemented elsewhere: name -> (module with add_commands(sub), one-line help).
SUBCOMMAND_MODULES: dict[str, tuple[str, str]] = {
    "import": ("gossipmgr.clusterm.importer", "import another manager's inventory"),
    "agent": ("gossipmgr.daemon", "run the gossipmgr daemon"),
    "demo": ("gossipmgr.demo", "run a local demo cluster through its workflows"),
}
#: Global options that take a value (to find the command word in argv without parsing).
_VALUE_OPTIONS = frozenset({"-u", "--url", "--token", "--token-file", "--cacert"})

_Sub = Any  # argparse's _SubParsersAction, a private type


def common_options() -> argparse.ArgumentParser:
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


def _global_options(parser: argparse.ArgumentParser) -> None:
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


def _verbs(sub: _Sub, cmd: str, aliases: list[str], help_text: str, metavar: str = "VERB") -> Any:
    p = sub.add_parser(cmd, aliases=aliases, help=help_text)
    vs = p.add_subparsers(dest="verb", metavar=metavar)
    vs.required = True
    return vs


def _extra_vars(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-e",
        "--extra-vars",
        default="",
        help="extra-vars as a JSON object (or @FILE), e.g. '{\"a\": 1}'",
    )


def _queue(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--queue",
        action="store_true",
        help="while a job runs, wait in the job queue instead of being refused",
    )


def _host_group(p: argparse.ArgumentParser) -> None:
    p.add_argument("-g", "--host-group", default="", help="service-master or service-worker")


def _add_node_commands(sub: _Sub, common: argparse.ArgumentParser) -> None:
    for cmd, alias, many in (("node", "n", False), ("nodes", "a", True)):
        vs = _verbs(sub, cmd, [alias], "several nodes" if many else "one node")
        for verb, short in (("commission", "c"), ("decommission", "d"), ("update", "u")):
            vp = vs.add_parser(verb, aliases=[short], parents=[common])
            if many:
                vp.add_argument("names", nargs="+", metavar="NAME")
            else:
                vp.add_argument("name", metavar="NAME")
            _extra_vars(vp)
            _queue(vp)
            if verb in ("commission", "update"):
                _host_group(vp)
            vp.add_argument(
                "--check",
                action="store_true",
                help="check mode: run the playbooks with ansible's --check --diff; the job "
                "log shows what would change, and nothing changes (no node status either)",
            )
            vp.set_defaults(func=cmds.cmd_node)
        if many:
            _add_upgrade(vs, common)
        vp = vs.add_parser("get", aliases=["g"], parents=[common])
        if many:
            vp.add_argument("names", nargs="*", metavar="NAME")
        else:
            vp.add_argument("name", metavar="NAME")
        vp.set_defaults(func=cmds.cmd_node)
        if not many:
            vp = vs.add_parser(
                "forget",
                parents=[common],
                help="remove a node that is gone (Disappeared) from the inventory",
            )
            vp.add_argument("name", metavar="NAME")
            vp.add_argument("--force", action="store_true", help="also a Discovered (alive) node")
            vp.set_defaults(func=cmds.cmd_node)
            vp = vs.add_parser(
                "history",
                parents=[common],
                help="who did what to the node, where, when and why (newest first)",
            )
            vp.add_argument("name", metavar="NAME")
            vp.add_argument("-n", "--limit", type=int, default=None, help="at most N entries")
            vp.set_defaults(func=cmds.cmd_node)


def _add_upgrade(vs: _Sub, common: argparse.ArgumentParser) -> None:
    vp = vs.add_parser(
        "upgrade",
        parents=[common],
        help="rolling upgrade of Allocated nodes in batches (the upgrade_playbook)",
    )
    vp.add_argument("names", nargs="*", metavar="NAME")
    vp.add_argument("--all", action="store_true", help="every Allocated node")
    vp.add_argument("--batch", default=None, help="nodes per batch: N or P%% (default 1)")
    vp.add_argument(
        "--max-fail", type=int, default=0, help="stop once more than K nodes failed (default 0)"
    )
    _extra_vars(vp)
    _queue(vp)
    vp.set_defaults(func=cmds.cmd_node)


def _add_global_commands(sub: _Sub, common: argparse.ArgumentParser) -> None:
    vs = _verbs(sub, "global", ["g"], "global extra-vars")
    vp = vs.add_parser("get", aliases=["g"], parents=[common])
    vp.add_argument("key", nargs="?", metavar="KEY")
    vp.set_defaults(func=cmds.cmd_global)
    vp = vs.add_parser(
        "set",
        aliases=["s"],
        parents=[common],
        help="set -e JSON (replace all) or set KEY VALUE (one)",
    )
    vp.add_argument("key", nargs="?", metavar="KEY")
    vp.add_argument("value", nargs="?", metavar="VALUE")
    _extra_vars(vp)
    vp.set_defaults(func=cmds.cmd_global)
    vp = vs.add_parser(
        "set-many",
        parents=[common],
        help="set and remove many in one write: a JSON object {KEY: VALUE | null} in FILE or -",
    )
    vp.add_argument("file", metavar="FILE|-")
    vp.set_defaults(func=cmds.cmd_global)
    vp = vs.add_parser("delete", aliases=["rm"], parents=[common])
    vp.add_argument("key", metavar="KEY")
    vp.set_defaults(func=cmds.cmd_global)


def _add_job_commands(sub: _Sub, common: argparse.ArgumentParser) -> None:
    vs = _verbs(sub, "job", ["j"], "a job: get active|last|ID, cancel")
    vp = vs.add_parser("get", aliases=["g"], parents=[common])
    vp.add_argument("job", metavar="active|last|ID")
    vp.add_argument("-f", "--follow", action="store_true", help="stream the log until it ends")
    vp.add_argument(
        "--offset",
        type=int,
        default=0,
        metavar="N",
        help="with -f: start at line N (0-based) of the log",
    )
    vp.set_defaults(func=cmds.cmd_job)
    vp = vs.add_parser("cancel", parents=[common], help="the running job, or job ID")
    vp.add_argument("job", nargs="?", metavar="ID", help="a queued or running job")
    vp.set_defaults(func=cmds.cmd_job)

    p = sub.add_parser("jobs", parents=[common], help="job history")
    p.set_defaults(func=cmds.cmd_jobs)

    p = sub.add_parser("discover", aliases=["d"], parents=[common], help="discover nodes by IP")
    p.add_argument("addrs", nargs="+", metavar="IP")
    _extra_vars(p)
    _queue(p)
    p.set_defaults(func=cmds.cmd_discover)


def _add_config_commands(sub: _Sub, common: argparse.ArgumentParser) -> None:
    vs = _verbs(sub, "config", ["c"], "daemon configuration")
    vp = vs.add_parser("get", aliases=["g"], parents=[common])
    vp.set_defaults(func=cmds.cmd_config)
    vp = vs.add_parser("set", aliases=["s"], parents=[common])
    vp.add_argument("file", metavar="FILE|-")
    vp.set_defaults(func=cmds.cmd_config)


def _add_peer_commands(sub: _Sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("peers", parents=[common], help="gossipmgr instances and the lease")
    p.set_defaults(func=cmds.cmd_peers)
    p = sub.add_parser("lease", parents=[common], help="the lease: show, reset or take")
    p.add_argument(
        "action",
        nargs="?",
        choices=["show", "reset", "take"],
        default="show",
        help="reset: vacate the lease one epoch up, deposing its holder; take (with "
        "--force): the instance addressed holds it without a majority (docs/design.md)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="reset even while an alive instance holds it; take: required",
    )
    p.set_defaults(func=cmds.cmd_lease)


def _add_token_commands(sub: _Sub) -> None:
    vs = _verbs(sub, "token", [], "named API tokens (the agent's api_tokens_file)")
    vp = vs.add_parser(
        "add",
        help="make a token: print its secret once, append NAME ROLE sha256:HASH to the file",
    )
    vp.add_argument("name", metavar="NAME")
    vp.add_argument("--role", choices=["admin", "read"], default="read", help="default: read")
    vp.add_argument("--file", required=True, type=Path, help="the tokens file (api_tokens_file)")
    vp.set_defaults(func=cli_tokens.cmd_token_add)


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole parser; ``argv`` only decides which external command module to import."""
    common = common_options()
    parser = argparse.ArgumentParser(
        prog="gossipmgr",
        description="gossipmgr: highly available cluster manager (clusterctl compatible)",
    )
    _global_options(parser)
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    sub.required = True
    _add_node_commands(sub, common)
    _add_global_commands(sub, common)
    _add_job_commands(sub, common)
    _add_config_commands(sub, common)
    word = _command_word(argv)
    _add_hooked(sub, "import", word)  # in its place among the client commands
    _add_peer_commands(sub, common)
    _add_token_commands(sub)
    add_watch_command(sub, common)
    for name in SUBCOMMAND_MODULES:
        if name != "import":
            _add_hooked(sub, name, word)
    return parser


def _add_hooked(sub: _Sub, name: str, word: str | None) -> None:
    """The command ``name`` of :data:`SUBCOMMAND_MODULES`: its module's parser when it is
    the one being run, else a placeholder for --help (never selected when the module
    exists: it was imported)."""
    mod, help_text = SUBCOMMAND_MODULES[name]
    if name == word and add_module_commands(sub, mod):
        return
    p = sub.add_parser(name, help=help_text)
    p.set_defaults(func=_missing_module(name, mod))


def _missing_module(name: str, module: str) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        raise CliError(f"the {name} command is not available ({module} is not installed)", 2)

    return run


def add_module_commands(sub: _Sub, module: str) -> bool:
    """The hook (:data:`SUBCOMMAND_MODULES`): ``module.add_commands(subparsers)`` if the
    module exists and defines it."""
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
