"""``gossipmgr agent``: the daemon's command line (every option is also a config file key).

The daemon itself is :class:`gossipmgr.agent.Agent`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import trio

from gossipmgr.agent import Agent
from gossipmgr.config import AgentConfig, load
from gossipmgr.errors import GossipmgrError
from gossipmgr.runtime import visibletrace

log = logging.getLogger("gossipmgr.agent")

OPTIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "--config",
        {
            "type": Path,
            "metavar": "FILE",
            "help": "TOML config file (every option is "
            "also a key there; the ansible section is [ansible]); SIGHUP re-reads it",
        },
    ),
    ("--name", {"help": "instance name, unique; also its Serf node name (default: hostname)"}),
    ("--data-dir", {"type": Path, "help": "state, logs, keys (default /var/lib/gossipmgr)"}),
    ("--api-addr", {"help": "API listen HOST:PORT (default 127.0.0.1:9007; port 0 = any)"}),
    ("--advertise-api", {"help": "API URL peers and the CLI use (default: from --api-addr)"}),
    (
        "--gossip-addr",
        {
            "help": "UDP HOST:PORT for gossip between instances "
            "(default 127.0.0.1:7950; port 0 = any)"
        },
    ),
    ("--serf-bind", {"help": "embedded Serf agent's bind HOST:PORT (default 127.0.0.1:7946)"}),
    ("--serf-rpc-bind", {"help": "embedded Serf agent's RPC HOST:PORT (default 127.0.0.1:7373)"}),
    (
        "--serf-rpc",
        {
            "help": "use an existing Serf agent's RPC at HOST:PORT instead of "
            "starting one (its node name must equal --name)"
        },
    ),
    (
        "--serf-rpc-auth",
        {
            "help": "Serf RPC auth key, if the agent sets rpc_auth. Deprecated: every local "
            "user can read it in /proc; use --serf-rpc-auth-file or the config file"
        },
    ),
    (
        "--serf-rpc-auth-file",
        {"type": Path, "help": "file holding the Serf RPC auth key (rpc_auth)"},
    ),
    (
        "--serf-profile",
        {
            "choices": ["lan", "local", "wan"],
            "help": "memberlist timing profile for the embedded agent (default lan)",
        },
    ),
    (
        "--join",
        {
            "action": "append",
            "metavar": "ADDR",
            "help": "Serf address to join (repeatable; retried until it works)",
        },
    ),
    (
        "--encrypt-key-file",
        {
            "type": Path,
            "help": "shared gossip key (32 bytes base64, Serf's "
            "-encrypt format; also the embedded Serf's key unless --serf-encrypt-key-file or "
            "--serf-no-encrypt). Default: "
            "<data-dir>/gossip.key, created if missing",
        },
    ),
    (
        "--serf-encrypt-key-file",
        {
            "type": Path,
            "metavar": "FILE",
            "help": "the Serf cluster's key, when it differs from the gossip key "
            "(embedded Serf only)",
        },
    ),
    (
        "--serf-no-encrypt",
        {
            "action": "store_true",
            "default": None,
            "help": "run the embedded Serf unencrypted, to join nodes whose Serf runs without "
            "-encrypt (contiv/ansible's); gossip stays sealed. Warned about at start and "
            "on /health",
        },
    ),
    (
        "--serf-discover",
        {
            "metavar": "NAME",
            "help": "find the Serf cluster by mDNS under this name (Serf's -discover; "
            "contiv's serf_cluster_name)",
        },
    ),
    (
        "--serf-iface",
        {
            "metavar": "IF",
            "help": "interface the embedded Serf binds and runs mDNS on (Serf's -iface); "
            "--serf-bind then defaults to 0.0.0.0:7946, Serf picking the interface's address",
        },
    ),
    (
        "--api-token-file",
        {
            "type": Path,
            "help": "bearer token required by every route but /health "
            "(default: <data-dir>/api.token, created mode 0600 on first start)",
        },
    ),
    (
        "--api-tokens-file",
        {
            "type": Path,
            "help": "named tokens with roles, one 'NAME ROLE sha256:HEX' line each "
            "(gossipmgr token add writes them), accepted beside the --api-token-file token",
        },
    ),
    (
        "--no-auth",
        {
            "action": "store_true",
            "default": None,
            "help": "serve the API without any token: every local user can then run "
            "playbooks as the agent's user (warned at start and in /health)",
        },
    ),
    ("--tls-cert", {"type": Path, "help": "serve the API over TLS with this certificate"}),
    ("--tls-key", {"type": Path, "help": "... and this private key"}),
    (
        "--insecure",
        {
            "action": "store_true",
            "default": None,
            "help": "with --no-auth, allow a non-loopback API address too",
        },
    ),
    (
        "--playbook-dir",
        {
            "type": Path,
            "help": "where site.yml/cleanup.yml live "
            "(default: the sample playbooks shipped with gossipmgr)",
        },
    ),
    (
        "--reconfigure-on-reappear",
        {
            "action": "store_true",
            "default": None,
            "help": "re-run the configure playbook on an Allocated node that comes back",
        },
    ),
    (
        "--accept-log-damage",
        {
            "action": "store_true",
            "default": None,
            "help": "start even if acknowledged log records are damaged: keep the intact "
            "ones, copy the damaged segment to log.<seq>.corrupt (they are LOST here; "
            "peers may still hold them)",
        },
    ),
    (
        "--node-history-limit",
        {"type": int, "help": "history entries kept per node (default 200; 0: none)"},
    ),
    ("--lease-ttl-ms", {"type": int, "help": "lease time to live (default 10000)"}),
    (
        "--lease-renew-ms",
        {"type": int, "help": "renew when this much of the TTL has passed (default 2500)"},
    ),
    (
        "--watch-history",
        {"type": int, "help": "changes GET /watch keeps for resuming clients (default 10000)"},
    ),
    (
        "--lease-solo-after-s",
        {
            "type": float,
            "help": "two instances: the survivor takes the lease once Serf has listed the "
            "other failed this long (default 30; negative: only by 'lease take --force')",
        },
    ),
    ("--log-level", {"choices": ["debug", "info", "warning", "error"], "help": "default info"}),
]


def add_agent_options(p: argparse.ArgumentParser) -> None:
    for flag, kw in OPTIONS:
        p.add_argument(flag, **kw)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, _ in OPTIONS:
        key = flag[2:].replace("-", "_")
        if key == "config":
            continue
        val = getattr(args, key, None)
        if key == "join" and val is not None:
            val = tuple(val)
        overrides[key] = val
    return overrides


def config_from_args(args: argparse.Namespace) -> AgentConfig:
    return load(args.config, overrides_from_args(args))


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def cmd_agent(args: argparse.Namespace) -> int:
    try:
        overrides = overrides_from_args(args)
        cfg = load(args.config, overrides)
        setup_logging(cfg.log_level)
        for note in cfg.config_notes:
            log.warning("%s", note)
        if overrides.get("serf_rpc_auth"):
            log.warning(
                "--serf-rpc-auth puts the Serf RPC secret on the command line, where every "
                "local user can read it (/proc/<pid>/cmdline): use --serf-rpc-auth-file or "
                "serf_rpc_auth in a 0600 config file"
            )
        agent = Agent(cfg, overrides)
    except GossipmgrError as exc:
        print(f"gossipmgr agent: {exc}", file=sys.stderr)
        return 2
    try:
        trio.run(agent.run, instruments=visibletrace.install(agent))
    except GossipmgrError as exc:
        print(f"gossipmgr agent: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"gossipmgr agent: {exc}", file=sys.stderr)
        return 1
    except BaseExceptionGroup as group:
        first = _first_leaf(group)
        print(f"gossipmgr agent: {first}", file=sys.stderr)
        return 1
    _exit_clean()


def _exit_clean() -> NoReturn:
    """Exit 0 without the interpreter's teardown: by now the store is closed (its last
    fsync done) and the Serf child has left and been reaped; freeing the restored state
    object by object took 0.2-0.35 s of a 0.45 s stop with 10,000 nodes (issue 17). Flush
    what is buffered first (logging.shutdown flushes and closes every handler)."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(0)


def _first_leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def add_commands(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the gossipmgr daemon",
        description="Run one gossipmgr instance: REST API, gossip, an embedded Serf agent "
        "(unless --serf-rpc), the lease and the job runner. SIGHUP reloads the config "
        "file's token, gossip keys and ansible section; SIGINT/SIGTERM leave gracefully.",
    )
    add_agent_options(p)
    p.set_defaults(func=cmd_agent)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gossipmgr agent")
    add_agent_options(parser)
    return cmd_agent(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
