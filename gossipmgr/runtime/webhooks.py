"""Webhooks: the lease holder tells HTTP receivers when a job ends and when a node's status
or state changes (docs/operations.md, "Webhooks").

Where events come from. Every status change and every job end is a local write of the
lease holder (jobs, Serf health events, orphan reconciliation all run there), so the
notifier listens to the replica's local writes (``Replica.on_local_write``): a job record
written ended is ``job.ended``; an inventory record whose status or state differs from the
last one seen is ``node.changed``. An instance that does not hold the lease at that write
sends nothing, so one change is announced once, by its writer. A write made just as the
lease moved may be announced by neither: webhooks are notifications, not a log (the
change feed and the node history are).

Delivery never blocks a job or the lease loop: the listener only puts the event into each
matching hook's bounded queue (``QUEUE``; when full the event is dropped and counted), and
one task per hook POSTs them in order, retrying a refusal (any status but 2xx) or an
unreachable receiver up to ``attempts`` times with doubling backoff, then giving up
(counted). Counters (``/metrics``: ``gossipmgr_webhook_<name>_total``): ``sent``,
``retries``, ``failed`` (gave up), ``dropped`` (queue full).

Signing. The body is compact JSON; the request carries ``X-Gossipmgr-Timestamp: <unix
seconds>`` and ``X-Gossipmgr-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>"
under the shared secret>``; :func:`verify` is what a receiver does (and refuses a
timestamp older than ``TOLERANCE_S``, which stops a replay).

Ownership: :meth:`Notifier.run` owns its tasks and its HTTP client; the caller owns the
replica.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import trio

from gossipmgr.core.crdt import LWWMap
from gossipmgr.core.job import JobRecord
from gossipmgr.core.node import Inventory
from gossipmgr.core.orders import JOB, NODE
from gossipmgr.runtime.replica import Replica

log = logging.getLogger("gossipmgr.webhooks")

JOB_ENDED: Final = "job.ended"
NODE_CHANGED: Final = "node.changed"
EVENTS: Final = (JOB_ENDED, NODE_CHANGED)
#: Events waiting per hook; past it new ones are dropped (counted).
QUEUE: Final = 1_000
ATTEMPTS: Final = 5
BACKOFF_S: Final = 1.0
TIMEOUT_S: Final = 10.0
#: A receiver refuses a timestamp further than this from its clock (replay guard).
TOLERANCE_S: Final = 300
SIGNATURE_HEADER: Final = "X-Gossipmgr-Signature"
TIMESTAMP_HEADER: Final = "X-Gossipmgr-Timestamp"
EVENT_HEADER: Final = "X-Gossipmgr-Event"
#: The event's id (also ``id`` in the body): the same on every attempt, so a receiver drops
#: a retried request that arrives twice.
DELIVERY_HEADER: Final = "X-Gossipmgr-Delivery"

#: (url, body, headers) -> HTTP status; raises OSError-like errors when unreachable.
Post = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]


@dataclass(frozen=True)
class Hook:
    url: str
    events: tuple[str, ...] = EVENTS


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex>`` of ``<timestamp>.<body>``."""
    mac = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str, now_s: float) -> bool:
    """What a receiver checks: the signature (in constant time) and a fresh timestamp.
    False, never an exception, for headers of any text (a server decodes them as Latin-1;
    ``int()`` takes non-ASCII digits, ``compare_digest`` refuses non-ASCII strings)."""
    if not timestamp.isascii():
        return False
    try:
        fresh = abs(now_s - int(timestamp)) <= TOLERANCE_S
    except ValueError:
        return False
    want = sign(secret, timestamp, body).encode()
    return fresh and hmac.compare_digest(want, signature.encode("utf-8", "replace"))


def events_of(novel: LWWMap, seen: dict[str, tuple[str, str]]) -> list[dict[str, Any]]:
    """The events in one local write: ended job records, and inventory records whose
    (status, state) differs from ``seen`` (updated) or, not seen yet, from their own
    previous values."""
    out: list[dict[str, Any]] = []
    for key, e in novel.items():
        if e.deleted:
            continue
        # The write's hybrid timestamp and the record's key: unique to this change.
        eid = f"{e.ts.ms}.{e.ts.logical}.{e.ts.node}/{key[0]}/{key[1]}"
        if key[0] == JOB and len(key) == 2:
            rec = JobRecord.from_value(e.value)
            if rec is not None and not rec.active:
                out.append({"type": JOB_ENDED, "id": eid, "job": _job(rec)})
        elif key[0] == NODE and len(key) == 3 and key[2] == "inv":
            if not isinstance(e.value, dict) or "status" not in e.value:
                continue  # a forgotten node's marker
            inv = Inventory.from_value(e.value)
            now = (inv.status, inv.state)
            if now == seen.get(key[1], (inv.prev_status, inv.prev_state)):
                continue
            seen[key[1]] = now
            out.append({"type": NODE_CHANGED, "id": eid, "node": {"name": key[1], **inv.to_json()}})
    return out


