"""Test-wide settings. The test policy (also in docs/testing.md):

- network tests bind only to 127.0.0.0/8 (or inside namespaces they create), on free ports;
- every process a test starts is stopped by that test (fixtures with finally);
- no sleeps to paper over races: wait on a condition with a deadline;
- warnings are errors (pyproject: filterwarnings = error).
"""

from __future__ import annotations

from collections.abc import Generator

import pluggy
import pytest
from hypothesis import HealthCheck, settings

from gossipmgr.localcluster import LocalCluster

# Shared 2-core machines: generation speed and per-example time vary too much for
# Hypothesis' timing checks to mean anything; the example counts are what we rely on.
settings.register_profile(
    "gossipmgr",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("gossipmgr")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--screenshots",
        metavar="DIR",
        default=None,
        help="save the web console's screenshots (tests/test_console_browser.py) in DIR "
        "(default: under pytest's tmp dir)",
    )
    parser.addoption(
        "--long",
        action="store_true",
        default=False,
        help="also run the tests marked `long` (./dev test-all): long variants of promises "
        "the default run covers with a cheaper test (docs/testing.md lists them)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The default run deselects the tests marked ``long`` (``--long`` keeps them)."""
    if config.getoption("--long"):
        return
    keep = [it for it in items if it.get_closest_marker("long") is None]
    if len(keep) < len(items):
        config.hook.pytest_deselected(items=[it for it in items if it not in keep])
        items[:] = keep


#: Lines of each instance's log attached to the report of a failed test that used a
#: LocalCluster: a CI run that fails on a loaded machine is diagnosed from these alone.
LOG_TAIL_LINES = 80


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pluggy.Result[pytest.TestReport], None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.when != "call" or not rep.failed:
        return
    for value in getattr(item, "funcargs", {}).values():
        if not isinstance(value, LocalCluster):
            continue
        for name, inst in sorted(value.instances.items()):
            lines = inst.log().splitlines()[-LOG_TAIL_LINES:]
            rep.sections.append((f"instance {name}: last {len(lines)} log lines", "\n".join(lines)))
