"""The one source of "now" for a process: real, scaled (faster than real time) or manual.

Times are virtual Unix seconds. A `ScaledClock` maps wall time to virtual time
through an anchor (real, virtual, scale), so two processes given the same
anchor (the MTA and the simulated internet) agree on the time without talking
to each other. Network timeouts stay in real seconds; schedules (retries,
validity, throttling windows, greylisting) are virtual.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass


class Clock(ABC):
    """What the rest of the code may ask of time."""

    scale: float = 1.0

    @abstractmethod
    def now(self) -> float:
        """Virtual Unix time in seconds."""

    @abstractmethod
    async def sleep_until(self, when: float) -> None:
        """Return once `now() >= when` (at once if it already is)."""

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.now() + seconds)

    def real_seconds(self, virtual_seconds: float) -> float:
        """How long a virtual span lasts in real seconds."""
        return virtual_seconds / self.scale

    @property
    def is_real(self) -> bool:
        """True when now() is the wall clock (what other hosts believe the time is)."""
        return False


@dataclass(frozen=True, slots=True)
class Anchor:
    """Real time `real` corresponds to virtual time `virtual`; virtual runs `scale` times faster."""

    real: float
    virtual: float
    scale: float

    def encode(self) -> str:
        return f"{self.real!r}:{self.virtual!r}:{self.scale!r}"

    @classmethod
    def decode(cls, text: str) -> Anchor:
        try:
            real, virtual, scale = (float(part) for part in text.split(":"))
        except ValueError:
            raise ValueError(
                f"not a clock anchor: {text!r} (expected REAL:VIRTUAL:SCALE)"
            ) from None
        if scale <= 0:
            raise ValueError(f"clock scale must be positive: {text!r}")
        return cls(real, virtual, scale)


class ScaledClock(Clock):
    """Wall time, optionally sped up; scale 1 is the real clock."""

    def __init__(self, scale: float = 1.0, anchor: Anchor | None = None) -> None:
        if anchor is None:
            if scale <= 0:
                raise ValueError("time scale must be positive")
            wall = time.time()
            anchor = Anchor(real=wall, virtual=wall, scale=scale)
        self.anchor = anchor
        self.scale = anchor.scale

    def now(self) -> float:
        anchor = self.anchor
        return anchor.virtual + (time.time() - anchor.real) * anchor.scale

    @property
    def is_real(self) -> bool:
        return self.anchor.scale == 1.0 and self.anchor.real == self.anchor.virtual

    async def sleep_until(self, when: float) -> None:
        while True:
            remaining = when - self.now()
            if remaining <= 0:
                return
            await asyncio.sleep(remaining / self.scale)


def RealClock() -> ScaledClock:
    return ScaledClock(1.0)


class ManualClock(Clock):
    """A clock that moves only when a test says so; sleepers wake when their time is reached."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, when: float) -> None:
        if when <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (when, next(self._counter), future))
        await future

    def advance(self, seconds: float) -> None:
        self.set(self._now + seconds)

    def set(self, when: float) -> None:
        if when < self._now:
            raise ValueError("a manual clock does not go backwards")
        self._now = when
        while self._sleepers and self._sleepers[0][0] <= when:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)


def make_clock(time_scale: float = 1.0, anchor: str | None = None) -> Clock:
    """The clock a command line asks for: an explicit shared anchor wins over a scale."""
    if anchor:
        return ScaledClock(anchor=Anchor.decode(anchor))
    return ScaledClock(time_scale)
