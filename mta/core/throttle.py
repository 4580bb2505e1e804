"""Per-site, per-binding delivery limits that learn from the replies (pure).

The data (`MxRule`, `AdaptiveRule`, `MxRules`) says what a site may take:
connections, messages per connection, a message rate, and the range the
controller may move them in. The state (`SiteThrottle`, one per site and
source binding) is a token bucket plus what the controller learned. The
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

A positive result is a delivery or a reply about one recipient (unknown user,
mailbox full): the server took the transaction. Throttling replies are results
of the site, not failures of a recipient: `mta.core.retry` puts such recipients
back without using an attempt.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mta.core.durations import format_duration, parse_duration
from mta.model import Condition, Outcome, Phase, Verdict

Action = Literal["suspend", "set_rate", "halve_concurrency"]
ResultKind = Literal["delivered", "throttled", "deferred", "bounced", "connect_failed"]
SiteState = Literal["ok", "slowed", "suspended", "down"]

THROTTLE_PREFIX = "throttle-"  # bounce rules with this name prefix are throttling replies
RATE_WINDOW = 60.0  # seconds over which attempt and delivery rates are measured
_NEVER = -math.inf
_SESSION_PHASES = frozenset({Phase.CONNECT, Phase.EHLO, Phase.STARTTLS})
_CONNECT_FAILURES = frozenset(
    {Condition.CONNECTION_REFUSED, Condition.TIMEOUT, Condition.CONNECTION_LOST}
)


# --- data ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trigger:
    """`count` matches within `window` seconds; (1, 0) is "immediate"."""

    count: int = 1
    window: float = 0.0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError("a trigger needs a count of at least 1")
        if self.window < 0 or (self.count > 1 and self.window <= 0):
            raise ValueError("a trigger of more than one match needs a window")

    @property
    def immediate(self) -> bool:
        return self.count == 1

    def __str__(self) -> str:
        if self.immediate:
            return "immediate"
        return f"{self.count}/{format_duration(self.window)}"


_TRIGGER = re.compile(r"^\s*(\d+)\s*/\s*(.+?)\s*$")


def parse_trigger(text: str) -> Trigger:
    """"immediate" or "N/DURATION" ("3/5m": three matches within five minutes)."""
    if text.strip().lower() == "immediate":
        return Trigger()
    match = _TRIGGER.match(text)
    if not match:
        raise ValueError(f"bad trigger {text!r} (expected 'immediate' or N/DURATION like '3/5m')")
    count = int(match.group(1))
    span = match.group(2)
    window = parse_duration(f"1{span}" if span[0].isalpha() else span)
    return Trigger(count, window)


@dataclass(frozen=True, slots=True)
class AdaptiveRule:
    """When replies match (every given matcher must), and what to do when triggered."""

    name: str
    action: Action
    trigger: Trigger = Trigger()
    duration: float = 0.0  # suspend: how long; set_rate/halve: hold (no recovery) this long
    rule: re.Pattern[str] | None = None  # searched in Verdict.rule
    classes: frozenset[int] | None = None  # Momentum bounce classes
    match: re.Pattern[str] | None = None  # searched in the reply text ("421 4.7.0 ...")
    rate: float | None = None  # set_rate: messages per second
    factor: float | None = None  # set_rate: x the current rate
    where: str = ""  # "file: adaptive 2 'name'" for messages

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an adaptive rule needs a name")
        if self.rule is None and self.classes is None and self.match is None:
            raise ValueError("an adaptive rule needs rule, classes or match")
        if self.duration < 0:
            raise ValueError("duration must not be negative")
        if self.action == "suspend" and self.duration <= 0:
            raise ValueError("suspend needs a duration")
        if self.action == "set_rate":
            if (self.rate is None) == (self.factor is None):
                raise ValueError("set_rate needs either rate or factor")
            if self.rate is not None and self.rate <= 0:
                raise ValueError("rate must be more than 0")
            if self.factor is not None and not 0 < self.factor <= 10:
                raise ValueError("factor must be more than 0 and at most 10")
        elif self.rate is not None or self.factor is not None:
            raise ValueError(f"rate and factor belong to set_rate, not {self.action}")

    def matches(self, verdict: Verdict | None, reply_text: str) -> bool:
        if self.rule is not None and (verdict is None or not self.rule.search(verdict.rule)):
            return False
        if self.classes is not None and (
            verdict is None or verdict.bounce_class.code not in self.classes
        ):
            return False
        return self.match is None or self.match.search(reply_text) is not None

    def describe(self) -> str:
        what: str = self.action
        if self.action == "set_rate":
            what = f"rate x{self.factor:g}" if self.factor is not None else (
                f"rate {_rate_text(self.rate or 0.0)}"
            )
        elif self.action == "halve_concurrency":
            what = "halve connections"
        if self.duration:
            verb = "for" if self.action == "suspend" else "hold"
            what += f" {verb} {format_duration(self.duration)}"
        return f"{self.name} ({self.trigger}: {what})"


@dataclass(frozen=True, slots=True)
class MxRule:
    """Limits for the sites whose MX hosts match `patterns` (shell globs, lower case).

    `rate` is messages per second (0: unlimited) and where the controller starts
    and recovers to; it moves between `min_rate` and `max_rate` (0: `rate`).
    `burst` is the token bucket's size (0: one second's worth, at least 1).
    """

    name: str
    patterns: tuple[str, ...] = ()
    max_connections: int = 20
    min_connections: int = 1
    max_messages_per_connection: int = 100
    rate: float = 0.0
    min_rate: float = 1 / 60
    max_rate: float = 0.0
    burst: float = 0.0
    recover_after: int = 10
    increase: float = 0.05
    down_after: int = 5  # consecutive connection failures that mark the site down (0: never)
    down_for: float = 300.0
    rampup_scale: float = 1.0  # x the ramp-up caps for this ISP (0: no ramp-up)
    adaptive: tuple[AdaptiveRule, ...] = ()
    where: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an MX rule needs a name")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not 1 <= self.min_connections <= self.max_connections:
            raise ValueError("min_connections must be between 1 and max_connections")
        if self.max_messages_per_connection < 1:
            raise ValueError("max_messages_per_connection must be at least 1")
        for name in ("rate", "max_rate", "burst", "down_for", "rampup_scale"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.min_rate <= 0:
            raise ValueError("min_rate must be more than 0")
        if self.rate and self.min_rate > self.rate:
            raise ValueError("min_rate must not be above rate")
        if self.max_rate and self.max_rate < self.start_rate:
            raise ValueError("max_rate must not be below rate")
        if self.recover_after < 1:
            raise ValueError("recover_after must be at least 1")
        if not 0 < self.increase <= 1:
            raise ValueError("increase must be more than 0 and at most 1")
        if self.down_after < 0:
            raise ValueError("down_after must not be negative")

    @property
    def start_rate(self) -> float:
        """The configured rate in messages/s (inf: unlimited)."""
        return self.rate if self.rate > 0 else math.inf

    @property
    def ceiling(self) -> float:
        """The highest rate the controller may reach (inf: unlimited)."""
        return self.max_rate if self.max_rate > 0 else self.start_rate

    def matches_host(self, host: str) -> bool:
        name = host.rstrip(".").lower()
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.patterns)


@dataclass(frozen=True, slots=True)
class MxRules:
    """Named rules in order (first match wins) and the default for every other site."""

    rules: tuple[MxRule, ...]
    default: MxRule
    _cache: dict[tuple[str, ...], MxRule] = field(default_factory=dict, compare=False, repr=False)

    def match(self, mx_hosts: Sequence[str]) -> MxRule:
        """The first rule with a pattern matching any of the site's MX hosts."""
        key = tuple(mx_hosts)
        found = self._cache.get(key)
        if found is None:
            found = next(
                (r for r in self.rules if any(r.matches_host(h) for h in mx_hosts)), self.default
            )
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[key] = found
        return found

    def by_name(self, name: str) -> MxRule:
        for rule in (*self.rules, self.default):
            if rule.name == name:
                return rule
        raise KeyError(name)


