"""The partition suite's node-action checker (``bench/partition_jobs.py``), pure logic only.

No namespaces, no agents: action logs and wiring timelines written by hand, as the
simulated node's playbooks and the harness produce them. The suite itself (real ansible
on a simulated node during real partitions) is ``bench/partition.py``; docs/partitions.md.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.partition import SCHEDULES, build  # noqa: E402
from bench.partition_jobs import (  # noqa: E402
    JobRequest,
    check_actions,
    job_outcomes,
    parse_actions,
    write_config,
)

WALL0 = 1_000_000.0
HOSTS = ["h1", "h2", "h3", "h4", "h5"]
WHOLE = [(0.0, [set(HOSTS)])]
#: cut at t=2 into {h1,h2,h3} / {h4,h5}, healed at t=22
SPLIT = [*WHOLE, (2.0, [{"h1", "h2", "h3"}, {"h4", "h5"}]), (22.0, [set(HOSTS)])]


def log(*lines: tuple[float, int, str, str, int | None]) -> str:
    return "".join(
        json.dumps(
            {
                "t": WALL0 + t,
                "epoch": e,
                "holder": h,
                "job": j,
                "action": "configure",
                "step": 0,
                "node_epoch": ne,
            }
        )
        + "\n"
        for t, e, h, j, ne in lines
    )


def test_actions_in_epoch_order_pass_and_a_stale_one_is_counted() -> None:
    ok = parse_actions(
        "n3", log((1, 3, "h1", "a", 3), (3, 3, "h1", "a", 3), (9, 4, "h4", "b", 4)), WALL0
    )
    assert [a.t for a in ok] == [1.0, 3.0, 9.0]
    assert check_actions(ok, SPLIT, 5)["out_of_order"] == 0

    # h1's job passed the fence under epoch 3, h4's epoch 4 acted, then h1's next step.
    stale = parse_actions(
        "n3", log((1, 3, "h1", "a", 3), (9, 4, "h4", "b", 4), (10, 3, "h1", "a", 4)), WALL0
    )
    out = check_actions(stale, SPLIT, 5)
    assert out["out_of_order"] == 1 and out["out_of_order_in_flight"] == 1
    d = out["out_of_order_detail"][0]
    assert (d["holder"], d["epoch"], d["after_epoch"]) == ("h1", 3, 4)
    # An action whose fence had seen no newer epoch is not "in flight": a real violation.
    bad = parse_actions("n3", log((9, 4, "h4", "b", 4), (10, 3, "h1", "a", 3)), WALL0)
    assert check_actions(bad, SPLIT, 5)["out_of_order_in_flight"] == 0
    # Order is per node: a lower epoch on another node is fine.
    two = parse_actions("n3", log((9, 4, "h4", "b", 4)), WALL0) + parse_actions(
        "n4", log((10, 3, "h1", "a", 3)), WALL0
    )
    assert check_actions(two, SPLIT, 5)["out_of_order"] == 0


def test_minority_actions_count_only_while_a_majority_side_exists() -> None:
    acts = parse_actions(
        "n3",
        log(
            (1, 3, "h4", "a", 3),  # before the cut: one group, h4 is in it
            (5, 4, "h4", "b", 4),  # h4 on the 2-side while {h1,h2,h3} exists: counted
            (6, 4, "h1", "c", 4),  # the majority side: not counted
            (23, 5, "h5", "d", 5),  # after the heal
        ),
        WALL0,
    )
    out = check_actions(acts, SPLIT, 5)
    assert out["minority_actions"] == 1
    assert out["minority_detail"][0]["job"] == "b"
    assert out["minority_detail"][0]["majority"] == ["h1", "h2", "h3"]
    assert out["epochs_with_two_holders"] == [{"node": "n3", "epoch": 4, "holders": ["h1", "h4"]}]
    assert out["minority_in_window"] == 0  # no confirm time recorded
    # An action whose confirm said yes before the cut (t=1.9) and that landed after it is
    # in the window between the confirm and the action; one confirmed after it is not.
    line = json.loads(log((5, 4, "h4", "b", 4)))
    both = [{**line, "confirmed_at": WALL0 + 1.9}, {**line, "confirmed_at": WALL0 + 4.5}]
    text = "".join(json.dumps(x) + "\n" for x in both)
    out = check_actions(parse_actions("n3", text, WALL0), SPLIT, 5)
    assert out["minority_actions"] == 2 and out["minority_in_window"] == 1
    assert [x["confirmed_t"] for x in out["minority_detail"]] == [1.9, 4.5]
    # No side with a strict majority (2/2 of 4 instances, or three singles): none counted.
    even = [(0.0, [{"h1", "h2"}, {"h3", "h4"}])]
    assert check_actions(acts, even, 4)["minority_actions"] == 0


def test_job_outcomes_report_fenced_failures_with_their_reason() -> None:
    reqs = [
        JobRequest(0.1, "h1", "commission", 200, "j1", 3, "h1"),
        JobRequest(8.0, "h4", "update", 200, "j2", 4, "h4"),
        JobRequest(8.5, "h2", "update", 409, error="there is already an active job"),
        JobRequest(9.0, "h5", "update", 0),
    ]
    fenced = 'commission failed: playbook "site.yml" failed (rc 2): fenced: epoch 3 is older than 4'
    recs = {
        "j1": {"status": "Errored", "runner": "h1", "epoch": 3, "error": fenced},
        "j2": {"status": "Complete", "runner": "h4", "epoch": 4, "error": ""},
    }
    out = job_outcomes(recs, reqs)
    assert out["accepted"] == 2 and out["accepted_by"] == {"h1": 1, "h2": 0, "h4": 1, "h5": 0}
    assert out["ended"] == {"Errored": 1, "Complete": 1}
    assert out["fenced"] == 1 and out["fenced_detail"][0]["id"] == "j1"
    assert out["answers"] == {"200": 2, "409": 1, "0": 1}
    assert job_outcomes({}, reqs[:1])["ended"] == {"missing": 1}


def test_jobs_schedules_are_built_and_in_the_defaults(tmp_path: Path) -> None:
    assert {"job-split", "job-holder-isolated"} <= set(SCHEDULES)
    s = build("job-split", 7, HOSTS, quick=False)
    assert s.jobs and s.steps[0] == (0, "partition", [["h1", "h2", "h3"], ["h4", "h5"]])
    assert not build("split-2-3", 7, HOSTS, quick=False).jobs
    randoms = [build("random", seed, HOSTS, quick=True) for seed in range(20)]
    assert any(r.jobs for r in randoms) and not all(r.jobs for r in randoms)
    # the jobs draw comes last: a seed's fault steps are what they were before it
    assert build("random", 7, HOSTS, False).steps == build("random", 7, HOSTS, False).steps
    cfg = write_config(tmp_path).read_text()
    assert "gossipmgr_fence_dir" in cfg and "partition_node_dir" in cfg
    assert (ROOT / "bench/partition_playbooks/library/partition_action.py").is_file()