def _job(rec: JobRecord) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rec.id,
        "task": rec.task,
        "nodes": list(rec.nodes),
        "status": rec.status,
        "error": rec.error,
        "runner": rec.runner,
        "ended_ms": rec.ended_ms,
    }
    if rec.check:  # a check job changed nothing: a receiver must not read it as done
        out["check"] = True
    return out


async def httpx_post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
    import httpx  # lazy: heavy, and only an instance with webhooks needs it

    async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
        r = await client.post(url, content=body, headers=dict(headers))
        return r.status_code


class Notifier:
    """Calls ``hooks`` for the events of this instance's local writes while it holds the
    lease. ``counters`` receives ``webhook_<name>`` counts (the agent's: /metrics)."""

    def __init__(
        self,
        replica: Replica,
        hooks: Sequence[Hook],
        secret: bytes,
        counters: dict[str, int],
        *,
        attempts: int = ATTEMPTS,
        backoff_s: float = BACKOFF_S,
        queue: int = QUEUE,
        post: Post = httpx_post,
    ) -> None:
        self.replica = replica
        self.hooks = list(hooks)
        self.secret = secret
        self.counters = counters
        for k in ("sent", "retries", "failed", "dropped"):
            counters.setdefault(f"webhook_{k}", 0)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.post = post
        self._seen: dict[str, tuple[str, str]] = {}
        self._queues = [trio.open_memory_channel[dict[str, Any]](queue) for _ in self.hooks]
        replica.on_local_write(self._on_write)

    def _count(self, what: str) -> None:
        self.counters[f"webhook_{what}"] += 1

    def _on_write(self, novel: LWWMap) -> None:
        # Called inside Replica.commit, after the write: it must never raise there.
        try:
            self._queue_events(novel)
        except Exception:
            log.exception("webhooks: events of a write not queued")

    def _queue_events(self, novel: LWWMap) -> None:
        if not self.replica.is_holder():
            return
        evs = events_of(novel, self._seen)
        if not evs:
            return
        lease = self.replica.lease()
        for ev in evs:
            ev.update(instance=self.replica.name, epoch=lease.epoch if lease else 0)
            ev["time_ms"] = self.replica.now_ms()
            for hook, (send, _) in zip(self.hooks, self._queues, strict=True):
                if ev["type"] not in hook.events:
                    continue
                try:
                    send.send_nowait(ev)
                except trio.WouldBlock:
                    self._count("dropped")
                    log.warning("webhook %s: queue full; event %s dropped", hook.url, ev["type"])

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for hook, (_, receive) in zip(self.hooks, self._queues, strict=True):
                nursery.start_soon(self._deliver_all, hook, receive)
            task_status.started()

    async def _deliver_all(
        self, hook: Hook, receive: trio.MemoryReceiveChannel[dict[str, Any]]
    ) -> None:
        async for ev in receive:
            await self.deliver(hook, ev)

    async def deliver(self, hook: Hook, ev: dict[str, Any]) -> bool:
        """POST one event, retrying with doubling backoff; False when it gave up."""
        body = json.dumps(ev, separators=(",", ":"), sort_keys=True).encode()
        why = ""
        for attempt in range(self.attempts):
            if attempt:
                self._count("retries")
                await trio.sleep(self.backoff_s * 2 ** (attempt - 1))
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                TIMESTAMP_HEADER: ts,
                SIGNATURE_HEADER: sign(self.secret, ts, body),
                EVENT_HEADER: str(ev["type"]),
                DELIVERY_HEADER: str(ev["id"]),
            }
            try:
                status = await self.post(hook.url, body, headers)
            except Exception as exc:  # unreachable, timed out, refused: retried
                why = f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= status < 300:
                self._count("sent")
                return True
            why = f"HTTP {status}"
        self._count("failed")
        log.warning(
            "webhook %s: %s not delivered after %d attempts (%s)",
            hook.url,
            ev["type"],
            self.attempts,
            why,
        )
        return False
