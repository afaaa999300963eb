"""The "Side by side with etcd" section of docs/benchmarks.md and docs/img/vs_etcd.png, from
bench/results/vs_etcd.json (written by bench/vs_etcd.py). Used by bench/report.py; nothing
here measures anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PLOT = "vs_etcd.png"


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def _doc() -> str:
    src = (HERE / "vs_etcd.py").read_text()
    start = src.index('"""') + 3
    lines = src[start : src.index('"""', start)].strip().splitlines()
    keep = [x for x in lines[1:] if not x.startswith(("Run:", "Then:"))]
    return "\n".join(keep).strip()


def section(r: dict[str, Any], plotted: bool) -> list[str]:
    runs = r.get("runs", [])
    params = r.get("params", {})
    mode = r.get("gossipmgr_visible_mode", "?")
    etcd = str(r.get("etcd_version", "etcd ?")).replace(" Version:", "")
    out = [
        f"Command: `{r.get('command', '')}` ({len(runs)} run(s); `--quick` for a smoke run)",
        "",
        _doc(),
        "",
        f"Measured on gossipmgr at commit `{r.get('gossipmgr_commit', '?')}` (the last commit "
        f"that changed its code) against {etcd}, "
        f"{r.get('machine', {}).get('when', '?')}. gossipmgr's write -> visible was "
        + (
            "**polled** (`GET /globals/{key}` every 1 ms on r2 and r3: that commit has no "
            "`/watch` change feed)"
            if mode == "polled"
            else "read from the `/watch` change feed of r2 and r3"
        )
        + f"; each row is the median of {len(runs)} run(s).",
        "",
        "| workload | etcd | gossipmgr | gossipmgr / etcd | goal (issue 17) |",
        "|---|---:|---:|---:|---|",
    ]
    for row in r.get("table", []):
        rat = "-" if row.get("ratio") is None else f"{row['ratio']:.2f}x"
        what = f"{row['what']} ({row['unit']})" if row.get("unit") != "x" else row["what"]
        out.append(
            f"| {what} | {_fmt(row.get('etcd'))} | {_fmt(row.get('gossipmgr'))} | {rat} "
            f"| {row.get('goal') or ''} |"
        )
    out.append("")
    errors = r.get("errors") or {}
    if errors:
        out += [f"**{len(errors)} phase(s) failed** in these runs (`errors` in the JSON); "
                "their rows are medians of the runs that completed.", ""]  # fmt: skip
    loads = [x[k] for x in runs for k in x if k.endswith("_loadavg_1m") and x[k] is not None]
    loads = loads or [v for k, v in r.get("loadavg_1m_during", {}).items() if k != "how"]
    if loads:
        cores = r.get("machine", {}).get("nproc", "?")
        out += ["1-minute load average during the runs: "
                f"{min(loads):.1f} to {max(loads):.1f} on {cores} cores (the benchmark's own "
                "processes included; other work shared the machine).", ""]  # fmt: skip
    out += ["Parameters: `" + ", ".join(f"{k}={v}" for k, v in params.items()) + "`", ""]
    if plotted:
        out += [f"![etcd and gossipmgr side by side](img/{PLOT})", ""]
    return out


def plot(r: dict[str, Any], img: Path) -> bool:
    """Both systems side by side: writes/s, the latencies (log scale), restart catch-up."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    med = r.get("median", {})
    p = r.get("params", {})
    mid, big = p.get("mid", 10_000), p.get("big", 100_000)
    lat = [
        ("visible\np50", "visible_fresh_p50_ms"),
        ("visible\np99", "visible_fresh_p99_ms"),
        (f"visible p50\n{mid:,} keys", "visible_mid_p50_ms"),
        (f"visible p99\n{mid:,} keys", "visible_mid_p99_ms"),
        ("write ack\np50", "ack_fresh_p50_ms"),
        ("GET p50\n0 keys", "get_0_p50_ms"),
        (f"GET p50\n{big:,} keys", f"get_{big}_p50_ms"),
    ]
    panels = [
        ("writes/s\n(higher is better)", [("writes/s", "writes_per_s")], False),
        ("latency, ms (log; lower is better)", lat, True),
        ("restart catch-up, s\n(lower is better)", [("r3 catch-up", "catch_up_s")], False),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), gridspec_kw={"width_ratios": [1.2, 5, 1.2]})
    for ax, (title, metrics, log) in zip(axes, panels, strict=True):
        xs = range(len(metrics))
        for j, (name, color) in enumerate((("etcd", "#55a868"), ("gossipmgr", "#4c72b0"))):
            vals = [med.get(f"{name}_{m}") or 0 for _, m in metrics]
            ax.bar([x + (j - 0.5) * 0.38 for x in xs], vals, 0.38, label=name, color=color)
        ax.set_xticks(list(xs), [label for label, _ in metrics], fontsize=8)
        ax.set_title(title, fontsize=9)
        if log:
            ax.set_yscale("log")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    polled = " (gossipmgr polled)" if r.get("gossipmgr_visible_mode") == "polled" else ""
    fig.suptitle(
        f"etcd vs gossipmgr, 3 replicas each on loopback, medians of "
        f"{len(r.get('runs', []))} run(s){polled}",
        fontsize=10,
    )
    fig.tight_layout()
    img.mkdir(parents=True, exist_ok=True)
    fig.savefig(img / PLOT, dpi=110)
    plt.close(fig)
    return True
