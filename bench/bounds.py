"""The timing bounds the default test run no longer asserts, checked here as figures.

Run:  .venv/bin/python bench/bounds.py [--reps N] [--quick]

Runs the tests that measure a duration (each calls ``tests/_bounds.py``'s ``bound``) with
``GOSSIPMGR_ENFORCE_BOUNDS=1`` and ``GOSSIPMGR_BOUNDS_FILE`` set, ``--reps`` times each, so
every measured duration is both recorded and asserted against its bound:

| figure | bound | from |
|---|---|---|
| agent.holder_sigkill_takeover | 16 s (Serf failure ~5-6 s + TTL 6 s + 4 s) | test_agent.py |
| api.shutdown_with_idle_keepalive | 3 s (the shielded send: not graceful_timeout) | test_api.py |
| api.stop_with_http2_clients | 1 s (SIGTERM to exit, h2c/preface clients left) | test_h2c.py |
| ansible.cancel_to_cleaned_up | 10 s (tree killed, cleanup playbook run) | test_ansible.py |
| ansible.trio_cancel_stops_the_tree | 10 s | test_ansible.py |
| jobs.cancel_to_ended | 15 s (job cancel to its record ended) | test_workflows_e2e.py |
| serf.query_done_after_0.5s_timeout | 2 s (our 0.5 s, not 1.6 s default) | test_serf_client.py |

Prints min/median/max per figure and the failed runs, writes bench/results/bounds.json,
and exits 1 if any run broke its bound or failed. Needs serf and ansible (./dev bootstrap).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _util import write_result  # noqa: E402

TESTS = [
    "tests/test_agent.py::test_holder_sigkill_hands_over_and_loses_no_health_event",
    "tests/test_api.py::test_shutdown_is_prompt_with_an_idle_keepalive_connection",
    "tests/test_h2c.py::test_clients_that_ask_for_http2_and_leave_cannot_hang_a_stop",
    "tests/test_ansible.py::test_cancel_stops_the_whole_tree_then_cleans_up",
    "tests/test_ansible.py::test_trio_cancellation_also_stops_the_tree",
    "tests/test_workflows_e2e.py::test_one_active_job_and_cancel",
    "tests/test_serf_client.py::test_query_respond_through_done",
]


def run_once(test: str, record: Path) -> bool:
    env = dict(os.environ)
    env["GOSSIPMGR_ENFORCE_BOUNDS"] = "1"
    env["GOSSIPMGR_BOUNDS_FILE"] = str(record)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        print(out.stdout[-3000:], out.stderr[-2000:], sep="\n")
    return out.returncode == 0


def main() -> int:
    ap = argparse.ArgumentParser(description="check the timing bounds kept out of the test run")
    ap.add_argument("--reps", type=int, default=5, help="runs of each test (default 5)")
    ap.add_argument("--quick", action="store_true", help="one run of each test")
    args = ap.parse_args()
    reps = 1 if args.quick else args.reps
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "bounds.jsonl"
        for test in TESTS:
            for i in range(reps):
                print(f"{test} [{i + 1}/{reps}]", flush=True)
                if not run_once(test, record):
                    failed.append(f"{test} [{i + 1}]")
        lines = record.read_text().splitlines() if record.exists() else []
    runs = [json.loads(line) for line in lines]
    figures: dict[str, list[float]] = {}
    limits: dict[str, float] = {}
    for r in runs:
        figures.setdefault(r["name"], []).append(r["seconds"])
        limits[r["name"]] = r["limit_s"]
    summary = {}
    for name, xs in sorted(figures.items()):
        summary[name] = {
            "n": len(xs),
            "min_s": min(xs),
            "median_s": round(statistics.median(xs), 3),
            "max_s": max(xs),
            "bound_s": limits[name],
        }
        print(
            f"{name:40} n={len(xs)} min {min(xs):6.2f} s  median "
            f"{statistics.median(xs):6.2f} s  max {max(xs):6.2f} s  bound {limits[name]} s"
        )
    for f in failed:
        print(f"FAILED {f}")
    out = write_result(
        "bounds",
        "durations the default test run measures but does not assert, against their bounds",
        {"reps": reps, "tests": TESTS},
        [{r["name"]: r["seconds"]} for r in runs],
        extra={"figures": summary, "failed": failed},
    )
    print(f"wrote {out.relative_to(REPO)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
