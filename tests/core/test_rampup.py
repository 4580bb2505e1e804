"""IP ramp-up: caps by age and ISP, per-day accounting with rollover, choosing a binding."""

from __future__ import annotations

import pytest

from mta.config.mx_rules import load_rampup
from mta.core.rampup import (
    DAY,
    Binding,
    RampStep,
    RampUp,
    VolumeLedger,
    admit,
    choose_binding,
    day_index,
    next_day_at,
)

MIDNIGHT = 20_000 * DAY  # a virtual UTC midnight
NOON = MIDNIGHT + DAY / 2
RAMP = RampUp(scales={"gmail": 1.0, "outlook": 0.5, "bulk": 0.0}, default_scale=1.0)


@pytest.mark.parametrize(
    ("age", "cap"),
    [(0, 50), (1, 50), (2, 100), (3, 500), (4, 500), (5, 1000), (6, 1000), (7, 5000),
     (13, 5000), (14, 20000), (29, 20000), (30, None), (400, None)],
)
def test_default_caps_by_age(age: int, cap: int | None) -> None:
    assert RAMP.cap(age, "gmail") == cap
    assert RAMP.cap(age, "someone-else") == cap  # the default scale is 1 here


@pytest.mark.parametrize(
    ("age", "isp", "cap"),
    [(1, "outlook", 25), (2, "outlook", 50), (14, "outlook", 10000), (30, "outlook", None),
     (1, "bulk", None), (14, "bulk", None)],
)
def test_caps_scale_per_isp(age: int, isp: str, cap: int | None) -> None:
    assert RAMP.cap(age, isp) == cap


def test_a_tiny_scale_still_allows_one_and_a_zero_cap_allows_none() -> None:
    ramp = RampUp((RampStep(1, 0), RampStep(2, 3)), scales={"x": 0.01})
    assert ramp.cap(1, "x") == 0
    assert ramp.cap(2, "x") == 1


