"""Between the spool's rows and the pure decisions: leased recipients grouped into
delivery jobs, and a recipient's state before an attempt and its `Update` after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from mta.core import coalesce, events
from mta.core.rampup import Binding
from mta.core.settle import Attempted, Settlement
from mta.delivery.deliverer import Job
from mta.model import EventKind, Outcome, Phase, Reply
from mta.queue.records import DueRecipient, Update


def attempted(r: DueRecipient) -> Attempted:
    return Attempted(
        subject=events.Subject(r.queue_id, r.delivery_id, r.log_id, r.address),
        attempts=r.attempts,
        seq=r.seq,
        expires_at=r.expires_at,
        possible_duplicate=r.possible_duplicate,
    )


def last_outcome(r: DueRecipient) -> Outcome | None:
    if r.last_code is None:
        return None
    phase = Phase(r.last_phase) if r.last_phase in set(Phase) else Phase.CONNECT
    return Outcome(Reply(r.last_code, r.last_enhanced, r.last_text or ""), phase, r.last_mx)


def update_of(
    r: DueRecipient,
    s: Settlement,
    now: float,
    site: str | None = None,
    binding: str | None = None,
    every: float = 0.0,
    node: str = "",
) -> Update:
    """The spool's record of a settlement; a soft bounce repeating the last one reported
    within `every` seconds keeps no event (`mta.core.coalesce`) and so no new seq; in a
    cluster the event names its node."""
    outcome = s.outcome
    event = dataclasses.replace(s.event, node=node) if node else s.event
    reply = outcome.reply
    kind = s.event.kind
    key = coalesce.verdict_key(s.verdict, reply)
    report = coalesce.should_report(kind, key, r.reported_key, r.reported_at, now=now, every=every)
    return Update(
        recipient_id=r.recipient_id,
        message_id=r.message_id,
        state=s.state.value,
        attempts=s.attempts,
        next_attempt_at=s.next_attempt_at,
        seq=s.seq if report else r.seq,
        at=now,
        code=reply.code,
        enhanced=reply.enhanced,
        text=reply.text,
        phase=outcome.phase.value,
        mx=outcome.mx,
        result=s.result,
        attempted=s.attempted,
        possible_duplicate=s.possible_duplicate,
        event=(event.event_id, kind.value, event.dumps()) if report else None,
        site=site,
        binding=binding,
        reported_key=key if report and kind is EventKind.SOFT_BOUNCE else None,
    )


def group_jobs(
    due: Sequence[DueRecipient], contents: dict[int, bytes], per_transaction: int
) -> Iterator[tuple[Job, list[DueRecipient]]]:
    """One job per (message, domain), split at the per-transaction recipient limit."""
    groups: dict[tuple[int, str], list[DueRecipient]] = {}
    for r in due:
        groups.setdefault((r.message_id, r.domain), []).append(r)
    for (message_id, domain), members in groups.items():
        first = members[0]
        for start in range(0, len(members), per_transaction):
            chunk = members[start : start + per_transaction]
            yield (
                Job(
                    queue_id=first.queue_id,
                    mail_from=first.mail_from,
                    content=contents[message_id],
                    domain=domain,
                    recipients=tuple(r.address for r in chunk),
                    smtputf8=first.smtputf8,
                ),
                chunk,
            )


def default_bindings() -> list[Binding]:
    """No bindings configured: one, the system's choice of source address, old enough
    to have no ramp-up cap."""
    return [Binding("default", "", first_use=-1e12)]
