"""Per-site, per-binding delivery limits that learn from the replies (pure).

The rules (`mta.core.limits`) say what a site may take: connections, messages
per connection, a message rate, and the range the controller may move them
in. The state (`SiteThrottle`, one per site and source binding) is a token
bucket (`mta.core.bucket`) plus what the controller learned. The
functions take `now` as an argument, read no clock and do no I/O; they update
the state in place (it has one owner, the scheduler) and return the `Change`s
they made, small frozen records to log as events and to show in
`mta queue sites`.

- `admit(state, now, in_flight)`: how many transactions may start now (tokens,
  connections, suspension, cohort "down"), and when to look again if none.
- `on_attempt(state, now)`: a transaction starts; it takes a token.
- `on_result(state, now, result)`: what came back. In order:
  * a connection failure (refused, timed out, lost before any reply) adds to a
    streak; `down_after` in a row mark the site down for `down_for` at the
    lowest concurrency (Postfix's "cohort" rule); back from down, the first
    failure marks it down again at once; any answer from the server ends it;
  * adaptive rules (the MX rule's own, then the global ones) match the verdict
    (bounce rule name regex, bounce classes, reply text regex); a trigger
    ("immediate" or N within a window) fires the action: `suspend` for a
    duration, `set_rate` (a value or a factor of the current rate; with a
    factor this is the multiplicative decrease of AIMD), or
    `halve_concurrency`; the duration is a hold during which nothing recovers;
    a reply to a transaction that started before the rule last acted counts
    for nothing (it tells about the old rate, like TCP reacting once per window);
  * recovery (Postfix's slow start, the additive increase of AIMD): every
    `recover_after` positive results outside a hold, the rate grows by
    `increase` x the rate at which the site last pushed back, and the
    concurrency by one, never above the rule's maximum.

The results come classified by `mta.core.site_results`; `mta.core.site_report`
shows a state to people.

A positive result is a delivery or a reply about one recipient (unknown user,
mailbox full): the server took the transaction. Throttling replies are results
of the site, not failures of a recipient: `mta.core.retry` puts such recipients
back without using an attempt.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mta.core.bucket import RateWindow, TokenBucket
from mta.core.durations import format_duration, rate_text
from mta.core.limits import AdaptiveRule, MxRule
from mta.core.site_results import SiteResult
from mta.model import Result

_NEVER = -math.inf


# --- state ----------------------------------------------------------------------------


@dataclass(slots=True)
class SiteThrottle:
    """What the controller knows about one (site, binding); see the module docstring."""

    site: str
    binding: str
    rule: MxRule
    bucket: TokenBucket  # its rate is the site's rate now (inf: unlimited)
    concurrency: int  # connections allowed now
    suspended_until: float = _NEVER
    down_until: float = _NEVER
    hold_until: float = _NEVER
    pushback_rate: float = math.inf  # the rate at which the site last pushed back
    positives: int = 0  # positive results since the last recovery step
    connect_failures: int = 0  # consecutive
    probing: bool = False  # back from "down" with no answer yet: one more failure re-marks it
    history: dict[str, deque[float]] = field(default_factory=dict)
    fired_at: dict[str, float] = field(default_factory=dict)
    last_change_at: float | None = None
    last_reason: str = ""
    counts: Counter[Result] = field(default_factory=Counter)  # recipients per result
    attempts: RateWindow = field(default_factory=RateWindow)
    deliveries: RateWindow = field(default_factory=RateWindow)

    @property
    def rate(self) -> float:
        """Messages per second now (inf: unlimited)."""
        return self.bucket.rate

    @rate.setter
    def rate(self, value: float) -> None:
        self.bucket.retune(value, bucket_size(self.rule, value))


def bucket_size(rule: MxRule, rate: float) -> float:
    """The rule's burst, else one second's worth at `rate` (at least one token)."""
    if rule.burst > 0:
        return rule.burst
    return max(1.0, rate)


def new_state(site: str, binding: str, rule: MxRule, now: float) -> SiteThrottle:
    """A site seen for the first time: the rule's configured limits, a full bucket."""
    rate = rule.start_rate
    bucket = TokenBucket.full(rate, bucket_size(rule, rate), now)
    return SiteThrottle(site, binding, rule, bucket, rule.max_connections)


