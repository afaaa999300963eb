"""Test-wide settings. The test policy (also in docs/testing.md):

- network tests bind only to 127.0.0.0/8 (or inside namespaces they create), on free ports;
- every process a test starts is stopped by that test (fixtures with finally);
- no sleeps to paper over races: wait on a condition with a deadline;
- warnings are errors (pyproject: filterwarnings = error).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings

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
