"""Who is in the cluster, kept current from a Serf agent (the rules, and the event and
record types, are in ``gossipmgr.serf.view``: import them from there).

:class:`SerfMembership` is the trio service around a ``MembershipView``: it polls ``members`` every
``poll_interval`` (the event stream lags about 1 s because of Serf's hard-coded coalescing,
docs/serf.md, "Measured timings") and holds a ``stream`` on its own connection only to wake
the poller early.
It never raises because Serf is down: it reports ``healthy=False`` and retries with
exponential backoff (0.1 s doubling to 5 s).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Final

import trio

from gossipmgr.errors import SerfError
from gossipmgr.serf.backoff import Backoff
from gossipmgr.serf.client import SerfClient
from gossipmgr.serf.view import Instance, MembershipEvent, MembershipView, NodeEvent, NodeInfo

__all__ = ["SerfMembership"]

log = logging.getLogger("gossipmgr.serf")

MEMBER_EVENTS: Final = "member-join,member-leave,member-failed,member-update,member-reap"

Connect = Callable[[], AbstractAsyncContextManager[SerfClient]]


@dataclass(slots=True)
class _Subscriber:
    send: trio.MemorySendChannel[MembershipEvent]
    dropped: int = 0


class SerfMembership:
    """Trio service keeping a :class:`MembershipView` current from a Serf agent.

    ``connect`` returns a fresh client context each call (e.g.
    :func:`~gossipmgr.serf.client.serf_connector`); this service opens two connections with
    it, one polling ``members`` and one holding a member-event stream. It owns those
    connections and nothing else. :meth:`run` raises only on cancellation.
    """

    def __init__(
        self,
        connect: Connect,
        poll_interval: float = 0.25,
        *,
        backoff_min: float = 0.1,
        backoff_max: float = 5.0,
        subscriber_buffer: int = 1024,
    ) -> None:
        for label, value in (
            ("poll_interval", poll_interval),
            ("backoff_min", backoff_min),
            ("backoff_max", backoff_max),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number of seconds, not {value!r}")
        self._connect = connect
        self.poll_interval = poll_interval
        self._backoff = (backoff_min, backoff_max)
        self._buffer = subscriber_buffer
        self.view = MembershipView()
        self.healthy = False
        self.last_error = "not started"
        #: Successful ``members`` polls so far.
        self.polls = 0
        self._subscribers: list[_Subscriber] = []
        self._wake = trio.Event()
        self._polled = trio.Event()

    @property
    def instances(self) -> tuple[Instance, ...]:
        return self.view.instances

    @property
    def nodes(self) -> dict[str, NodeInfo]:
        return self.view.nodes

    def subscribe(self) -> trio.MemoryReceiveChannel[MembershipEvent]:
        """A bounded channel receiving every later event. Close it to unsubscribe.

        A subscriber that falls ``subscriber_buffer`` events behind loses events (logged and
        counted) rather than stalling membership for everyone.
        """
        send, receive = trio.open_memory_channel[MembershipEvent](self._buffer)
        self._subscribers.append(_Subscriber(send))
        return receive

    async def wait_polled(self) -> None:
        """Wait for the next successful poll (after the call)."""
        await self._polled.wait()

    def _publish(self, events: Sequence[MembershipEvent]) -> None:
        for event in events:
            if isinstance(event, NodeEvent):
                log.info("serf membership: node %s %s (%s)", event.name, event.kind, event.addr)
            for sub in list(self._subscribers):
                try:
                    sub.send.send_nowait(event)
                except trio.WouldBlock:
                    sub.dropped += 1
                    log.warning("serf membership: subscriber full, dropped %s", event)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self._subscribers.remove(sub)

    def _set_unhealthy(self, exc: BaseException) -> None:
        if self.healthy or self.last_error != str(exc):
            log.warning("serf membership: Serf unavailable: %s", exc)
        self.healthy = False
        self.last_error = str(exc) or type(exc).__name__

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Poll forever. Reports started after the first attempt, successful or not."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._stream_waker)
            await self._poll_loop(task_status)

    async def _poll_loop(self, task_status: trio.TaskStatus[None]) -> None:
        backoff = Backoff(*self._backoff)
        started = False

        def report_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                async with self._connect() as client:
                    await self._poll(client, backoff, report_started)
            except (SerfError, OSError) as exc:
                self._set_unhealthy(exc)
            report_started()
            await trio.sleep(backoff.next())

    async def _poll(self, client: SerfClient, backoff: Backoff, polled: Callable[[], None]) -> None:
        """Poll ``members`` on one connection until it fails (raises SerfError/OSError)."""
        while True:
            members = await client.members()
            events = self.view.update(members, trio.current_time())
            self.polls += 1
            if not self.healthy:
                log.info("serf membership: Serf reachable (%s)", client.name)
            self.healthy = True
            self.last_error = ""
            backoff.reset()
            self._publish(events)
            self._polled.set()
            self._polled = trio.Event()
            polled()
            self._wake = trio.Event()
            with trio.move_on_after(self.poll_interval):
                await self._wake.wait()

    async def _stream_waker(self) -> None:
        """Wake the poller on member events. Only a hint: failures just back off."""
        backoff = Backoff(*self._backoff)
        while True:
            try:
                async with self._connect() as client, client.stream(MEMBER_EVENTS) as events:
                    backoff.reset()
                    async for _event in events:
                        self._wake.set()
            except (SerfError, OSError) as exc:
                log.debug("serf membership: event stream down: %s", exc)
            await trio.sleep(backoff.next())
