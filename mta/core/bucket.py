"""Rates over time (pure): the one token bucket and a sliding rate window.

`TokenBucket` paces events: `rate` tokens per second up to `burst`, an infinite
rate meaning unlimited. The MTA's per-site throttle (`mta.core.throttle`) and
the simulated receivers (`mta.sim.rules`) both use it. `RateWindow` measures
events per second over the last minute in one-second slots. Both take `now` as
an argument and read no clock.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

RATE_WINDOW = 60.0  # seconds over which attempt and delivery rates are measured
_EPSILON = 1e-9  # a token short by rounding only is a whole token


@dataclass(slots=True)
class TokenBucket:
    """`rate` tokens per second (inf: unlimited) up to `burst`; `tokens` as of `stamp`."""

    rate: float
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def refill(self, now: float) -> None:
        if now > self.stamp:
            if math.isfinite(self.rate):
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def whole(self, now: float) -> int | None:
        """Whole tokens available now (None: unlimited)."""
        self.refill(now)
        if not math.isfinite(self.rate):
            return None
        return math.floor(self.tokens + _EPSILON)

    def take(self, now: float, count: int = 1) -> None:
        """`count` events happen now, whether or not the bucket held their tokens."""
        self.refill(now)
        if math.isfinite(self.rate):
            self.tokens -= count

    def try_take(self, now: float) -> bool:
        """Take one token if there is one; whether there was."""
        whole = self.whole(now)
        if whole is not None and whole < 1:
            return False
        self.take(now)
        return True

    def wait(self, now: float) -> float:
        """Seconds until one whole token is there (0: now)."""
        self.refill(now)
        if not math.isfinite(self.rate) or self.tokens + _EPSILON >= 1.0:
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def retune(self, rate: float, burst: float) -> None:
        """A new rate and size; tokens above the new size are lost."""
        self.rate = rate
        self.burst = burst
        self.tokens = min(self.tokens, burst)


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

    def rate(self, now: float) -> float | None:
        """Events per second since the oldest event in the window (at least one second)."""
        self._prune(now)
        if not self.slots:
            return None
        span = max(now - self.slots[0][2], 1.0)
        return sum(slot[1] for slot in self.slots) / span
