"""The two systems of bench/vs_etcd.py behind one interface, and the stream parsers they use.

``EtcdSide``: 3 etcd members (bench/perf.py's ``Etcd``, started in sessions of their own)
through the v3 HTTP gateway. ``GossipSide``: 3 gossipmgr agents (``LocalCluster``: real
agents, each with its own Serf, loopback, free ports), optionally started from data dirs
seeded with a snapshot of N globals. Both offer the same calls: ``put``, ``get``,
``fill``, ``values``, ``stop``/``restart`` of one replica, and ``watch`` (a thread that
reports every key of a prefix changed on one replica: etcd's ``/v3/watch``, gossipmgr's
``GET /watch`` Server-Sent Events, or, where that route is missing, polling).

The streams are read from plain sockets (``StreamConn``) so that the main thread can end a
blocked read at once (``shutdown``); the parsers (``ChunkedDecoder``, ``SseParser``,
``JsonObjects``) are pure and tested in tests/test_vs_etcd.py.
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import trio

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _util import child_pids, global_records  # noqa: E402
from bench_durability import build_snapshot  # noqa: E402
from perf import Etcd  # noqa: E402

from gossipmgr.localcluster import LocalCluster  # noqa: E402

#: Called by a watcher with (key, arrival time from time.perf_counter()).
Seen = Callable[[str, float], None]
PAD = "v" * 160  # the ~200 B record of bench/_util.global_records


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def unb64(s: str) -> str:
    return base64.b64decode(s).decode()


def prefix_end(prefix: str) -> str:
    """etcd's ``range_end`` for every key starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


# ---------------------------------------------------------------------------- parsers (pure)
class ChunkedDecoder:
    """Incremental decoder of an HTTP/1.1 ``Transfer-Encoding: chunked`` body."""

    def __init__(self) -> None:
        self.buf = b""
        self.left = 0  # data bytes of the current chunk still to come
        self.crlf = False  # the CRLF after a chunk's data is still to come
        self.done = False

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = bytearray()
        while not self.done:
            if self.left:
                take = self.buf[: self.left]
                out += take
                self.buf = self.buf[len(take) :]
                self.left -= len(take)
                if self.left:
                    break
                self.crlf = True
            if self.crlf:
                if len(self.buf) < 2:
                    break
                self.buf, self.crlf = self.buf[2:], False
            line, sep, rest = self.buf.partition(b"\r\n")
            if not sep:
                break
            size = int(line.split(b";")[0].strip(), 16)
            self.buf = rest
            self.done = size == 0
            self.left = size
        return bytes(out)


class SseParser:
    """Server-Sent Events from text lines: ``feed`` returns the completed events as dicts
    with ``event`` (default ``message``), ``id`` and ``data`` (lines joined); comments are
    counted in ``comments``."""

    def __init__(self) -> None:
        self.buf = ""
        self.cur: dict[str, str] = {}
        self.comments = 0

    def feed(self, text: str) -> list[dict[str, str]]:
        self.buf += text
        events = []
        while "\n" in self.buf:
            line, self.buf = self.buf.split("\n", 1)
            line = line.rstrip("\r")
            if not line:
                if "data" in self.cur or "event" in self.cur:
                    events.append({"event": "message", **self.cur})
                self.cur = {}
            elif line.startswith(":"):
                self.comments += 1
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data" and "data" in self.cur:
                    value = self.cur["data"] + "\n" + value
                self.cur[name] = value
        return events


class JsonObjects:
    """Concatenated JSON objects (etcd's gateway streams one per watch response)."""

    def __init__(self) -> None:
        self.buf = ""
        self.dec = json.JSONDecoder()

    def feed(self, text: str) -> list[Any]:
        self.buf += text
        out = []
        while True:
            s = self.buf.lstrip()
            if not s:
                self.buf = ""
                return out
            try:
                obj, end = self.dec.raw_decode(s)
            except ValueError:
                self.buf = s
                return out
            out.append(obj)
            self.buf = s[end:]


def etcd_watch_keys(msg: Any) -> tuple[bool, list[str]]:
    """(created, keys of the events) of one etcd gateway watch response."""
    res = msg.get("result", {}) if isinstance(msg, dict) else {}
    keys = [unb64(e["kv"]["key"]) for e in res.get("events", []) if "kv" in e]
    return bool(res.get("created")), keys


