"""A verdict explained (pure): the document `mta classify --json` and `POST /api/v1/classify`
show, and its short text form, from the bounce rules' explanation and the retry policy.
"""

from __future__ import annotations

from typing import Any

from mta.core.bounce import BounceRules, Explanation, condition_reply
from mta.core.reply import parse_reply
from mta.core.retry import RetryPolicy, RetrySchedule, describe
from mta.model import Condition, Outcome, Phase, Reply

__all__ = [
    "CONDITIONS",
    "PHASES",
    "InputError",
    "classify_one",
    "human",
    "outcome_of",
    "verdict_document",
]

MAX_REPLY_CHARS = 64 * 1024
PHASES = tuple(phase.value for phase in Phase)
CONDITIONS = tuple(condition.value for condition in Condition)


class InputError(ValueError):
    """A bad reply, phase or condition; the message is what the user sees."""


def classify_one(
    rules: BounceRules,
    reply: str | None,
    phase: str = "rcpt",
    condition: str | None = None,
    policy: RetryPolicy | RetrySchedule | None = None,
) -> dict[str, Any]:
    """The JSON document for one reply (raises InputError on a bad reply, phase or condition)."""
    outcome = outcome_of(reply, phase, condition)
    return verdict_document(rules.explain(outcome), outcome, policy)


def verdict_document(
    explanation: Explanation, outcome: Outcome, policy: RetryPolicy | RetrySchedule | None = None
) -> dict[str, Any]:
    """The verdict as `mta classify --json` (and the admin API) shows it."""
    verdict = explanation.verdict
    rule = explanation.rule
    reply = outcome.reply
    return {
        "reply": {"code": reply.code, "enhanced": reply.enhanced, "text": reply.text},
        "phase": outcome.phase.value,
        "condition": outcome.condition.value if outcome.condition else None,
        "bounce_class": {"code": verdict.bounce_class.code, "name": verdict.bounce_class.name},
        "failure_type": verdict.failure_type,
        "failure_reason": verdict.failure_reason,
        "failure_reason_code": verdict.reason_code,
        "scope": verdict.scope,
        "permanent": verdict.permanent,
        "rule": verdict.rule,
        "rule_source": f"{rule.source}: rule {rule.number}",
        "comment": rule.comment or None,
        "retry": describe(verdict, policy or RetryPolicy()),
    }


def human(
    explanation: Explanation, outcome: Outcome, policy: RetryPolicy | RetrySchedule | None = None
) -> str:
    """A short aligned explanation."""
    verdict = explanation.verdict
    rule = explanation.rule
    rows = [
        ("reply", str(outcome.reply) or "(none)"),
        ("phase", outcome.phase.value),
    ]
    if outcome.condition:
        rows.append(("condition", outcome.condition.value))
    rows += [
        ("rule", f"{verdict.rule}  ({rule.source}: rule {rule.number})"),
        ("class", f"{verdict.bounce_class.code} {verdict.bounce_class.name}"),
        ("type", verdict.failure_type),
        ("reason", f"{verdict.failure_reason} ({verdict.reason_code})"),
        ("scope", verdict.scope),
        ("permanent", "yes" if verdict.permanent else "no"),
        ("retry", describe(verdict, policy or RetryPolicy())),
    ]
    if rule.comment:
        rows.append(("why", " ".join(rule.comment.split())))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def outcome_of(reply: Any, phase: Any, condition: Any) -> Outcome:
    """The outcome a reply (or a local condition) stands for; InputError names what is wrong."""
    if phase is None:
        phase = Phase.CONNECT.value if condition else Phase.RCPT.value
    if not isinstance(phase, str) or phase not in PHASES:
        raise InputError(f"unknown phase {phase!r} (expected one of {', '.join(PHASES)})")
    if condition is not None and (not isinstance(condition, str) or condition not in CONDITIONS):
        raise InputError(
            f"unknown condition {condition!r} (expected one of {', '.join(CONDITIONS)})"
        )
    cond = Condition(condition) if condition else None
    if reply is not None and not isinstance(reply, str):
        raise InputError(f"the reply must be a string, got {type(reply).__name__}")
    if reply is not None and len(reply) > MAX_REPLY_CHARS:
        raise InputError(f"the reply is longer than {MAX_REPLY_CHARS} characters")
    if reply is None or not reply.strip():
        if cond is None:
            raise InputError("no reply given (and no --condition)")
        parsed: Reply = condition_reply(cond)
    else:
        parsed = parse_reply(reply)
    return Outcome(parsed, Phase(phase), None, cond)
