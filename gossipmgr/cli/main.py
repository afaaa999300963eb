"""``gossipmgr``: the command line (clusterctl's commands, aliases and flags;
docs/migrating-from-clusterm.md).

Every client command is one or two HTTP calls to a gossipmgr API (``--url``, default
``http://127.0.0.1:9007`` or ``$GOSSIPMGR_URL``) with the sync httpx client. Output is a
plain aligned table (or a short layout) by default and the server's JSON with ``--json``.

Exit codes (clusterctl exited 0 on usage errors and panicked when the daemon was down):

* 0  done (``job get -f``: the job completed)
* 1  the server refused (its ``{"error"}`` text is printed), the daemon cannot be reached
     (one line, no traceback), or a followed job ended Errored
* 2  usage error (argparse), bad local input (an IP that does not parse, an unreadable file)

The parts: :mod:`~gossipmgr.cli.parser` (commands and flags, the hook for ``import``,
``agent`` and ``demo``),
:mod:`~gossipmgr.cli.commands` (one function per command), :mod:`~gossipmgr.cli.client`
(HTTP, errors, the token search), :mod:`~gossipmgr.cli.output` (tables).
"""

import gc
import logging
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from gossipmgr.cli.client import Client, CliError, find_token
from gossipmgr.cli.commands import CLIENT_COMMANDS
from gossipmgr.cli.parser import DEFAULT_URL, build_parser

__all__ = ["build_parser", "main"]


def _fail(text: str, code: int) -> NoReturn:
    print(f"gossipmgr: {text}", file=sys.stderr)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Returns the exit code (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # No cyclic GC while the command's module loads (the agent's pulls in Quart, hypercorn
    # and trio: ~130 collections that freed almost nothing, ~15% of that import's CPU time;
    # issue 17, start time). Imports make no cyclic garbage worth collecting.
    gc_on = gc.isenabled()
    gc.disable()
    try:
        parser = build_parser(argv)
    finally:
        if gc_on:
            gc.enable()
    args = parser.parse_args(argv)
    func = args.func
    client_command = func in CLIENT_COMMANDS or getattr(args, "client_command", False)
    if args.debug:
        if client_command:  # httpx logs every request at INFO
            logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        elif getattr(args, "log_level", "absent") is None:  # the agent's own option
            args.log_level = "debug"
    try:
        if not client_command:
            return int(func(args))
        url = args.url or os.environ.get("GOSSIPMGR_URL") or DEFAULT_URL
        token, hint = find_token(args.token, args.token_file)
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
    sys.exit(main())
