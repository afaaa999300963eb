"""gossipmgr.runtime.ansible: pure inventory/precedence logic,
then real playbooks through ansible-runner.

The integration tests run real ansible-playbook processes against hosts with
``ansible_connection=local``; the test playbooks in tests/playbooks/ only touch files
under ``tmp_path`` (the ``trace_dir`` variable) and append "<step> <host>" lines to
``trace_dir/trace``, which is how the tests see which playbooks ran and in which order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _bounds import bound

import gossipmgr
from gossipmgr.errors import BadRequest, JobError
from gossipmgr.runtime.ansible import (
    CANCELLED_ERROR,
    RC_NOT_RUN,
    AnsibleSettings,
    Host,
    RunInputs,
    build_extra_vars,
    build_inventory,
    discover_hosts,
    merge_extra_vars,
    parse_extra_vars,
    run_playbook,
    run_workflow,
    workflow_plan,
)
from gossipmgr.runtime.proctree import kill_process_tree

TEST_PLAYBOOKS = Path(__file__).parent / "playbooks"
PACKAGE_PLAYBOOKS = Path(gossipmgr.__file__).parent / "playbooks"
LOCAL = {
    "ansible_connection": "local",
    "ansible_python_interpreter": "{{ ansible_playbook_python }}",
}
# Generous: a playbook run costs ~1 s here, more on a loaded 2-core box.
RUN_DEADLINE_S = 60


# --------------------------------------------------------------------------- helpers


def live_pids_with(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``marker``."""
    found = []
    needle = marker.encode()
    with os.scandir("/proc") as entries:
        pids = [e.name for e in entries if e.name.isdigit()]
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        if needle in cmdline and stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X"):
            found.append(int(pid))
    return found


