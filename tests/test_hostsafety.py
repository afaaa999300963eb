"""No code runs on the gossipmgr host from API input (docs/security.md, "extra-vars").

Real parts: a Replica on disk, the real JobManager running real playbooks through
ansible-runner, the API over real HTTP (hypercorn on 127.0.0.1, port 0). The test harness,
not API input, decides how the inventory's hosts are reached: ``ansible_connection=local``
for the templating test, ssh to a closed loopback port for the connection-variable tests.

The three vectors of issue 14, each through the API and through state that arrived by
gossip (written straight into the replica, as an older or hostile instance would):

* ``{{ lookup('pipe', ...) }}`` in a value: passed marked unsafe, reaches the play as text;
* ``ansible_ssh_common_args: -oProxyCommand=...``: refused (403) / the job errors;
* ``ansible_connection: local``: refused (403) / the job errors.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from _apiutil import LOCAL_HOST_VARS, add_nodes, serving, standalone

from gossipmgr.api import create_app
from gossipmgr.config import AnsibleConfig
from gossipmgr.core.state import global_key
from gossipmgr.localcluster import free_port
from gossipmgr.runtime.ansible import (
    mark_unsafe,
    refused_client_vars,
    split_config_vars,
)
from gossipmgr.runtime.context import AgentApiContext

PLAYBOOKS = Path(__file__).parent / "playbooks_hostsafety"


def pipe(marker: Path) -> str:
    return "{{ lookup('pipe', 'touch " + str(marker) + "') }}"


def ssh_harness_vars() -> dict[str, Any]:
    """Hosts reached over ssh at a closed loopback port: nothing real answers there."""
    return {"ansible_port": free_port(), "ansible_ssh_timeout": 5}


@asynccontextmanager
async def api_over_http(
    root: Path,
    host_vars: dict[str, Any],
    client_config: dict[str, Any] | None = None,
    allowed_client_vars: Collection[str] = (),
) -> AsyncIterator[tuple[AgentApiContext, httpx.AsyncClient]]:
    """A standalone instance (holder, nodes node-0 and node-1) over real HTTP. The job
    settings are the test's: ``host_vars`` from the harness, ``out_dir`` from the
    operator (the config file's [ansible] section), ``client_config`` set through the
    context as POST /config sets it."""
    out = root / "out"
    out.mkdir()
    ansible = AnsibleConfig(
        host_vars=host_vars,
        extra_variables={"out_dir": str(out)},  # the operator's: templatable
        timeout_s=120,
        allow_client_vars=tuple(allowed_client_vars),
    )
    async with standalone(root, ansible=ansible, playbook_dir=PLAYBOOKS) as ctx:
        if client_config:
            await ctx.set_ansible_config({"extra_variables": json.dumps(client_config)})
        await add_nodes(ctx, 2)
        async with serving(create_app(ctx)) as url, httpx.AsyncClient(base_url=url) as c:
            yield ctx, c


async def wait_job(ctx: AgentApiContext, job_id: str) -> dict[str, Any]:
    with trio.fail_after(90):
        while True:
            rec = ctx.replica.state.job(job_id)
            if rec is not None and rec.status not in ("Queued", "Running"):
                return rec.to_value()
            await ctx.replica.wait_change()


# --------------------------------------------------------------------------- pure policy


def test_policy_refuses_connection_and_magic_variables() -> None:
    bad = {
        "ansible_connection": "local",
        "ansible_ssh_common_args": "-oProxyCommand='id'",
        "ansible_ssh_extra_args": "",
        "ansible_ssh_executable": "/bin/sh",
        "ansible_python_interpreter": "/bin/sh",
        "ansible_perl_interpreter": "/bin/sh",
        "ansible_shell_executable": "/bin/sh",
        "ansible_become_exe": "sh",
        "ansible_host": "127.0.0.1",
        "ANSIBLE_Connection": "local",  # case-insensitive, in case a plugin lowercases
        "_ansible_ansiballz_debugpy_config": {},
        "inventory_hostname": "127.0.0.1",
        "hostvars": {},
        "omit": "x",
        "gossipmgr_fence_dir": "/tmp/elsewhere",  # would take a job out of the epoch order
    }
    assert refused_client_vars(bad) == sorted(bad)
    # the operator's allow-list lifts exactly the names it lists
    assert "ansible_user" not in refused_client_vars({"ansible_user": "x"}, {"ansible_user"})
    assert refused_client_vars({"ansible_user": "x"}, {"ANSIBLE_USER"}) == ["ansible_user"]
    # ansible's JSON tags are refused at any depth
    assert refused_client_vars({"v": [{"__ansible_unsafe": "x"}]}) == ["v[0].__ansible_unsafe"]
    assert refused_client_vars({"v": {"a": {"__ANSIBLE_VAULT": "x"}}}) == ["v.a.__ANSIBLE_VAULT"]


def test_policy_keeps_what_contiv_playbooks_need() -> None:
    # extra-vars contiv/ansible's playbooks read (group_vars/all, role defaults)
    contiv = {
        "env": {"http_proxy": "http://proxy:3128"},
        "service_vip": "192.168.2.252",
        "control_interface": "eth1",
        "netplugin_if": "eth2",
        "ucarp_enabled": True,
        "docker_device": "/dev/sdb",
        "netmaster_ip": "192.168.2.10",
        "contiv_network_mode": "standalone",
        "netplugin_mode": "docker",
        "fwd_mode": "bridge",
        "validate_certs": False,
        "port": 8080,  # a play keyword, inert as a variable: not refused
        "my_ansible_thing": 1,  # the rule is a prefix, not a substring
    }
    assert refused_client_vars(contiv) == []


def test_policy_covers_every_variable_ansible_reads_for_connections() -> None:
    from ansible import constants as C  # type: ignore[import-untyped]

    names = {n for names in C.MAGIC_VARIABLE_MAPPING.values() for n in names}
    names |= set(C.INTERNAL_STATIC_VARS)
    assert refused_client_vars(dict.fromkeys(names, "x")) == sorted(names)


def test_mark_unsafe_and_config_split() -> None:
    v = {"a": "{{ x }}", "b": [1, "s", {"c": None, "d": True}], "e": 1.5}
    assert mark_unsafe(v) == {
        "a": {"__ansible_unsafe": "{{ x }}"},
        "b": [1, {"__ansible_unsafe": "s"}, {"c": None, "d": True}],
        "e": 1.5,
    }
    operator, client = split_config_vars(
        {"keep": "{{ a }}", "changed": 1, "file_only": "f"},
        {"keep": "{{ a }}", "changed": 2, "new": "x"},
    )
    # The file's names stay the operator's unless a client set another value (a client
    # cannot drop them); a stored copy of a file value is the operator's.
    assert operator == {"keep": "{{ a }}", "file_only": "f"}
    assert client == {"changed": 2, "new": "x"}


# --------------------------------------------------------------------------- templating


@pytest.mark.ansible
async def test_templated_lookup_in_client_values_is_not_run(tmp_path: Path) -> None:
    """Every client source carries a pipe lookup: globals, a node's var, the request's
    vars (nested too), the config layer set through the API, and a node's name and
    address (from a monitor event, as from Serf tags). None runs; the literal text
    reaches the play. One job, two hosts."""
    sources = ("g", "nv", "rv", "nested", "cv", "label", "addr")
    marks = {k: tmp_path / f"pwned-{k}" for k in sources}
    client_config = {"cv": pipe(marks["cv"])}
    async with api_over_http(tmp_path, LOCAL_HOST_VARS, client_config) as (ctx, c):
        r = await c.post("/globals", json={"extra_vars": {"g": pipe(marks["g"])}})
        assert r.status_code == 200, r.text
        r = await c.put("/node/node-0/extra_vars/nv", json={"value": pipe(marks["nv"])})
        assert r.status_code == 200, r.text
        event = {
            "name": "discovered",
            "nodes": [
                {"label": "r" + pipe(marks["label"]), "serial": "7", "addr": pipe(marks["addr"])}
            ],
        }
        r = await c.post("/monitor/event", json={"monitor_event": event})
        assert r.status_code == 200, r.text
        odd = "r" + pipe(marks["label"]) + "-7"
        assert ctx.replica.state.node(odd) is not None
        body = {
            "nodes": ["node-0", odd],
            "host_group": "service-master",
            "extra_vars": json.dumps(
                {"rv": pipe(marks["rv"]), "nested": {"k": [pipe(marks["nested"])]}}
            ),
        }
        r = await c.post("/commission/nodes", json=body)
        assert r.status_code == 200, r.text
        rec = await wait_job(ctx, r.json()["id"])
    assert [m.name for m in marks.values() if m.exists()] == []
    assert rec["status"] == "Complete", rec
    seen = {}
    for i in (0, 1):
        view = json.loads((tmp_path / "out" / f"seen-{i}.json").read_text())
        seen[view.pop("node_name")] = view
    common = {
        "g": pipe(marks["g"]),
        "rv": pipe(marks["rv"]),
        "cv": pipe(marks["cv"]),
        "nested": {"k": [pipe(marks["nested"])]},
    }
    assert seen == {
        "node-0": {**common, "nv": pipe(marks["nv"]), "node_addr": "127.0.1.1"},
        odd: {**common, "nv": "", "node_addr": pipe(marks["addr"])},
    }


# --------------------------------------------------------------------------- connection vars

VECTORS: list[tuple[str, Callable[[Path], Any]]] = [
    ("ansible_ssh_common_args", lambda m: f"-oProxyCommand='touch {m}'"),
    ("ansible_connection", lambda m: "local"),
]


@pytest.mark.ansible
@pytest.mark.parametrize("var", [v for v, _ in VECTORS])
async def test_connection_variables_refused_on_every_route(tmp_path: Path, var: str) -> None:
    mark = tmp_path / "pwned"
    value = dict(VECTORS)[var](mark)
    async with api_over_http(tmp_path, ssh_harness_vars()) as (ctx, c):
        ev = {var: value}
        attempts = [
            ("POST", "/globals", {"extra_vars": ev}),
            ("PUT", f"/globals/{var}", {"value": value}),
            ("POST", "/node/node-0/extra_vars", {"extra_vars": json.dumps(ev)}),
            ("PUT", f"/node/node-0/extra_vars/{var}", {"value": value}),
            ("POST", "/commission/nodes", {"nodes": ["node-0"], "extra_vars": ev}),
            ("POST", "/update/nodes", {"nodes": ["node-0"], "extra_vars": ev}),
            ("POST", "/decommission/nodes", {"nodes": ["node-0"], "extra_vars": ev}),
            ("POST", "/discover/nodes", {"addrs": ["127.0.0.9"], "extra_vars": ev}),
            ("POST", "/config", {"config": {"ansible": {"extra_variables": json.dumps(ev)}}}),
        ]
        for method, path, body in attempts:
            r = await c.request(method, path, json=body)
            assert r.status_code == 403, (method, path, r.status_code, r.text)
            assert f'"{var}"' in r.json()["error"], r.text
        assert ctx.replica.state.jobs() == {}
        assert ctx.replica.state.globals() == {}
        node = ctx.replica.state.node("node-0")
        assert node is not None and dict(node.vars) == {}
        assert ctx.replica.state.ansible_config() is None
    assert not mark.exists()


@pytest.mark.ansible
async def test_cli_prints_the_refusal(tmp_path: Path) -> None:
    """The CLI sets variables through the API: it shows the 403 and exits 1."""
    async with api_over_http(tmp_path, ssh_harness_vars()) as (ctx, c):
        env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
        env["GOSSIPMGR_URL"] = str(c.base_url).rstrip("/")
        cli = [sys.executable, "-m", "gossipmgr.cli.main"]
        runs = [
            ["global", "set", "ansible_connection", "local"],
            ["global", "set", "-e", '{"ansible_ssh_common_args": "-oProxyCommand=x"}'],
            ["node", "commission", "node-0", "-g", "service-master", "-e", '{"hostvars": 1}'],
        ]
        for args in runs:
            p = await trio.run_process(
                [*cli, *args], env=env, capture_stdout=True, capture_stderr=True, check=False
            )
            err = p.stderr.decode()
            assert p.returncode == 1, (args, p.returncode, err)
            assert "may not be set by an API client" in err and "Traceback" not in err, err
        assert ctx.replica.state.globals() == {} and ctx.replica.state.jobs() == {}


@pytest.mark.ansible
async def test_allowed_client_vars_lift_the_policy_by_name(tmp_path: Path) -> None:
    async with api_over_http(
        tmp_path, ssh_harness_vars(), allowed_client_vars={"ansible_user"}
    ) as (
        ctx,
        c,
    ):
        r = await c.put("/globals/ansible_user", json={"value": "deploy"})
        assert r.status_code == 200, r.text
        r = await c.put("/globals/ansible_connection", json={"value": "local"})
        assert r.status_code == 403 and '"ansible_connection"' in r.json()["error"]
        assert ctx.replica.state.globals() == {"ansible_user": "deploy"}


@pytest.mark.ansible
@pytest.mark.parametrize("layer", ["globals", "node"])
@pytest.mark.parametrize("var", [v for v, _ in VECTORS])
async def test_gossiped_connection_variables_fail_the_job(
    tmp_path: Path, var: str, layer: str
) -> None:
    """Defence in depth: a hostile record that came by gossip never reaches ansible."""
    mark = tmp_path / "pwned"
    value = dict(VECTORS)[var](mark)
    async with api_over_http(tmp_path, ssh_harness_vars()) as (ctx, c):
        if layer == "globals":
            await ctx.replica.commit(lambda s, ts: s.d_set(global_key(var), value, ts))
        else:
            await ctx.replica.commit(
                lambda s, ts: s.d_replace_node_vars("node-0", {var: value}, ts)
            )
        # site.yml writes into out_dir: on this host only if the play ran here
        local = tmp_path / "local-run"
        local.mkdir()
        r = await c.post(
            "/commission/nodes",
            json={
                "nodes": ["node-0"],
                "host_group": "service-master",
                "extra_vars": {"out_dir": str(local)},
            },
        )
        assert r.status_code == 200, r.text
        rec = await wait_job(ctx, r.json()["id"])
    assert not mark.exists()
    assert list(local.iterdir()) == []
    assert rec["status"] == "Errored", rec
    assert f'"{var}"' in rec["error"] and "refused to run" in rec["error"], rec
