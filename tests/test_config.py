"""Agent configuration: file < options, unknown keys and bad values refused in one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gossipmgr.config import AnsibleConfig, load
from gossipmgr.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(text)
    return p


def test_file_then_overrides(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        'name = "a"\napi_addr = "127.0.0.1:1"\njoin = ["x:1"]\n'
        '[ansible]\nuser = "ops"\n[ansible.host_vars]\nansible_connection = "local"\n',
    )
    cfg = load(p, {"api_addr": "127.0.0.1:2", "name": None})
    assert cfg.name == "a" and cfg.api_addr == "127.0.0.1:2" and cfg.join == ("x:1",)
    assert isinstance(cfg.ansible, AnsibleConfig)
    assert cfg.ansible.user == "ops"
    assert cfg.ansible.host_vars == {"ansible_connection": "local"}
    assert cfg.config_file == p


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("nmae = 'x'\n", "unknown config key 'nmae'"),
        ("[ansible]\nusr = 'x'\n", "unknown config key 'usr'"),
        ("insecure = 'yes'\n", "insecure must be true or false"),
        ("lease_ttl_ms = 1.5\n", "lease_ttl_ms must be an integer"),
        ("api_addr = 'nohost'\n", "api-addr must be HOST:PORT"),
        ("gossip_addr = '0.0.0.0:1'\n", "concrete address"),
        ("tls_cert = '/x'\n", "tls-cert and tls-key go together"),
        ("lease_renew_ms = 20000\n", "lease-renew-ms"),
        ("name = 'a b'\n", "without spaces"),
        ("= broken", "not valid TOML"),
    ],
)
def test_bad_config_is_one_clear_error(tmp_path: Path, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load(write(tmp_path, text), {})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "nope.toml", {})


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gossipmgr.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agent_help_documents_every_option() -> None:
    from gossipmgr.daemon import OPTIONS

    out = run_cli("agent", "--help")
    assert out.returncode == 0
    for flag, _ in OPTIONS:
        assert flag in out.stdout


def test_bad_option_or_key_is_one_line_and_nonzero(tmp_path: Path) -> None:
    out = run_cli("agent", "--bogus")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    bad = write(tmp_path, "colour = 'blue'\n")
    out = run_cli("agent", "--config", str(bad), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "unknown config key 'colour'" in out.stderr
    out = run_cli(
        "agent", "--data-dir", str(tmp_path / "d"), "--api-addr", "0.0.0.0:0", "--no-auth"
    )
    assert out.returncode == 2 and "without a token" in out.stderr and "Traceback" not in out.stderr


def test_stale_data_refused_when_joining_allowed_alone(tmp_path: Path) -> None:
    import trio

    from gossipmgr.agent import TOMBSTONE_TTL_MS, Agent
    from gossipmgr.core.clock import Timestamp
    from gossipmgr.core.state import global_key
    from gossipmgr.runtime.replica import Replica

    data = tmp_path / "d"

    async def seed_old_data() -> None:
        rep = Replica("a", data_dir=data / "state")
        rep.open()
        old = rep.now_ms() - TOMBSTONE_TTL_MS - 86_400_000
        rep.hlc.advance_to(Timestamp(0, 0, "a"))
        await rep.commit(lambda st, ts: st.d_set(global_key("k"), 1, Timestamp(old, 0, "a")))
        await rep.aclose()

    trio.run(seed_old_data)
    joining = Agent(load(None, {"name": "a", "data_dir": data, "join": ("127.0.0.1:1",)}))
    joining.replica.open()
    with pytest.raises(ConfigError, match="could resurrect deleted keys"):
        joining.check_stale_data()
    trio.run(joining.replica.aclose)
    alone = Agent(load(None, {"name": "a", "data_dir": data}))
    alone.replica.open()
    alone.check_stale_data()  # a warning only
    trio.run(alone.replica.aclose)


def test_sighup_reload_swaps_token_and_keeps_command_line_options(tmp_path: Path) -> None:
    from gossipmgr.agent import Agent

    token = tmp_path / "token"
    token.write_text("first\n")
    conf = write(tmp_path, f'api_token_file = "{token}"\n')
    overrides = {"name": "a", "data_dir": tmp_path / "d", "reconfigure_on_reappear": True}
    agent = Agent(load(conf, overrides), overrides)
    assert agent.token == "first"
    token.write_text("second\n")
    conf.write_text(f'api_token_file = "{token}"\nreconfigure_on_reappear = false\n')
    agent.reload()
    assert agent.token == "second"
    assert agent.cfg.reconfigure_on_reappear is True  # the command line still wins
    assert agent.cfg.data_dir == tmp_path / "d"


def test_a_clusterm_conf_json_file_is_read(tmp_path: Path) -> None:
    """clusterm's JSON clusterm.conf: serf Addr -> serf-rpc, the ansible section taken,
    inventory and manager noted and ignored; empty values skipped as clusterm did."""
    f = tmp_path / "clusterm.conf"
    f.write_text(
        json.dumps(
            {
                "serf": {"Addr": "127.0.0.1:7373", "AuthKey": "", "Timeout": 0},
                "inventory": {"boltdb": {"dbfile": "/var/lib/clusterm.db"}},
                "ansible": {
                    "playbook_location": "/opt/contiv/ansible",
                    "user": "admin",
                    "priv_key_file": "/k",
                    "extra_variables": '{"env": {"http_proxy": "p"}}',
                    "configure_playbook": "",
                },
                "manager": {"addr": "0.0.0.0:9007"},
            },
            indent=2,
        )
    )
    cfg = load(f, {})
    assert cfg.serf_rpc == "127.0.0.1:7373"
    assert cfg.playbook_dir == Path("/opt/contiv/ansible")
    assert cfg.ansible.user == "admin" and cfg.ansible.priv_key_file == "/k"
    assert cfg.ansible.extra_variables == {"env": {"http_proxy": "p"}}
    assert cfg.ansible.configure_playbook == "site.yml"  # empty: the default stays
    assert cfg.api_addr == "127.0.0.1:9007"
    assert len(cfg.config_notes) == 2
    assert "inventory section is ignored" in cfg.config_notes[0]
    assert "gossipmgr import clusterm" in cfg.config_notes[0]
    # command-line options still win over the file
    assert load(f, {"serf_rpc": "127.0.0.1:7374"}).serf_rpc == "127.0.0.1:7374"
    for bad, why in [
        ('{"serf": {"Addr": 5}}', "serf_rpc must be a string"),
        ('{"bogus": {}}', "unknown clusterm.conf section 'bogus'"),
        ('{"ansible": {"extra_variables": "[1]"}}', "must hold a JSON object"),
        ('{"ansible": {"nope": "x"}}', "unknown key ansible.nope"),
        ("{not json", "not valid JSON"),
    ]:
        f.write_text(bad)
        with pytest.raises(ConfigError, match=re.escape(why)):
            load(f, {})


def test_every_option_has_a_converter() -> None:
    """The converter tables name every field a file may set, and nothing else."""
    from dataclasses import fields

    from gossipmgr.config import AGENT_OPTIONS, ANSIBLE_OPTIONS, AgentConfig

    loaded_only = {"ansible", "config_file", "config_notes"}
    assert set(AGENT_OPTIONS) == {f.name for f in fields(AgentConfig)} - loaded_only
    assert set(ANSIBLE_OPTIONS) == {f.name for f in fields(AnsibleConfig)}


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("data_dir = 1\n", "data_dir must be a path string"),
        ("tls-key = true\n", "tls_key must be a path string"),
        ("no_auth = 1\n", "no_auth must be true or false"),
        ("lease_ttl_ms = true\n", "lease_ttl_ms must be an integer"),
        ("lease-renew-ms = '1'\n", "lease_renew_ms must be an integer"),
        ("join = 'x:1'\n", "join must be a list of strings"),
        ("join = ['x:1', 2]\n", "join must be a list of strings"),
        ("serf_profile = 1\n", "serf_profile must be a string"),
        ("log_level = ['info']\n", "log_level must be a string"),
        ("config_file = '/x'\n", "unknown config key 'config_file'"),
        ("config_notes = []\n", "unknown config key 'config_notes'"),
        ("ansible = 1\n", "agent.toml: [ansible] must be a table"),
        ("[ansible]\ntimeout_s = true\n", "agent.toml [ansible]: timeout_s must be a number"),
        ("[ansible]\ntimeout_s = '5'\n", "timeout_s must be a number"),
        ("[ansible]\nextra_variables = 1\n", "extra_variables must be a table"),
        ("[ansible]\nallow_client_vars = 'a'\n", "allow_client_vars must be a list of strings"),
        ("[ansible]\nuser = 0\n", "agent.toml [ansible]: user must be a string"),
        ("[ansible]\nansible = {}\n", "unknown config key 'ansible'"),
    ],
)
def test_each_option_type_refuses_other_types(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        load(write(tmp_path, text), {})


def test_each_option_type_is_converted(tmp_path: Path) -> None:
    text = (
        "data-dir = '~/gm'\nno_auth = true\nlease_ttl_ms = 20000\njoin = ['a:1', 'b:2']\n"
        "serf_profile = 'local'\n"
        "[ansible]\ntimeout_s = 5\ndiscover-join-timeout-s = 1.5\n"
        "allow_client_vars = ['ansible_user']\nextra_variables = {a = {b = 1}}\n"
    )
    cfg = load(write(tmp_path, text), {})
    assert cfg.data_dir == Path("~/gm").expanduser() and cfg.data_dir.is_absolute()
    assert cfg.no_auth is True and cfg.lease_ttl_ms == 20000
    assert cfg.join == ("a:1", "b:2") and cfg.serf_profile == "local"
    assert type(cfg.ansible.timeout_s) is float and cfg.ansible.timeout_s == 5.0
    assert cfg.ansible.discover_join_timeout_s == 1.5
    assert cfg.ansible.allow_client_vars == ("ansible_user",)
    assert cfg.ansible.extra_variables == {"a": {"b": 1}}
