"""The seam between the scheduler and the limits every node of a cluster shares.

The scheduler keeps, per (site, binding), a pure throttle state (`mta.core.throttle`)
and counts its transactions in flight. What the receiving ISP sees as one sender must
hold across nodes: the token bucket, the connection count, the adaptive level and
suspensions, the ramp-up volume per binding and ISP. `SharedState` is what the
scheduler asks about those, once per admission and once per change:

- `grant(key, state, want, in_flight, now)`: how many of `want` transactions the
  shared buckets and connection leases allow now (from what the node holds locally:
  no round trip), and if none, when to ask again (None: `on_wake` will say);
- `started` / `ended`: a transaction took a token and a connection lease / gave the
  lease back to the node;
- `adopt(key, state, now)`: bring the shared adaptive state (rate, connections,
  suspension, cohort "down") into the local one; the `Change`s it made are returned
  for the log;
- `publish(key, state, now, op)`: the local controller changed the state: share it
  (`op`, from `mta.core.shares.rate_op`, says how its rate change joins the shared
  level: one cut per congestion episode, additive steps that add up);
- `connection_limit(key, state)`: the most connections the node's pool may keep open
  for the key now;
- `ledger`: the ramp-up volume per binding, ISP and virtual day.

`LocalState` is one node alone, today's behaviour: the throttle state is the whole
truth, the ledger is the node's own. `mta.queue.cluster.RedisState` shares it all
through Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from mta.core.rampup import VolumeLedger
from mta.core.shares import RateOp
from mta.core.throttle import Change, SiteThrottle


@dataclass(frozen=True, slots=True)
class Key:
    """A (site, binding): the unit of every shared limit."""

    site: str
    binding: str


@dataclass(frozen=True, slots=True)
class Grant:
    """How many transactions may start now; if none, when to ask again (None: the
    shared state calls `on_wake(site)` once it knows more)."""

    allowed: int
    retry_at: float | None = None


class SharedState(Protocol):
    node: str  # "" for a node alone
    on_wake: Callable[[str], None]
    trim: Callable[[Key, int], Any]  # async: close idle pooled connections down to a count
    connections: Callable[[Key], int]  # the pool's connections open for the key now

    @property
    def ledger(self) -> VolumeLedger: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def grant(self, key: Key, state: SiteThrottle, want: int, in_flight: int, now: float) -> Grant:
        ...

    def started(self, key: Key, count: int, now: float) -> None: ...

    def ended(self, key: Key) -> None: ...

    def adopt(self, key: Key, state: SiteThrottle, now: float) -> list[Change]: ...

    def publish(self, key: Key, state: SiteThrottle, now: float, op: RateOp) -> None: ...

    def connection_limit(self, key: Key, state: SiteThrottle) -> int: ...

    def report(self, key: Key) -> dict[str, Any] | None: ...

    def health(self) -> dict[str, Any]: ...


def _no_wake(site: str) -> None:
    return None


async def _no_trim(key: Key, count: int) -> None:
    return None


def _no_connections(key: Key) -> int:
    return 0


class LocalState:
    """A node alone: every limit is the node's own (the throttle state decides)."""

    def __init__(self) -> None:
        self.node = ""
        self.ledger = VolumeLedger()
        self.on_wake: Callable[[str], None] = _no_wake
        self.trim: Callable[[Key, int], Any] = _no_trim
        self.connections: Callable[[Key], int] = _no_connections

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def grant(self, key: Key, state: SiteThrottle, want: int, in_flight: int, now: float) -> Grant:
        return Grant(want)

    def started(self, key: Key, count: int, now: float) -> None:
        return None

    def ended(self, key: Key) -> None:
        return None

    def adopt(self, key: Key, state: SiteThrottle, now: float) -> list[Change]:
        return []

    def publish(self, key: Key, state: SiteThrottle, now: float, op: RateOp) -> None:
        return None

    def connection_limit(self, key: Key, state: SiteThrottle) -> int:
        return state.concurrency

    def report(self, key: Key) -> dict[str, Any] | None:
        return None

    def health(self) -> dict[str, Any]:
        return {"mode": "local"}
