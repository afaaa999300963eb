"""``gossipmgr token add``: make a named API token (``gossipmgr.core.tokens``).

Runs locally, no API call: it makes 32 random bytes, prints them once (they are stored
nowhere else), and appends ``NAME ROLE sha256:HEX`` to the tokens file, creating it mode
0600. The agents read the file at start and on SIGHUP; copy the line to every instance's
file (a forwarded request is checked again by the lease holder).
"""

import argparse
import os
import secrets
import sys

from gossipmgr.cli.client import CliError
from gossipmgr.core.tokens import make_token, parse_tokens
from gossipmgr.errors import ConfigError


def cmd_token_add(args: argparse.Namespace) -> int:
    path = args.file
    secret = secrets.token_urlsafe(32)
    try:
        token = make_token(args.name, args.role, secret)
        text = path.read_text() if path.exists() else ""
        existing = parse_tokens(text, str(path))
    except ConfigError as exc:
        raise CliError(str(exc), 2) from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}", 1) from None
    except UnicodeDecodeError:
        raise CliError(f"cannot read {path}: not UTF-8 text", 1) from None
    if any(t.name == token.name for t in existing):
        raise CliError(f'{path} already has a token named "{token.name}"', 1)
    sep = "" if not text or text.endswith("\n") else "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(sep + token.line() + "\n")
    except OSError as exc:
        raise CliError(f"cannot write {path}: {exc.strerror}", 1) from None
    print(secret)
    print(
        f'token "{token.name}" ({token.role}) added to {path}: the secret above is shown '
        "only now. Send SIGHUP to the agents (copy the line to every instance's file).",
        file=sys.stderr,
    )
    return 0