@pytest.mark.parametrize(
    ("steps", "message"),
    [((), "at least one step"), ((RampStep(2, 5),), "must start at day 1"),
     ((RampStep(1, 5), RampStep(1, 6)), "increasing day order"),
     ((RampStep(1, -1),), "must not be negative")],
)
def test_bad_schedules(steps: tuple[RampStep, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RampUp(steps)


@pytest.mark.parametrize(
    ("first_use", "now", "age"),
    [(MIDNIGHT, MIDNIGHT, 1), (MIDNIGHT + DAY - 1, MIDNIGHT + DAY - 1, 1),
     (MIDNIGHT + DAY - 1, MIDNIGHT + DAY, 2),  # a new day starts at midnight, not 24h later
     (MIDNIGHT, MIDNIGHT + 6.5 * DAY, 7), (MIDNIGHT + 3 * DAY, MIDNIGHT, 1)],
)
def test_age_counts_virtual_days(first_use: float, now: float, age: int) -> None:
    assert Binding("b", "127.0.0.2", first_use).age_days(now) == age


def test_day_boundaries() -> None:
    assert day_index(MIDNIGHT) == 20_000 and day_index(MIDNIGHT - 0.001) == 19_999
    assert next_day_at(NOON) == MIDNIGHT + DAY and next_day_at(MIDNIGHT) == MIDNIGHT + DAY


def test_over_the_cap_mail_waits_for_the_next_day() -> None:
    young = Binding("young", "127.0.0.3", MIDNIGHT)  # day 1: 50 per ISP
    ledger = VolumeLedger()
    for i in range(50):
        decision = admit(RAMP, ledger, young, "gmail", NOON)
        assert decision.allowed and decision.remaining == 50 - i
        ledger.record("young", "gmail", NOON)
    over = admit(RAMP, ledger, young, "gmail", NOON + 60)
    assert (over.allowed, over.remaining, over.next_day_at) == (False, 0, MIDNIGHT + DAY)
    # Another ISP has its own allowance; the next day is day 2: 100.
    assert admit(RAMP, ledger, young, "yahoo", NOON).remaining == 50
    tomorrow = admit(RAMP, ledger, young, "gmail", MIDNIGHT + DAY)
    assert (tomorrow.allowed, tomorrow.remaining) == (True, 100)
    assert ledger.sent("young", "gmail", MIDNIGHT + DAY) == 0
    ledger.record("young", "gmail", MIDNIGHT + DAY, 3)
    assert ledger.sent("young", "gmail", MIDNIGHT + DAY + 5) == 3
    assert ledger.sent("young", "gmail", NOON) == 0  # yesterday is forgotten
    assert len(ledger) == 1


def test_exempt_isps_and_old_bindings_are_not_capped() -> None:
    ledger = VolumeLedger()
    old = Binding("old", "127.0.0.2", MIDNIGHT - 60 * DAY)
    young = Binding("young", "127.0.0.3", MIDNIGHT)
    assert admit(RAMP, ledger, old, "gmail", NOON).remaining is None
    assert admit(RAMP, ledger, young, "bulk", NOON).remaining is None


def test_restore_after_a_restart() -> None:
    ledger = VolumeLedger()
    ledger.restore([("b", "gmail", day_index(NOON), 40), ("b", "gmail", day_index(NOON), 5),
                    ("b", "gmail", day_index(NOON) - 1, 999), ("b", "yahoo", 1, 7)])
    assert ledger.sent("b", "gmail", NOON) == 45
    assert ledger.sent("b", "yahoo", NOON) == 0
    young = Binding("b", "127.0.0.3", MIDNIGHT)
    assert admit(RAMP, ledger, young, "gmail", NOON).remaining == 5


BINDINGS = [
    Binding("old", "127.0.0.2", MIDNIGHT - 90 * DAY),
    Binding("mid", "127.0.0.3", MIDNIGHT - 2 * DAY),  # day 3: 500
    Binding("new", "127.0.0.4", MIDNIGHT),  # day 1: 50
]


def send(ramp: RampUp, count: int, isp: str = "gmail") -> dict[str, int]:
    ledger = VolumeLedger()
    sent = {b.name: 0 for b in BINDINGS}
    for _ in range(count):
        binding = choose_binding(ramp, ledger, BINDINGS, isp, NOON)
        assert binding is not None
        ledger.record(binding.name, isp, NOON)
        sent[binding.name] += 1
    return sent


def test_spread_uses_every_young_binding_up_to_its_cap() -> None:
    assert send(RAMP, 30) == {"old": 10, "mid": 10, "new": 10}
    assert send(RAMP, 3000) == {"old": 2450, "mid": 500, "new": 50}


def test_oldest_first_leaves_the_young_the_overflow() -> None:
    oldest = RampUp(scales=RAMP.scales, strategy="oldest")
    assert send(oldest, 3000) == {"old": 3000, "mid": 0, "new": 0}


def test_no_binding_under_its_cap_means_waiting() -> None:
    young = [Binding("a", "127.0.0.3", MIDNIGHT), Binding("b", "127.0.0.4", MIDNIGHT)]
    ledger = VolumeLedger()
    for binding in young:
        ledger.record(binding.name, "gmail", NOON, 50)
    assert choose_binding(RAMP, ledger, young, "gmail", NOON) is None
    assert choose_binding(RAMP, ledger, young, "gmail", next_day_at(NOON)) is not None
    assert choose_binding(RAMP, ledger, [], "gmail", NOON) is None


def test_the_builtin_schedule() -> None:
    ramp = load_rampup()
    assert [(s.day, s.cap) for s in ramp.steps] == [
        (1, 50), (2, 100), (3, 500), (5, 1000), (7, 5000), (14, 20000), (30, None)
    ]
    assert ramp.strategy == "spread"
    assert ramp.cap(1, "gmail") == 50 and ramp.cap(1, "isp") == 25
    assert ramp.cap(1, "default") is None and ramp.cap(1, "unknown-rule") is None
