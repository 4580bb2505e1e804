"""When to try a recipient again, or whether its validity is over (pure).

A `RetryPolicy` is exponential backoff from `first`, multiplied by `factor` per
attempt, capped at `max_interval`, spread by +-`jitter` (a fraction) so that a
recovered site is not hit by every deferred recipient at once. A retry that
would fall at or after the end of the validity period is clamped to that end:
the last attempt happens when the validity ends, not one interval earlier. An
attempt that fails at (or after) the end expires the recipient, carrying its
last reply. `rand` is a number in [0, 1) supplied by the caller; nothing here
reads a clock.

A `RetrySchedule` picks the policy from the verdict ("the type and severity of
the bounce"): an ordered list of entries matched on the Momentum bounce class,
a regex over the name of the bounce rule that gave the verdict and the
verdict's scope (first match wins), then a default. The built-in schedule is
data (``mta/defaults/retry-schedule.toml``, loaded by `mta.mx_rules`).

A policy with ``waits_for_site`` (throttling replies) does not grow with the
attempts: the recipient is put back behind its site for ``site_backoff``
(+-jitter) and the attempt must not be counted against it (`Decision.
waits_for_site` tells the caller); the site itself is slowed down by
`mta.core.throttle`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from mta.core.durations import format_duration
from mta.model import Result, Verdict

MAX_VALIDITY = 3.5 * 86400.0
_CACHE_LIMIT = 4096


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """One retry timing; `name` appears in explanations and events' reasons."""

    first: float = 600.0
    factor: float = 2.0
    max_interval: float = 4 * 3600.0
    jitter: float = 0.2
    name: str = "default"
    waits_for_site: bool = False  # throttling: no attempt used, wait `site_backoff`
    site_backoff: float = 60.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a retry policy needs a name")
        if self.first < 0:
            raise ValueError("first must not be negative")
        if self.factor < 1:
            raise ValueError("factor must be >= 1")
        if self.max_interval < 0:
            raise ValueError("max_interval must not be negative")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.site_backoff < 0:
            raise ValueError("site_backoff must not be negative")


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    """A policy and when it applies: every given condition must hold (None: any)."""

    policy: RetryPolicy
    classes: frozenset[int] | None = None  # Momentum bounce class codes
    rule: re.Pattern[str] | None = None  # searched in Verdict.rule (the bounce rule's name)
    scopes: frozenset[str] | None = None  # "recipient", "message", "site"
    throttle: bool | None = None  # the verdict is (True) or is not (False) a throttling reply
    where: str = ""  # "file: policy 2 'greylist'", for explanations

    def matches(self, verdict: Verdict) -> bool:
        if self.classes is not None and verdict.bounce_class.code not in self.classes:
            return False
        if self.scopes is not None and verdict.scope not in self.scopes:
            return False
        if self.throttle is not None and verdict.throttle != self.throttle:
            return False
        return self.rule is None or self.rule.search(verdict.rule) is not None


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Ordered entries, first match wins; `default` when none matches."""

    entries: tuple[ScheduleEntry, ...] = ()
    default: RetryPolicy = RetryPolicy()
    _cache: dict[tuple[int, str, str, bool], RetryPolicy] = field(
        default_factory=dict, compare=False, repr=False
    )

    def policy_for(self, verdict: Verdict) -> RetryPolicy:
        key = (verdict.bounce_class.code, verdict.rule, verdict.scope, verdict.throttle)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        entry = self.entry_for(verdict)
        policy = self.default if entry is None else entry.policy
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = policy
        return policy

    def entry_for(self, verdict: Verdict) -> ScheduleEntry | None:
        """The first matching entry (None: the default applies)."""
        for entry in self.entries:
            if entry.matches(verdict):
                return entry
        return None

    def with_default(self, policy: RetryPolicy) -> RetrySchedule:
        """The same entries with another default (e.g. from the `[retry]` config section)."""
        return RetrySchedule(self.entries, replace(policy, waits_for_site=False))

    def names(self) -> Mapping[str, RetryPolicy]:
        found = {entry.policy.name: entry.policy for entry in self.entries}
        found.setdefault(self.default.name, self.default)
        return found


@dataclass(frozen=True, slots=True)
class Decision:
    """What follows a failed attempt.

    `policy` names the policy that decided; `waits_for_site` means the attempt
    must not be counted (the reply was about the site's rate, not the recipient).
    """

    action: Result  # RETRY, BOUNCE or EXPIRE
    at: float | None = None  # the next attempt, for RETRY
    policy: str = ""
    waits_for_site: bool = False


def resolve(verdict: Verdict, schedule_or_policy: RetrySchedule | RetryPolicy) -> RetryPolicy:
    """The policy that applies to a verdict."""
    if isinstance(schedule_or_policy, RetrySchedule):
        return schedule_or_policy.policy_for(verdict)
    return schedule_or_policy


def interval(attempts: int, policy: RetryPolicy) -> float:
    """The base delay after the `attempts`-th failed attempt (1-based), before jitter."""
    if policy.waits_for_site:
        return policy.site_backoff
    exponent = max(attempts - 1, 0)
    # Cap the exponent so the float never overflows on absurd attempt counts.
    delay = policy.first * policy.factor ** min(exponent, 64)
    return float(min(delay, policy.max_interval))


def jittered(base: float, jitter: float, rand: float) -> float:
    """`base` spread by +-`jitter` (a fraction) with `rand` in [0, 1); at least 1 second."""
    return max(base + base * jitter * (2.0 * rand - 1.0), 1.0)


def decide(
    verdict: Verdict,
    attempts: int,
    now: float,
    expires_at: float,
    policy: RetryPolicy | RetrySchedule,
    rand: float,
) -> Decision:
    """What follows a failed attempt: bounce (permanent), retry at a time, or expire.

    `attempts` counts the attempts made, this one included (1-based).
    `policy` is one policy (old callers) or a schedule that picks it by verdict.
    """
    chosen = resolve(verdict, policy)
    if verdict.permanent:
        return Decision(Result.BOUNCE, policy=chosen.name)
    if now >= expires_at:
        return Decision(Result.EXPIRE, policy=chosen.name, waits_for_site=chosen.waits_for_site)
    at = min(now + jittered(interval(attempts, chosen), chosen.jitter, rand), expires_at)
    return Decision(Result.RETRY, at, chosen.name, chosen.waits_for_site)


def validity_end(received_at: float, requested: float | None, default: float) -> float:
    """min(requested, default, 3.5 days) counted from when the message reached the MTA."""
    span = default if requested is None else min(requested, default)
    return received_at + min(span, MAX_VALIDITY)


def describe(verdict: Verdict, policy: RetryPolicy | RetrySchedule) -> str:
    """A one-line explanation of the retry decision for a verdict (for `mta classify`)."""
    if verdict.permanent:
        return "no retry: the failure is permanent"
    chosen = resolve(verdict, policy)
    jitter = f"+-{chosen.jitter:.0%} jitter"
    if chosen.waits_for_site:
        return (
            f"policy '{chosen.name}': the recipient waits for its site (back in "
            f"{format_duration(chosen.site_backoff)}, {jitter}) without using an attempt;"
            " the site is slowed down, until the validity ends"
        )
    steps = ", ".join(format_duration(interval(n, chosen)) for n in range(1, 5))
    return (
        f"policy '{chosen.name}': retry after {steps}, ... (x{chosen.factor:g} per attempt,"
        f" at most {format_duration(chosen.max_interval)}, {jitter}) until the validity ends"
    )
