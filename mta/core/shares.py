"""Arithmetic of limits shared by several nodes (pure).

GCRA (the generic cell rate algorithm, as in ATM and redis-cell): a bucket is one
number, the theoretical arrival time `tat`; with emission interval T = 1/rate and
room for `burst` cells, n cells may go at `now` when max(tat, now) + n*T - now <=
burst*T, and then tat becomes max(tat, now) + n*T. The same step runs as a Lua
script in Redis (`mta.queue.cluster`) and, for a node cut off from Redis, here.

Grants come in batches (`reservation`): a node asks for its part of what the bucket
holds and of the cells that conform within a horizon, each reserved cell to be used at
its due time (`due_times`), so a site costs one round trip per batch, not per message,
even one so slow that its bucket holds a single cell. When Redis is out of reach a
node keeps to a conservative share of each limit: the limit divided by the nodes it
last saw alive (`fallback_share`, `fallback_connections`).

The adaptive rate is one level for the whole cluster, and a node's controller moves
it by operations, not values (`rate_op`): a multiplicative cut names the rule and when
the transaction that drew it started, so that Redis applies only the first cut of a
congestion episode, however many nodes saw it (TCP cuts once per window); an additive
step adds to the shared level, so N nodes' steps add up as one node's would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mta.core.throttle import Change


@dataclass(frozen=True, slots=True)
class GcraStep:
    """`granted` cells now; the bucket's new `tat`; if fewer than asked, `retry_at`:
    when the next cell is due."""

    granted: int
    tat: float
    retry_at: float | None


def gcra(tat: float, now: float, rate: float, burst: float, want: int) -> GcraStep:
    """Take up to `want` cells from a bucket of `rate` per second holding `burst`."""
    if want <= 0:
        return GcraStep(0, tat, None)
    if not math.isfinite(rate):
        return GcraStep(want, tat, None)
    interval = 1.0 / rate
    base = max(tat, now)
    # Differences first: times near 1.8e9 leave too few digits for now + T - now.
    room = math.floor((max(burst, 1.0) * interval - (base - now)) / interval + 1e-6)
    granted = max(0, min(want, room))
    new_tat = base + granted * interval
    retry = None
    if granted < want:
        retry = new_tat - max(burst, 1.0) * interval + interval
    return GcraStep(granted, new_tat, retry)


def reservation(
    rate: float, burst: float, want: int, window: float, nodes: int
) -> tuple[int, float]:
    """(tokens to ask for, horizon): a node may reserve cells of the bucket that conform
    within `horizon` seconds, each used at its due time, so that a slow site too costs
    well under one round trip per message: the horizon lets each of the `nodes` hold
    about four cells (at least `window`, at most 60 s); the tokens are the node's part of
    what the bucket and the horizon hold, at least `want`."""
    if not math.isfinite(rate) or rate <= 0:
        return want, 0.0
    horizon = min(max(window, 4.0 * max(nodes, 1) / rate), 60.0)
    part = math.floor((max(burst, 1.0) + rate * horizon) / max(nodes, 1))
    return max(1, min(max(want, math.ceil(rate * horizon / max(nodes, 1))), part)), horizon


def due_times(first: float, interval: float, count: int, now: float) -> list[float]:
    """When each of `count` reserved cells may go: the first conforms at `first`, the
    next one `interval` later, none before `now`."""
    return [max(now, first + k * interval) for k in range(count)]


def fallback_share(limit: float, nodes: int) -> float:
    """A node's part of a rate when it cannot reach the others: limit / nodes alive."""
    return limit / max(nodes, 1)


def fallback_connections(limit: int, nodes: int, leases: int | None = None) -> int:
    """A node's part of a connection limit when cut off: limit / nodes alive (at least
    one connection). `leases`: the leases the node held, while they may still count in
    Redis (until their TTL runs out): the others, if they still reach Redis, may use all
    the rest, so the node keeps within those meanwhile (None: lapsed)."""
    share = max(1, limit // max(nodes, 1))
    return share if leases is None else min(share, leases)


@dataclass(frozen=True, slots=True)
class RateOp:
    """How a node's change of a site's rate joins the shared level: `none`; `cut` to
    `value` by adaptive rule `rule`, drawn by a transaction started at `started`; or
    `add` `value` (messages/s) to the shared level."""

    kind: Literal["none", "cut", "add"]
    value: float = 0.0
    rule: str = ""
    started: float = -math.inf


def rate_op(changes: Sequence[Change], started: float) -> RateOp:
    """The operation of the controller's `changes` after one transaction (started at
    `started`): the last cut if any (its value the rate it cut to), else the sum of the
    recovery steps."""
    rates = [c for c in changes if c.what == "rate"]
    cuts = [c for c in rates if c.rule != "recovery"]
    if cuts:
        return RateOp("cut", cuts[-1].new, cuts[-1].rule, started)
    step = sum(c.new - c.old for c in rates if math.isfinite(c.new - c.old))
    if step > 0:
        return RateOp("add", step)
    return RateOp("none")
