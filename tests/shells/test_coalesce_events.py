"""Repeated soft bounces are coalesced, end to end: a real next hop answering 452 4.5.3 again and
again (with a spell of greylisting in between), a real spool, a manual clock stepped attempt by
attempt to the end of the validity. Every attempt is in the history; events are emitted for the
first soft bounce, each change of verdict and one repeat per `feedback.coalesce_repeats`, and
the one `expired` event carries the last reply."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

from mta.clock import ManualClock
from mta.core.coalesce import should_report, verdict_key
from mta.model import BounceClass, EventKind, Reply, Verdict
from mta.queue.schema import SCHEMA, SCHEMA_VERSION
from tests.helpers import (
    ScriptedServer,
    events_of,
    mta_config,
    send_message,
    spool_rows,
    started,
    wait_for,
)

TOO_MANY = "452 4.5.3 Too many recipients"
GREYLISTED = "451 4.7.1 Greylisted, try again later"
MESSAGE = (
    b"From: a@sender.test\r\nSubject: s\r\nX-Campaign-Validity: 6h\r\n"
    b"X-Campaign-Log-Id: L1\r\n\r\nbody\r\n"
)


async def run_until_expired(
    tmp_path: Path, receiver: ScriptedServer, every: str
) -> dict[str, Any]:
    """Submit one recipient and step the clock to each next attempt until it expires."""
    receiver.handler.rcpt[:] = [TOO_MANY] * 10 + [GREYLISTED] * 3 + [TOO_MANY] * 200
    clock = ManualClock()
    config = mta_config(
        tmp_path / every,
        delivery__relayhost=f"127.0.0.1:{receiver.port}",
        feedback__coalesce_repeats=every,
    )
    app = await started(config, clock=clock, rng=random.Random(5))
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@dest.test"], MESSAGE)
        row = "SELECT state, leased, next_attempt_at FROM recipients"

        def between_attempts() -> bool:
            return tuple(spool_rows(app, row)[0][:2]) in (("queued", 0), ("expired", 0))

        def attempts() -> int:
            return len(spool_rows(app, "SELECT id FROM attempts"))

        for _ in range(200):
            await wait_for(between_attempts)
            state, _, next_at = spool_rows(app, row)[0]
            if state == "expired":
                break
            made = attempts()
            clock.set(max(next_at, clock.now()))
            await wait_for(lambda: attempts() > made)  # noqa: B023 (awaited at once)
        attempts = spool_rows(app, "SELECT at, code, enhanced FROM attempts ORDER BY id")
        return {"events": events_of(app), "attempts": attempts, "app": app}
    finally:
        await app.stop()


async def test_a_452_loop_reports_changes_and_hourly_repeats(
    tmp_path: Path, receiver: ScriptedServer
) -> None:
    every = await run_until_expired(tmp_path, receiver, "0s")
    coalesced = await run_until_expired(tmp_path, receiver, "1h")
    # Without coalescing: one soft bounce per attempt but the last (the validity ends there).
    assert len(coalesced["attempts"]) == len(every["attempts"]) > 20
    kinds = [e["kind"] for e in every["events"]]
    assert kinds.count("soft_bounce") == len(every["attempts"]) - 1
    events = coalesced["events"]
    assert [e["kind"] for e in events][:2] == ["relayed", "soft_bounce"]
    assert events[-1]["kind"] == "expired" and [e["kind"] for e in events].count("expired") == 1
    soft = [e for e in events if e["kind"] == "soft_bounce"]
    assert 5 <= len(soft) < len(every["attempts"]) / 3
    # Seq counts the events sent, without gaps; attempts keep their numbers.
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    # Each attempt (the last one expires) is reported exactly when the rule says so.
    last_key: str | None = None
    last_at: float | None = None
    expected: list[tuple[float, int]] = []
    for at, code, enhanced in coalesced["attempts"][:-1]:
        key = f"70 {code} {enhanced}"  # both replies are class 70
        if last_key != key or last_at is None or at - last_at >= 3600:
            expected.append((at, code))
            last_key, last_at = key, at
    assert [(e["at"], e["smtp"]["code"]) for e in soft] == expected
    # The spell of 3 greylisting attempts is reported when it starts (and again once it has
    # lasted an hour), and 452 again as soon as it comes back.
    codes = [e["smtp"]["code"] for e in soft]
    assert 1 <= codes.count(451) < 3 and codes[0] == 452 and codes[-1] == 452
    spell_start = next(e["at"] for e in soft if e["smtp"]["code"] == 451)
    back = next(at for at, code, _ in coalesced["attempts"] if code == 452 and at > spell_start)
    assert back in [e["at"] for e in soft]
    # The final event carries the last reply, whether or not its repeats were reported.
    expired = events[-1]
    assert (expired["smtp"]["code"], expired["smtp"]["enhanced"]) == (452, "4.5.3")
    assert expired["attempt"] == len(coalesced["attempts"])


def test_should_report_is_a_pure_rule() -> None:
    soft = EventKind.SOFT_BOUNCE
    verdict = Verdict(BounceClass(70, "Transient Failure"), "Soft", "Unreachable", 3, "message",
                      False, "too-many-recipients")
    key = verdict_key(verdict, Reply(452, "4.5.3", "Too many recipients"))
    assert key == "70 452 4.5.3"
    assert verdict_key(None, Reply(421, None, "bye")) == "0 421 -"
    assert should_report(soft, key, None, None, now=10.0, every=3600.0)  # the first
    assert not should_report(soft, key, key, 10.0, now=3609.0, every=3600.0)  # a repeat
    assert should_report(soft, key, key, 10.0, now=3610.0, every=3600.0)  # an hour later
    assert should_report(soft, key, "70 452 4.5.2", 10.0, now=11.0, every=3600.0)  # a change
    assert should_report(soft, key, key, 10.0, now=11.0, every=0.0)  # coalescing off
    for kind in (EventKind.DELIVERED, EventKind.HARD_BOUNCE, EventKind.EXPIRED):
        assert should_report(kind, key, key, 10.0, now=11.0, every=3600.0)


async def test_an_older_spool_gains_the_new_columns(tmp_path: Path) -> None:
    """A spool made before the coalescing columns opens, keeps its mail and gains them."""
    data = tmp_path / "spool"
    data.mkdir()
    conn = sqlite3.connect(data / "spool.sqlite3")
    old = SCHEMA.replace(",\n    reported_key TEXT,\n    reported_at REAL", "")
    assert "reported_at" not in old
    conn.executescript(old)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.commit()
    conn.close()
    app = await started(mta_config(tmp_path, delivery__relayhost="127.0.0.1:9"))
    try:
        columns = [row[1] for row in spool_rows(app, "PRAGMA table_info(recipients)")]
        assert columns[-2:] == ["reported_key", "reported_at"]
        reply = await send_message(*app.smtp_address, "b@sender.test", ["r@d.test"], MESSAGE)
        assert reply.startswith("250 ")
    finally:
        await app.stop()
