"""The confirm rule: "I, holder of epoch E for job J, still hold a majority NOW". PURE.

A running job asks its instance this right before it changes a node (the
``gossipmgr_confirm`` action of the ``gossipmgr_fence`` role, docs/ansible.md). The lease's
majority rule (``core.quorum``) counts a peer as seen for a heard window (>= 5 s) after it
last spoke: a holder cut off from its peers keeps "seeing" them that long, and its running
job kept acting on nodes meanwhile (the partition suite counted 16 such actions in one run).
The confirm instead asks every peer *now* (a round trip over gossip whose request was sent
after the confirm was asked, ``gossip.confirm``) and answers yes only if

* this instance holds the lease at epoch E (``is_holder``) before and after the round trip,
  and the job's run is still live (the instance's current run, not stopped);
* a strict majority of the known instances, itself included, answered that round trip,
  counting as ``core.quorum`` does: instances Serf lists alive that we ever heard from, and
  failed ones (``known_instances``);
* no instance that answered reads a lease newer than ours (a higher epoch, or E held by
  another instance).

A holder allowed by the two-instance rule (``Quorum.solo``) or by a forced grant
(``gossipmgr lease take --force``) confirms without a majority: those are the cases where
the operator accepted that one instance acts alone (the lease itself holds without a
majority there, so a confirm that demanded one would stop every job of a two-instance
cluster whose other instance failed). They confirm at once, without a round trip: no
majority can answer there.

What a yes proves, and what it does not: every answer left its peer after the question did,
so at some moment inside the round trip a majority was reachable and none of it had seen a
newer lease. It does not prove that no newer lease exists: the lease is not a consensus
protocol, and a claim is not acknowledged by a majority before its holder acts. A newer
claim needs the claimant to hear a majority and to see our lease expired or our renewals
stopped, so while a majority answers us, and our renewals reach it, none is expected; but
one that is on its way to a responder is not seen. Nor does it cover the time after the
answer: the window left is the time between the confirm and the action.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

__all__ = ["CONFIRM_ENV", "REFUSED", "Answer", "Confirmation", "known_instances", "verdict"]

#: The environment variable that names a job's confirm socket to its ansible runs
#: (``runtime.confirm``); the ``gossipmgr_confirm`` action reads it.
CONFIRM_ENV = "GOSSIPMGR_CONFIRM_SOCKET"
#: How every refusal starts (the job's error and the ansible failure carry it).
REFUSED = "no majority: "


@dataclass(frozen=True)
class Answer:
    """One peer's answer to a confirm round: the lease as it reads it (0, "": none)."""

    epoch: int
    holder: str


@dataclass(frozen=True)
class Confirmation:
    """The confirm's outcome: ``ok`` and the one line that says why (a refusal starts with
    :data:`REFUSED`)."""

    ok: bool
    reason: str


def known_instances(
    me: str, alive: Collection[str], failed: Collection[str], ever: Collection[str]
) -> set[str]:
    """The instances the majority is counted over, as ``core.quorum.quorum`` counts its
    ``known``: those Serf lists alive that we heard from at least once (``ever``; ``me``
    always), and those it lists failed (a failed one may be alive on the other side of a
    partition). Left ones are in neither list."""
    listed = {n for n in alive if n == me or n in ever}
    return listed | (set(failed) - set(alive)) | {me}


def _newer(answers: Mapping[str, Answer], me: str, epoch: int) -> str | None:
    for name in sorted(answers):
        a = answers[name]
        if a.epoch > epoch or (a.epoch == epoch and a.holder not in ("", me)):
            return f"{name} reads a newer lease (epoch {a.epoch} held by {a.holder or '?'})"
    return None


def verdict(
    me: str,
    epoch: int,
    *,
    holds: bool,
    run_live: bool,
    known: Collection[str],
    answers: Mapping[str, Answer],
    alone_by: str = "",
    timeout_s: float = 1.0,
    took_s: float | None = None,
) -> Confirmation:
    """The confirm's answer, after the round trip.

    ``holds``: this instance holds the lease at ``epoch`` (it is the holder, unexpired, at
    exactly that epoch), read *after* the round trip (the caller also checks it before
    asking anyone); ``run_live``: the job's run is still this instance's running run;
    ``known``: :func:`known_instances`; ``answers``: the peers that answered this round, each
    with the lease it reads; ``alone_by``: why this holder may act without a majority (the
    two-instance rule, a forced grant; "" if neither); ``timeout_s``: how long the round
    could wait, ``took_s``: how long it took (both for the reason's text)."""
    if not run_live:
        return Confirmation(False, f"{REFUSED}the job's run under epoch {epoch} has ended")
    if not holds:
        return Confirmation(
            False, f"{REFUSED}this instance no longer holds the lease at epoch {epoch}"
        )
    newer = _newer(answers, me, epoch)
    if newer is not None:
        return Confirmation(False, f"{REFUSED}{newer}")
    counted = sorted(n for n in answers if n in known and n != me)
    sees, total = 1 + len(counted), len(set(known) | {me})
    who = ", ".join([me, *counted])
    if sees * 2 > total:
        took = "" if took_s is None else f" in {took_s * 1000:.0f} ms"
        return Confirmation(
            True, f"majority: {sees} of {total} instances answered now ({who}){took}"
        )
    if alone_by:
        return Confirmation(True, f"{alone_by}: {sees} of {total} instances answered ({who})")
    need = total // 2 + 1
    return Confirmation(
        False,
        f"{REFUSED}{sees} of {total} instances answered within {timeout_s:g} s, "
        f"{need} needed ({who})",
    )
