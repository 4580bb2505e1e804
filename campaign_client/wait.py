"""Waiting on the delivery log: `wait_for(log, delivery_id, 'final' | predicate, timeout)`.

Polls the log (which another process may be writing) every `interval` seconds, in a worker
thread, until the predicate holds for the delivery's `Kpis` or `timeout` passes; then returns
the KPIs or raises `WaitTimeout` carrying the last KPIs (so callers can say how many recipients
were not final). Bounded: at most timeout / interval + 1 polls.

`watch_idle(log, delivery_id, after, say, stop)` runs beside it: each time no event has been
applied to the log for another `after` seconds, it calls `say(idle_seconds, kpis)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Literal

from campaign_client.indicators import Kpis
from campaign_client.log import DeliveryLog

Predicate = Callable[[Kpis], bool]


class WaitTimeout(TimeoutError):
    """The predicate did not hold in time; `kpis` is the last state seen."""

    def __init__(self, kpis: Kpis, timeout: float) -> None:
        super().__init__(
            f"after {timeout:g}s, {kpis.not_final} of {kpis.total} recipients of delivery "
            f"{kpis.delivery_id} are not final"
        )
        self.kpis = kpis
        self.timeout = timeout


def is_final(kpis: Kpis) -> bool:
    return kpis.final


async def wait_for(
    log: DeliveryLog,
    delivery_id: str,
    until: Predicate | Literal["final"] = "final",
    timeout: float = 60.0,
    *,
    interval: float = 0.05,
    on_poll: Callable[[Kpis], None] | None = None,
) -> Kpis:
    """Wait until `until(kpis)` holds ('final': every recipient Sent or Failed)."""
    if until == "final":
        predicate: Predicate = is_final
    elif callable(until):
        predicate = until
    else:
        raise ValueError(f"wait_for: until must be 'final' or a predicate, got {until!r}")
    deadline = time.monotonic() + timeout
    polls = int(timeout / interval) + 2
    kpis = await asyncio.to_thread(log.kpis, delivery_id)
    for _ in range(polls):
        if on_poll is not None:
            on_poll(kpis)
        if predicate(kpis):
            return kpis
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        await asyncio.sleep(min(interval, remaining))
        kpis = await asyncio.to_thread(log.kpis, delivery_id)
    if predicate(kpis):
        return kpis
    raise WaitTimeout(kpis, timeout)


async def watch_idle(
    log: DeliveryLog,
    delivery_id: str,
    after: float,
    say: Callable[[float, Kpis], None],
    stop: asyncio.Event,
) -> None:
    """Call `say` after `after`, 2 x `after`... seconds without a new event, until `stop`."""
    if after <= 0:
        raise ValueError("watch_idle: after must be > 0 seconds")
    marker = await asyncio.to_thread(log.progress)
    changed = time.monotonic()
    next_notice = after
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(1.0, after / 4))
        if stop.is_set():
            return
        current = await asyncio.to_thread(log.progress)
        now = time.monotonic()
        if current != marker:
            marker, changed, next_notice = current, now, after
            continue
        idle = now - changed
        if idle >= next_notice:
            kpis = await asyncio.to_thread(log.kpis, delivery_id)
            if kpis.final:
                return
            say(idle, kpis)
            next_notice += after