# --- results --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    """What one transaction (or one recipient of it) came to.

    `started_at` is when the transaction started (the time given to
    `on_attempt`); `recipients` is how many recipients share this result.
    """

    kind: ResultKind
    started_at: float
    verdict: Verdict | None = None
    reply_text: str = ""
    recipients: int = 1


def is_throttle(verdict: Verdict | None) -> bool:
    """A reply asking us to slow down (the bounce rules name them "throttle-...")."""
    return verdict is not None and verdict.rule.startswith(THROTTLE_PREFIX)


def result_of(outcome: Outcome, verdict: Verdict | None, started_at: float) -> Result:
    """The result for one outcome (and its verdict; None when it was delivered)."""
    text = str(outcome.reply)
    if outcome.phase is Phase.DOT and outcome.reply.is_success:
        return Result("delivered", started_at, None, text)
    if outcome.condition in _CONNECT_FAILURES and outcome.phase in _SESSION_PHASES:
        return Result("connect_failed", started_at, verdict, text)
    if is_throttle(verdict):
        return Result("throttled", started_at, verdict, text)
    if verdict is not None and verdict.permanent:
        return Result("bounced", started_at, verdict, text)
    return Result("deferred", started_at, verdict, text)


def job_results(
    pairs: Iterable[tuple[Outcome, Verdict | None]], started_at: float
) -> list[Result]:
    """Results for one delivery job: one per recipient, except that a failure of the
    session itself (connect, greeting, EHLO, STARTTLS: every recipient shares it) is
    one result for all, so a refused connection counts once for the cohort rule."""
    items = list(pairs)
    if not items:
        return []
    first = items[0][0]
    if first.phase in _SESSION_PHASES and all(o == first for o, _ in items):
        result = result_of(first, items[0][1], started_at)
        return [
            Result(result.kind, started_at, result.verdict, result.reply_text, len(items))
        ]
    return [result_of(outcome, verdict, started_at) for outcome, verdict in items]


# --- state ----------------------------------------------------------------------------


@dataclass(slots=True)
class RateWindow:
    """Events per second over the last `window` seconds, in one-second slots."""

    window: float = RATE_WINDOW
    slots: deque[list[float]] = field(default_factory=deque)  # [second, count, first time]

    def add(self, now: float, count: int = 1) -> None:
        second = math.floor(now)
        if self.slots and self.slots[-1][0] == second:
            self.slots[-1][1] += count
        else:
            self.slots.append([second, count, now])
        self._prune(now)

    def _prune(self, now: float) -> None:
        limit = now - self.window
        while self.slots and self.slots[0][0] + 1 <= limit:
            self.slots.popleft()

    def total(self, now: float) -> int:
        self._prune(now)
        return int(sum(slot[1] for slot in self.slots))

    def rate(self, now: float) -> float | None:
        """Events per second since the oldest event in the window (at least one second)."""
        self._prune(now)
        if not self.slots:
            return None
        span = max(now - self.slots[0][2], 1.0)
        return sum(slot[1] for slot in self.slots) / span


@dataclass(slots=True)
class SiteThrottle:
    """What the controller knows about one (site, binding); see the module docstring."""

    site: str
    binding: str
    rule: MxRule
    rate: float  # messages per second now (inf: unlimited)
    concurrency: int  # connections allowed now
    tokens: float
    refilled_at: float
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
    delivered: int = 0
    deferred: int = 0
    throttled: int = 0
    bounced: int = 0
    connect_failed: int = 0
    attempts: RateWindow = field(default_factory=RateWindow)
    deliveries: RateWindow = field(default_factory=RateWindow)


def new_state(site: str, binding: str, rule: MxRule, now: float) -> SiteThrottle:
    """A site seen for the first time: the rule's configured limits, a full bucket."""
    state = SiteThrottle(site, binding, rule, rule.start_rate, rule.max_connections, 0.0, now)
    state.tokens = _bucket_size(state)
    return state