# ---------------------------------------------------------------------------- streams
class StreamConn:
    """One streaming HTTP/1.1 request on a plain socket; ``close`` from any thread ends a
    blocked ``chunks`` at once."""

    def __init__(self, url: str, method: str, path: str, headers: dict[str, str], body: bytes):
        hostport = url.split("://", 1)[1]
        host, port = hostport.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.sock.settimeout(None)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {hostport}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = b""
        while b"\r\n\r\n" not in head:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError(f"{url}{path}: closed before the headers")
            head += data
        head, self.rest = head.split(b"\r\n\r\n", 1)
        first, *hdrs = head.decode("latin-1").split("\r\n")
        self.status = int(first.split()[1])
        self.headers = {
            k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in hdrs)
        }
        chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        self.chunked = ChunkedDecoder() if chunked else None

    def chunks(self) -> Iterator[str]:
        text = codecs.getincrementaldecoder("utf-8")()
        data = self.rest
        while True:
            if data:
                yield text.decode(self.chunked.feed(data) if self.chunked else data)
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


class Watcher:
    """A thread feeding ``seen`` from a stream (or a poll loop); ``ready`` is set once the
    subscription is live; ``stop`` ends it."""

    def __init__(self, run: Callable[[Watcher], None]) -> None:
        self.ready = threading.Event()
        self.stopped = threading.Event()
        self.conn: StreamConn | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, args=(run,), daemon=True)
        self.thread.start()

    def _main(self, run: Callable[[Watcher], None]) -> None:
        try:
            run(self)
        except BaseException as exc:  # reported by the workload that waits on it
            if not self.stopped.is_set():
                self.error = exc
        finally:
            self.ready.set()

    def stop(self) -> None:
        self.stopped.set()
        if self.conn is not None:
            self.conn.close()
        self.thread.join(10)


# ---------------------------------------------------------------------------- etcd
class EtcdSide:
    name = "etcd"

    def __init__(self, root: Path) -> None:
        self.e = Etcd(root)
        self.c = httpx.Client(timeout=30)

    def __enter__(self) -> EtcdSide:
        try:
            self.e.start3()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """SIGTERM every member's process group (each started in a session of its own),
        then SIGKILL any group whose member has not exited within 10 s."""
        self.c.close()
        procs = self.e.procs
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)

    def url(self, r: int) -> str:
        return self.e.url(f"e{r}")

    def put(self, r: int, key: str, value: str) -> None:
        body = {"key": b64(key), "value": b64(value)}
        self.c.post(f"{self.url(r)}/v3/kv/put", json=body).raise_for_status()

    def get(self, r: int, key: str, serializable: bool = True) -> bool:
        body = {"key": b64(key), "serializable": serializable}
        res = self.c.post(f"{self.url(r)}/v3/kv/range", json=body)
        res.raise_for_status()
        return bool(res.json().get("kvs"))

    def value(self, r: int, key: str) -> str | None:
        body = {"key": b64(key), "serializable": True}
        res = self.c.post(f"{self.url(r)}/v3/kv/range", json=body, timeout=5)
        res.raise_for_status()
        kvs = res.json().get("kvs")
        return unb64(kvs[0].get("value", "")) if kvs else None

    def fill(self, start: int, stop: int) -> None:
        """Keys ``k<i>`` for i in start..stop, 100 puts per transaction (etcd allows 128)."""
        for lo in range(start, stop, 100):
            ops = [
                {"request_put": {"key": b64(f"k{i:07d}"), "value": b64(f"{i}:{PAD}")}}
                for i in range(lo, min(stop, lo + 100))
            ]
            self.c.post(f"{self.url(0)}/v3/kv/txn", json={"success": ops}).raise_for_status()

    def values(self, r: int, keys: list[str]) -> dict[str, str]:
        """The values of ``keys`` (a contiguous sorted range) in replica r's local store."""
        body = {"key": b64(keys[0]), "range_end": b64(keys[-1] + "\0"), "serializable": True}
        res = self.c.post(f"{self.url(r)}/v3/kv/range", json=body, timeout=5)
        res.raise_for_status()
        return {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in res.json().get("kvs", [])}

    def stop(self, r: int) -> None:
        p = self.e.members[f"e{r}"]["proc"]
        p.send_signal(signal.SIGTERM)
        p.wait(30)

    def restart(self, r: int) -> None:
        """Start member r again on its data dir (etcd then ignores the initial-cluster flags)."""
        cluster = ",".join(f"{n}=http://127.0.0.1:{m['peer']}" for n, m in self.e.members.items())
        self.e._start(self.e.members[f"e{r}"], cluster, "new")

    def watch(self, r: int, prefix: str, seen: Seen) -> Watcher:
        body = json.dumps(
            {"create_request": {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}}
        ).encode()

        def run(w: Watcher) -> None:
            w.conn = StreamConn(self.url(r), "POST", "/v3/watch", {}, body)
            if w.conn.status != 200:
                raise RuntimeError(f"etcd watch answered {w.conn.status}")
            objs = JsonObjects()
            for text in w.conn.chunks():
                for msg in objs.feed(text):
                    created, keys = etcd_watch_keys(msg)
                    now = time.perf_counter()
                    for k in keys:
                        seen(k, now)
                    if created:
                        w.ready.set()

        return Watcher(run)


