"""IP ramp-up: per-ISP daily volume caps for young source bindings (pure).

A new sending IP earns a reputation by sending a little, then more: each
source binding has a first day of use; its age in days (1 on that day) picks
a step of the ramp-up schedule, a daily cap per ISP (the MX rule's name),
scaled per ISP by the rule's ``rampup_scale`` (0: no ramp-up for it). Days are
virtual UTC days: day index ``floor(now / 86400)``, the same days the simulated
ISPs count in. Mail over the cap is not bounced: it waits for the next day
(`RampAdmission.next_day_at`) or for another binding still under its cap.

`VolumeLedger` counts what each (binding, ISP) sent on the current day; it
keeps one day per pair, so it stays as small as bindings x ISPs.

Choosing a binding (`choose_binding`): among the bindings under their cap for
the ISP,
- "spread" (default): the one that has sent least to this ISP today (ties:
  the oldest): every young binding gets its daily allowance used, so it ages
  with real volume, and the old ones carry the rest;
- "oldest": the oldest first (best reputation); young bindings only take the
  overflow, so they warm up only when the old ones are full.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

DAY = 86400.0

Strategy = Literal["spread", "oldest"]


def day_index(now: float) -> int:
    """The virtual UTC day `now` falls in."""
    return math.floor(now / DAY)


def next_day_at(now: float) -> float:
    """When the day after `now`'s starts."""
    return (day_index(now) + 1) * DAY


@dataclass(frozen=True, slots=True)
class Binding:
    """A source address to send from; `first_use` is any time on its first day of sending."""

    name: str
    address: str
    first_use: float

    def age_days(self, now: float) -> int:
        """1 on the first day, 2 on the next, ... (1 before the first day too)."""
        return max(day_index(now) - day_index(self.first_use) + 1, 1)


@dataclass(frozen=True, slots=True)
class RampStep:
    """From day `day` of a binding's age on: at most `cap` messages per ISP per day."""

    day: int
    cap: int | None  # None: unlimited


DEFAULT_STEPS: tuple[RampStep, ...] = (
    RampStep(1, 50),
    RampStep(2, 100),
    RampStep(3, 500),
    RampStep(5, 1000),
    RampStep(7, 5000),
    RampStep(14, 20000),
    RampStep(30, None),
)


@dataclass(frozen=True, slots=True)
class RampUp:
    """The schedule and the per-ISP scale factors (ISP: an MX rule's name)."""

    steps: tuple[RampStep, ...] = DEFAULT_STEPS
    scales: Mapping[str, float] = field(default_factory=dict)
    default_scale: float = 1.0
    strategy: Strategy = "spread"

    def __post_init__(self) -> None:
        if not self.steps:
            raise ValueError("a ramp-up schedule needs at least one step")
        days = [step.day for step in self.steps]
        if days != sorted(set(days)):
            raise ValueError("ramp-up steps must be in increasing day order, each day once")
        if days[0] != 1:
            raise ValueError("the ramp-up schedule must start at day 1")
        for step in self.steps:
            if step.cap is not None and step.cap < 0:
                raise ValueError(f"day {step.day}: a cap must not be negative")
        if self.default_scale < 0 or any(v < 0 for v in self.scales.values()):
            raise ValueError("scales must not be negative")
        if self.strategy not in ("spread", "oldest"):
            raise ValueError(f"unknown strategy {self.strategy!r} (expected spread or oldest)")

    def scale(self, isp: str) -> float:
        return self.scales.get(isp, self.default_scale)

    def cap(self, binding_age_days: int, isp: str) -> int | None:
        """Messages a binding of this age may send to the ISP per day (None: no cap)."""
        scale = self.scale(isp)
        if scale == 0:
            return None
        chosen = self.steps[0]
        for step in self.steps:
            if step.day > binding_age_days:
                break
            chosen = step
        if chosen.cap is None:
            return None
        return max(1, round(chosen.cap * scale)) if chosen.cap else 0


class VolumeLedger:
    """Messages sent today per (binding, ISP); older days are forgotten."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}

    def sent(self, binding: str, isp: str, now: float) -> int:
        day, count = self._counts.get((binding, isp), (-1, 0))
        return count if day == day_index(now) else 0

    def record(self, binding: str, isp: str, now: float, count: int = 1) -> None:
        today = day_index(now)
        day, sent = self._counts.get((binding, isp), (today, 0))
        self._counts[(binding, isp)] = (today, (sent if day == today else 0) + count)

    def restore(self, entries: Iterable[tuple[str, str, int, int]]) -> None:
        """Counts read back after a restart: (binding, isp, day index, count)."""
        for binding, isp, day, count in entries:
            known = self._counts.get((binding, isp))
            if known is None or known[0] < day:
                self._counts[(binding, isp)] = (day, count)
            elif known[0] == day:
                self._counts[(binding, isp)] = (day, known[1] + count)

    def __len__(self) -> int:
        return len(self._counts)


@dataclass(frozen=True, slots=True)
class RampAdmission:
    """Whether one more message may go; `remaining` today (None: no cap); if not
    allowed, `next_day_at` is when the next day (and a new allowance) starts."""

    allowed: bool
    remaining: int | None
    next_day_at: float | None


def admit(
    ramp: RampUp, ledger: VolumeLedger, binding: Binding, isp: str, now: float
) -> RampAdmission:
    """May `binding` send one more message to `isp` today?"""
    cap = ramp.cap(binding.age_days(now), isp)
    if cap is None:
        return RampAdmission(True, None, None)
    remaining = cap - ledger.sent(binding.name, isp, now)
    if remaining > 0:
        return RampAdmission(True, remaining, None)
    return RampAdmission(False, 0, next_day_at(now))


def preference_order(
    ramp: RampUp, ledger: VolumeLedger, bindings: Sequence[Binding], isp: str, now: float
) -> list[Binding]:
    """The bindings in the order the strategy prefers them for `isp` today ("spread": the
    least used today first; "oldest": the oldest first; ties: the oldest)."""
    if ramp.strategy == "oldest":
        return sorted(bindings, key=lambda b: b.first_use)
    return sorted(bindings, key=lambda b: (ledger.sent(b.name, isp, now), b.first_use))


def choose_binding(
    ramp: RampUp,
    ledger: VolumeLedger,
    bindings: Sequence[Binding],
    isp: str,
    now: float,
) -> Binding | None:
    """The binding to send the next message to `isp` from (None: all are over
    their cap today; the mail waits until `next_day_at(now)`)."""
    for binding in preference_order(ramp, ledger, bindings, isp, now):
        if admit(ramp, ledger, binding, isp, now).allowed:
            return binding
    return None
