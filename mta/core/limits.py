"""What a site may take (pure data): MX rules, adaptive rules and their triggers.

An `MxRule` gives the limits for the sites whose MX hosts match its patterns:
connections, messages per connection, a message rate and the range the
controller (`mta.core.throttle`) may move them in, and the `AdaptiveRule`s that
say which replies make it act. `MxRules` finds the rule of a site (first match
wins). The classes check their own values and raise ValueError; the loader
(`mta.config.mx_rules`) adds the file and key to the message.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from mta.core.durations import format_duration, parse_duration, rate_text
from mta.model import Verdict

Action = Literal["suspend", "set_rate", "halve_concurrency"]



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
    throttle: bool | None = None  # the verdict is (True) or is not (False) a throttling reply
    rate: float | None = None  # set_rate: messages per second
    factor: float | None = None  # set_rate: x the current rate
    where: str = ""  # "file: adaptive 2 'name'" for messages

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("an adaptive rule needs a name")
        if all(m is None for m in (self.rule, self.classes, self.match, self.throttle)):
            raise ValueError("an adaptive rule needs rule, classes, match or throttle")
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
        throttling = verdict is not None and verdict.throttle
        if self.throttle is not None and throttling != self.throttle:
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
                f"rate {rate_text(self.rate or 0.0)}"
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


def effective_rules(
    own: Sequence[AdaptiveRule], global_rules: Sequence[AdaptiveRule]
) -> tuple[AdaptiveRule, ...]:
    """An MX rule's own adaptive rules, then the global ones it does not replace by name."""
    names = {a.name for a in own}
    return (*own, *(a for a in global_rules if a.name not in names))