def _bucket_size(state: SiteThrottle) -> float:
    if state.rule.burst > 0:
        return state.rule.burst
    return max(1.0, state.rate)  # one second's worth


def _refill(state: SiteThrottle, now: float) -> None:
    if now > state.refilled_at:
        if math.isfinite(state.rate):
            gained = (now - state.refilled_at) * state.rate
            state.tokens = min(_bucket_size(state), state.tokens + gained)
        state.refilled_at = now


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
    _refill(state, now)
    if now < state.down_until:
        return Admission(0, state.down_until, "down")
    if now < state.suspended_until:
        return Admission(0, state.suspended_until, "suspended")
    room = state.concurrency - in_flight
    if room <= 0:
        return Admission(0, None, "connections")
    if not math.isfinite(state.rate):
        return Admission(room, None, "ok")
    whole = math.floor(state.tokens + 1e-9)
    if whole >= 1:
        return Admission(min(room, whole), None, "ok")
    wait = (1.0 - state.tokens) / state.rate
    return Admission(0, now + wait, "rate")


def on_attempt(state: SiteThrottle, now: float, count: int = 1) -> None:
    """`count` transactions start now: each takes a token."""
    _refill(state, now)
    if math.isfinite(state.rate):
        state.tokens -= count
    state.attempts.add(now, count)


