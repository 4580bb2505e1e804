"""The listener's shared limits on their own: AUTH lockout decisions over time (pure, `now`
passed in), line lengths across every possible cut between reads, the DATA memory budget."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mta.smtp.limits import AuthThrottle, ConnectionGate, MemoryBudget, failure_delay
from mta.smtp.receive import DataSink, LineMeter


def test_auth_lockout_counts_failures_within_the_window() -> None:
    throttle = AuthThrottle(max_failures=3, lockout=600.0)
    throttle.failed("192.0.2.1", 0.0)
    throttle.failed("192.0.2.1", 200.0)
    throttle.failed("192.0.2.1", 700.0)  # the first one is out of the window by now
    assert not throttle.refused("192.0.2.1", 701.0)
    throttle.failed("192.0.2.1", 701.0)
    assert throttle.refused("192.0.2.1", 702.0)
    assert not throttle.refused("192.0.2.2", 702.0)  # per address
    assert throttle.refused("192.0.2.1", 701.0 + 599.0)
    assert not throttle.refused("192.0.2.1", 701.0 + 600.0)
    assert (throttle.failures_total, throttle.refusals_total) == (4, 2)


def test_failure_delay_grows_and_is_capped() -> None:
    assert [failure_delay(1.0, n) for n in (1, 2, 3, 9)] == [1.0, 2.0, 3.0, 5.0]
    assert failure_delay(0.0, 3) == 0.0


def test_connection_gate_counts_total_and_per_ip() -> None:
    gate = ConnectionGate(max_total=3, max_per_ip=2)
    sessions = [object() for _ in range(4)]
    assert gate.admit(sessions[0], "a") is None  # type: ignore[arg-type]
    assert gate.admit(sessions[1], "a") is None  # type: ignore[arg-type]
    assert (gate.admit(sessions[2], "a") or "").startswith("421 4.7.0")  # type: ignore[arg-type]
    assert gate.admit(sessions[2], "b") is None  # type: ignore[arg-type]
    assert (gate.admit(sessions[3], "c") or "").startswith("421 4.3.2")  # type: ignore[arg-type]
    gate.release(sessions[0], "a")  # type: ignore[arg-type]
    gate.release(sessions[0], "a")  # type: ignore[arg-type]  # twice: counted once
    assert gate.open == 2 and gate.per_ip == {"a": 1, "b": 1}


@pytest.mark.parametrize(("length", "over"), [(998, False), (999, True)])
def test_line_meter_finds_a_long_line_wherever_the_reads_cut(length: int, over: bool) -> None:
    text = b"short\r\n" + b"x" * length + b"\r\nafter\r\n"
    for cut in range(len(text) + 1):
        for second_cut in (cut, min(cut + 7, len(text))):
            meter = LineMeter(998)
            for piece in (text[:cut], text[cut:second_cut], text[second_cut:]):
                if piece:
                    meter.feed(piece)
            assert meter.over is over, (cut, second_cut)


def test_line_meter_bare_lf_lines_and_zero_limit() -> None:
    meter = LineMeter(10)
    meter.feed(b"0123456789\n0123456789\r\n")
    assert not meter.over
    meter.feed(b"0123456789A\n")
    assert meter.over
    off = LineMeter(0)
    off.feed(b"y" * 5000)
    assert not off.over


async def test_memory_budget_spills_readers_and_queues_handlers(tmp_path: Path) -> None:
    budget = MemoryBudget(100)
    sink = DataSink(budget, tmp_path)
    sink.write(b"a" * 60)
    assert budget.held == 60 and not sink.spilled
    sink.write(b"b" * 60)  # over the budget: everything moves to a temp file
    assert sink.spilled and budget.held == 0 and budget.spilled_total == 1
    assert sink.value() == b"a" * 60 + b"b" * 60
    await budget.take(80)
    waiting = asyncio.ensure_future(budget.take(50))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    budget.give(80)
    await asyncio.wait_for(waiting, 5)
    assert budget.held == 50
    budget.give(50)
    await asyncio.wait_for(budget.take(500), 5)  # larger than the budget: goes alone
    assert budget.held == 500
