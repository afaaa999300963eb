"""Gossip traffic of an instance whose data dir holds records its peers refuse.

Two agents on loopback; g2 is stopped, a record an older gossipmgr acknowledged (a value 40
levels deep, a 300-character variable name) is appended to its log, and g2 restarts. Prints
the datagrams/s g2 sends and g1 drops over 10 s, then how many of 20 later writes on g2 reach
g1 within 20 s:

    .venv/bin/python bench/old_datadir_traffic.py [DIR]

Before the value rule (issue 14) g2 resent the refused messages forever (measured on a loaded
2-core machine: 540 datagrams/s sent, 213/s dropped by g1); now the records are left out at
restore (gossipmgr_replica_quarantined_total) and g2 sends ~4 datagrams/s.
"""

import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import trio

import gossipmgr
from gossipmgr.core.clock import Timestamp
from gossipmgr.core.codec import encode_map
from gossipmgr.core.crdt import Entry, LWWMap
from gossipmgr.core.state import global_key
from gossipmgr.localcluster import LocalCluster
from gossipmgr.runtime.store import Store


def metric(c: LocalCluster, n: str, pat: str) -> float:
    t = httpx.get(c.instances[n].url + "/metrics", headers=c.headers, timeout=5).text
    return sum(float(m.group(1)) for m in re.finditer(pat, t, re.M))


def nested(d: int) -> object:
    v: object = 0
    for _ in range(d):
        v = [v]
    return v


def main() -> None:
    print("code:", gossipmgr.__file__, flush=True)
    if len(sys.argv) > 1:
        run(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory(prefix="gm-olddir-") as tmp:
            run(Path(tmp))


def run(root: Path) -> None:
    with LocalCluster(root, lease_ttl_ms=6000) as c:
        for n in ("g1", "g2"):
            c.add_instance(n)
        for n in ("g1", "g2"):
            c.wait_ready(n)
        c.stop("g2")
        ts = Timestamp(int(time.time() * 1000), 0, "g2")
        bad = LWWMap(
            {global_key("deep"): Entry(ts, nested(40)), global_key("v" * 300): Entry(ts, 1)}
        )
        s = Store(c.instances["g2"].data_dir / "state")
        s.open()

        async def app() -> None:
            await s.append(encode_map(bad))
            await s.aclose()

        trio.run(app)
        c.start("g2")
        c.wait_ready("g2")
        time.sleep(5)
        s0 = metric(c, "g2", r'^gossipmgr_gossip_datagrams_total\{dir="sent"\} (\S+)$')
        d0 = metric(c, "g1", r'^gossipmgr_gossip_dropped_total\{reason="[^"]+"\} (\S+)$')
        t0 = time.time()
        time.sleep(10)
        dt = time.time() - t0
        s1 = metric(c, "g2", r'^gossipmgr_gossip_datagrams_total\{dir="sent"\} (\S+)$')
        d1 = metric(c, "g1", r'^gossipmgr_gossip_dropped_total\{reason="[^"]+"\} (\S+)$')
        print(
            f"g2 sent {(s1 - s0) / dt:.0f} datagrams/s; g1 dropped {(d1 - d0) / dt:.0f}/s",
            flush=True,
        )
        for i in range(20):
            c.put("g2", f"/globals/w{i}", {"value": i})
        t0 = time.time()
        seen = 0
        while time.time() - t0 < 20:
            g = c.get("g1", "/info/globals")["extra_vars"]
            seen = sum(1 for i in range(20) if g.get(f"w{i}") == i)
            if seen == 20:
                break
            time.sleep(0.2)
        print(f"{seen} of 20 later writes from g2 on g1 after {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
