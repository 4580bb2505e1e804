"""Feedback events as plain JSON-ready dicts (DESIGN 4.3), built from what happened (pure).

One event per recipient state change: relayed, delivered, soft_bounce,
hard_bounce, expired (out_of_band and complaint come from the simulated ISPs).
`event_id` is stable: it is made once, stored in the outbox and sent unchanged
on every redelivery, so receivers can deduplicate; `seq` counts a recipient's
events from 1 so receivers can order them.
"""

from __future__ import annotations

import json
import uuid
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


def new_event_id() -> str:
    return uuid.uuid4().hex


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
) -> dict[str, Any]:
    smtp = None
    if outcome is not None:
        reply = outcome.reply
        smtp = {
            "code": reply.code,
            "enhanced": reply.enhanced,
            "text": reply.text,
            "phase": outcome.phase.value,
            "mx": outcome.mx,
        }
    bounce_class = failure = None
    if verdict is not None:
        bounce_class = {"code": verdict.bounce_class.code, "name": verdict.bounce_class.name}
        failure = {
            "type": verdict.failure_type,
            "reason": verdict.failure_reason,
            "reason_code": verdict.reason_code,
        }
    return {
        "event_id": event_id,
        "seq": seq,
        "kind": kind.value,
        "at": at,
        "queue_id": subject.queue_id,
        "delivery_id": subject.delivery_id,
        "log_id": subject.log_id,
        "recipient": subject.recipient,
        "attempt": attempt,
        "smtp": smtp,
        "bounce_class": bounce_class,
        "failure": failure,
        "next_attempt_at": next_attempt_at,
        "possible_duplicate": possible_duplicate,
    }


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
