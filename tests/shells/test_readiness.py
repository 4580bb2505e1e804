"""`/readyz` follows the spool's writes, over real HTTP with a real SQLite file: after a write
fails for lack of room it answers 503 with a one-line reason, and 200 again once a write
succeeds, whether that is the next submission or the spool's own probe while the MTA is idle.
The disk is made full for real: the writer's connection gets a page limit at the database's
size (SQLite then answers SQLITE_FULL), and room comes back when the limit is raised."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mta.app import MtaApp
from mta.queue.spool import SpoolFull
from tests.helpers import mta_config, send_message, spool_rows, started, wait_for

BODY = b"From: a@sender.test\r\nSubject: s\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40
FULL = "database or disk is full"


@pytest.fixture
async def mta(tmp_path: Path) -> AsyncIterator[MtaApp]:
    app = await started(mta_config(tmp_path, delivery__relayhost="127.0.0.1:9"))
    yield app
    await app.stop()


async def fill_disk(app: MtaApp) -> None:
    """No page more: the writer thread's own connection may not grow the file."""

    def cap(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    await app.running.spool._submit(cap)


async def free_disk(app: MtaApp) -> None:
    def uncap(conn: sqlite3.Connection) -> None:
        conn.execute("PRAGMA max_page_count = 1073741823")

    # The writer may batch this with a probe that fails first and takes the whole batch
    # with it (SQLite rolls the transaction back): then it has not run; send it again.
    for _ in range(20):
        try:
            await app.running.spool._submit(uncap)
            return
        except SpoolFull:
            await asyncio.sleep(0.05)
    raise AssertionError("the page limit could not be lifted")


async def readyz(app: MtaApp) -> tuple[int, str]:
    address = app.admin_address
    assert address is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{address[0]}:{address[1]}/readyz") as resp,
    ):
        return resp.status, await resp.text()


async def submit(app: MtaApp) -> str:
    return await send_message(*app.smtp_address, "a@sender.test", ["r@d.test"], BODY)


async def test_not_ready_while_writes_fail_ready_after_a_success(mta: MtaApp) -> None:
    assert await readyz(mta) == (200, "ready\n")
    assert (await submit(mta)).startswith("250 ")  # the tables' first pages exist
    await fill_disk(mta)
    assert (await submit(mta)).startswith("452 4.3.1")
    assert await readyz(mta) == (503, f"not ready: spool writes fail: {FULL}\n")
    await free_disk(mta)
    assert (await submit(mta)).startswith("250 ")
    assert await readyz(mta) == (200, "ready\n")


async def test_an_idle_mta_notices_room_again_through_its_probe(mta: MtaApp) -> None:
    assert (await submit(mta)).startswith("250 ")
    # Idle means idle: the message's first attempt (the relay refuses) is on record before
    # the disk fills, so no outcome written meanwhile competes with the probes.
    await wait_for(lambda: spool_rows(mta, "SELECT COUNT(*) FROM attempts") == [(1,)], timeout=15)
    await fill_disk(mta)
    assert (await submit(mta)).startswith("452 4.3.1")
    spool = mta.running.spool
    probes = spool.probes
    # Probes keep failing while there is no room: still not ready.
    await wait_for(lambda: spool.probes >= probes + 2, timeout=15)
    assert (await readyz(mta))[0] == 503 and spool.write_failure == FULL
    await free_disk(mta)
    # No submission: the next probe finds room.
    await wait_for(lambda: spool.write_failure is None, timeout=15)
    assert await readyz(mta) == (200, "ready\n")
    # The probe leaves nothing behind.
    conn = sqlite3.connect(mta.config.data_path / "spool.sqlite3")
    try:
        assert conn.execute("SELECT COUNT(*) FROM site_events").fetchone() == (0,)
    finally:
        conn.close()


async def test_a_failure_of_the_operation_itself_is_not_a_storage_failure(mta: MtaApp) -> None:
    """A constraint the data breaks says nothing about the disk, even in a full disk's words."""
    conn = sqlite3.connect(mta.config.data_path / "spool.sqlite3")
    try:
        conn.execute(
            f"CREATE TRIGGER odd BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, '{FULL}'); END"
        )
        conn.commit()
    finally:
        conn.close()
    assert (await submit(mta)).startswith("451 4.3.0")
    assert await readyz(mta) == (200, "ready\n")
