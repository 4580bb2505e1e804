"""The webhook receiver over real HTTP: signatures, timestamps, idempotency, order, durability."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from campaign_client.log import DeliveryLog
from campaign_client.receiver import Receiver
from campaign_client.wait import wait_for
from campaign_client.webhook import parse_secret, sign, verify
from tests.client.client_helpers import (
    HARD,
    OTHER_SECRET,
    SECRET,
    SMTP_250,
    SMTP_452,
    SMTP_550,
    SOFT,
    ev,
    post,
)


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    log = DeliveryLog(tmp_path / "log.sqlite")
    rx = Receiver(log, SECRET, "127.0.0.1", 0)
    await rx.start()
    yield rx
    await rx.stop()
    log.close()


def test_standard_webhooks_published_vector() -> None:
    key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    headers = {"webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek", "webhook-timestamp": "1614265330",
               "webhook-signature": f"v1,bm90IGl0 {signature}"}
    assert verify(key, headers, body, now=1614265330 + 299) == "msg_p5jXN8AQM9LWM0D4loKWxJek"


def test_bad_secrets_are_refused_with_a_clear_message() -> None:
    for bad in ("whsec_", "whsec_***", ""):
        with pytest.raises(ValueError, match="secret"):
            parse_secret(bad)


async def test_good_batch_is_applied_and_answered_204(receiver: Receiver) -> None:
    events = [
        ev("relayed", 1, log_id="1", recipient="a@x.test"),
        ev("delivered", 2, log_id="1", recipient="a@x.test", smtp=SMTP_250),
        ev("relayed", 1, log_id="2", recipient="b@x.test"),
        ev("hard_bounce", 2, log_id="2", recipient="b@x.test", smtp=SMTP_550, failure=HARD),
    ]
    assert await post(receiver.webhook_url, events) == 204
    kpis = receiver.log.kpis("D1")
    assert kpis.by_status["Sent"] == 1 and kpis.by_status["Failed"] == 1
    line = receiver.log.line("D1", "2", "b@x.test")
    assert line is not None
    assert (line.failure_type, line.failure_reason, line.reason_code) == ("Hard", "User unknown", 1)
    assert line.last_reply == "550 5.1.1 user unknown" and line.last_seq == 2


@pytest.mark.parametrize("case", ["wrong-key", "missing-signature", "tampered-body",
                                  "stale", "future"])
async def test_refused_requests_get_401_and_change_nothing(receiver: Receiver, case: str) -> None:
    events = [ev("relayed", 1), ev("delivered", 2)]
    now = int(time.time())
    if case == "wrong-key":
        status = await post(receiver.webhook_url, events, secret=OTHER_SECRET)
    elif case == "missing-signature":
        status = await post(receiver.webhook_url, events, headers={"webhook-signature": ""})
    elif case == "tampered-body":
        status = await post(receiver.webhook_url, events, headers={
            "webhook-signature": sign(parse_secret(SECRET), "x", now, b"[]")})
    elif case == "stale":
        status = await post(receiver.webhook_url, events, timestamp=now - 301)
    else:
        status = await post(receiver.webhook_url, events, timestamp=now + 301)
    assert status == 401
    assert receiver.log.lines("D1") == []
    assert not receiver.log.is_applied(events[0]["event_id"])
    assert receiver.stats.rejected_signature == 1


async def test_tolerance_is_configurable(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "log.sqlite")
    async with Receiver(log, SECRET, "127.0.0.1", 0, tolerance=3600) as rx:
        assert await post(rx.webhook_url, [ev("relayed", 1)],
                          timestamp=int(time.time()) - 1800) == 204
    assert log.line("D1", "1", "a@x.test") is not None


async def test_rotated_secrets_and_a_receiver_with_two_keys(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "log.sqlite")
    async with Receiver(log, [OTHER_SECRET, SECRET], "127.0.0.1", 0) as rx:
        assert await post(rx.webhook_url, [ev("relayed", 1, log_id="1")]) == 204
        assert await post(rx.webhook_url, [ev("relayed", 1, log_id="2")],
                          secret=OTHER_SECRET) == 204
    assert len(log.lines("D1")) == 2


async def test_replayed_batch_is_idempotent(receiver: Receiver) -> None:
    events = [ev("relayed", 1), ev("soft_bounce", 2, failure=SOFT, smtp=SMTP_452, attempt=1)]
    assert await post(receiver.webhook_url, events) == 204
    first = receiver.log.line("D1", "1", "a@x.test")
    assert await post(receiver.webhook_url, events) == 204       # a new signature, same events
    assert await post(receiver.webhook_url, events[1:]) == 204
    again = receiver.log.line("D1", "1", "a@x.test")
    assert first == again
    assert first is not None and first.last_seq == 2
    assert receiver.stats.duplicates == 3 and receiver.stats.events == 2


async def test_malformed_batches_get_400_and_change_nothing(receiver: Receiver) -> None:
    assert await post(receiver.webhook_url, b"{not json") == 400
    bad_kind = [ev("relayed", 1), ev("teleported", 2)]
    assert await post(receiver.webhook_url, bad_kind) == 400
    assert receiver.log.lines("D1") == []


async def test_out_of_order_events_are_held_durably_then_applied(receiver: Receiver) -> None:
    url = receiver.webhook_url
    relayed = ev("relayed", 1, event_id="e1")
    soft = ev("soft_bounce", 2, event_id="e2", failure=SOFT, smtp=SMTP_452)
    delivered = ev("delivered", 3, event_id="e3", smtp=SMTP_250)
    assert await post(url, [delivered]) == 204
    assert receiver.log.line("D1", "1", "a@x.test") is None
    # Held in the file, not in memory: another connection sees it.
    with sqlite3.connect(receiver.log.path) as other:
        assert other.execute("SELECT seq FROM held").fetchall() == [(3,)]
    assert await post(url, [soft]) == 204
    assert receiver.log.line("D1", "1", "a@x.test") is None
    assert await post(url, [relayed]) == 204
    line = receiver.log.line("D1", "1", "a@x.test")
    assert line is not None
    assert (line.status, line.last_seq, line.gaps, line.failure_reason) == ("Sent", 3, 0, None)
    assert receiver.log.held_count() == 0


async def test_a_gap_held_too_long_is_applied_and_flagged(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "log.sqlite")
    async with Receiver(log, SECRET, "127.0.0.1", 0, gap_timeout=0.2) as rx:
        assert await post(rx.webhook_url, [ev("relayed", 1)]) == 204
        assert await post(rx.webhook_url, [ev("delivered", 3, smtp=SMTP_250)]) == 204
        kpis = await wait_for(log, "D1", lambda k: k.by_status["Sent"] == 1, timeout=30)
        assert kpis.success_pct == 100.0
    line = log.line("D1", "1", "a@x.test")
    assert line is not None and (line.gaps, line.last_seq) == (1, 3)


async def test_acknowledged_events_are_in_the_sqlite_file(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    log = DeliveryLog(path)
    rx = Receiver(log, SECRET, "127.0.0.1", 0)
    await rx.start()
    events = [ev("relayed", 1, log_id=str(i), recipient=f"u{i}@x.test") for i in range(50)]
    assert await post(rx.webhook_url, events) == 204
    # Read through an independent connection before anything is closed ...
    with sqlite3.connect(path) as other:
        count = other.execute("SELECT COUNT(*) FROM lines WHERE status = ?",
                              ("Taken into account by the service provider",)).fetchone()[0]
    assert count == 50
    await rx.stop()
    log.close()
    # ... and after reopening the file.
    reopened = DeliveryLog(path)
    assert reopened.kpis("D1").by_status["Taken into account by the service provider"] == 50
    assert all(reopened.is_applied(e["event_id"]) for e in events)
    reopened.close()


async def test_livez_and_unknown_paths(receiver: Receiver) -> None:
    import aiohttp

    base = receiver.webhook_url.rsplit("/", 1)[0]
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/livez") as resp:
            assert resp.status == 200
        async with session.post(base + "/nowhere", data=b"[]") as resp:
            assert resp.status == 404