# ---------------------------------------------------------------------------- gossipmgr
class GossipSide:
    name = "gossipmgr"

    def __init__(self, root: Path, seeded: int = 0) -> None:
        self.cl = LocalCluster(root, local_ansible=False)
        self.seeded = seeded
        self.c = httpx.Client(timeout=30, headers=self.cl.headers)
        #: "watch" (GET /watch) or "polled" (no such route: GET /globals/{key} in a loop)
        self.mode = ""

    def __enter__(self) -> GossipSide:
        try:
            if self.seeded:
                seed = global_records(self.seeded)
                for i in range(3):
                    trio.run(build_snapshot, self.cl.root / f"a{i}" / "state", seed)
            for i in range(3):
                self.cl.add_instance(f"a{i}")
            for i in range(3):
                self.cl.wait_ready(f"a{i}", timeout=120)
            for i in range(3):  # every instance serves the seeded records
                self._wait_entries(i, self.seeded)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.c.close()
        kids = [
            pid
            for inst in self.cl.instances.values()
            if inst.proc is not None and inst.proc.poll() is None
            for pid in child_pids(inst.proc.pid)
        ]
        self.cl.close()
        for pid in kids:  # a Serf agent left behind by an agent that had to be killed
            with contextlib.suppress(OSError):
                if b"serf" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)

    def _wait_entries(self, r: int, n: int) -> None:
        deadline = time.monotonic() + 60
        while int(self.cl.get(f"a{r}", "/health", timeout=10)["entries"]) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"a{r} does not serve the {n} seeded records")
            time.sleep(0.1)

    def url(self, r: int) -> str:
        return self.cl.instances[f"a{r}"].url

    def put(self, r: int, key: str, value: str) -> None:
        self.c.put(f"{self.url(r)}/globals/{key}", json={"value": value}).raise_for_status()

    def get(self, r: int, key: str, serializable: bool = True) -> bool:
        res = self.c.get(f"{self.url(r)}/globals/{key}")
        if res.status_code not in (200, 404):
            res.raise_for_status()
        return res.status_code == 200

    def value(self, r: int, key: str) -> Any:
        res = self.c.get(f"{self.url(r)}/globals/{key}", timeout=5)
        if res.status_code == 404:
            return None
        res.raise_for_status()
        return res.json()["value"]

    def values(self, r: int, keys: list[str]) -> dict[str, str]:
        res = self.c.get(f"{self.url(r)}/info/globals", timeout=5)
        res.raise_for_status()
        allv = res.json()["extra_vars"]
        return {k: allv[k] for k in keys if k in allv}

    def stop(self, r: int) -> None:
        self.cl.stop(f"a{r}")

    def restart(self, r: int) -> None:
        self.cl.start(f"a{r}")

    def watch(self, r: int, prefix: str, seen: Seen) -> Watcher:
        path = f"/watch?prefix={quote('globals/' + prefix, safe='')}"
        hdrs = dict(self.cl.headers, Accept="text/event-stream")

        def run(w: Watcher) -> None:
            w.conn = StreamConn(self.url(r), "GET", path, hdrs, b"")
            if w.conn.status in (404, 405):
                w.conn.close()
                w.conn = None
                self.mode = "polled"
                return self._poll(w, r, prefix, seen)
            if w.conn.status != 200:
                raise RuntimeError(f"gossipmgr /watch answered {w.conn.status}")
            self.mode = "watch"
            sse = SseParser()
            for text in w.conn.chunks():
                events = sse.feed(text)
                now = time.perf_counter()
                if sse.comments:
                    w.ready.set()
                for ev in events:
                    if ev["event"] in ("reset", "cutoff"):
                        raise RuntimeError(f"/watch sent {ev['event']}: {ev.get('data')}")
                    key = str(json.loads(ev.get("data", "{}")).get("key", ""))
                    seen(key.removeprefix("globals/"), now)

        return Watcher(run)

    def _poll(self, w: Watcher, r: int, prefix: str, seen: Seen) -> None:
        """No /watch: GET the next key of the workload (``{prefix}{i}``, i = 0, 1, ...)
        on replica r in a loop, 1 ms apart, until it is there; then the next one."""
        with httpx.Client(timeout=10, headers=self.cl.headers) as c:
            w.ready.set()
            i = 0
            while not w.stopped.is_set():
                key = f"{prefix}{i}"
                if c.get(f"{self.url(r)}/globals/{key}").status_code == 200:
                    seen(key, time.perf_counter())
                    i += 1
                else:
                    time.sleep(0.001)
