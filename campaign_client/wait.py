"""Waiting on the delivery log: `wait_for(log, delivery_id, 'final' | predicate, timeout)`.

Polls the log (which another process may be writing) every `interval` seconds, in a worker
thread, until the predicate holds for the delivery's `Kpis` or `timeout` passes; then returns
the KPIs or raises `WaitTimeout` carrying the last KPIs (so callers can say how many recipients
were not final). Bounded: at most timeout / interval + 1 polls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

from campaign_client.kpis import Kpis
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
