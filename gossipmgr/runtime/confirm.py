"""The confirm of a running job, served to that job's ansible runs only.

Each job run (``runtime.jobrun``) serves a unix socket in its own run directory,
``<work_dir>/runs/<job>/confirm/confirm.sock`` (the directory mode 0700, the socket 0600),
and every playbook run of the job gets its path in the environment variable
``GOSSIPMGR_CONFIRM_SOCKET`` (``core.confirm.CONFIRM_ENV``, set by ``runtime.ansible``).
The ``gossipmgr_confirm`` action of the shipped ``gossipmgr_fence`` role (it runs in
ansible's controller, on this machine) connects and asks, right before a task changes a
node: "may job J under epoch E act now?". No other process is told the path, the socket
accepts only this user (and root), and it lives as long as the run: it is no network
endpoint.

:meth:`Confirmer.confirm` answers after a fresh round trip over gossip (``gossip.confirm``):
PINGs to every peer sent after the question arrived, waiting (at most ``CONFIRM_TIMEOUT_S``)
until a strict majority answered, then the rule of ``core.confirm``. The wire: one JSON line
each way, ``{"epoch": E, "job": J, "host": H}`` and ``{"ok": bool, "reason": str}``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import trio

from gossipmgr.core.confirm import REFUSED, Answer, Confirmation, known_instances, verdict
from gossipmgr.gossip.service import GossipService
from gossipmgr.runtime.joblog import Run
from gossipmgr.runtime.replica import Replica

log = logging.getLogger("gossipmgr.jobs")

#: How long a confirm waits for a majority to answer. A live peer answers within a
#: loopback/LAN round trip (a few ms, tens on a loaded machine); a cut-off one never does,
#: so this is how long a refused confirm takes. Well under the lease's heard window (5 s).
CONFIRM_TIMEOUT_S: Final = 1.0
#: The round's PINGs go again to the peers that have not answered this often (loss).
RESEND_S: Final = 0.2
#: How often the waiting confirm looks at the answers (the protocol is polled, not awaited).
POLL_S: Final = 0.01
SOCKET_NAME: Final = "confirm.sock"
#: A question is one short JSON line; a connection that sends more, or nothing for this
#: long, is dropped.
MAX_REQUEST: Final = 4_096
REQUEST_TIMEOUT_S: Final = 10.0


class Confirmer:
    """Confirms for the runs of one instance (owns nothing: the replica and gossip are the
    agent's). ``counters``: where ``confirms_ok`` and ``confirms_refused`` are counted (the
    job counters, exported as ``gossipmgr_jobs_confirms_*_total``)."""

    def __init__(
        self,
        replica: Replica,
        gossip: GossipService[Replica],
        counters: dict[str, int] | None = None,
    ) -> None:
        self.replica = replica
        self.gossip = gossip
        self.timeout_s = CONFIRM_TIMEOUT_S
        self.counters = counters if counters is not None else {}
        self.counters.setdefault("confirms_ok", 0)
        self.counters.setdefault("confirms_refused", 0)

    def _holds(self, epoch: int) -> bool:
        lease = self.replica.lease()
        return self.replica.is_holder() and lease is not None and lease.epoch == epoch

    def _alone_by(self) -> str:
        lease = self.replica.lease()
        if lease is not None and lease.forced_by:
            return f"forced grant (by {lease.forced_by})"
        return "solo (two-instance rule)" if self.replica.quorum.solo else ""

    def _known(self) -> set[str]:
        me, peers = self.replica.name, self.gossip.ae.peers
        alive = set(self.replica.candidates)
        failed = set(peers) - alive  # the gossip peers are Serf's alive and failed instances
        ever = {n for n, ps in peers.items() if ps.incarnation != 0}
        return known_instances(me, alive, failed, ever)

    async def confirm(self, epoch: int, live: Callable[[], bool]) -> Confirmation:
        """May the run of ``epoch`` (``live``: it still runs) act now? See ``core.confirm``."""
        me = self.replica.name
        if not live() or not self._holds(epoch):
            return self._count(
                verdict(me, epoch, holds=self._holds(epoch), run_live=live(), known=(), answers={})
            )
        alone_by = self._alone_by()
        answers: dict[str, Answer] = {}
        t0 = trio.current_time()
        if not alone_by:
            answers = await self._round(epoch, self._known())
        known = self._known()
        return self._count(
            verdict(
                me,
                epoch,
                holds=self._holds(epoch),
                run_live=live(),
                known=known,
                answers=answers,
                alone_by=alone_by,
                timeout_s=self.timeout_s,
                took_s=None if alone_by else trio.current_time() - t0,
            )
        )

    def _count(self, c: Confirmation) -> Confirmation:
        self.counters["confirms_ok" if c.ok else "confirms_refused"] += 1
        return c

    async def _round(self, epoch: int, known: set[str]) -> dict[str, Answer]:
        """PING every peer now; return the answers once a majority of ``known`` (with us)
        answered, or one reads a newer lease, or at the timeout."""
        ae, me = self.gossip.ae, self.replica.name
        nonce = secrets.randbits(63)
        self.gossip.ask(ae.confirm_ask(ae.peers, nonce, self.replica.now_ms()))
        try:
            deadline = trio.current_time() + self.timeout_s
            resend = trio.current_time() + RESEND_S
            while True:
                answers = ae.confirm_answers(nonce)
                counted = len([n for n in answers if n in known])
                newer = any(
                    a.epoch > epoch or (a.epoch == epoch and a.holder not in ("", me))
                    for a in answers.values()
                )
                if (1 + counted) * 2 > len(known) or newer or trio.current_time() >= deadline:
                    return answers
                if trio.current_time() >= resend:
                    self.gossip.ask(ae.confirm_resend(nonce))
                    resend += RESEND_S
                await trio.sleep(POLL_S)
        finally:
            ae.confirm_end(nonce)

    # ------------------------------------------------------------------ the socket
    async def serve(
        self,
        run: Run,
        directory: Path,
        live: Callable[[], bool],
        *,
        task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve ``run``'s confirms on ``directory/confirm.sock`` until cancelled; reports
        the socket's path when it listens, and removes it when it stops."""
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.chmod(0o700)
        path = directory / SOCKET_NAME
        path.unlink(missing_ok=True)
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A unix socket's path is limited to 107 bytes; a data directory can be deeper.
            # Through /proc/self/fd/<fd of the directory> the path is short.
            short_path(directory, SOCKET_NAME, raw.bind)
            os.chmod(path, 0o600)
            raw.listen(8)
        except BaseException:
            raw.close()
            raise
        sock = trio.socket.from_stdlib_socket(raw)
        try:
            with sock:
                task_status.started(path)
                async with trio.open_nursery() as nursery:
                    while True:
                        conn, _ = await sock.accept()
                        stream = trio.SocketStream(conn)
                        nursery.start_soon(self._answer, run, stream, live)
        finally:
            path.unlink(missing_ok=True)

    async def _answer(self, run: Run, stream: trio.SocketStream, live: Callable[[], bool]) -> None:
        async with stream:
            try:
                with trio.fail_after(REQUEST_TIMEOUT_S):
                    ask = await _read_line(stream)
                try:
                    c = await self._confirm_request(run, ask, live)
                except Exception as exc:  # a bug must refuse the action, not stop the run
                    log.exception("%s: job %s: confirm failed", self.replica.name, run.job_id)
                    c = Confirmation(False, f"{REFUSED}internal error: {exc!r}")
                out = json.dumps({"ok": c.ok, "reason": c.reason}) + "\n"
                await stream.send_all(out.encode())
            except (trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _confirm_request(
        self, run: Run, ask: dict[str, Any] | None, live: Callable[[], bool]
    ) -> Confirmation:
        if ask is None:
            return Confirmation(False, f"{REFUSED}a malformed confirm request")
        epoch, job, host = ask.get("epoch"), ask.get("job"), str(ask.get("host", ""))[:200]
        if epoch != run.epoch or job != run.job_id:
            c = Confirmation(
                False,
                f"{REFUSED}asked for job {job!r} under epoch {epoch!r}, but this socket "
                f"serves job {run.job_id} under epoch {run.epoch}",
            )
        else:
            c = await self.confirm(run.epoch, live)
        run.line(f"gossipmgr: confirm for {host or '?'}: {c.reason}")
        level = logging.INFO if c.ok else logging.WARNING
        log.log(
            level, "%s: job %s: confirm for %s: %s", self.replica.name, run.job_id, host, c.reason
        )
        return c


def short_path(directory: Path, name: str, use: Callable[[str], Any]) -> Any:
    """``use(path)`` with a path of ``directory/name`` short enough for a unix socket:
    the path itself when it fits, else through ``/proc/self/fd`` (Linux)."""
    full = str(directory / name)
    if len(full.encode()) < 100:
        return use(full)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return use(f"/proc/self/fd/{fd}/{name}")
    finally:
        os.close(fd)


async def _read_line(stream: trio.SocketStream) -> dict[str, Any] | None:
    data = b""
    while b"\n" not in data and len(data) <= MAX_REQUEST:
        chunk = await stream.receive_some(MAX_REQUEST)
        if not chunk:
            break
        data += chunk
    try:
        value = json.loads(data.split(b"\n", 1)[0])
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