@dataclass(frozen=True, slots=True)
class Admission:
    """How many transactions may start now; if none, when to ask again (None: after
    a transaction in flight ends). `reason` says what limits: ok, rate, connections,
    suspended, down."""

    allowed: int
    next_check_at: float | None
    reason: str


def admit(state: SiteThrottle, now: float, in_flight: int) -> Admission:
    """How many more transactions may start now with `in_flight` running."""
    whole = state.bucket.whole(now)
    if now < state.down_until:
        return Admission(0, state.down_until, "down")
    if now < state.suspended_until:
        return Admission(0, state.suspended_until, "suspended")
    room = state.concurrency - in_flight
    if room <= 0:
        return Admission(0, None, "connections")
    if whole is None:
        return Admission(room, None, "ok")
    if whole >= 1:
        return Admission(min(room, whole), None, "ok")
    return Admission(0, now + state.bucket.wait(now), "rate")


def on_attempt(state: SiteThrottle, now: float, count: int = 1) -> None:
    """`count` transactions start now: each takes a token."""
    state.bucket.take(now, count)
    state.attempts.add(now, count)


# --- changes --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One change of a site's limits: what, from and to, and why."""

    site: str
    binding: str
    at: float
    what: Literal["rate", "concurrency", "suspended_until", "down_until"]
    old: float
    new: float
    rule: str  # the adaptive rule's name, "cohort" or "recovery"
    reason: str

    def describe(self) -> str:
        if self.what == "rate":
            values = f"rate {rate_text(self.old)} -> {rate_text(self.new)}"
        elif self.what == "concurrency":
            values = f"connections {self.old:g} -> {self.new:g}"
        else:
            word = "suspended" if self.what == "suspended_until" else "down"
            values = f"{word} for {format_duration(max(self.new - self.at, 0.0))}"
        return f"{values}: {self.reason}"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (an infinite rate is null)."""
        return {
            "site": self.site,
            "binding": self.binding,
            "at": self.at,
            "what": self.what,
            "old": self.old if math.isfinite(self.old) else None,
            "new": self.new if math.isfinite(self.new) else None,
            "rule": self.rule,
            "reason": self.reason,
        }


def _change(
    state: SiteThrottle,
    now: float,
    what: Literal["rate", "concurrency", "suspended_until", "down_until"],
    old: float,
    new: float,
    rule: str,
    reason: str,
) -> Change:
    change = Change(state.site, state.binding, now, what, old, new, rule, reason)
    state.last_change_at = now
    state.last_reason = change.describe()
    return change


# --- the controller -------------------------------------------------------------------


def on_result(
    state: SiteThrottle,
    now: float,
    result: SiteResult,
    adaptive: Sequence[AdaptiveRule] | None = None,
) -> list[Change]:
    """Apply one result; `adaptive` defaults to the MX rule's own adaptive rules
    (the loader already appends the global ones it inherits)."""
    rules = state.rule.adaptive if adaptive is None else adaptive
    changes: list[Change] = []
    state.bucket.refill(now)
    _count(state, now, result)
    if result.kind is Result.CONNECT_FAILED:
        state.connect_failures += 1
        _cohort(state, now, changes)
    else:
        state.connect_failures = 0
        state.probing = False
    if result.kind is not Result.DELIVERED:
        text = result.reply_text or "(no reply)"
        for rule in rules:
            if rule.matches(result.verdict, result.reply_text):
                _trigger(state, now, rule, result, text, changes)
    if _is_positive(result):
        _recover(state, now, result.recipients, changes)
    return changes


def _count(state: SiteThrottle, now: float, result: SiteResult) -> None:
    state.counts[result.kind] += result.recipients
    if result.kind is Result.DELIVERED:
        state.deliveries.add(now, result.recipients)


def _is_positive(result: SiteResult) -> bool:
    if result.kind is Result.DELIVERED:
        return True
    return (
        result.kind in (Result.RETRY, Result.BOUNCE)
        and result.verdict is not None
        and result.verdict.scope == "recipient"
    )


def _cohort(state: SiteThrottle, now: float, changes: list[Change]) -> None:
    rule = state.rule
    if not rule.down_after or now < state.down_until:
        return
    if state.probing:
        why = "the first connection after being down failed too"
    elif state.connect_failures >= rule.down_after:
        why = f"{state.connect_failures} connection failures in a row"
    else:
        return
    state.connect_failures = 0
    state.positives = 0
    state.probing = True
    old_down = state.down_until
    state.down_until = now + rule.down_for
    changes.append(_change(state, now, "down_until", old_down, state.down_until, "cohort", why))
    if state.concurrency > rule.min_connections:
        old = state.concurrency
        state.concurrency = rule.min_connections
        changes.append(
            _change(
                state, now, "concurrency", old, state.concurrency, "cohort",
                "site down: probe with the fewest connections",
            )
        )


def _trigger(
    state: SiteThrottle,
    now: float,
    rule: AdaptiveRule,
    result: SiteResult,
    text: str,
    changes: list[Change],
) -> None:
    if result.started_at < state.fired_at.get(rule.name, _NEVER):
        return  # a reply to a transaction started before this rule last acted
    history = state.history.setdefault(rule.name, deque())
    history.append(now)
    while history and history[0] < now - rule.trigger.window:
        history.popleft()
    if len(history) < rule.trigger.count:
        return
    history.clear()
    state.fired_at[rule.name] = now
    state.positives = 0
    reason = f"{rule.describe()} after {_short(text)}"
    if rule.action == "suspend":
        until = now + rule.duration
        if until > state.suspended_until:
            old = state.suspended_until
            state.suspended_until = until
            changes.append(_change(state, now, "suspended_until", old, until, rule.name, reason))
        return
    state.hold_until = max(state.hold_until, now + rule.duration)
    if rule.action == "halve_concurrency":
        new = max(state.rule.min_connections, state.concurrency // 2)
        if new != state.concurrency:
            old = state.concurrency
            state.concurrency = new
            changes.append(_change(state, now, "concurrency", old, new, rule.name, reason))
        return
    sent = state.attempts.rate(now)
    base = state.rate if sent is None else min(state.rate, sent)
    target = base * rule.factor if rule.factor is not None else (rule.rate or 0.0)
    new_rate = min(max(target, state.rule.min_rate), state.rule.ceiling)
    if math.isfinite(base):
        state.pushback_rate = base
    elif math.isfinite(new_rate):
        state.pushback_rate = new_rate
    if new_rate != state.rate:
        old_rate = state.rate
        state.rate = new_rate
        changes.append(_change(state, now, "rate", old_rate, new_rate, rule.name, reason))


def _recover(state: SiteThrottle, now: float, count: int, changes: list[Change]) -> None:
    if now < state.hold_until or now < state.suspended_until or now < state.down_until:
        state.positives = 0
        return
    rule = state.rule
    if state.rate >= rule.ceiling and state.concurrency >= rule.max_connections:
        state.positives = 0
        return
    state.positives += count
    if state.positives < rule.recover_after:
        return
    batch = state.positives
    state.positives = 0
    reason = f"recovery after {batch} successes"
    if state.rate < rule.ceiling:
        unit = state.pushback_rate if math.isfinite(state.pushback_rate) else state.rate
        new_rate = min(rule.ceiling, state.rate + rule.increase * unit)
        old = state.rate
        state.rate = new_rate
        changes.append(_change(state, now, "rate", old, new_rate, "recovery", reason))
    if state.concurrency < rule.max_connections:
        old_c = state.concurrency
        state.concurrency += 1
        changes.append(
            _change(state, now, "concurrency", old_c, state.concurrency, "recovery", reason)
        )


def _short(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


