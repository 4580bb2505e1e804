"""Retries to the validity end, on the MTA's own schedule and the manual clock.

A recipient that keeps soft-bouncing is retried with exponential backoff; the attempt that
would fall past the end is clamped to the end itself, and the attempt there (failing) expires
the recipient with exactly one `expired` event that carries the last reply and its reason.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from mta.app import MtaApp
from mta.clock import ManualClock
from mta.core.retry import MAX_VALIDITY
from tests.helpers import (
    ScriptedServer,
    events_of,
    mta_config,
    send_message,
    spool_rows,
    started,
    wait_for,
)

MESSAGE = (
    b"From: Sender <news@sender.test>\r\nTo: <rcpt@dest.test>\r\nSubject: Hello\r\n"
    b"X-Campaign-Delivery-Id: DLV1\r\nX-Campaign-Log-Id: LOG1\r\n\r\nHi there.\r\n"
)
REPLY = "451 4.3.0 Temporary local problem"
FIRST, FACTOR, CAP = 600.0, 2.0, 4 * 3600.0


def expected_attempts(validity: float) -> list[float]:
    """Offsets of the attempts from the submission: 0, 10m, 30m, 70m, ... capped at 4h, the
    last one clamped to the validity end."""
    times, at, n = [0.0], 0.0, 1
    while at < validity:
        at = min(at + min(FIRST * FACTOR ** (n - 1), CAP), validity)
        times.append(at)
        n += 1
    return times


def recipient(app: MtaApp) -> tuple[str, float | None, int, int]:
    [row] = spool_rows(app, "SELECT state, next_attempt_at, leased, attempts FROM recipients")
    return row[0], row[1], row[2], row[3]


async def run_to_the_end(app: MtaApp, clock: ManualClock) -> None:
    """Move the clock to each next attempt, waiting for the attempt before moving on."""
    for _ in range(200):
        await wait_for(lambda: recipient(app)[2] == 0)
        state, next_at, _leased, attempts = recipient(app)
        if state != "queued":
            return
        assert next_at is not None
        if next_at > clock.now():
            clock.set(next_at)
        await wait_for(lambda a=attempts: recipient(app)[3] > a or recipient(app)[0] != "queued")
        await asyncio.sleep(0)
    raise AssertionError("the recipient never reached a final state")


@pytest.mark.parametrize(
    ("header", "validity"),
    [("30m", 1800.0), ("2h", 7200.0), ("3.5d", MAX_VALIDITY), ("5d", MAX_VALIDITY)],
)
async def test_soft_bounces_are_retried_until_the_validity_end(
    tmp_path: Path, receiver: ScriptedServer, header: str, validity: float
) -> None:
    receiver.handler.rcpt[:] = [REPLY] * 1000
    clock = ManualClock()
    app = await started(
        mta_config(
            tmp_path,
            delivery__relayhost=f"127.0.0.1:{receiver.port}",
            retry__jitter=0.0,
            retry__first="10m",
            feedback__coalesce_repeats="0s",  # an event per attempt: their times are checked
        ),
        clock=clock,
    )
    message = MESSAGE.replace(b"Subject:", f"X-Campaign-Validity: {header}\r\nSubject:".encode())
    start = clock.now()
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@dest.test"], message)
        await run_to_the_end(app, clock)
        found = events_of(app)
        kinds = [e["kind"] for e in found]
        assert kinds[0] == "relayed" and kinds[-1] == "expired" and kinds.count("expired") == 1
        assert set(kinds[1:-1]) == {"soft_bounce"}
        # Every attempt on the schedule, the last one at the validity end itself.
        attempt_times = [e["at"] - start for e in found[1:]]
        assert attempt_times == pytest.approx(expected_attempts(validity))
        assert attempt_times[-1] == pytest.approx(validity)
        expired, last_soft = found[-1], found[-2]
        assert expired["smtp"]["text"] == "Temporary local problem"
        assert expired["failure"] == last_soft["failure"]
        assert expired["failure"]["type"] == "Soft"
        assert recipient(app)[0] == "expired"
    finally:
        await app.stop()