def retune(state: SiteThrottle, rule: MxRule, now: float) -> None:
    """Give the state a new rule (the config changed): limits are clamped into its ranges."""
    _refill(state, now)
    state.rule = rule
    state.rate = min(max(state.rate, rule.min_rate), rule.ceiling)
    state.concurrency = min(max(state.concurrency, rule.min_connections), rule.max_connections)
    state.tokens = min(state.tokens, _bucket_size(state))


def forgettable(state: SiteThrottle, now: float) -> bool:
    """True when the state holds nothing a new one would not (at its configured limits,
    not suspended, not down, no trigger history): the caller may drop an idle site's
    state to bound memory (its counters go with it)."""
    rule = state.rule
    return (
        state.rate >= rule.start_rate
        and state.concurrency >= rule.max_connections
        and now >= state.suspended_until
        and now >= state.down_until
        and now >= state.hold_until
        and state.connect_failures == 0
        and not state.probing
        and not any(state.history.values())
    )


def resume_at(state: SiteThrottle, now: float) -> float:
    """The earliest time the site admits a transaction again (ignoring connections)."""
    _refill(state, now)
    at = max(now, state.down_until, state.suspended_until)
    if math.isfinite(state.rate) and state.tokens < 1.0:
        at = max(at, now + (1.0 - state.tokens) / state.rate)
    return at


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
            values = f"rate {_rate_text(self.old)} -> {_rate_text(self.new)}"
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


def _rate_text(rate: float) -> str:
    if not math.isfinite(rate):
        return "unlimited"
    if rate >= 1:
        return f"{rate:.3g}/s"
    if rate * 60 >= 1:
        return f"{rate * 60:.3g}/m"
    return f"{rate * 3600:.3g}/h"


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


def effective_rules(
    own: Sequence[AdaptiveRule], global_rules: Sequence[AdaptiveRule]
) -> tuple[AdaptiveRule, ...]:
    """An MX rule's own adaptive rules, then the global ones it does not replace by name."""
    names = {a.name for a in own}
    return (*own, *(a for a in global_rules if a.name not in names))


