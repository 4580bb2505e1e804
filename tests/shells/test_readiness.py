"""`/readyz` follows the spool's writes, over real HTTP with a real SQLite file: after a write
fails for lack of room it answers 503 with a one-line reason, and 200 again once a write
succeeds, whether that is the next submission or the spool's own probe while the MTA is idle.
The full disk is made by triggers that refuse inserts with SQLite's own "database or disk is
full" (the same means as the ingress tests' 452)."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mta.app import MtaApp
from tests.helpers import mta_config, send_message, started, wait_for

MESSAGE = b"From: a@sender.test\r\nSubject: s\r\n\r\nbody\r\n"
FULL = "database or disk is full"


@pytest.fixture
async def mta(tmp_path: Path) -> AsyncIterator[MtaApp]:
    app = await started(mta_config(tmp_path, delivery__relayhost="127.0.0.1:9"))
    yield app
    await app.stop()


def spool_sql(app: MtaApp, sql: str) -> None:
    conn = sqlite3.connect(app.config.data_path / "spool.sqlite3")
    try:
        conn.executescript(sql)
    finally:
        conn.close()


def fill_disk(app: MtaApp, *tables: str) -> None:
    spool_sql(
        app,
        "".join(
            f"CREATE TRIGGER full_{t} BEFORE INSERT ON {t}"
            f" BEGIN SELECT RAISE(ABORT, '{FULL}'); END;"
            for t in tables
        ),
    )


def free_disk(app: MtaApp, *tables: str) -> None:
    spool_sql(app, "".join(f"DROP TRIGGER full_{t};" for t in tables))


async def readyz(app: MtaApp) -> tuple[int, str]:
    address = app.admin_address
    assert address is not None
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{address[0]}:{address[1]}/readyz") as resp,
    ):
        return resp.status, await resp.text()


async def submit(app: MtaApp) -> str:
    return await send_message(*app.smtp_address, "a@sender.test", ["r@d.test"], MESSAGE)


async def test_not_ready_while_writes_fail_ready_after_a_success(mta: MtaApp) -> None:
    assert await readyz(mta) == (200, "ready\n")
    fill_disk(mta, "messages")
    assert (await submit(mta)).startswith("452 4.3.1")
    assert await readyz(mta) == (503, f"not ready: spool writes fail: {FULL}\n")
    free_disk(mta, "messages")
    assert (await submit(mta)).startswith("250 ")
    assert await readyz(mta) == (200, "ready\n")


async def test_an_idle_mta_notices_room_again_through_its_probe(mta: MtaApp) -> None:
    fill_disk(mta, "messages", "site_events")  # the probe writes there
    assert (await submit(mta)).startswith("452 4.3.1")
    spool = mta.running.spool
    probes = spool.probes
    # Probes keep failing while there is no room: still not ready.
    await wait_for(lambda: spool.probes >= probes + 2, timeout=15)
    assert (await readyz(mta))[0] == 503 and spool.write_failure == FULL
    free_disk(mta, "messages", "site_events")
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
    """A constraint the data breaks says nothing about the disk: still ready."""
    spool_sql(
        mta,
        "CREATE TRIGGER odd BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, 'odd row'); END;",
    )
    assert (await submit(mta)).startswith("451 4.3.0")
    assert await readyz(mta) == (200, "ready\n")
