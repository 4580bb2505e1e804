"""The spool's typed operations for the webhook cursors and its schema version, on a real
SQLite file: cursors persist across a reopen, a version-2 spool is upgraded in place, another
version is refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mta.queue.records import WebhookCursor
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
