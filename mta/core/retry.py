"""When to try a recipient again, or whether its validity is over (pure).

Exponential backoff from `first`, multiplied by `factor` per attempt, capped at
`max_interval`, spread by +-`jitter` (a fraction) so that a recovered site is not
hit by every deferred recipient at once. A retry that would fall after the end
of the validity period is not scheduled: the recipient expires now, carrying its
last reply. `rand` is a number in [0, 1) supplied by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mta.durations import format_duration
from mta.model import Verdict

MAX_VALIDITY = 3.5 * 86400.0


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    first: float = 600.0
    factor: float = 2.0
    max_interval: float = 4 * 3600.0
    jitter: float = 0.2


@dataclass(frozen=True, slots=True)
class Decision:
    action: Literal["retry", "bounce", "expire"]
    at: float | None = None  # the next attempt, for "retry"


def interval(attempts: int, policy: RetryPolicy) -> float:
    """The base delay after the `attempts`-th failed attempt (1-based), before jitter."""
    exponent = max(attempts - 1, 0)
    # Cap the exponent so the float never overflows on absurd attempt counts.
    delay = policy.first * policy.factor ** min(exponent, 64)
    return float(min(delay, policy.max_interval))


def decide(
    verdict: Verdict,
    attempts: int,
    now: float,
    expires_at: float,
    policy: RetryPolicy,
    rand: float,
) -> Decision:
    """What follows a failed attempt: bounce (permanent), retry at a time, or expire."""
    if verdict.permanent:
        return Decision("bounce")
    base = interval(attempts, policy)
    spread = base * policy.jitter * (2.0 * rand - 1.0)
    at = now + max(base + spread, 1.0)
    if at >= expires_at:
        return Decision("expire")
    return Decision("retry", at)


def validity_end(received_at: float, requested: float | None, default: float) -> float:
    """min(requested, default, 3.5 days) counted from when the message reached the MTA."""
    span = default if requested is None else min(requested, default)
    return received_at + min(span, MAX_VALIDITY)


def describe(verdict: Verdict, policy: RetryPolicy) -> str:
    """A one-line explanation of the retry decision for a verdict (for `mta classify`)."""
    if verdict.permanent:
        return "no retry: the failure is permanent"
    steps = ", ".join(format_duration(interval(n, policy)) for n in range(1, 5))
    return (
        f"retry after {steps}, ... (x{policy.factor:g} per attempt, at most "
        f"{format_duration(policy.max_interval)}, +-{policy.jitter:.0%} jitter)"
        " until the validity ends"
    )
