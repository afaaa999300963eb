"""Webhooks (issue 19 part 5): the lease holder POSTs signed events to receivers when a job
ends and when a node's status or state changes, with bounded retries and a bounded queue,
never holding up a job.

The receivers are real HTTP servers on 127.0.0.1 (a free port); the instance is a
standalone agent (its own wiring, Serf faked) whose jobs fail fast (no playbooks).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from _apiutil import add_nodes, serving, standalone
from quart import request
from quart_trio import QuartTrio
from test_jobs import job_value, make_replica

from gossipmgr.config import WebhookConfig, load
from gossipmgr.core.lease import Lease
from gossipmgr.core.state import LEASE_KEY, inventory_key, job_key
from gossipmgr.errors import ConfigError
from gossipmgr.runtime import webhooks as wh
from gossipmgr.runtime.context import AgentApiContext

SECRET = b"s3cret-for-tests"
DEADLINE_S = 60


class Receiver:
    """An HTTP receiver: records every request; answers ``statuses`` in turn, then 200."""

    def __init__(self, statuses: list[int] | None = None, always: int | None = None) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.statuses = list(statuses or [])
        self.always = always
        self.changed = trio.Event()
        self.app = QuartTrio("receiver")
        self.app.add_url_rule("/hook", view_func=self._hook, methods=["POST"])

    async def _hook(self) -> tuple[str, int]:
        body = await request.get_data(as_text=False)
        assert isinstance(body, bytes)
        self.got.append((dict(request.headers), body))
        self.changed.set()
        self.changed = trio.Event()
        if self.always is not None:
            return "", self.always
        return "", self.statuses.pop(0) if self.statuses else 200

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.got]

    async def wait_for(self, pred: Callable[[], bool], what: str) -> None:
        with trio.fail_after(DEADLINE_S):
            while not pred():
                await self.changed.wait()


@asynccontextmanager
async def instance(tmp_path: Path, url: str, **kw: Any) -> AsyncIterator[AgentApiContext]:
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_bytes(SECRET + b"\n")
    (tmp_path / "empty").mkdir(exist_ok=True)
    async with standalone(
        tmp_path,
        playbook_dir=tmp_path / "empty",  # every job fails fast: no playbook
        webhooks=(WebhookConfig(url + "/hook"),),
        webhook_secret_file=secret_file,
        **kw,
    ) as ctx:
        yield ctx


async def _wait_ended(ctx: AgentApiContext, job_id: str) -> dict[str, Any]:
    with trio.fail_after(DEADLINE_S):
        while True:
            rec = ctx.agent.replica.state.job(job_id)
            if rec is not None and not rec.active:
                return rec.to_value()
            await ctx.agent.replica.wait_change()


def _webhook_metrics(text: str) -> dict[str, int]:
    """``webhook_<name>`` -> value, from the /metrics text."""
    found = re.findall(r"^gossipmgr_(webhook_[a-z]+)_total (\S+)$", text, re.MULTILINE)
    return {k: int(float(v)) for k, v in found}


def test_a_receiver_verifies_signature_and_timestamp() -> None:
    body = b'{"type":"job.ended"}'
    ts = str(int(time.time()))
    sig = wh.sign(SECRET, ts, body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert wh.verify(SECRET, ts, body, sig, time.time())
    assert not wh.verify(b"other", ts, body, sig, time.time())  # another secret
    assert not wh.verify(SECRET, ts, body + b" ", sig, time.time())  # a changed body
    assert not wh.verify(SECRET, str(int(ts) + 1), body, sig, time.time())  # another time
    # a replay: the same request, later than the tolerance
    assert not wh.verify(SECRET, ts, body, sig, time.time() + wh.TOLERANCE_S + 5)
    assert not wh.verify(SECRET, "soon", body, sig, time.time())
    # hostile headers (a server decodes them as Latin-1): False, never an exception
    arabic = "".join(chr(0x660 + int(d)) for d in ts)  # int() takes these digits
    assert not wh.verify(SECRET, arabic, body, sig, time.time())
    assert not wh.verify(SECRET, ts, body, "sha256=\u00e9" + sig[8:], time.time())


async def test_events_are_signed_and_retried_past_a_failing_receiver(tmp_path: Path) -> None:
    rx = Receiver(statuses=[503, 503])  # the first event is refused twice, then accepted
    async with serving(rx.app) as url, instance(tmp_path, url) as ctx:
        await add_nodes(ctx, 1)
        job = await ctx.jobs.commission(["node-0"], "service-master", None)
        rec = await _wait_ended(ctx, job["id"])
        assert rec["status"] == "Errored"

        def all_seen() -> bool:
            evs = rx.events()
            nodes = [e["node"]["status"] for e in evs if e["type"] == "node.changed"]
            return any(e["type"] == "job.ended" for e in evs) and nodes[-1:] == ["Unallocated"]

        await rx.wait_for(all_seen, "the job.ended event and the node's last change")

        def delivered() -> dict[str, int] | None:  # the last answer reached the sender
            m = _webhook_metrics(ctx.agent.metrics_text())
            return m if m["webhook_sent"] == len({b for _, b in rx.got}) else None

        with trio.fail_after(DEADLINE_S):
            while (counters := delivered()) is None:  # noqa: ASYNC110 (a counter)
                await trio.sleep(0.02)
        lease = ctx.agent.replica.lease()
        assert lease is not None
    for headers, body in rx.got:
        assert wh.verify(
            SECRET,
            headers["X-Gossipmgr-Timestamp"],
            body,
            headers["X-Gossipmgr-Signature"],
            time.time(),
        )
    bodies = [body for _, body in rx.got]
    assert bodies[0] == bodies[1] == bodies[2]  # one event, two refusals, then delivered
    ids = [headers["X-Gossipmgr-Delivery"] for headers, _ in rx.got]
    assert ids[0] == ids[1] == ids[2]  # a receiver drops the repeat by its id
    events = rx.events()
    assert [e["id"] for e in events] == ids
    assert len(set(ids[2:])) == len(ids[2:])  # every other event has its own id
    assert all(e["instance"] == "i1" and e["epoch"] == lease.epoch for e in events)
    ended = [e for e in events if e["type"] == "job.ended"]
    assert len(ended) == 1 and ended[0]["job"]["id"] == job["id"]
    assert ended[0]["job"]["status"] == "Errored" and ended[0]["job"]["nodes"] == ["node-0"]
    statuses = [e["node"]["status"] for e in events if e["type"] == "node.changed"]
    assert statuses[-2:] == ["Provisioning", "Unallocated"]  # the job's path, in order
    assert counters["webhook_retries"] == 2 and counters["webhook_failed"] == 0
    assert counters["webhook_sent"] == len(set(bodies)) and counters["webhook_dropped"] == 0


async def test_a_receiver_that_always_fails_gets_bounded_attempts_and_the_job_is_unaffected(
    tmp_path: Path,
) -> None:
    rx = Receiver(always=500)
    (tmp_path / "empty").mkdir()
    async with serving(rx.app) as url, standalone(tmp_path, playbook_dir=tmp_path / "empty") as ctx:
        # quick retries: 3 attempts an event
        counters: dict[str, int] = {}
        hook = wh.Hook(url + "/hook")
        fast = wh.Notifier(ctx.agent.replica, [hook], SECRET, counters, attempts=3, backoff_s=0.01)
        async with trio.open_nursery() as nursery:
            await nursery.start(fast.run)
            await add_nodes(ctx, 1)
            job = await ctx.jobs.commission(["node-0"], "service-master", None)
            rec = await _wait_ended(ctx, job["id"])
            node = ctx.agent.replica.state.node("node-0")
            # every event is queued at its write: once the job ended, all are known
            _, queued = fast._queues[0]

            def settled() -> bool:
                bodies = {body for _, body in rx.got}
                return queued.statistics().current_buffer_used == 0 and counters[
                    "webhook_failed"
                ] == len(bodies)

            with trio.fail_after(DEADLINE_S):
                while not settled():  # noqa: ASYNC110 (counters, no event to wait on)
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    # the job ran its course as without webhooks
    assert rec["status"] == "Errored" and "playbook" in rec["error"]
    assert node is not None and node.inventory.status == "Unallocated"
    attempts: dict[bytes, int] = {}
    for _, body in rx.got:
        attempts[body] = attempts.get(body, 0) + 1
    assert set(attempts.values()) == {3}  # every event: exactly 3 attempts, then given up
    events = [json.loads(b) for b in attempts]
    assert any(e["type"] == "job.ended" for e in events) and len(events) >= 3
    assert counters["webhook_sent"] == 0 and counters["webhook_failed"] == len(events)
    assert counters["webhook_retries"] == 2 * len(events)


async def test_only_the_lease_holder_announces_and_the_queue_is_bounded(tmp_path: Path) -> None:
    rep = await make_replica(tmp_path / "d", name="b", holder="a")
    try:
        counters: dict[str, int] = {}
        n = wh.Notifier(rep, [wh.Hook("http://127.0.0.1:9/x")], SECRET, counters, queue=1)
        _, queued = n._queues[0]
        inv: dict[str, Any] = {"status": "Allocated", "prev_status": "Provisioning"}
        inv |= {"state": "Discovered", "prev_state": "Discovered", "epoch": 1}
        await rep.commit(lambda s, ts: s.d_set(inventory_key("x-1"), inv, ts))
        assert queued.statistics().current_buffer_used == 0  # b does not hold the lease
        lease = Lease("b", 2, rep.now_ms() + 10**9).as_value()
        await rep.commit(lambda s, ts: s.d_set(LEASE_KEY, lease, ts))
        assert rep.is_holder()
        ended = job_value("0000000000001-000001-b", status="Complete", runner="b", epoch=2)
        await rep.commit(lambda s, ts: s.d_set(job_key(ended["id"]), ended, ts))
        assert queued.statistics().current_buffer_used == 1
        assert queued.receive_nowait()["job"]["status"] == "Complete"
        inv2 = {**inv, "status": "Maintenance", "prev_status": "Allocated", "epoch": 2}
        await rep.commit(lambda s, ts: s.d_set(inventory_key("x-1"), inv2, ts))
        await rep.commit(lambda s, ts: s.d_set(inventory_key("x-2"), inv2, ts))
        # the queue holds one (x-1's change): x-2's is dropped, counted, and nothing blocked
        assert queued.statistics().current_buffer_used == 1
        assert counters["webhook_dropped"] == 1
        assert queued.receive_nowait()["node"]["name"] == "x-1"
        # a rewrite with the same status and state is no change
        await rep.commit(lambda s, ts: s.d_set(inventory_key("x-1"), {**inv2, "epoch": 3}, ts))
        assert queued.statistics().current_buffer_used == 0
    finally:
        await rep.aclose()


def test_webhooks_config(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("x\n")
    conf = tmp_path / "a.toml"
    conf.write_text(
        f'webhook_secret_file = "{secret}"\n'
        '[[webhooks]]\nurl = "https://hooks.example/a"\n'
        '[[webhooks]]\nurl = "http://127.0.0.1:8080/b"\nevents = ["job.ended"]\n'
    )
    cfg = load(conf, {})
    assert cfg.webhooks == (
        WebhookConfig("https://hooks.example/a", ("job.ended", "node.changed")),
        WebhookConfig("http://127.0.0.1:8080/b", ("job.ended",)),
    )
    bad = {
        '[[webhooks]]\nurl = "http://x/"\n': "webhook-secret-file",
        f'webhook_secret_file = "{secret}"\n[[webhooks]]\nurl = "ftp://x/"\n': "http://",
        f'webhook_secret_file = "{secret}"\n[[webhooks]]\nurl = "http://x/"\nevents = ["x"]\n': (
            "events must be"
        ),
        f'webhook_secret_file = "{secret}"\n[[webhooks]]\nurl = "http://x/"\nmethod = "GET"\n': (
            "url and events"
        ),
    }
    for text, why in bad.items():
        conf.write_text(text)
        with pytest.raises(ConfigError, match=why):
            load(conf, {})
