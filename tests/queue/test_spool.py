"""The spool's typed operations for the webhook cursors and its schema version, on a real
SQLite file: cursors persist across a reopen, a version-2 spool is upgraded in place, another
version is refused; a batch of ingests is stored together and one failing sinks no other."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from mta.queue import queries
from mta.queue.records import NewMessage, NewRecipient, WebhookCursor
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
    """Ingests queued together are one batch (stored with one INSERT per table); one that
    breaks a constraint fails alone, and every recipient and event points at its own row."""
    path = tmp_path / "spool.sqlite3"
    spool = await Spool.open(path)
    started, release = threading.Event(), threading.Event()

    def hold(conn: sqlite3.Connection) -> None:  # keeps the writer busy while the batch queues
        started.set()
        release.wait(10)

    loop = asyncio.get_running_loop()
    try:
        held = spool._submit(hold)
        await loop.run_in_executor(None, started.wait, 10)
        done = [loop.create_future() for _ in range(4)]
        spool.ingest_soon(_message("Q1", 2), done[0])
        spool.ingest_soon(_message("Q1", 1), done[1])  # the same queue id: refused
        spool.ingest_soon(_message("Q3", 3), done[2])
        spool.ingest_soon(_message("Q4", 1), done[3])
        site = spool._submit(lambda conn: queries.site_event(conn, 5.0, "site", "binding", "{}"))
        commits = spool.commits  # the held batch's commit is still to come
        release.set()
        await held
        results = await asyncio.gather(*done, site, return_exceptions=True)
    finally:
        await spool.close()
    assert results[0] is None and results[2] is None and results[3] is None and results[4] is None
    assert isinstance(results[1], SpoolError) and "UNIQUE" in str(results[1])
    assert spool.commits == commits + 2  # the held batch, then the four ingests and the event
    check = sqlite3.connect(path)
    rows = check.execute(
        "SELECT m.queue_id, r.address, e.event_id, e.seq, e.kind FROM events e"
        " JOIN recipients r ON r.id = e.recipient_id JOIN messages m ON m.id = r.message_id"
        " ORDER BY e.id"
    ).fetchall()
    pending = check.execute("SELECT queue_id, pending FROM messages ORDER BY id").fetchall()
    sites = check.execute("SELECT COUNT(*) FROM site_events").fetchone()[0]
    check.close()
    assert rows == [
        (q, f"{q}.{i}@example.test", f"ev-{q}-{i}", 1, "relayed")
        for q, n in (("Q1", 2), ("Q3", 3), ("Q4", 1))
        for i in range(n)
    ]
    assert pending == [("Q1", 2), ("Q3", 3), ("Q4", 1)]
    assert sites == 1
