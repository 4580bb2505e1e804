"""Contents kept in memory from commit to delivery: under concurrent sessions, once every
message is delivered none is held (`mta_fresh_content_bytes` in the metrics)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from mta.cli.sink import Sink
from tests.helpers import mta_config, send_message, spool_rows, started, wait_for

MESSAGE = b"From: <news@sender.test>\r\nTo: <rcpt@dest.test>\r\nSubject: Hi\r\n\r\nHello.\r\n"


async def test_no_content_is_held_once_every_message_of_busy_sessions_is_delivered(
    tmp_path: Path, sink: Sink
) -> None:
    """Twenty sessions at once, ten messages each, while delivery picks: a content kept after
    the pick of its recipients had already gone would be held until pushed out by newer ones
    (16 MiB of them), for nothing. Each pick takes the contents of what it leases, messages
    committed while it ran included (tests/queue/test_scheduler.py makes that case happen)."""
    app = await started(mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{sink.port}"))
    host, port = app.smtp_address

    async def session(n: int) -> None:
        for i in range(10):
            rcpt = f"r{n}.{i}@dest.test"
            reply = await send_message(host, port, "news@sender.test", [rcpt], MESSAGE)
            assert reply.startswith("250"), reply

    try:
        await asyncio.gather(*(session(n) for n in range(20)))
        delivered = "SELECT COUNT(*) FROM recipients WHERE state = 'delivered'"
        await wait_for(lambda: spool_rows(app, delivered)[0][0] == 200, timeout=60)
        metrics = await app.metrics()
    finally:
        await app.stop()
    assert metrics["mta_fresh_content_bytes"] == 0
