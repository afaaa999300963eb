"""bench/vs_etcd.py, the side-by-side benchmark with etcd: its argument parsing, the pure
helpers (stream parsers, ratios and goal verdicts) and the snapshot seeding it starts
gossipmgr from. Nothing here starts etcd or an agent, and nothing is timed: the benchmark
itself is ``python bench/vs_etcd.py``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio

from gossipmgr.runtime.replica import Replica

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _bench(name: str) -> ModuleType:
    # bench/ scripts import their siblings as top-level modules (as when run as scripts).
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


vs = _bench("vs_etcd")
sides = _bench("vs_etcd_sides")


def test_arguments_and_plans() -> None:
    a = vs.parse_args([])
    assert (a.runs, a.writes, a.quick) == (3, 2000, False)
    full = vs.make_plan(a)
    assert (full.runs, full.writes, full.visible, full.rewrite) == (3, 2000, 200, 1000)
    assert (full.mid, full.big) == (10_000, 100_000)
    assert vs.make_plan(vs.parse_args(["--writes", "10000", "--runs", "5"])).writes == 10_000
    quick = vs.make_plan(vs.parse_args(["--quick"]))
    assert quick.runs == 1 and quick.rewrite <= quick.mid < quick.big
    assert quick.writes < full.writes and quick.visible < full.visible
    for bad in (["--runs", "0"], ["--writes", "-1"], ["--runs", "x"]):
        with pytest.raises(SystemExit):
            vs.parse_args(bad)


def _every_split(data: bytes) -> list[list[bytes]]:
    return [[data[:i], data[i:j], data[j:]] for i in range(len(data) + 1) for j in (i, len(data))]


def test_chunked_decoder_any_split() -> None:
    body = b"5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld\n\r\n0\r\n\r\n"
    for parts in _every_split(body):
        d = sides.ChunkedDecoder()
        assert b"".join(d.feed(p) for p in parts) == b"hello world\n"
        assert d.done


def test_sse_parser_events_comments_and_splits() -> None:
    text = (
        ": watching\n\n"
        'id: 7\r\nevent: put\r\ndata: {"key": "globals/a", "value": 1}\r\n\r\n'
        "event: delete\ndata: {\ndata: }\n\n"
        "data: x"
    )
    for parts in _every_split(text.encode()):
        p = sides.SseParser()
        events = [e for part in parts for e in p.feed(part.decode())]
        assert p.comments == 1
        assert events == [
            {"event": "put", "id": "7", "data": '{"key": "globals/a", "value": 1}'},
            {"event": "delete", "data": "{\n}"},
        ]


def test_json_objects_and_etcd_watch_keys() -> None:
    created = {"result": {"header": {"revision": "1"}, "created": True}}
    kv = {"key": sides.b64("vis_fresh_1"), "value": sides.b64("1")}
    put = {"result": {"events": [{"kv": kv}, {"type": "DELETE", "kv": {"key": sides.b64("x")}}]}}
    text = json.dumps(created) + "\n" + json.dumps(put) + "\n"
    for parts in _every_split(text.encode()):
        objs = sides.JsonObjects()
        got = [o for part in parts for o in objs.feed(part.decode())]
        assert got == [created, put]
    assert sides.etcd_watch_keys(created) == (True, [])
    assert sides.etcd_watch_keys(put) == (False, ["vis_fresh_1", "x"])
    assert sides.prefix_end("vis_") == "vis`"


def test_ratios_and_goal_verdicts() -> None:
    assert vs.verdict(1.2, (">=", 1.0, 1.5)) == ">= 1 (stretch 1.5): met"
    assert vs.verdict(1.6, (">=", 1.0, 1.5)) == ">= 1 (stretch 1.5): met, stretch met"
    assert vs.verdict(0.57, (">=", 1.0, 1.5)).endswith("missed")
    assert vs.verdict(1.01, ("<=", 1.0, None)) == "<= 1: missed"
    assert vs.verdict(None, ("<=", 1.0, None)) == "not measured"
    assert vs.verdict(3.0, None) == ""
    assert vs.ratio(2.0, 4) == 0.5 and vs.ratio(1.0, 0) is None and vs.ratio(None, 1.0) is None
    s = vs.summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s == {"p50": 3.0, "p99": 5.0, "max": 5.0}


def test_table_rows_name_both_systems_ratio_and_goal() -> None:
    p = vs.make_plan(vs.parse_args([]))
    med: dict[str, Any] = {
        "etcd_writes_per_s": 760.0,
        "gossipmgr_writes_per_s": 1140.0,
        "etcd_visible_fresh_p50_ms": 2.0,
        "gossipmgr_visible_fresh_p50_ms": 3.0,
        "etcd_catch_up_s": 0.2,
        "gossipmgr_get_0_p50_ms": 1.0,
        "gossipmgr_get_100000_p50_ms": 1.5,
        "etcd_lin_get_100000_p50_ms": 3.0,
    }
    rows = {r["what"]: r for r in vs.table(med, p, polled=True)}
    w = rows["2,000 sequential single-key writes"]
    assert (w["etcd"], w["gossipmgr"], w["ratio"]) == (760.0, 1140.0, 1.5)
    assert w["goal"].endswith("stretch met")
    v = rows["write at r1 -> visible on r2 and r3, p50, fresh cluster (gossipmgr polled)"]
    assert v["ratio"] == 1.5 and v["goal"] == "<= 1: missed"
    c = rows["r3 restarted after 1,000 keys were rewritten: all visible on r3"]
    assert c["gossipmgr"] is None and c["goal"] == "not measured"
    lin = rows["etcd linearizable GET p50, 100,000 keys (gossipmgr: local read)"]
    assert (lin["etcd"], lin["ratio"]) == (3.0, 0.5)
    g = rows["gossipmgr: GET p50 at 100,000 keys / GET p50 at 0 keys"]
    assert g["ratio"] == 1.5 and g["goal"] == "<= 1.2: missed"
    assert not any("polled" in r for r in (x["what"] for x in vs.table(med, p, polled=False)))


def test_seeded_snapshot_serves_its_globals(tmp_path: Path) -> None:
    """The gossipmgr side starts from data dirs seeded with a snapshot (as bench/perf.py's
    RSS figures do): the restored replica must serve every seeded global."""
    util = _bench("_util")
    durability = _bench("bench_durability")
    trio.run(durability.build_snapshot, tmp_path / "state", util.global_records(50))

    async def check() -> None:
        rep = Replica("r", data_dir=tmp_path / "state")
        rep.open()
        try:
            assert rep.state.has_global("k0000049")
            assert str(rep.state.global_value("k0000000")).startswith("0:v")
            assert len(rep.state.globals()) == 50
        finally:
            await rep.aclose()

    trio.run(check)
