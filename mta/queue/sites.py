"""The scheduler's memory of sites and domains, and the rows of `mta queue sites`.

A `Site` is the set of domains that share MX hosts (one provider), with one
throttle state per source binding (`mta.core.throttle`); a `DomainWork` is
what the scheduler knows of one domain's queue (when its next recipient is
due, how many are queued, its site). `report` turns them into one row per site
and binding for the admin API.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mta.core import site_report, throttle
from mta.core.limits import MxRule
from mta.core.throttle import Change, SiteThrottle
from mta.model import Result

CHANGES_KEPT = 20


@dataclass
class Site:
    """Domains that share MX hosts, with one throttle state per source binding."""

    key: str
    hosts: tuple[str, ...]
    rule: MxRule
    states: dict[str, SiteThrottle] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    domains: set[str] = field(default_factory=set)
    changes: deque[Change] = field(default_factory=lambda: deque(maxlen=CHANGES_KEPT))
    first_attempt_at: dict[str, float] = field(default_factory=dict)  # per binding
    last_delivery_at: dict[str, float] = field(default_factory=dict)

    def state(self, binding: str, now: float) -> SiteThrottle:
        found = self.states.get(binding)
        if found is None:
            found = self.states[binding] = throttle.new_state(self.key, binding, self.rule, now)
        return found


@dataclass
class DomainWork:
    """What the scheduler knows of one domain's queue."""

    name: str
    next_due: float | None = None  # earliest unleased next attempt (None: nothing waiting)
    queued: int = 0  # recipients not yet final, in flight included
    site: Site | None = None
    resolving: bool = False
    resolved_at: float = -math.inf  # monotonic
    # Virtual time before which its site admits nothing (+inf: until one of the site's
    # transactions ends, which resets it).
    not_before: float = -math.inf


def report(
    sites: Mapping[str, Site], domains: Mapping[str, DomainWork], now: float
) -> list[dict[str, Any]]:
    """Per site and binding: queue depth, limits, state, last change, throughput."""
    rows: list[dict[str, Any]] = []
    for site in sorted(sites.values(), key=lambda s: s.key):
        queued = sum(domains[d].queued for d in site.domains if d in domains)
        states = site.states or {"-": throttle.new_state(site.key, "-", site.rule, now)}
        for binding, state in sorted(states.items()):
            row = site_report.status(state, now).as_dict()
            first = site.first_attempt_at.get(binding)
            last = site.last_delivery_at.get(binding)
            span = (last - first) if first is not None and last is not None else 0.0
            row.update(
                average_rate=state.counts[Result.DELIVERED] / span if span > 0 else None,
                site=site.key,
                binding=binding,
                hosts=list(site.hosts),
                domains=sorted(site.domains),
                queued=queued,
                in_flight=site.in_flight.get(binding, 0),
                changes=[c.as_dict() for c in site.changes if c.binding == binding],
            )
            rows.append(row)
    return rows