@pytest.fixture
def proc_marker() -> Iterator[str]:
    """A unique string for long-running test processes' argv; kills leftovers even on failure."""
    marker = f"gossipmgr-test-{uuid.uuid4().hex}"
    try:
        yield marker
    finally:
        for pid in live_pids_with(marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def make_settings(tmp_path: Path, marker: str = "unused", **kw: Any) -> AnsibleSettings:
    extra = {"trace_dir": str(tmp_path), "proc_marker": marker}
    extra.update(kw.pop("extra_variables", {}))
    return AnsibleSettings(
        playbook_dir=kw.pop("playbook_dir", TEST_PLAYBOOKS),
        configure_playbook=kw.pop("configure_playbook", "ok.yml"),
        cleanup_playbook=kw.pop("cleanup_playbook", "cleanup.yml"),
        extra_variables=extra,
        host_vars=LOCAL,
        **kw,
    )


def trace(tmp_path: Path) -> list[str]:
    path = tmp_path / "trace"
    return path.read_text().splitlines() if path.exists() else []


def step_order(tmp_path: Path) -> list[str]:
    """The trace's step names with consecutive repeats (one per host) collapsed."""
    order: list[str] = []
    for line in trace(tmp_path):
        step = line.split()[0]
        if not order or order[-1] != step:
            order.append(step)
    return order


def host_view(tmp_path: Path, alias: str) -> dict[str, Any]:
    """What ok.yml saw as the host's variables."""
    view: dict[str, Any] = json.loads((tmp_path / f"{alias}.json").read_text())
    return view


TWO_HOSTS = [
    Host("a", "127.0.0.1", "node-a", "service-master"),
    Host("b", "127.0.0.2", "node-b", "service-worker"),
]
ONE_HOST = [Host("a", "127.0.0.1", "node-a", "service-master")]


async def workflow(
    kind: str,
    hosts: list[Host],
    settings: AnsibleSettings,
    tmp_path: Path,
    lines: list[str] | None = None,
    cancel: trio.Event | None = None,
    globals_: dict[str, Any] | None = None,
    request_vars: dict[str, Any] | None = None,
) -> Any:
    with trio.fail_after(RUN_DEADLINE_S):
        return await run_workflow(
            kind,
            RunInputs(hosts, settings, globals_ or {}, request_vars or {}),
            log=(lines if lines is not None else []).append,
            cancel=cancel if cancel is not None else trio.Event(),
            work_root=tmp_path / "work",
        )


# --------------------------------------------------------------------------- pure


class TestParseExtraVars:
    @pytest.mark.parametrize("empty", [None, ""])
    def test_empty_is_empty_dict(self, empty: object) -> None:
        assert parse_extra_vars(empty) == {}

    def test_json_object_string(self) -> None:
        assert parse_extra_vars('{"a": 1, "b": {"c": [true, null]}}') == {
            "a": 1,
            "b": {"c": [True, None]},
        }

    def test_dict_is_copied(self) -> None:
        given = {"a": 1}
        got = parse_extra_vars(given)
        assert got == given
        got["b"] = 2
        assert given == {"a": 1}

    def test_invalid_json_has_clusterm_text(self) -> None:
        with pytest.raises(BadRequest) as info:
            parse_extra_vars("x")
        assert str(info.value) == (
            '"extra_vars" should be a valid json. Error: Expecting value: line 1 column 1 (char 0)'
        )
        assert info.value.status_hint == 400

    @pytest.mark.parametrize("text", ["[1, 2]", '"s"', "3", "null", "true"])
    def test_json_that_is_not_an_object(self, text: str) -> None:
        with pytest.raises(BadRequest, match=r'^"extra_vars" should be a valid json\. Error: '):
            parse_extra_vars(text)

    @pytest.mark.parametrize("text", ['{"a": NaN}', '{"a": Infinity}', "   ", '{"a": 1'])
    def test_not_json(self, text: str) -> None:
        with pytest.raises(BadRequest, match=r'^"extra_vars" should be a valid json\. Error: .+'):
            parse_extra_vars(text)

    @pytest.mark.parametrize("obj", [5, ["a"], b'{"a": 1}'])
    def test_other_types(self, obj: object) -> None:
        with pytest.raises(BadRequest, match=r'^"extra_vars" should be a valid json\. Error: '):
            parse_extra_vars(obj)


def test_merge_later_wins_without_deep_merge() -> None:
    merged = merge_extra_vars({"a": 1, "d": {"x": 1, "y": 2}}, {"b": 2}, {"a": 3, "d": {"x": 9}})
    assert merged == {"a": 3, "b": 2, "d": {"x": 9}}
    assert merge_extra_vars() == {}


# The precedence fixture used by the pure tests and the real-ansible test below.
PRECEDENCE_CONFIG = {"color": "config", "size": "config", "shape": "config"}
PRECEDENCE_GLOBALS = {"color": "global", "only_global": "g"}
PRECEDENCE_REQUEST = {"size": "request"}
PRECEDENCE_HOSTS = [
    Host("a", "127.0.0.1", "node-a", "service-master", {"color": "node-a", "size": "node-a"}),
    Host("b", "127.0.0.2", "node-b", "service-worker"),
]
EXPECTED_VIEW = {
    # config < globals < node < request, key by key
    "a": {"color": "node-a", "size": "request", "shape": "config", "only_global": "g"},
    "b": {"color": "global", "size": "request", "shape": "config", "only_global": "g"},
}


def test_inventory_layout_and_precedence(tmp_path: Path) -> None:
    settings = AnsibleSettings(
        playbook_dir=tmp_path, extra_variables=PRECEDENCE_CONFIG, host_vars={"hv": 1}
    )
    hosts = [*PRECEDENCE_HOSTS, Host("c", "10.0.0.3", "", "service-worker")]
    inv = build_inventory(RunInputs(hosts, settings, PRECEDENCE_GLOBALS, PRECEDENCE_REQUEST))
    assert set(inv) == {"all"}
    groups = inv["all"]["children"]
    assert set(groups) == {"service-master", "service-worker"}
    assert set(groups["service-master"]["hosts"]) == {"a"}
    assert set(groups["service-worker"]["hosts"]) == {"b", "c"}
    a = groups["service-master"]["hosts"]["a"]
    assert a == {
        "hv": 1,
        "ansible_host": "127.0.0.1",
        "ansible_ssh_host": "127.0.0.1",
        "node_addr": "127.0.0.1",
        "node_name": "node-a",
        **EXPECTED_VIEW["a"],
    }
    b = groups["service-worker"]["hosts"]["b"]
    assert {k: b[k] for k in EXPECTED_VIEW["b"]} == EXPECTED_VIEW["b"]
    c = groups["service-worker"]["hosts"]["c"]
    assert "node_name" not in c  # an empty name is left out, as clusterm's discover did
    assert c["ansible_host"] == c["node_addr"] == "10.0.0.3"


def test_extra_vars_leave_node_overridden_keys_to_host_vars(tmp_path: Path) -> None:
    settings = AnsibleSettings(playbook_dir=tmp_path, extra_variables=PRECEDENCE_CONFIG)
    extra = build_extra_vars(
        RunInputs(PRECEDENCE_HOSTS, settings, PRECEDENCE_GLOBALS, PRECEDENCE_REQUEST)
    )
    # "color" is set by node a (and not by the request): as an extra-var it would clobber
    # a's value, so it travels only as host vars. "size" is set by the request, which
    # beats the node anyway, so it stays.
    assert extra == {"size": "request", "shape": "config", "only_global": "g"}
    # With no node vars, it is exactly config < globals < request.
    plain = [Host("x", "1.2.3.4", "x", "g")]
    assert build_extra_vars(RunInputs(plain, settings, PRECEDENCE_GLOBALS, PRECEDENCE_REQUEST)) == {
        "color": "global",
        "size": "request",
        "shape": "config",
        "only_global": "g",
    }


def test_bad_host_lists(tmp_path: Path) -> None:
    settings = AnsibleSettings(playbook_dir=tmp_path)
    dup = [Host("a", "1.1.1.1", "n1", "g"), Host("a", "1.1.1.2", "n2", "g")]
    with pytest.raises(JobError, match="duplicate inventory alias 'a'"):
        build_inventory(RunInputs(dup, settings, {}, {}))
    with pytest.raises(JobError, match="non-empty alias and host-group"):
        build_inventory(RunInputs([Host("a", "1.1.1.1", "n1", "")], settings, {}, {}))


def test_workflow_plans(tmp_path: Path) -> None:
    s = AnsibleSettings(playbook_dir=tmp_path, configure_playbook="c.yml", cleanup_playbook="x.yml")
    plans = {k: workflow_plan(k, s) for k in ("commission", "decommission", "update", "discover")}
    assert [(st.playbook, st.on_failure) for st in plans["commission"].steps] == [
        ("c.yml", ("x.yml",))
    ]
    assert [(st.playbook, st.on_failure) for st in plans["update"].steps] == [
        ("x.yml", ()),
        ("c.yml", ("x.yml",)),
    ]
    assert [st.playbook for st in plans["decommission"].steps] == ["x.yml"]
    assert [st.playbook for st in plans["discover"].steps] == ["c.yml"]
    assert plans["commission"].on_cancel == plans["update"].on_cancel == ("x.yml",)
    assert plans["decommission"].on_cancel == plans["discover"].on_cancel == ()
    with pytest.raises(JobError, match="unknown workflow 'upgrade'"):
        workflow_plan("upgrade", s)


def test_discover_hosts_are_node1_to_n_in_cluster_node() -> None:
    got = discover_hosts([Host("", "10.0.0.7", "", ""), Host("", "10.0.0.8", "", "")])
    assert [(h.alias, h.addr, h.group) for h in got] == [
        ("node1", "10.0.0.7", "cluster-node"),
        ("node2", "10.0.0.8", "cluster-node"),
    ]


async def test_workflow_without_hosts_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="no hosts"):
        await workflow("commission", [], make_settings(tmp_path), tmp_path)


