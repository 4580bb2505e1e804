"""A site's throttle state for people (pure): one line of `mta queue sites`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from mta.core.throttle import SiteThrottle
from mta.model import Result

SiteState = Literal["ok", "slowed", "suspended", "down"]


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
    effective_rate: float  # deliveries per second over the last minute (RATE_WINDOW)

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
        delivered=state.counts[Result.DELIVERED],
        deferred=state.counts[Result.RETRY],
        throttled=state.counts[Result.THROTTLED],
        bounced=state.counts[Result.BOUNCE],
        connect_failed=state.counts[Result.CONNECT_FAILED],
        effective_rate=state.deliveries.rate(now) or 0.0,
    )
