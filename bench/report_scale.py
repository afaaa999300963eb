"""The report's sections for bench_catchup.py (restart catch-up) and bench_scale.py (thirty
instances), kept out of report.py (which lists them in SECTIONS and calls these)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _doc(script: str) -> str:
    src = (HERE / script).read_text()
    doc = src[src.index('"""') + 3 : src.index("    .venv/bin/python")].strip()
    return doc.split("\n", 1)[1].strip()


CATCHUP_ROWS = (
    ("serve_s", "process start → GET /health 200"),
    ("peers_s", "process start → Serf gave the gossip peers (log)"),
    ("catchup_first_answer_s", "... → the catch-up's first answer (log)"),
    ("catchup_last_entry_s", "... → its last missed entry joined (log)"),
    ("catchup_equal_s", "... → every peer equal (log)"),
    ("visible_s", "**process start → all 1,000 keys visible on r3** (poll)"),
    ("after_peers_s", "Serf gave the peers → all visible"),
)


def catchup_section(r: dict[str, Any], fmt: Callable[[Any], str]) -> list[str]:
    now = dict(r.get("median", {}))
    before = r.get("before", {})
    b_med = dict(before.get("median", {}))
    for m in (now, b_med):
        if "visible_s" in m and "peers_s" in m:
            m["after_peers_s"] = m["visible_s"] - m["peers_s"]
    b_label = before.get("params", {}).get("label", "before")
    out = [_doc("bench_catchup.py"), ""]
    out += [
        f"Median of {len(r.get('runs', []))} runs, seconds ({b_label} → this tree)",
        "",
        "| step | before | now |",
        "|---|---|---|",
    ]
    for key, label in CATCHUP_ROWS:
        if key in now or key in b_med:
            b = fmt(b_med[key]) if key in b_med else "-"
            n = fmt(now[key]) if key in now else "-"
            out.append(f"| {label} | {b} | {n} |")
    out += ["", *CATCHUP_TEXT, ""]
    return out


CATCHUP_TEXT = [
    "Before, a restarted instance resynced with one peer per 150 ms tick round (the next one "
    "only after the first had drained), from the first tick after Serf named its peers, and "
    "its peers, seeing it back, pulled its whole out-of-date difference from it while it "
    "caught up (r3 sent ~3x the entry bytes it received: its CPU went to that). Now "
    "(docs/design.md, Catch-up and Push-pull): a digest goes to every peer the instant Serf "
    "names them and the pulls run in parallel; a peer Serf has not told about the new "
    "instance yet answers at the datagram's source address (it used to drop the answer, and "
    "the catch-up waited for its membership poll); and its peers leave the resync to it "
    "(push-pull brings them anything it has that they lack), so it sends them ~0 entry "
    "bytes. Where the time goes now, on this loaded 2-core machine: the process start "
    "(interpreter, imports, restore: issue 17's part 5, not this change) is almost all of "
    "it; Serf's start and join plus the first membership poll ~0.1-0.25 s; the first "
    "answer a few ms to a few tens of ms after the digests; the transfer of the 1,000 "
    "entries (~34 KB) ~0.15-0.4 s, CPU-bound (decrypting, decoding and joining untrusted "
    "entries, on a machine whose load average was 14-16 during these runs); persisting "
    "them is off the path (a separate task; the bench checks r3's data dir afterwards). "
    "The visible time is polled every 50 ms, so it is late by up to one poll.",
]


SCALE_KEYS = (
    ("idle_bytes_per_s_mean", "idle gossip bytes/s per instance, mean"),
    ("idle_bytes_per_s_median", "idle gossip bytes/s per instance, median"),
    ("idle_bytes_per_s_max", "idle gossip bytes/s per instance, max (the lease holder)"),
    ("visible_all_p50_ms", "write → visible on all others, p50 ms"),
    ("visible_all_p99_ms", "write → visible on all others, p99 ms"),
    ("visible_all_max_ms", "write → visible on all others, max ms"),
    ("visible_each_p50_ms", "write → visible on each other, p50 ms"),
    ("visible_each_p99_ms", "write → visible on each other, p99 ms"),
    ("start_s", "all started and listing each other, s"),
)


def scale_section(res: dict[str, dict[str, Any]], fmt: Callable[[Any], str]) -> list[str]:
    cols = [
        ("scale3_before", "3, before"),
        ("scale3", "3, now"),
        ("scale30_before", "30, before"),
        ("scale30", "30, now"),
    ]
    have = [(k, t) for k, t in cols if k in res]
    out = [_doc("bench_scale.py"), ""]
    for k, t in have:
        r = res[k]
        out.append(f"- {t}: `{r.get('command', '')}` ({r.get('params', {}).get('label', '')})")
    out += ["", "| instances | " + " | ".join(t for _, t in have) + " |"]
    out.append("|---" * (len(have) + 1) + "|")
    for key, label in SCALE_KEYS:
        cells = [fmt(res[k].get("median", {}).get(key, "-")) for k, _ in have]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    prefix = "idle_bytes_per_s_mean_"
    kinds = sorted({k[len(prefix) :] for c, _ in have for k in res[c]["median"] if prefix in k})
    for kind in kinds:
        cells = [fmt(res[k].get("median", {}).get(prefix + kind, "-")) for k, _ in have]
        out.append(f"| idle bytes/s per instance: `{kind}` | " + " | ".join(cells) + " |")
    out += ["", *SCALE_TEXT, ""]
    return out


SCALE_TEXT = [
    "Every column is one run (30 real agents take minutes to start on this machine, whose "
    "load average passed 50 while they did). Two things made the idle traffic per instance "
    "grow with the cluster, both fixed (docs/design.md, Anti-entropy and Silent peers): "
    "(1) an idle peer counted as *silent* after 3 s without a message and was probed with a "
    "650-byte digest every 2 s; at 3 instances a peer hears from the other two often "
    "enough, but at 30 it hears from most others rarely (one random repair digest in 29 "
    "per 2 s), so every instance probed ~28 peers every 2-3 s. Now only a peer that owes us "
    "something (an ack, an answer, pulled entries) or that Serf lists failed is silent and "
    "probed; an idle one gets a ~90-byte heartbeat every 6 s, and only from the peers "
    "sorting before it (the lease's claim order is all that needs it). (2) Every received "
    "delta was forwarded by its receiver to every other peer, so the lease holder's renewal "
    "(every 2.5 s) cost every instance ~28 datagrams and ~28 acks; now, beyond 8 peers, a "
    "delta that came straight from its writer is not forwarded (the writer reaches every "
    "peer; the repair rounds heal a cut). In the seeded simulation (tests/test_catchup.py) "
    "the idle bytes per instance at 30 went from 8x the 3-instance figure to ~1.5x, and a "
    "write from 1,001 datagrams to under 300. The lease holder's renewals make it the max. "
    "The 3-instance goal figure at the top (478 B/s) was measured in one process without a "
    "lease holder (bench_gossip.py), so the like-for-like reference is this table's "
    "3-instance column. Write → visible is polled (GET /globals/{key} every 5 ms from one "
    "thread per instance: 29 threads against 30 agents on 2 cores), not read from "
    "`GET /watch`, which was not on main yet; it includes up to one poll and the GET itself.",
]
