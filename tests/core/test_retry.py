"""Retry arithmetic: exponential growth, cap, jitter bounds, expiry inside the validity."""

import pytest

from mta.core.retry import RetryPolicy, decide, interval, validity_end
from mta.model import BounceClass, Verdict

SOFT = Verdict(BounceClass(20, "Soft Bounce"), "Soft", "Unreachable", 3, "recipient", False, "t")
HARD = Verdict(
    BounceClass(10, "Invalid Recipient"), "Hard", "User unknown", 1, "recipient", True, "t"
)
POLICY = RetryPolicy(first=600, factor=2, max_interval=4 * 3600, jitter=0.2)
DAY = 86400.0


@pytest.mark.parametrize(
    ("attempts", "expected"), [(1, 600), (2, 1200), (3, 2400), (5, 9600), (6, 14400), (50, 14400)]
)
def test_interval_grows_and_caps(attempts: int, expected: float) -> None:
    assert interval(attempts, POLICY) == expected


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.5, 0.999])
def test_jitter_stays_within_bounds(rand: float) -> None:
    decision = decide(SOFT, 2, 1000.0, 1000.0 + DAY, POLICY, rand)
    assert decision.action == "retry"
    assert decision.at is not None
    assert 1000 + 1200 * 0.8 <= decision.at <= 1000 + 1200 * 1.2


def test_permanent_bounces_at_once() -> None:
    assert decide(HARD, 1, 0.0, DAY, POLICY, 0.5).action == "bounce"


def test_a_retry_past_the_validity_end_is_clamped_to_the_end() -> None:
    decision = decide(SOFT, 1, 0.0, 100.0, POLICY, 0.5)
    assert decision.action == "retry" and decision.at == 100.0


def test_an_attempt_failing_at_or_after_the_end_expires() -> None:
    assert decide(SOFT, 3, 100.0, 100.0, POLICY, 0.5).action == "expire"
    assert decide(SOFT, 3, 160.0, 100.0, POLICY, 0.5).action == "expire"


@pytest.mark.parametrize(
    ("requested", "expected"),
    [(None, 3.5 * DAY), (5 * DAY, 3.5 * DAY), (84 * 3600.0, 3.5 * DAY), (3600.0, 3600.0)],
)
def test_validity_is_capped_at_three_and_a_half_days(
    requested: float | None, expected: float
) -> None:
    assert validity_end(100.0, requested, 3.5 * DAY) == 100.0 + expected
