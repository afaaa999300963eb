"""``clusterctl``, the drop-in for the Go clusterctl.

Output: byte for byte against golden files rendered by clusterctl's own Go templates
(``fixtures/clusterctl/gen.go``: get_actions.go's templates over the answers in
cases.json). Request bodies: byte for byte against what the Go client's structs encode to.
Then the command itself, as a subprocess over real HTTP against a standalone instance.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio
from _apiutil import add_nodes, serving, standalone

from gossipmgr.api import create_app
from gossipmgr.clusterm.goclient import api_request_json, go_config
from gossipmgr.clusterm.gotext import go_float, go_json_indent
from gossipmgr.clusterm.templates import (
    render_job,
    render_job_short,
    render_map,
    render_node,
    render_nodes,
)
from gossipmgr.config import AnsibleConfig
from gossipmgr.testing.standalone import fake_serf

FIX = Path(__file__).parent / "fixtures" / "clusterctl"
CASES = json.loads((FIX / "cases.json").read_text())
RENDER = {
    "node": render_node,
    "nodes": render_nodes,
    "global": render_map,
    "config": render_map,
    "job": render_job,
    "jobshort": render_job_short,
}
OUTPUT_CASES = [(k, i) for k in RENDER for i in range(len(CASES[k]))]


@pytest.mark.parametrize(("kind", "n"), OUTPUT_CASES, ids=[f"{k}-{i}" for k, i in OUTPUT_CASES])
def test_output_matches_the_go_templates(kind: str, n: int) -> None:
    golden = (FIX / "golden" / f"{kind}-{n}.golden").read_bytes()
    assert RENDER[kind](CASES[kind][n]).encode() == golden


def test_golden_files_show_the_documented_lines() -> None:
    # what scripts grep for (clusterm's troubleshooting guide): "<name>:    status: X"
    text = (FIX / "golden" / "nodes-0.golden").read_text()
    assert "cluster-node1-01:    status: Allocated\n" in text
    assert "cluster-node2-02:        node_name: cluster-node2-02\n" in text


@pytest.mark.parametrize("n", range(len(CASES["request"])))
def test_request_bodies_match_the_go_client(n: int) -> None:
    case = CASES["request"][n]
    golden = (FIX / "golden" / f"request-{n}.json").read_text()
    cfg = go_config(case["config_file"]) if "config_file" in case else None
    body = api_request_json(
        nodes=case.get("nodes") or (),
        addrs=case.get("addrs") or (),
        host_group=case.get("host_group", ""),
        extra_vars=case.get("extra_vars", ""),
        config=cfg,
    )
    assert body == golden


@pytest.mark.parametrize(
    ("f", "text"),
    [
        (0.0, "0"),
        (7.0, "7"),
        (-2.0, "-2"),
        (0.5, "0.5"),
        (123456.0, "123456"),
        (1e6, "1e+06"),
        (1234567.0, "1.234567e+06"),
        (1764437123456.0, "1.764437123456e+12"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (1.5e-7, "1.5e-07"),
        (1e21, "1e+21"),
        (3.14159, "3.14159"),
    ],
)
def test_go_float_formatting(f: float, text: str) -> None:
    assert go_float(f) == text


def test_json_output_is_go_json_indent() -> None:
    src = '{"a":[],"b":{},"c":[1,{"d":"x,y:\\"z"}],"e":"\\u00e9"}\n'
    assert go_json_indent(src) == (
        '{\n    "a": [],\n    "b": {},\n    "c": [\n        1,\n        {\n'
        '            "d": "x,y:\\"z"\n        }\n    ],\n    "e": "\\u00e9"\n}\n'
    )


# --------------------------------------------------------------------------- the command


async def _ctl_here(url: str, *args: str) -> tuple[int, str, str]:
    """clusterctl's main in this process (a worker thread), stdout and stderr captured:
    the same code as the console script without an interpreter start per call."""
    from gossipmgr.clusterm import clusterctl

    def run() -> tuple[int, str, str]:
        out, err = io.BytesIO(), io.StringIO()
        text = io.TextIOWrapper(out, encoding="utf-8")
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(err):
            try:
                rc = clusterctl.main(["--url", url, *args])
            except SystemExit as exc:
                rc = int(exc.code or 0)
            text.flush()
        return rc, out.getvalue().decode(), err.getvalue()

    return await trio.to_thread.run_sync(run)


async def _ctl(url: str, *args: str, stdin: bytes = b"") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPMGR_")}
    p = await trio.run_process(
        [sys.executable, "-m", "gossipmgr.clusterm.clusterctl", "--url", url, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env=env,
        stdin=stdin,
    )
    return p.returncode, p.stdout.decode(), p.stderr.decode()


async def test_clusterctl_against_gossipmgr(tmp_path: Path) -> None:
    async with standalone(tmp_path) as ctx:
        await add_nodes(ctx, 2)
        async with serving(create_app(ctx)) as url:
            hostport = url.split("://")[1]
            async with httpx.AsyncClient() as c:
                nodes = (await c.get(url + "/info/nodes")).json()
                one = (await c.get(url + "/info/node/node-1")).json()
                glob = (await c.get(url + "/info/globals")).json()
                cfg = (await c.get(url + "/config")).json()

            rc, out, err = await _ctl(hostport, "nodes", "get")
            assert (rc, err) == (0, "")
            assert out == render_nodes(nodes)
            assert [ln for ln in out.splitlines() if " status" in ln] == [
                "node-0:    status: Unallocated",
                "node-1:    status: Unallocated",
            ]
            assert (await _ctl_here(hostport, "n", "g", "node-1"))[1] == render_node(one)
            assert (await _ctl_here(hostport, "global", "get"))[1] == render_map(glob)
            assert (await _ctl_here(hostport, "c", "g"))[1] == render_map(cfg)
            rc, out, _ = await _ctl_here(hostport, "nodes", "get", "--json")
            assert rc == 0 and json.loads(out) == nodes and out.startswith('{\n    "node-0"')

            # errors: logrus' fatal line on stderr, exit 1
            rc, out, err = await _ctl(hostport, "node", "get", "nope")
            assert rc == 1 and out == ""
            assert re.fullmatch(
                r'time="[^"]+" level=fatal msg="Request URL: info/node/nope Request Body: '
                r"<nil> Response status: \\\"404 Not Found\\\". Response body: "
                r".*doesn't exists.*\" \n",
                err,
                re.S,
            ), err
            rc, out, err = await _ctl_here(hostport, "node", "get")
            assert rc == 1 and "command expects 1 arg(s) but received 0" in err
            rc, out, err = await _ctl_here(hostport, "discover", "not-an-ip")
            assert rc == 1 and 'failed to parse ip address \\"not-an-ip\\"' in err
            # usage errors exit 0, as the Go cli library did
            rc, out, err = await _ctl(hostport, "frobnicate")
            assert (rc, out) == (0, "No help topic for 'frobnicate'\n")
            rc, out, err = await _ctl_here(hostport, "node", "get", "--bogus")
            assert (rc, out) == (0, "Incorrect Usage.\n")

            # writes: the Go client's bodies are accepted
            rc, out, err = await _ctl(hostport, "global", "set", "-e", '{"ntp": "pool"}')
            assert (rc, out, err) == (0, "", "")
            assert ctx.replica.state.globals() == {"ntp": "pool"}
            conf = tmp_path / "c.json"
            conf.write_text(json.dumps({"ansible": {"playbook_location": "/opt/pb"}}))
            before = ctx.config()["ansible"]
            rc, out, err = await _ctl_here(hostport, "config", "set", str(conf))
            assert (rc, out, err) == (0, "", "")
            assert ctx.config()["ansible"] == {**before, "playbook_location": "/opt/pb"}
            rc, out, err = await _ctl(
                hostport, "config", "set", "-", stdin=b'{"manager": {"addr": "1.2.3.4:1"}}'
            )
            assert rc == 1 and "manager" in err and "configuration can't be changed" in err


async def test_monitor_event_names_are_case_insensitive(tmp_path: Path) -> None:
    """clusterm lower-cased the event name; scripts send "Discovered"/"Disappeared"."""
    async with standalone(tmp_path) as ctx:
        await add_nodes(ctx, 1)
        async with serving(create_app(ctx)) as url, httpx.AsyncClient() as c:
            for name, state in (("Disappeared", "Disappeared"), ("DISCOVERED", "Discovered")):
                # Serf says the same (the holder's reconcile against Serf agrees)
                fake_serf(ctx.agent).see(
                    "node-0", status="alive" if state == "Discovered" else "failed"
                )
                r = await c.post(
                    url + "/monitor/event",
                    json={
                        "monitor_event": {
                            "name": name,
                            "nodes": [{"label": "node", "serial": "0", "addr": "127.0.1.1"}],
                        }
                    },
                )
                assert r.status_code == 200, r.text
                rec = ctx.replica.state.node("node-0")
                assert rec is not None and rec.inventory.state == state
            r = await c.post(url + "/monitor/event", json={"monitor_event": {"name": "Gone"}})
            assert r.status_code == 400
            assert r.json()["error"] == 'Invalid or empty event name specified: "Gone"'


async def test_the_go_config_set_body_is_accepted_verbatim(tmp_path: Path) -> None:
    """The exact bytes the Go clusterctl sends for `config set` (every section, the ones
    the file leaves out as zero values): accepted, only the ansible key changes."""
    body = (FIX / "golden" / "request-4.json").read_bytes()
    # a config file with no extra-vars of its own: /config lists the file's too
    async with standalone(tmp_path, ansible=AnsibleConfig()) as ctx:
        async with serving(create_app(ctx)) as url:
            before = ctx.config()
            async with httpx.AsyncClient() as c:
                r = await c.post(
                    url + "/config", content=body, headers={"Content-Type": "application/json"}
                )
            assert r.status_code == 200, r.text
            after = ctx.config()
            assert after["ansible"] == {
                **before["ansible"],
                "playbook_location": "/opt/contiv/ansible",
                "extra_variables": '{"k": 1}',
            }
            assert (after["serf"], after["manager"]) == (before["serf"], before["manager"])


def test_version_debug_and_an_unreachable_daemon(capsys: pytest.CaptureFixture[str]) -> None:
    import subprocess

    from gossipmgr.cli import main as cli
    from gossipmgr.clusterm import clusterctl

    assert clusterctl.main(["--version"]) == 0
    assert re.fullmatch(r"\S+ version \d+\.\d+\.\d+\n", capsys.readouterr().out)
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert re.fullmatch(r"gossipmgr \d+\.\d+\.\d+\n", capsys.readouterr().out)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60
        )

    with socket_nobody_listens() as port:
        # a GET and a POST to a daemon that is down: one fatal line each, exit 1 (the Go
        # client panicked on the POST); --debug shows the request first
        for args in (["nodes", "get"], ["node", "commission", "x"]):
            p = run("gossipmgr.clusterm.clusterctl", "--debug", "-u", f"127.0.0.1:{port}", *args)
            assert p.returncode == 1, p
            lines = p.stderr.splitlines()
            assert lines[0].startswith("clusterctl: ") and f"127.0.0.1:{port}/" in lines[0]
            assert len(lines) == 2 and "connection refused" in lines[1], lines
            assert "level=fatal" in lines[1] and "Traceback" not in p.stderr
        p = run("gossipmgr.cli.main", "-u", f"127.0.0.1:{port}", "--debug", "lease")
        assert p.returncode == 1 and f"port={port}" in p.stderr  # the request is logged


@contextlib.contextmanager
def socket_nobody_listens() -> Iterator[int]:
    import socket

    with socket.socket() as s:  # bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]
