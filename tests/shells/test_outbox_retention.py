"""The event outbox is pruned once every webhook has the events and the retention has passed:
a real MTA relaying to a sink, a real webhook receiver, a real spool file, a manual clock."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import aiohttp

from mta.app import MtaApp
from mta.cli.sink import Sink
from mta.clock import ManualClock
from mta.config.service import FeedbackConfig, WebhookConfig
from mta.feedback.retention import prune_limits
from tests.helpers import SECRET, Hook, mta_config, send_message, spool_rows, started, wait_for

MESSAGE = b"From: a@sender.test\r\nSubject: s\r\n\r\nbody\r\n"
DAY = 86400.0


async def mta(tmp_path: Path, sink: Sink, clock: ManualClock, *urls: str) -> MtaApp:
    config = mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{sink.port}")
    webhooks = tuple(WebhookConfig(url=url, secret=SECRET) for url in urls)
    config = dataclasses.replace(
        config, feedback=FeedbackConfig(webhooks=webhooks, retention=7 * DAY)
    )
    return await started(config, clock=clock)


async def deliver(app: MtaApp, sink: Sink, count: int) -> None:
    before = sink.handler.received
    for i in range(count):
        await send_message(*app.smtp_address, "b@sender.test", [f"r{i}@d.test"], MESSAGE)
    await wait_for(lambda: sink.handler.received == before + count)
    # Delivered and its event are one commit.
    queued = "SELECT COUNT(*) FROM recipients WHERE state = 'queued'"
    await wait_for(lambda: spool_rows(app, queued) == [(0,)])


def event_ids(app: MtaApp) -> list[int]:
    return [row[0] for row in spool_rows(app, "SELECT id FROM events ORDER BY id")]


async def test_sent_and_old_events_are_pruned_and_ids_never_go_back(
    tmp_path: Path, sink: Sink, hook: Hook
) -> None:
    clock = ManualClock()
    app = await mta(tmp_path, sink, clock, hook.url)
    try:
        await deliver(app, sink, 5)
        await wait_for(lambda: app.running.feedback.status()[0].cursor == 10)
        pruner = app.running.pruner
        assert pruner is not None
        clock.advance(6 * DAY)  # not old enough yet
        assert await pruner.prune_once() == 0 and len(event_ids(app)) == 10
        clock.advance(1 * DAY + 1)
        assert await pruner.prune_once() == 9  # the newest stays: ids never go back
        assert event_ids(app) == [10]
        await deliver(app, sink, 1)
        await wait_for(lambda: event_ids(app) == [10, 11, 12])
        await wait_for(lambda: len(hook.events) == 12)
        assert len({e["event_id"] for e in hook.events}) == 12
        # The pull API serves what is left; the metric counts what went.
        address = app.admin_address
        assert address is not None
        base = f"http://{address[0]}:{address[1]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/v1/events?after=0") as resp:
                page = await resp.json()
            async with http.get(f"{base}/metrics") as resp:
                metrics = await resp.text()
        assert [e["kind"] for e in page["events"]] == ["delivered", "relayed", "delivered"]
        assert page["next"] == 12
        assert "mta_events_pruned_total 9" in metrics
    finally:
        await app.stop()


async def test_an_endpoint_that_has_not_taken_the_events_holds_them(
    tmp_path: Path, sink: Sink, hook: Hook
) -> None:
    clock = ManualClock()
    hook.answers[:] = [(500, {})] * 1000  # down all along
    app = await mta(tmp_path, sink, clock, hook.url)
    try:
        await deliver(app, sink, 3)
        clock.advance(30 * DAY)
        pruner = app.running.pruner
        assert pruner is not None
        assert await pruner.prune_once() == 0
        assert len(event_ids(app)) == 6
    finally:
        await app.stop()


async def test_without_webhooks_the_retention_alone_applies(tmp_path: Path, sink: Sink) -> None:
    clock = ManualClock()
    app = await mta(tmp_path, sink, clock)
    try:
        await deliver(app, sink, 4)
        pruner = app.running.pruner
        assert pruner is not None
        pruner.batch = 3  # several small batches in one pass
        clock.advance(8 * DAY)
        assert await pruner.prune_once() == 7
        assert len(event_ids(app)) == 1
    finally:
        await app.stop()


def test_prune_limits() -> None:
    # Retention is real time: at a time scale of 100, 7 real days are 700 clock days.
    assert prune_limits(1000 * DAY, 100.0, 7 * DAY, [5, 9]) == (300 * DAY, 5)
    assert prune_limits(10 * DAY, 1.0, 7 * DAY, None) == (3 * DAY, None)
    assert prune_limits(10 * DAY, 1.0, 7 * DAY, []) == (3 * DAY, 0)
