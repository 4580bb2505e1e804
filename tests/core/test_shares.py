"""The arithmetic of shared limits: GCRA steps, token batches, fallback shares."""

from __future__ import annotations

import math

import pytest

from mta.core import shares
from mta.core.throttle import Change

NOW = 1_800_000_000.0  # virtual times this large lose digits in now + T - now


def test_gcra_grants_the_burst_then_one_per_interval() -> None:
    step = shares.gcra(-math.inf, NOW, rate=2.0, burst=4, want=10)
    assert step.granted == 4 and step.retry_at == NOW + 0.5
    later = shares.gcra(step.tat, NOW + 0.5, rate=2.0, burst=4, want=10)
    assert later.granted == 1
    empty = shares.gcra(later.tat, NOW + 0.5, rate=2.0, burst=4, want=1)
    assert empty.granted == 0 and empty.retry_at == NOW + 1.0


def test_gcra_at_large_times_grants_exactly_at_the_due_time() -> None:
    """At a bucket's due time the next cell goes (float rounding of 1.8e9 + T once kept
    it back forever)."""
    rate = 0.98532890760491332
    tat = NOW
    for _ in range(100):
        step = shares.gcra(tat, tat, rate, burst=1, want=1)
        assert step.granted == 1
        tat = step.tat


def test_gcra_unlimited_and_nothing_wanted() -> None:
    assert shares.gcra(0.0, NOW, math.inf, 1, 7).granted == 7
    assert shares.gcra(0.0, NOW, 1.0, 1, 0).granted == 0


def test_reservations_are_the_nodes_part_of_the_bucket_and_a_horizon() -> None:
    # Fast: the horizon is the window; each node asks for its part of a window's cells.
    assert shares.reservation(100.0, 100.0, 1, window=1.0, nodes=4) == (25, 1.0)
    assert shares.reservation(100.0, 100.0, 40, window=1.0, nodes=4) == (40, 1.0)
    # 100/minute over 3 nodes: the bucket holds 1 cell; the horizon lets each node hold 4.
    tokens, horizon = shares.reservation(100 / 60, 1.0, 1, window=1.0, nodes=3)
    assert (tokens, horizon) == (4, pytest.approx(7.2))
    assert shares.reservation(math.inf, 1.0, 5, window=1.0, nodes=3) == (5, 0.0)
    assert shares.reservation(1 / 3600, 1.0, 1, window=1.0, nodes=3)[1] == 60.0


def test_reserved_cells_are_due_one_interval_apart_never_before_now() -> None:
    assert shares.due_times(NOW - 1.0, 0.6, 3, NOW) == [NOW, NOW, pytest.approx(NOW + 0.2)]
    assert shares.due_times(NOW + 0.5, 0.5, 2, NOW) == [NOW + 0.5, NOW + 1.0]


def test_fallback_shares() -> None:
    assert shares.fallback_share(90.0, 3) == 30.0
    assert shares.fallback_share(90.0, 0) == 90.0
    assert shares.fallback_connections(20, 3) == 6
    assert shares.fallback_connections(2, 6) == 1
    # While its leases may still count in Redis, a node keeps within them.
    assert shares.fallback_connections(20, 3, leases=2) == 2
    assert shares.fallback_connections(20, 3, leases=0) == 0
    assert shares.fallback_connections(20, 3, leases=15) == 6


def _change(rule: str, old: float, new: float, what: str = "rate") -> Change:
    return Change("s", "b", NOW, what, old, new, rule, "why")  # type: ignore[arg-type]


def test_a_cut_is_shared_as_a_cut_of_its_episode_and_steps_as_their_sum() -> None:
    cut = shares.rate_op([_change("recovery", 1.0, 1.1), _change("throttle-backoff", 1.1, 0.77)],
                         started=NOW - 3)
    assert cut == shares.RateOp("cut", 0.77, "throttle-backoff", NOW - 3)
    steps = shares.rate_op([_change("recovery", 1.0, 1.1), _change("recovery", 1.1, 1.2)], NOW)
    assert steps.kind == "add" and steps.value == pytest.approx(0.2)
    assert shares.rate_op([_change("recovery", 4, 5, "concurrency")], NOW).kind == "none"
    assert shares.rate_op([_change("recovery", math.inf, math.inf)], NOW).kind == "none"
