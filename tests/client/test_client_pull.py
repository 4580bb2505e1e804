"""The pull alternative: `pull_events` against a small aiohttp server speaking the MTA's API."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from campaign_client.log import DeliveryLog
from campaign_client.pull import PullStats, pull_events
from tests.client.client_helpers import HARD, SMTP_250, SMTP_550, ev


class EventsApi:
    """GET /api/v1/events?after=N&wait=S -> two events per page; long-polls when caught up."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.requests: list[dict[str, str]] = []
        self.fail_next = 0
        self.closing = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.query))
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503)
        after = int(request.query.get("after", "0"))
        page = self.events[after:after + 2]
        if not page:
            wait = min(float(request.query.get("wait", "0")), 30.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), timeout=wait)
        return web.json_response({"events": page, "next": after + len(page)})


@pytest.fixture
async def api() -> AsyncIterator[tuple[EventsApi, str]]:
    events = [
        ev("relayed", 1, log_id="1", recipient="a@x.test"),
        ev("relayed", 1, log_id="2", recipient="b@x.test"),
        ev("delivered", 2, log_id="1", recipient="a@x.test", smtp=SMTP_250),
        ev("hard_bounce", 2, log_id="2", recipient="b@x.test", smtp=SMTP_550, failure=HARD),
    ]
    server = EventsApi(events)
    app = web.Application()
    app.router.add_get("/api/v1/events", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield server, f"http://127.0.0.1:{port}"
    server.closing.set()
    await runner.cleanup()


async def test_pull_applies_pages_and_stores_the_cursor(
    api: tuple[EventsApi, str], tmp_path: Path
) -> None:
    server, base = api
    log = DeliveryLog(tmp_path / "log.sqlite")
    cursor = await pull_events(base, log, wait=0, max_rounds=3)
    assert cursor == "4" and log.cursor(base) == "4"
    kpis = log.kpis("D1")
    assert (kpis.by_status["Sent"], kpis.by_status["Failed"]) == (1, 1)
    assert [r.get("after") for r in server.requests] == [None, "2", "4"]
    log.close()
    # A new puller on the same file resumes from the stored cursor.
    reopened = DeliveryLog(tmp_path / "log.sqlite")
    await pull_events(base, reopened, wait=0, max_rounds=1)
    assert server.requests[-1]["after"] == "4"
    # Pulling everything again from the start changes nothing (event ids).
    before = reopened.lines("D1")
    await pull_events(base, reopened, after="0", wait=0, max_rounds=2)
    assert reopened.lines("D1") == before


async def test_pull_retries_after_server_errors(
    api: tuple[EventsApi, str], tmp_path: Path
) -> None:
    server, base = api
    server.fail_next = 1
    log = DeliveryLog(tmp_path / "log.sqlite")
    stats = PullStats()
    await pull_events(base, log, wait=0, max_rounds=2, stats=stats)
    assert stats.errors == 1 and "HTTP 503" in (stats.last_error or "")
    assert stats.events == 2 and log.cursor(base) == "2"


async def test_stop_ends_a_long_poll(api: tuple[EventsApi, str], tmp_path: Path) -> None:
    server, base = api
    log = DeliveryLog(tmp_path / "log.sqlite")
    stop = asyncio.Event()
    task = asyncio.create_task(pull_events(base, log, after="4", wait=30, stop=stop))
    for _ in range(500):
        if server.requests:
            break
        await asyncio.sleep(0.01)
    stop.set()
    assert await task == "4"
