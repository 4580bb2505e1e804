"""The spool's typed operations for the webhook cursors and its schema version, on a real
SQLite file: cursors persist across a reopen, a version-2 spool is upgraded in place, another
version is refused; a batch of ingests and attempt results is stored together, one failing
sinks no other."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mta.model import Result
from mta.queue import queries
from mta.queue.records import DueRecipient, NewMessage, NewRecipient, Update, WebhookCursor
from mta.queue.schema import SCHEMA_VERSION
from mta.queue.spool import Spool, SpoolError


async def test_webhook_cursors_start_at_zero_move_on_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    spool = await Spool.open(path)
    try:
        found = await spool.webhook_cursors(["http://a.test/hook", "http://b.test/hook"])
        assert found["http://a.test/hook"] == WebhookCursor("http://a.test/hook")
        await spool.webhook_failing("http://a.test/hook", 123.0)
        await spool.advance_webhook("http://b.test/hook", 42, delivered=40, dropped=2)
        await spool.advance_webhook("http://b.test/hook", 50, delivered=8, dropped=0)
        await spool.disable_webhook("http://a.test/hook")
    finally:
        await spool.close()
    spool = await Spool.open(path)
    try:
        found = await spool.webhook_cursors(["http://a.test/hook", "http://b.test/hook"])
    finally:
        await spool.close()
    assert found["http://a.test/hook"] == WebhookCursor(
        "http://a.test/hook", 0, disabled=True, failing_since=123.0
    )
    b = found["http://b.test/hook"]
    assert (b.last_id, b.delivered, b.dropped, b.failing_since) == (50, 48, 2, None)


async def test_a_version_2_spool_gains_the_cursor_table_in_place(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    old = sqlite3.connect(path)
    # a version-2 messages table (the rest of its columns do not matter here): not a new file
    old.execute(
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, pending INTEGER NOT NULL, content BLOB)"
    )
    old.execute("PRAGMA user_version = 2")
    old.commit()
    old.close()
    spool = await Spool.open(path)
    try:
        assert await spool.webhook_cursors(["http://a.test/"]) == {
            "http://a.test/": WebhookCursor("http://a.test/")
        }
    finally:
        await spool.close()
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    check.close()


async def test_another_version_is_refused_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE messages (id INTEGER PRIMARY KEY)")
    old.execute("PRAGMA user_version = 1")
    old.commit()
    old.close()
    with pytest.raises((SpoolError, sqlite3.DatabaseError), match="move the old data directory"):
        await Spool.open(path)


def delivered(r: DueRecipient, event_id: str) -> Update:
    return Update(
        r.recipient_id,
        r.message_id,
        "delivered",
        attempts=1,
        next_attempt_at=None,
        seq=2,
        at=1600.0,
        code=250,
        result=Result.DELIVERED,
        event=(event_id, "delivered", "{}"),
    )


def _message(queue_id: str, recipients: int) -> NewMessage:
    return NewMessage(
        queue_id=queue_id,
        mail_from="sender@example.test",
        delivery_id=None,
        received_at=1000.0,
        expires_at=2000.0,
        content=f"Subject: {queue_id}\r\n\r\nhello\r\n".encode(),
        smtputf8=False,
        recipients=tuple(
            NewRecipient(f"{queue_id}.{i}@example.test", "example.test", None)
            for i in range(recipients)
        ),
        events=tuple((f"ev-{queue_id}-{i}", f'{{"n": {i}}}') for i in range(recipients)),
    )


async def test_a_batch_stores_its_messages_together_and_one_failure_sinks_no_other(
    tmp_path: Path,
) -> None:
    """Ingests and attempt results queued together are one batch (stored with one statement
    per table); in a batch where an ingest breaks a constraint, it fails alone. Every
    recipient and event points at its own row."""
    path = tmp_path / "spool.sqlite3"
    spool = await Spool.open(path)
    loop = asyncio.get_running_loop()

    async def one_batch(queue: Callable[[], list[asyncio.Future[None]]]) -> list[object]:
        """What `queue` queues runs as one batch: the writer is held meanwhile."""
        started, release = threading.Event(), threading.Event()

        def hold(conn: sqlite3.Connection) -> None:
            started.set()
            release.wait(10)

        held = spool._submit(hold)
        await loop.run_in_executor(None, started.wait, 10)
        futures = queue()
        await asyncio.sleep(0)  # coroutines among them reach the queue
        commits = spool.commits  # the held batch's commit is still to come
        release.set()
        await held
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert spool.commits == commits + 2  # the held batch, then this one
        return results

    def ingests(*messages: NewMessage) -> list[asyncio.Future[None]]:
        futures = [loop.create_future() for _ in messages]
        for message, future in zip(messages, futures, strict=True):
            spool.ingest_soon(message, future)
        return futures

    try:
        await spool.ingest(_message("Q0", 2))
        picked = (await spool.pick([("example.test", 2)], 1500.0)).recipients
        first = await one_batch(
            lambda: [
                *ingests(_message("Q1", 2), _message("Q2", 3)),
                spool._submit(lambda conn: queries.site_event(conn, 5.0, "site", "b", "{}")),
                *(
                    asyncio.ensure_future(spool.record([delivered(r, f"ev-done-{r.address}")]))
                    for r in picked
                ),
            ]
        )
        second = await one_batch(lambda: ingests(_message("Q1", 1), _message("Q4", 1)))
    finally:
        await spool.close()
    assert first == [None] * 5
    assert isinstance(second[0], SpoolError) and "UNIQUE" in str(second[0])  # Q1 again
    assert second[1] is None
    check = sqlite3.connect(path)
    rows = check.execute(
        "SELECT m.queue_id, r.address, e.event_id, e.seq, e.kind FROM events e"
        " JOIN recipients r ON r.id = e.recipient_id JOIN messages m ON m.id = r.message_id"
        " ORDER BY e.id"
    ).fetchall()
    pending = check.execute(
        "SELECT queue_id, pending, content IS NULL FROM messages ORDER BY id"
    ).fetchall()
    states = check.execute("SELECT state, leased FROM recipients WHERE message_id = 1").fetchall()
    sites = check.execute("SELECT COUNT(*) FROM site_events").fetchone()[0]
    check.close()

    def relayed(q: str, n: int) -> list[tuple[str, str, str, int, str]]:
        return [(q, f"{q}.{i}@example.test", f"ev-{q}-{i}", 1, "relayed") for i in range(n)]

    done = [
        ("Q0", f"Q0.{i}@example.test", f"ev-done-Q0.{i}@example.test", 2, "delivered")
        for i in range(2)
    ]
    # the attempt results first in their batch, then its ingests
    assert rows == relayed("Q0", 2) + done + relayed("Q1", 2) + relayed("Q2", 3) + relayed("Q4", 1)
    assert pending == [("Q0", 0, 1), ("Q1", 2, 0), ("Q2", 3, 0), ("Q4", 1, 0)]
    assert states == [("delivered", 0), ("delivered", 0)]
    assert sites == 1


async def test_attempt_results_keep_the_last_reply_and_report_unless_replaced(
    tmp_path: Path,
) -> None:
    """Recording results (several recipients in one statement per table): a result with a
    reply replaces the last reply (its enhanced code with its code, even when it has none);
    one without keeps it, and a soft bounce reported stays until another is."""
    path = tmp_path / "spool.sqlite3"
    spool = await Spool.open(path)
    try:
        await spool.ingest(_message("Q0", 2))
        first, second = (await spool.pick([("example.test", 2)], 1500.0)).recipients

        await spool.record(
            [
                Update(
                    first.recipient_id,
                    first.message_id,
                    attempts=1,
                    seq=2,
                    at=1600.0,
                    state="queued",
                    next_attempt_at=1600.0,
                    code=451,
                    enhanced="4.3.0",
                    text="later",
                    phase="rcpt",
                    mx="mx1",
                    reported_key="k1",
                ),
                Update(
                    second.recipient_id,
                    second.message_id,
                    attempts=1,
                    seq=2,
                    at=1600.0,
                    state="queued",
                    next_attempt_at=1600.0,
                    code=451,
                    text="no enhanced code",
                    phase="rcpt",
                    mx="mx1",
                ),
            ]
        )
        again = (await spool.pick([("example.test", 2)], 1700.0)).recipients
        assert [r.recipient_id for r in again] == [first.recipient_id, second.recipient_id]
        assert (again[0].last_enhanced, again[1].last_enhanced) == ("4.3.0", None)
        await spool.record(
            [
                Update(
                    first.recipient_id,
                    first.message_id,
                    attempts=1,
                    seq=2,
                    at=1800.0,
                    state="queued",
                    next_attempt_at=9000.0,
                    attempted=False,
                ),
                Update(
                    second.recipient_id,
                    second.message_id,
                    attempts=1,
                    seq=2,
                    at=1800.0,
                    state="bounced",
                    next_attempt_at=None,
                    code=550,
                    enhanced="5.1.1",
                    text="no such user",
                    phase="rcpt",
                    mx="mx2",
                    result=Result.BOUNCE,
                ),
            ]
        )
    finally:
        await spool.close()
    check = sqlite3.connect(path)
    rows = check.execute(
        "SELECT state, leased, next_attempt_at, last_code, last_enhanced, last_text, last_mx,"
        " updated_at, reported_key, reported_at FROM recipients ORDER BY id"
    ).fetchall()
    attempts = check.execute("SELECT recipient_id, code FROM attempts ORDER BY id").fetchall()
    message = check.execute("SELECT pending, content IS NULL FROM messages").fetchone()
    check.close()
    assert rows == [
        ("queued", 0, 9000.0, 451, "4.3.0", "later", "mx1", 1800.0, "k1", 1600.0),
        ("bounced", 0, None, 550, "5.1.1", "no such user", "mx2", 1800.0, None, None),
    ]
    assert attempts == [
        (first.recipient_id, 451),
        (second.recipient_id, 451),
        (second.recipient_id, 550),
    ]
    assert message == (1, 0)  # one recipient still queued: the content is kept


async def test_a_pick_commits_ahead_of_its_batch_without_an_fsync_the_rest_with_one(
    tmp_path: Path,
) -> None:
    """Picks queued with ingests and attempt results commit first, in a transaction of their
    own at synchronous=NORMAL (a lease lost to a power cut only puts its recipients back to
    queued); the rest of the batch, its ingests and events, commits after at FULL."""
    path = tmp_path / "spool.sqlite3"
    spool = await Spool.open(path)
    loop = asyncio.get_running_loop()
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:
        started.set()
        release.wait(10)

    def synchronous(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA synchronous").fetchone()[0])

    try:
        await spool.ingest(_message("Q0", 2))
        held = spool._submit(hold)
        await loop.run_in_executor(None, started.wait, 10)
        ingested: asyncio.Future[None] = loop.create_future()
        spool.ingest_soon(_message("Q1", 1), ingested)
        picked = asyncio.ensure_future(spool.pick([("example.test", 5)], 1500.0))
        await asyncio.sleep(0)  # the pick reaches the queue
        rest = spool._submit(synchronous)
        in_lease = spool._submit(synchronous, lease=True)
        commits = spool.commits
        release.set()
        await held
        pick, _, lease_level, rest_level = await asyncio.gather(picked, ingested, in_lease, rest)
        assert spool.commits == commits + 3  # the held batch, the leases, then the rest
        assert await spool._submit(synchronous) == 2  # FULL again for what comes after
    finally:
        await spool.close()
    assert (lease_level, rest_level) == (1, 2)  # NORMAL for the leases only
    # Q1 was queued before the pick, but its ingest commits after the leases: not picked.
    assert sorted(r.address for r in pick.recipients) == ["Q0.0@example.test", "Q0.1@example.test"]
    check = sqlite3.connect(path)
    leased = check.execute("SELECT address, leased FROM recipients ORDER BY id").fetchall()
    check.close()
    assert leased == [("Q0.0@example.test", 1), ("Q0.1@example.test", 1), ("Q1.0@example.test", 0)]
