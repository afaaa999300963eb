"""The README's first command: `gossipmgr demo` runs to completion and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.serf, pytest.mark.ansible, pytest.mark.slow]


def _demo_processes() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "gossipmgr-demo-" in cmd:
            out.append(cmd)
    return out


def test_demo_runs_to_completion_and_cleans_up() -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [sys.executable, "-m", "gossipmgr.cli.main", "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    # The demo's own error line comes first on stderr, before the instances' log tails.
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("gossipmgr demo:")]
    assert proc.returncode == 0, (
        "\n".join(errors) + "\n" + proc.stdout[-3000:] + proc.stderr[-6000:]
    )
    out = proc.stdout
    for needle in (
        "lease holder:",
        "discover 127.0.0.99",
        "Complete",
        "took the lease",
        "identical to before the kill: True",
        "caught up",
        "Demo complete.",
        "files removed",
    ):
        assert needle in out, needle
    assert _demo_processes() == []
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    assert not [p for p in tmp.glob("gossipmgr-demo-*")]
