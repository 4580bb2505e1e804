"""What an attempt's outcome means for one recipient: next state, event, next attempt (pure).

Success after the final dot: delivered. Otherwise the outcome is classified
(`BounceRules`), the retry policy decides between bouncing, retrying at a time
and expiring, the state table names the new state and the event kind, and the
event is built. Everything comes in as arguments, `now`, the random number and
the new event's id included.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from mta.core import events, retry
from mta.core.bounce import condition_reply
from mta.core.status import transition
from mta.model import Condition, Outcome, Phase, RecipientState, Reply, Result, Verdict


class Classifier(Protocol):
    def classify(self, outcome: Outcome) -> Verdict: ...


@dataclass(frozen=True, slots=True)
class Attempted:
    """What is known of the recipient before this outcome."""

    subject: events.Subject
    attempts: int  # attempts made before this one
    seq: int  # last event seq
    expires_at: float
    possible_duplicate: bool


@dataclass(frozen=True, slots=True)
class Settlement:
    state: RecipientState
    result: Result
    attempts: int
    seq: int
    next_attempt_at: float | None
    verdict: Verdict | None
    outcome: Outcome
    event: events.Event
    possible_duplicate: bool
    attempted: bool


def settle(
    before: Attempted,
    outcome: Outcome,
    *,
    now: float,
    rules: Classifier,
    policy: retry.RetryPolicy | retry.RetrySchedule,
    rand: float,
    event_id: str,
) -> Settlement:
    """The consequence of one attempt's outcome.

    A reply that asks us to slow down (the retry policy "waits for the site")
    is the site's doing, not the recipient's: it does not use an attempt.
    """
    attempts = before.attempts + 1
    duplicate = before.possible_duplicate or outcome.possible_duplicate
    verdict: Verdict | None = None
    next_at: float | None = None
    result: Result
    if outcome.phase is Phase.DOT and outcome.reply.is_success:
        result = Result.DELIVERED
    else:
        verdict = rules.classify(outcome)
        decision = retry.decide(verdict, attempts, now, before.expires_at, policy, rand)
        result = decision.action
        next_at = decision.at
        if decision.waits_for_site:
            attempts = before.attempts
    return _settlement(
        before,
        outcome,
        result,
        attempts,
        next_at,
        verdict,
        duplicate,
        now,
        event_id,
        attempted=True,
    )


def hold(
    before: Attempted,
    outcome: Outcome,
    *,
    now: float,
    rules: Classifier,
    until: float,
    event_id: str,
) -> Settlement:
    """Keep the recipient from any attempt until `until` (e.g. its message's content failed
    its checksum: it must never be sent). It stays queued, with a soft-bounce event saying
    why; when its validity ends it expires with that reply, like any recipient left waiting."""
    return _settlement(
        before,
        outcome,
        Result.RETRY,
        before.attempts,
        until,
        rules.classify(outcome),
        before.possible_duplicate,
        now,
        event_id,
        attempted=False,
    )


def expire_unattempted(
    before: Attempted,
    last: Outcome | None,
    *,
    now: float,
    rules: Classifier,
    event_id: str,
    held: str = "",
) -> Settlement:
    """The validity ended while the recipient waited: expire it with its last reply, or, if it
    was never tried, with the `validity_expired` condition and what held it back (`held`)."""
    outcome = last or Outcome(
        condition_reply(Condition.VALIDITY_EXPIRED, held),
        Phase.CONNECT,
        None,
        Condition.VALIDITY_EXPIRED,
    )
    verdict = rules.classify(outcome)
    return _settlement(
        before,
        outcome,
        Result.EXPIRE,
        before.attempts,
        None,
        verdict,
        before.possible_duplicate,
        now,
        event_id,
        attempted=False,
    )


OPERATOR_BOUNCE = Reply(554, "5.0.0", "Bounced by the operator")


def bounce_by_operator(
    before: Attempted,
    reason: str,
    *,
    now: float,
    rules: Classifier,
    event_id: str,
) -> Settlement:
    """An operator bounced the recipient's queue: a hard bounce now, the reason in the reply."""
    base = OPERATOR_BOUNCE
    reply = Reply(base.code, base.enhanced, f"{base.text}: {reason}")
    outcome = Outcome(reply, Phase.CONNECT, None, Condition.LOCAL_ERROR)
    verdict = rules.classify(outcome)
    return _settlement(
        before,
        outcome,
        Result.BOUNCE,
        before.attempts,
        None,
        verdict,
        before.possible_duplicate,
        now,
        event_id,
        attempted=False,
    )

def _settlement(
    before: Attempted,
    outcome: Outcome,
    result: Result,
    attempts: int,
    next_at: float | None,
    verdict: Verdict | None,
    duplicate: bool,
    now: float,
    event_id: str,
    *,
    attempted: bool,
) -> Settlement:
    state, kind = transition(RecipientState.QUEUED, result)
    seq = before.seq + 1
    event = events.build(
        event_id=event_id,
        seq=seq,
        kind=kind,
        at=now,
        subject=before.subject,
        attempt=attempts,
        outcome=outcome,
        verdict=verdict,
        next_attempt_at=next_at,
        possible_duplicate=duplicate,
    )
    return Settlement(
        state, result, attempts, seq, next_at, verdict, outcome, event, duplicate, attempted
    )