async def test_cancel_before_start_runs_nothing(tmp_path: Path) -> None:
    cancel = trio.Event()
    cancel.set()
    result = await workflow(
        "commission", TWO_HOSTS, make_settings(tmp_path), tmp_path, cancel=cancel
    )
    assert (result.ok, result.cancelled, result.error, result.steps) == (
        False,
        True,
        CANCELLED_ERROR,
        [],
    )
    assert not (tmp_path / "work").exists()


def test_kill_process_tree_reaches_setsid_descendants(proc_marker: str) -> None:
    # The case ansible-runner's killpg misses: a grandchild in its own session.
    code = (
        "import os, subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', sys.argv[1]],"
        " start_new_session=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, proc_marker])
    try:
        deadline = time.monotonic() + 10
        while len(live_pids_with(proc_marker)) < 2:
            assert time.monotonic() < deadline, "the test tree did not start"
            time.sleep(0.02)
        before = set(live_pids_with(proc_marker))
        killed = kill_process_tree(parent.pid)
        assert before <= set(killed)
        parent.wait(timeout=5)  # reap our own child; the grandchild is init's
        assert live_pids_with(proc_marker) == []
    finally:
        parent.kill()
        parent.wait()


# --------------------------------------------------------------------------- real ansible


@pytest.mark.ansible
async def test_commission_runs_configure_only_with_precedence_and_streams_log(
    tmp_path: Path,
) -> None:
    lines: list[str] = []
    key = tmp_path / "id key"  # a space: argv is built without a shell
    key.write_text("not a real key; the local connection never reads it\n")
    settings = make_settings(
        tmp_path, extra_variables=PRECEDENCE_CONFIG, user="gm-user", priv_key_file=str(key)
    )
    result = await workflow(
        "commission",
        PRECEDENCE_HOSTS,
        settings,
        tmp_path,
        lines,
        globals_=PRECEDENCE_GLOBALS,
        request_vars=PRECEDENCE_REQUEST,
    )
    assert result.ok and not result.cancelled and result.error == ""
    assert [(s.playbook, s.status, s.rc) for s in result.steps] == [("ok.yml", "successful", 0)]
    assert sorted(trace(tmp_path)) == ["configure a", "configure b"]  # no cleanup
    for alias, group in (("a", "service-master"), ("b", "service-worker")):
        view = host_view(tmp_path, alias)
        assert {k: view[k] for k in EXPECTED_VIEW[alias]} == EXPECTED_VIEW[alias], alias
        assert view["groups"] == [group]
        assert view["node_name"] == f"node-{alias}"
    assert view["ansible_host"] == view["node_addr"] == "127.0.0.2"
    assert "PLAY [Test configure] " in "\n".join(lines)
    assert any(line.startswith("TASK [Trace and dump variables]") for line in lines)
    assert not any("\x1b[" in line for line in lines)  # ANSIBLE_NOCOLOR
    # clusterm's dashed group names must not draw ansible's "Invalid characters" warning.
    assert not [line for line in lines if "[WARNING]" in line]
    # ansible-runner records the argv it ran: settings' user and key are there, the
    # extra-vars are not (they go through a 0600 file, not the world-readable cmdline).
    [command_file] = (tmp_path / "work").glob("ok-*/artifacts/*/command")
    argv = json.loads(command_file.read_text())["command"]
    assert argv[argv.index("--user") + 1] == "gm-user"
    assert argv[argv.index("--private-key") + 1] == str(key)
    assert not any("only_global" in arg for arg in argv)
    assert any(arg.startswith("@") and arg.endswith("/env/extravars") for arg in argv)


@pytest.mark.ansible
async def test_commission_failure_runs_cleanup(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, configure_playbook="fail.yml")
    result = await workflow("commission", TWO_HOSTS, settings, tmp_path)
    assert not result.ok and not result.cancelled
    assert [(s.playbook, s.status) for s in result.steps] == [
        ("fail.yml", "failed"),
        ("cleanup.yml", "successful"),
    ]
    assert result.steps[0].rc == 2  # ansible-playbook's "a host failed"
    assert 'playbook "fail.yml" failed (rc 2)' in result.error
    assert step_order(tmp_path) == ["configure-fail", "cleanup"]


@pytest.mark.ansible
async def test_update_runs_cleanup_then_configure(tmp_path: Path) -> None:
    result = await workflow("update", ONE_HOST, make_settings(tmp_path), tmp_path)
    assert result.ok
    assert [s.playbook for s in result.steps] == ["cleanup.yml", "ok.yml"]
    assert trace(tmp_path) == ["cleanup a", "configure a"]


@pytest.mark.ansible
async def test_update_configure_failure_cleans_up_again(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, configure_playbook="fail.yml")
    result = await workflow("update", ONE_HOST, settings, tmp_path)
    assert not result.ok and not result.cancelled
    assert [(s.playbook, s.status) for s in result.steps] == [
        ("cleanup.yml", "successful"),
        ("fail.yml", "failed"),
        ("cleanup.yml", "successful"),
    ]
    assert trace(tmp_path) == ["cleanup a", "configure-fail a", "cleanup a"]


@pytest.mark.ansible
async def test_missing_playbook_is_a_failed_step_and_cleanup_runs(tmp_path: Path) -> None:
    lines: list[str] = []
    settings = make_settings(tmp_path, configure_playbook="no-such-playbook.yml")
    result = await workflow("commission", TWO_HOSTS, settings, tmp_path, lines)
    assert not result.ok
    first = result.steps[0]
    assert (first.playbook, first.status, first.rc) == (
        "no-such-playbook.yml",
        "failed",
        RC_NOT_RUN,
    )
    assert "no-such-playbook.yml" in first.error and "not found" in first.error
    assert "no-such-playbook.yml" in result.error
    assert [(s.playbook, s.status) for s in result.steps[1:]] == [("cleanup.yml", "successful")]
    assert step_order(tmp_path) == ["cleanup"]
    assert any("no-such-playbook.yml" in line for line in lines)


@pytest.mark.ansible
async def test_decommission_runs_cleanup(tmp_path: Path) -> None:
    result = await workflow("decommission", TWO_HOSTS, make_settings(tmp_path), tmp_path)
    assert result.ok
    assert [s.playbook for s in result.steps] == ["cleanup.yml"]
    assert sorted(trace(tmp_path)) == ["cleanup a", "cleanup b"]


@pytest.mark.ansible
async def test_discover_uses_node_aliases_in_cluster_node(tmp_path: Path) -> None:
    hosts = [Host("", "127.0.0.5", "", ""), Host("", "127.0.0.6", "", "")]
    result = await workflow("discover", hosts, make_settings(tmp_path), tmp_path)
    assert result.ok
    assert [s.playbook for s in result.steps] == ["ok.yml"]
    assert sorted(trace(tmp_path)) == ["configure node1", "configure node2"]
    for alias, addr in (("node1", "127.0.0.5"), ("node2", "127.0.0.6")):
        view = host_view(tmp_path, alias)
        assert view["groups"] == ["cluster-node"]
        assert view["ansible_host"] == view["node_addr"] == addr
        assert view["node_name"] == alias  # clusterm's discover: node_name=node<i>


async def wait_until_sleeping(marker: str, lines: list[str], count: int) -> None:
    """Wait until ``count`` marker processes run and the log streamed the sleeping task."""
    # Polling, not an Event: other processes appearing in /proc cannot notify us.
    with trio.fail_after(RUN_DEADLINE_S):
        while len(live_pids_with(marker)) < count or not any(  # noqa: ASYNC110
            line.startswith("TASK [Sleep with a child process]") for line in lines
        ):
            await trio.sleep(0.05)


@pytest.mark.ansible
async def test_cancel_stops_the_whole_tree_then_cleans_up(tmp_path: Path, proc_marker: str) -> None:
    settings = make_settings(tmp_path, proc_marker, configure_playbook="long.yml")
    cancel = trio.Event()
    lines: list[str] = []
    results: list[Any] = []
    cancelled_at = 0.0

    async def run() -> None:
        results.append(await workflow("commission", TWO_HOSTS, settings, tmp_path, lines, cancel))

    # The deadline only stops a cancel that does not work (the tasks sleep 300 s); how fast it
    # works is a figure of bench/bounds.py.
    with trio.fail_after(2 * RUN_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            # 2 hosts x (python + its child). Seeing the task's header in `lines` while the
            # run is still going proves the log is streamed live.
            await wait_until_sleeping(proc_marker, lines, 4)
            assert not results
            cancelled_at = time.monotonic()
            cancel.set()
    elapsed = time.monotonic() - cancelled_at  # includes the ~1 s cleanup run
    [result] = results
    assert result.cancelled and not result.ok and result.error == CANCELLED_ERROR
    assert [(s.playbook, s.status) for s in result.steps] == [
        ("long.yml", "canceled"),
        ("cleanup.yml", "successful"),
    ]
    bound("ansible.cancel_to_cleaned_up", elapsed, 10)
    assert live_pids_with(proc_marker) == []
    assert step_order(tmp_path) == ["configure-long", "cleanup"]


@pytest.mark.ansible
async def test_trio_cancellation_also_stops_the_tree(tmp_path: Path, proc_marker: str) -> None:
    settings = make_settings(tmp_path, proc_marker)
    lines: list[str] = []
    with trio.fail_after(RUN_DEADLINE_S):
        async with trio.open_nursery() as nursery:

            async def run() -> None:
                await run_playbook(
                    "long.yml",
                    RunInputs(ONE_HOST, settings, {}, {}),
                    log=lines.append,
                    cancel=trio.Event(),
                    work_root=tmp_path / "work",
                )
                raise AssertionError("run_playbook returned instead of being cancelled")

            nursery.start_soon(run)
            await wait_until_sleeping(proc_marker, lines, 2)
            started = time.monotonic()
            nursery.cancel_scope.cancel()
    bound("ansible.trio_cancel_stops_the_tree", time.monotonic() - started, 10)
    assert live_pids_with(proc_marker) == []


@pytest.mark.ansible
async def test_timeout_kills_the_tree(tmp_path: Path, proc_marker: str) -> None:
    # The timeout must fire while the sleepers run, so the kill has something to kill. They
    # start ~1-2 s into the run on an idle machine; on a loaded one ansible can take longer
    # than the whole timeout to get there, and such a run proves nothing: try again with a
    # doubled timeout rather than assert on a race.
    for timeout_s in (4, 8, 16):
        (tmp_path / f"t{timeout_s}").mkdir()
        settings = make_settings(tmp_path / f"t{timeout_s}", proc_marker, timeout_s=timeout_s)
        seen: list[int] = []
        lines: list[str] = []

        async def watch(seen: list[int] = seen) -> None:
            while True:
                seen.extend(live_pids_with(proc_marker))
                await trio.sleep(0.05)

        with trio.fail_after(RUN_DEADLINE_S + timeout_s):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                result = await run_playbook(
                    "long.yml",
                    RunInputs(ONE_HOST, settings, {}, {}),
                    log=lines.append,
                    cancel=trio.Event(),
                    work_root=tmp_path / f"work{timeout_s}",
                )
                nursery.cancel_scope.cancel()
        assert (result.status, result.error) == ("timeout", f"timed out after {timeout_s} s")
        assert live_pids_with(proc_marker) == []
        if seen:
            break
    assert seen, "the long task never started, even with a 16 s timeout; this proves nothing"


@pytest.mark.ansible
async def test_concurrent_runs_are_isolated(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    results = {}

    async def run(d: Path, color: str) -> None:
        results[color] = await run_playbook(
            "ok.yml",
            RunInputs(ONE_HOST, make_settings(d), {}, {"color": color}),
            log=lambda _: None,
            cancel=trio.Event(),
            work_root=tmp_path / "work",
        )

    with trio.fail_after(RUN_DEADLINE_S):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, one, "red")
            nursery.start_soon(run, two, "green")
    assert {r.status for r in results.values()} == {"successful"}
    assert host_view(one, "a")["color"] == "red"
    assert host_view(two, "a")["color"] == "green"
    private_dirs = sorted((tmp_path / "work").iterdir())
    assert len(private_dirs) == 2
    for d in private_dirs:
        assert (d.stat().st_mode & 0o777) == 0o700
        assert ((d / "env" / "extravars").stat().st_mode & 0o777) == 0o600


@pytest.mark.ansible
async def test_shipped_playbooks_work_locally(tmp_path: Path) -> None:
    settings = AnsibleSettings(playbook_dir=PACKAGE_PLAYBOOKS, host_vars=LOCAL)
    # a's root comes from its own node vars (so it travels as a host var only and must
    # survive the playbooks' defaults); b's from the globals (an extra-var).
    hosts = [
        Host(
            "a",
            "127.0.0.1",
            "node-a",
            "service-master",
            {"gossipmgr_demo_root": str(tmp_path / "a")},
        ),
        Host("b", "127.0.0.2", "node-b", "service-worker"),
    ]
    globals_ = {"gossipmgr_demo_root": str(tmp_path / "b")}

    async def run(playbook: str) -> str:
        with trio.fail_after(RUN_DEADLINE_S):
            result = await run_playbook(
                playbook,
                RunInputs(hosts, settings, globals_, {}),
                log=lambda _: None,
                cancel=trio.Event(),
                work_root=tmp_path / "work",
            )
        return result.status

    assert await run(settings.configure_playbook) == "successful"
    assert "\nnode_name=node-a\n" in (tmp_path / "a" / "configured").read_text()
    assert "groups=service-worker" in (tmp_path / "b" / "configured").read_text()
    assert await run(settings.upgrade_playbook) == "successful"
    assert (tmp_path / "b" / "upgraded").read_text() == "upgraded node_name=node-b\n"
    assert await run(settings.cleanup_playbook) == "successful"
    for alias in "ab":
        assert not (tmp_path / alias / "configured").exists()
        assert (tmp_path / alias / "upgraded").exists()


def test_no_playbook_timeout_by_default(tmp_path: Path) -> None:
    """clusterm had no playbook timeout: the default is none (0), a set one still counts."""
    from gossipmgr.config import AnsibleConfig
    from gossipmgr.runtime.ansible import _RunControl

    assert AnsibleSettings(playbook_dir=tmp_path).timeout_s == 0
    assert AnsibleConfig().timeout_s == 0
    assert _RunControl(tmp_path, 0).deadline == float("inf")
    ctl = _RunControl(tmp_path, 0)
    assert ctl.poll() is False and ctl.outcome == ""
    ctl = _RunControl(tmp_path, 1e-9)
    assert ctl.poll() is True and ctl.outcome == "timeout"


def test_discover_hosts_get_node_name_like_clusterm() -> None:
    from gossipmgr.runtime.ansible import discover_hosts

    hosts = discover_hosts([Host("", "10.0.0.1", "", ""), Host("", "10.0.0.2", "", "")])
    assert [(h.alias, h.name, h.group) for h in hosts] == [
        ("node1", "node1", "cluster-node"),
        ("node2", "node2", "cluster-node"),
    ]
