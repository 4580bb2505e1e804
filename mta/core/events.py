"""Feedback events as frozen records, built from what happened (pure).

One event per recipient state change: relayed, delivered, soft_bounce,
hard_bounce, expired (out_of_band and complaint come from the simulated ISPs);
docs/design.md, "Feedback events", lists the fields. `event_id` is stable: it
is made once, stored in the outbox and sent unchanged on every redelivery, so
receivers can deduplicate; `seq` counts a recipient's events from 1 so
receivers can order them. `Event.as_dict` is the JSON object on the wire.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mta.model import EventKind, Outcome, Verdict


@dataclass(frozen=True, slots=True)
class Subject:
    """Who an event is about."""

    queue_id: str
    delivery_id: str | None
    log_id: str | None
    recipient: str


@dataclass(frozen=True, slots=True)
class SmtpPart:
    """The reply an event reports: `smtp` on the wire."""

    code: int
    enhanced: str | None
    text: str
    phase: str
    mx: str | None


@dataclass(frozen=True, slots=True)
class FailurePart:
    """Campaign's failure type and reason: `failure` on the wire."""

    type: str
    reason: str
    reason_code: int


@dataclass(frozen=True, slots=True)
class Event:
    """One feedback event."""

    event_id: str
    seq: int
    kind: EventKind
    at: float
    subject: Subject
    attempt: int
    smtp: SmtpPart | None = None
    bounce_class: tuple[int, str] | None = None  # (code, name)
    failure: FailurePart | None = None
    next_attempt_at: float | None = None
    possible_duplicate: bool = False
    node: str = ""  # the cluster node that decided it ("" for a node alone: no field)

    def as_dict(self) -> dict[str, Any]:
        """The JSON object on the wire (the field order is part of the contract's bytes)."""
        s = self.subject
        return {
            "event_id": self.event_id,
            "seq": self.seq,
            "kind": self.kind.value,
            "at": self.at,
            "queue_id": s.queue_id,
            "delivery_id": s.delivery_id,
            "log_id": s.log_id,
            "recipient": s.recipient,
            "attempt": self.attempt,
            "smtp": None if self.smtp is None else {
                "code": self.smtp.code,
                "enhanced": self.smtp.enhanced,
                "text": self.smtp.text,
                "phase": self.smtp.phase,
                "mx": self.smtp.mx,
            },
            "bounce_class": None if self.bounce_class is None else {
                "code": self.bounce_class[0],
                "name": self.bounce_class[1],
            },
            "failure": None if self.failure is None else {
                "type": self.failure.type,
                "reason": self.failure.reason,
                "reason_code": self.failure.reason_code,
            },
            "next_attempt_at": self.next_attempt_at,
            "possible_duplicate": self.possible_duplicate,
        } | ({"node": self.node} if self.node else {})

    def dumps(self) -> str:
        """Compact JSON, as stored in the outbox and sent."""
        return json.dumps(self.as_dict(), separators=(",", ":"), ensure_ascii=False)


def build(
    *,
    event_id: str,
    seq: int,
    kind: EventKind,
    at: float,
    subject: Subject,
    attempt: int,
    outcome: Outcome | None = None,
    verdict: Verdict | None = None,
    next_attempt_at: float | None = None,
    possible_duplicate: bool = False,
    node: str = "",
) -> Event:
    smtp = None
    if outcome is not None:
        reply = outcome.reply
        smtp = SmtpPart(reply.code, reply.enhanced, reply.text, outcome.phase.value, outcome.mx)
    bounce_class = failure = None
    if verdict is not None:
        bounce_class = (verdict.bounce_class.code, verdict.bounce_class.name)
        failure = FailurePart(verdict.failure_type, verdict.failure_reason, verdict.reason_code)
    return Event(
        event_id,
        seq,
        kind,
        at,
        subject,
        attempt,
        smtp,
        bounce_class,
        failure,
        next_attempt_at,
        possible_duplicate,
        node,
    )
