"""Feedback events over real HTTP: signed webhook batches, at-least-once through outages,
Retry-After, 410, the pull API with long-poll, and the admin endpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from mta.app import MtaApp
from mta.cli.sink import Sink
from tests.helpers import SECRET, Hook, mta_config, send_message, started, wait_for

MESSAGE = b"From: a@sender.test\r\nSubject: s\r\nX-Campaign-Log-Id: L1\r\n\r\nbody\r\n"


async def mta_with_hook(tmp_path: Path, sink: Sink, url: str) -> MtaApp:
    import dataclasses

    from mta.config.service import FeedbackConfig, WebhookConfig

    config = mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{sink.port}")
    config = dataclasses.replace(
        config,
        feedback=FeedbackConfig(webhooks=(WebhookConfig(url=url, secret=SECRET),), batch_max=50),
    )
    return await started(config)


async def test_events_arrive_signed_and_batched(tmp_path: Path, sink: Sink, hook: Hook) -> None:
    # The first POST is put off for a second, so the events that follow share a batch.
    hook.answers[:] = [(503, {"Retry-After": "1"})]
    app = await mta_with_hook(tmp_path, sink, hook.url)
    try:
        for i in range(3):
            await send_message(*app.smtp_address, "b@sender.test", [f"r{i}@d.test"], MESSAGE)
        await wait_for(lambda: len(hook.events) == 6)
        assert hook.bad_signatures == 0
        assert max(hook.batches) > 1 and sum(hook.batches) == 6
        by_recipient: dict[str, list[str]] = {}
        for event in hook.events:
            by_recipient.setdefault(event["recipient"], []).append(event["kind"])
            assert event["log_id"] == "L1"
        assert all(kinds == ["relayed", "delivered"] for kinds in by_recipient.values())
    finally:
        await app.stop()


async def test_endpoint_down_then_up_loses_nothing(tmp_path: Path, sink: Sink, hook: Hook) -> None:
    hook.answers[:] = [(500, {}), (502, {}), (429, {"Retry-After": "1"})]
    app = await mta_with_hook(tmp_path, sink, hook.url)
    try:
        for i in range(4):
            await send_message(*app.smtp_address, "b@sender.test", [f"r{i}@d.test"], MESSAGE)
        await wait_for(lambda: len({e["event_id"] for e in hook.events}) == 8, timeout=30)
        assert hook.requests >= 4
        ids = [e["event_id"] for e in hook.events]
        # Duplicates are allowed (at least once) but only ever with the same event_id.
        assert len(set(ids)) == 8
        assert app.running.feedback.status()[0].cursor > 0
    finally:
        await app.stop()


async def test_gone_disables_the_endpoint(tmp_path: Path, sink: Sink, hook: Hook) -> None:
    hook.answers[:] = [(410, {})]
    app = await mta_with_hook(tmp_path, sink, hook.url)
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@d.test"], MESSAGE)
        await wait_for(lambda: app.running.feedback.status()[0].disabled)
        await send_message(*app.smtp_address, "b@sender.test", ["r2@d.test"], MESSAGE)
        await asyncio.sleep(0.5)
        assert hook.requests == 1 and hook.events == []
    finally:
        await app.stop()


async def test_pull_api_long_poll_and_admin_endpoints(tmp_path: Path, sink: Sink) -> None:
    app = await started(mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{sink.port}"))
    address = app.admin_address
    assert address is not None
    base = f"http://{address[0]}:{address[1]}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/api/v1/events?after=0") as resp:
                assert await resp.json() == {"events": [], "next": 0}
            # A long-poll waiting for the first event returns when it is committed.
            poll = asyncio.create_task(http.get(f"{base}/api/v1/events?after=0&wait=10"))
            await asyncio.sleep(0.2)
            await send_message(*app.smtp_address, "b@sender.test", ["r@d.test"], MESSAGE)
            resp = await asyncio.wait_for(poll, 5)
            page = await resp.json()
            assert page["events"][0]["kind"] == "relayed" and page["next"] >= 1
            await wait_for(lambda: sink.handler.received == 1)
            async with http.get(f"{base}/livez") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/readyz") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/metrics") as resp:
                text = await resp.text()
                assert "mta_messages_accepted_total 1" in text
            async with http.get(f"{base}/api/v1/openapi.json") as resp:
                assert "/api/v1/events" in (await resp.json())["paths"]
            async with http.post(
                f"{base}/api/v1/classify", json={"reply": "550 5.1.1 No such user"}
            ) as resp:
                verdict = await resp.json()
                assert verdict["failure_type"] == "Hard" and verdict["permanent"] is True
            async with http.post(f"{base}/api/v1/classify", data=b"not json") as resp:
                assert resp.status == 400 and "error" in await resp.json()
            async with http.get(f"{base}/api/v1/events?after=x") as resp:
                assert resp.status == 400
            queue_id = page["events"][0]["queue_id"]
            async with http.get(f"{base}/api/v1/messages/{queue_id}") as resp:
                assert (await resp.json())["attempts"][0]["address"] == "r@d.test"
            async with http.get(f"{base}/api/v1/messages/NOPE") as resp:
                assert resp.status == 404
    finally:
        await app.stop()
