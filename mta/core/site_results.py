"""What one transaction came to, as the per-site throttle sees it (pure).

`result_of` turns an outcome and its verdict into a `SiteResult`: delivered,
throttled (the site asks us to slow down), bounced, deferred, or a connection
failure (refused, timed out, lost before any reply). `job_results` gives one
result per recipient of a delivery job, except that a failure of the session
itself is one result for all its recipients.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mta.model import Condition, Outcome, Phase, Result, Verdict

SESSION_PHASES = frozenset({Phase.CONNECT, Phase.EHLO, Phase.STARTTLS})
_CONNECT_FAILURES = frozenset(
    {Condition.CONNECTION_REFUSED, Condition.TIMEOUT, Condition.CONNECTION_LOST}
)


@dataclass(frozen=True, slots=True)
class SiteResult:
    """What one transaction (or one recipient of it) came to.

    `started_at` is when the transaction started (the time given to
    `on_attempt`); `recipients` is how many recipients share this result.
    """

    kind: Result  # DELIVERED, THROTTLED, RETRY, BOUNCE or CONNECT_FAILED
    started_at: float
    verdict: Verdict | None = None
    reply_text: str = ""
    recipients: int = 1


def is_throttle(verdict: Verdict | None) -> bool:
    """A reply asking us to slow down (its bounce rule says `throttle = true`)."""
    return verdict is not None and verdict.throttle


def counted_as(result: Result, verdict: Verdict | None, attempted: bool) -> Result:
    """A recipient's result as the counters show it: a retry because the site asked us
    to slow down counts as THROTTLED."""
    if result is Result.RETRY and attempted and is_throttle(verdict):
        return Result.THROTTLED
    return result


def result_of(outcome: Outcome, verdict: Verdict | None, started_at: float) -> SiteResult:
    """The result for one outcome (and its verdict; None when it was delivered)."""
    text = str(outcome.reply)
    if outcome.phase is Phase.DOT and outcome.reply.is_success:
        return SiteResult(Result.DELIVERED, started_at, None, text)
    if outcome.condition in _CONNECT_FAILURES and outcome.phase in SESSION_PHASES:
        return SiteResult(Result.CONNECT_FAILED, started_at, verdict, text)
    if is_throttle(verdict):
        return SiteResult(Result.THROTTLED, started_at, verdict, text)
    if verdict is not None and verdict.permanent:
        return SiteResult(Result.BOUNCE, started_at, verdict, text)
    return SiteResult(Result.RETRY, started_at, verdict, text)


def job_results(
    pairs: Iterable[tuple[Outcome, Verdict | None]], started_at: float, session_failed: bool
) -> list[SiteResult]:
    """Results for one delivery job: one per recipient, except that a failure of the
    session itself (delivery says so: every recipient shares it) is one result for all,
    so a refused connection counts once for the cohort rule."""
    items = list(pairs)
    if not items:
        return []
    first = items[0][0]
    if session_failed:
        result = result_of(first, items[0][1], started_at)
        return [
            SiteResult(result.kind, started_at, result.verdict, result.reply_text, len(items))
        ]
    return [result_of(outcome, verdict, started_at) for outcome, verdict in items]
