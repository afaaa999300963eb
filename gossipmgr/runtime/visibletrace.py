"""Bench-only timestamps of the write -> visible path (``bench/visible_trace.py``).

Off unless the environment variable :data:`ENV` names a directory: then the agent records,
with ``time.monotonic()`` (the clock ``time.perf_counter()`` reads too, so a client's times
compare with these), each local write's delta handed to gossip (with the peers marked for a
resync then) and made durable, each remote delta joined (with when its datagram's receive
step was scheduled and began), each chunk of the change feed handed to the HTTP server and
when it asked for the next, every cyclic GC collection, and every trio task step longer
than :data:`LONG_STEP_S`. Written as JSON lines to ``<dir>/trace-<pid>.jsonl`` when
``trio.run`` ends. Nothing here runs when the variable is unset; it is never set by the
product.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path
from typing import Any

import trio

from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.feed import key_text
from gossipmgr.runtime import watch

ENV = "GOSSIPMGR_TRACE_VISIBLE"
#: Task steps at least this long are recorded, whichever the task.
LONG_STEP_S = 0.001
_RECEIVE = "_receive_loop"
_SEND = "_send_loop"


def _keys(novel: LWWMap) -> list[str]:
    return [key_text(k) for k, _ in novel.items()]


class VisibleTrace(trio.abc.Instrument):
    """The recorder (a trio instrument, and listener of the replica and the feed)."""

    def __init__(self, path: Path, name: str, agent: Any = None) -> None:
        self.path = path
        self.agent = agent
        self.rows: list[list[Any]] = [["instance", name, os.getpid()]]
        self._sched: dict[int, float] = {}
        self._start: dict[int, float] = {}
        #: the receive task's current step: (scheduled, began)
        self.recv_step = (0.0, 0.0)
        self._gc_t = 0.0

    # listeners
    def local_send(self, novel: LWWMap) -> None:
        # The peers marked for a resync whose ACKs are behind: main's push_local left them
        # out (they got the write by a forward or a retransmit); it now pushes to them.
        ae = getattr(getattr(self.agent, "gossip", None), "ae", None)
        marked = (
            []
            if ae is None
            else [p for p, ps in ae.peers.items() if ps.needs_resync and ps.acked < ae.seq]
        )
        self.rows.append(["local_send", _keys(novel), time.monotonic(), marked])

    def local_durable(self, novel: LWWMap) -> None:
        self.rows.append(["local_durable", _keys(novel), time.monotonic()])

    def joined(self, novel: LWWMap) -> None:
        self.rows.append(["joined", _keys(novel), *self.recv_step, time.monotonic()])

    def chunk(self, data: bytes, handed: float) -> None:
        keys = [ln[5:].decode() for ln in data.split(b"\n") if ln.startswith(b"data:")]
        self.rows.append(["sse", keys, handed, time.monotonic()])

    def gc_event(self, phase: str, info: dict[str, int]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._gc_t = now
        else:
            self.rows.append(["gc", info["generation"], self._gc_t, now, info["collected"]])

    # trio.abc.Instrument
    def task_scheduled(self, task: trio.lowlevel.Task) -> None:
        self._sched[id(task)] = time.monotonic()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        now = time.monotonic()
        self._start[id(task)] = now
        if task.name.endswith(_RECEIVE):
            self.recv_step = (self._sched.get(id(task), now), now)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        now = time.monotonic()
        began = self._start.pop(id(task), now)
        sched = self._sched.pop(id(task), began)
        if now - began >= LONG_STEP_S or task.name.endswith(_SEND):
            self.rows.append(["step", task.name, sched, began, now])

    def after_run(self) -> None:
        with open(self.path, "w") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")


def install(agent: Any) -> list[trio.abc.Instrument]:
    """The instruments for ``trio.run`` (none unless :data:`ENV` is set); registers the
    recorder with the agent's replica, its feed and the cyclic GC."""
    where = os.environ.get(ENV, "")
    if not where:
        return []
    tr = VisibleTrace(Path(where) / f"trace-{os.getpid()}.jsonl", agent.cfg.name, agent)
    agent.replica.on_local_send(tr.local_send)
    agent.replica.on_local_write(tr.local_durable)
    agent.replica.on_remote_write(tr.joined)
    watch.chunk_trace = tr.chunk
    gc.callbacks.append(tr.gc_event)
    return [tr]
