"""Clocks: manual sleepers wake on advance; scaled clocks share time through an anchor."""

import asyncio

import pytest

from mta.clock import Anchor, ManualClock, ScaledClock


async def test_manual_clock_wakes_sleepers_in_order() -> None:
    clock = ManualClock(start=100.0)
    woke: list[float] = []

    async def sleeper(until: float) -> None:
        await clock.sleep_until(until)
        woke.append(clock.now())

    tasks = [asyncio.create_task(sleeper(t)) for t in (150.0, 120.0)]
    await asyncio.sleep(0)
    clock.advance(25)
    await asyncio.sleep(0)
    assert woke == [125.0]
    clock.set(200.0)
    await asyncio.gather(*tasks)
    assert woke == [125.0, 200.0]


def test_manual_clock_never_goes_back() -> None:
    clock = ManualClock(start=10.0)
    with pytest.raises(ValueError):
        clock.set(5.0)


def test_two_scaled_clocks_with_one_anchor_agree() -> None:
    anchor = Anchor(real=1_000.0, virtual=5_000.0, scale=100.0)
    decoded = Anchor.decode(anchor.encode())
    assert decoded == anchor
    a, b = ScaledClock(anchor=anchor), ScaledClock(anchor=decoded)
    assert abs(a.now() - b.now()) < 1.0
    assert a.real_seconds(3600) == 36.0


def test_bad_anchor_is_refused() -> None:
    with pytest.raises(ValueError):
        Anchor.decode("1:2")
    with pytest.raises(ValueError):
        Anchor.decode("1:2:0")