def on_result(
    state: SiteThrottle,
    now: float,
    result: Result,
    adaptive: Sequence[AdaptiveRule] | None = None,
) -> list[Change]:
    """Apply one result; `adaptive` defaults to the MX rule's own adaptive rules
    (the loader already appends the global ones it inherits)."""
    rules = state.rule.adaptive if adaptive is None else adaptive
    changes: list[Change] = []
    _refill(state, now)
    _count(state, now, result)
    if result.kind == "connect_failed":
        state.connect_failures += 1
        _cohort(state, now, changes)
    else:
        state.connect_failures = 0
        state.probing = False
    if result.kind != "delivered":
        text = result.reply_text or "(no reply)"
        for rule in rules:
            if rule.matches(result.verdict, result.reply_text):
                _trigger(state, now, rule, result, text, changes)
    if _is_positive(result):
        _recover(state, now, result.recipients, changes)
    return changes


def _count(state: SiteThrottle, now: float, result: Result) -> None:
    n = result.recipients
    if result.kind == "delivered":
        state.delivered += n
        state.deliveries.add(now, n)
    elif result.kind == "throttled":
        state.throttled += n
    elif result.kind == "bounced":
        state.bounced += n
    elif result.kind == "connect_failed":
        state.connect_failed += n
    else:
        state.deferred += n


def _is_positive(result: Result) -> bool:
    if result.kind == "delivered":
        return True
    return (
        result.kind in ("deferred", "bounced")
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
    result: Result,
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
        state.tokens = min(state.tokens, _bucket_size(state))
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


# --- reporting ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SiteStatus:
    """One line of `mta queue sites` (without the queue depth, which the spool knows)."""

    site: str
    binding: str
    rule: str
    state: SiteState
    rate: float
    configured_rate: float
    concurrency: int
    max_connections: int
    until: float | None  # end of a suspension or of "down"
    last_change_at: float | None
    last_reason: str
    delivered: int
    deferred: int
    throttled: int
    bounced: int
    connect_failed: int
    effective_rate: float  # deliveries per second over the last RATE_WINDOW seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "binding": self.binding,
            "rule": self.rule,
            "state": self.state,
            "rate": self.rate if math.isfinite(self.rate) else None,
            "configured_rate": (
                self.configured_rate if math.isfinite(self.configured_rate) else None
            ),
            "concurrency": self.concurrency,
            "max_connections": self.max_connections,
            "until": self.until,
            "last_change_at": self.last_change_at,
            "last_reason": self.last_reason,
            "delivered": self.delivered,
            "deferred": self.deferred,
            "throttled": self.throttled,
            "bounced": self.bounced,
            "connect_failed": self.connect_failed,
            "effective_rate": self.effective_rate,
        }


def status(state: SiteThrottle, now: float) -> SiteStatus:
    """The state of a site for display."""
    rule = state.rule
    until: float | None = None
    label: SiteState
    if now < state.down_until:
        label, until = "down", state.down_until
    elif now < state.suspended_until:
        label, until = "suspended", state.suspended_until
    elif state.rate < rule.start_rate or state.concurrency < rule.max_connections:
        label = "slowed"
    else:
        label = "ok"
    return SiteStatus(
        site=state.site,
        binding=state.binding,
        rule=rule.name,
        state=label,
        rate=state.rate,
        configured_rate=rule.start_rate,
        concurrency=state.concurrency,
        max_connections=rule.max_connections,
        until=until,
        last_change_at=state.last_change_at,
        last_reason=state.last_reason,
        delivered=state.delivered,
        deferred=state.deferred,
        throttled=state.throttled,
        bounced=state.bounced,
        connect_failed=state.connect_failed,
        effective_rate=state.deliveries.rate(now) or 0.0,
    )


def rate_text(rate: float) -> str:
    """A rate for people: "1.67/s", "100/m", "12/h", "unlimited"."""
    return _rate_text(rate)
