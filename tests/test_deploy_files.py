"""The deployment files and operator docs stay true to the code.

Checks: deploy/gossipmgr.toml loads through gossipmgr.config.load, names every AgentConfig
and AnsibleConfig key (active or commented) and its active lines hold the real defaults;
the systemd unit's ExecStart uses options `gossipmgr agent` has; every ``--option`` in the
operator docs exists in the agent's or the CLI's parser; every ``METHOD /path`` in docs/*.md
is a route of the API's OpenAPI spec, which is itself checked against the app's routes.
Pure reading and parsing: no sockets, no processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from gossipmgr import api
from gossipmgr import daemon as agent
from gossipmgr.cli import main as cli
from gossipmgr.config import AgentConfig, AnsibleConfig, load

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "deploy" / "gossipmgr.toml"
UNIT = ROOT / "deploy" / "gossipmgr.service"
OPS_DOCS = [ROOT / "docs" / "operations.md", ROOT / "docs" / "security.md"]
ROUTE_RE = re.compile(r"\b(GET|POST|PUT|DELETE|PATCH)\s+`?(/[A-Za-z0-9_{}./-]*)")
OPTION_RE = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")

AGENT_KEYS = [
    f.name
    for f in dataclasses.fields(AgentConfig)
    if f.name not in ("config_file", "config_notes")  # set by load(), not file keys
]
ANSIBLE_KEYS = [f.name for f in dataclasses.fields(AnsibleConfig)]


def _key_lines(text: str) -> dict[str, list[tuple[bool, str]]]:
    """key -> [(active?, section)] for every `key = ...` line, commented (`# key =`) or not."""
    out: dict[str, list[tuple[bool, str]]] = {}
    section = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("[") and s.endswith("]"):
            section = s[1:-1].strip()
            continue
        m = re.match(r"^(#\s*)?([a-z_]+)\s*=", s)
        if m:
            out.setdefault(m.group(2), []).append((m.group(1) is None, section))
    return out


def test_sample_config_loads_and_mentions_every_key() -> None:
    cfg = load(SAMPLE, {})
    assert cfg.config_file == SAMPLE
    lines = _key_lines(SAMPLE.read_text())
    for key in AGENT_KEYS:
        if key == "ansible":
            continue
        assert key in lines, f"deploy/gossipmgr.toml does not mention {key}"
        assert any(sec == "" for _, sec in lines[key]), f"{key} must be a top-level key"
    for key in ANSIBLE_KEYS:
        assert key in lines, f"deploy/gossipmgr.toml does not mention [ansible] {key}"
        assert any(sec == "ansible" for _, sec in lines[key]), f"{key} belongs in [ansible]"
    assert any(line.strip() == "[ansible]" for line in SAMPLE.read_text().splitlines())


def test_sample_config_active_values_are_the_defaults() -> None:
    """The sample claims its active lines are the built-in defaults: check that claim."""
    raw = tomllib.loads(SAMPLE.read_text())
    cfg, default = load(SAMPLE, {}), AgentConfig()
    active = [k for k in raw if k != "ansible"]
    assert active, "the sample has no active keys"
    for key in active:
        assert getattr(cfg, key) == getattr(default, key), key
    for key in raw.get("ansible", {}):
        assert getattr(cfg.ansible, key) == getattr(default.ansible, key), f"ansible.{key}"


def test_sample_config_commented_lines_load_when_uncommented(tmp_path: Path) -> None:
    """Every `# key = value` example is valid TOML of the right type for that key."""
    text = re.sub(r"(?m)^# ([a-z_]+ = )", r"\1", SAMPLE.read_text())
    path = tmp_path / "all.toml"
    path.write_text(text)
    cfg = load(path, {})
    raw = tomllib.loads(text)
    for key in AGENT_KEYS:
        if key != "ansible":
            assert key in raw, f"{key} has no example value (active or commented)"
    assert cfg.tls_cert is not None and cfg.tls_key is not None


def _agent_flags() -> set[str]:
    return {flag for flag, _ in agent.OPTIONS}


def _all_parser_flags(p: argparse.ArgumentParser) -> set[str]:
    flags: set[str] = set()
    for action in p._actions:
        flags.update(s for s in action.option_strings if s.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _all_parser_flags(sub)
    return flags


def test_unit_execstart_uses_existing_agent_options() -> None:
    text = UNIT.read_text()
    execs = [ln.split("=", 1)[1] for ln in text.splitlines() if ln.startswith("ExecStart=")]
    assert len(execs) == 1
    argv = shlex.split(execs[0])
    assert argv[0].endswith("/gossipmgr") and argv[1] == "agent"
    used = {a.split("=", 1)[0] for a in argv[2:] if a.startswith("--")}
    assert used, "ExecStart passes no options"
    assert used <= _agent_flags(), used - _agent_flags()
    # The parser accepts the whole command line (a path given to --config is not read here).
    parser = argparse.ArgumentParser()
    agent.add_agent_options(parser)
    args = parser.parse_args(argv[2:])
    assert args.config == Path("/etc/gossipmgr/gossipmgr.toml")
    # Graceful Serf leave needs SIGINT delivered to gossipmgr alone.
    assert "KillSignal=SIGINT" in text and "KillMode=mixed" in text
    assert "StateDirectory=gossipmgr" in text
    assert AgentConfig().data_dir == Path("/var/lib/gossipmgr")


@pytest.mark.parametrize("doc", OPS_DOCS, ids=lambda p: p.name)
def test_every_option_in_the_docs_exists(doc: Path) -> None:
    # The hooked commands (agent, import) have their real parsers only when named.
    known = _all_parser_flags(cli.build_parser(["agent"])) | _agent_flags()
    known |= _all_parser_flags(cli.build_parser(["import"]))
    assert "--api-token-file" in known and "--token-file" in known  # both parsers walked
    mentioned = set(OPTION_RE.findall(doc.read_text()))
    missing = sorted(mentioned - known)
    assert not missing, f"{doc.name} mentions options no parser has: {missing}"


def _route_regexes() -> list[tuple[str, re.Pattern[str]]]:
    out = []
    for path, method in api.spec_paths():
        rx = re.escape(path)
        # A node name may hold '/' (every node route takes the rest of the path as the
        # name, docs/api.md); other placeholders are one path segment.
        rx = re.sub(r"\\\{name\\\}", r"[^\\s`]+", rx)
        rx = re.sub(r"\\\{[a-z_]+\\\}", r"[^/\\s`]+", rx)
        out.append((method.upper(), re.compile(rx + r"\Z")))
    return out


def test_spec_matches_the_app_routes() -> None:
    """The spec is what the docs are checked against; it must match what the app serves."""
    app = api.create_app(_NullContext())  # type: ignore[arg-type]
    assert api.rule_paths(app) == api.spec_paths()


def test_every_route_in_the_docs_exists() -> None:
    routes = _route_regexes()
    checked = 0
    for doc in sorted((ROOT / "docs").glob("*.md")):
        for method, path in ROUTE_RE.findall(doc.read_text()):
            path = path.rstrip(".`")
            checked += 1
            assert any(m == method and rx.match(path) for m, rx in routes), (
                f"{doc.name}: {method} {path} is not a route of gossipmgr.api.OPENAPI"
            )
    assert checked >= 20  # operations.md alone names more than that


class _NullContext:
    """Just enough of an ApiContext to build the app (routes are registered, none called)."""

    replica = None
    jobs = None
    token = None


def _doc_pattern(method: str, path: str) -> re.Pattern[str]:
    # A placeholder may be documented richly: {name}, {name or address}, {active\|last\|<id>}
    parts = re.split(r"\{[^}]+\}", path)
    body = r"(?:\{[^}`]+\}|<[^>`]+>)".join(re.escape(p) for p in parts)
    return re.compile(rf"\b{method}\s+`?{body}(?![\w/])")


def test_every_route_that_exists_is_documented_in_api_md() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [
        f"{method.upper()} {path}"
        for path, method in api.spec_paths()
        if not _doc_pattern(method.upper(), path).search(text)
    ]
    assert not missing, f"docs/api.md does not document: {missing}"


def test_every_agent_option_is_documented_in_operations_md() -> None:
    text = (ROOT / "docs" / "operations.md").read_text()
    missing = [flag for flag, _ in agent.OPTIONS if flag not in text]
    assert not missing, f"docs/operations.md does not mention: {missing}"
