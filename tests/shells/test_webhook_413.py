"""A receiver whose body limit is below the MTA's batch answers 413; the MTA halves its batches
for that endpoint until they fit, and every event arrives. Real parts on both sides: the MTA
relaying to `mta sink`, the Campaign client's receiver with a 4 KiB limit and its SQLite log."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from campaign_client.log import DeliveryLog
from campaign_client.receiver import Receiver
from mta.cli.sink import Sink
from mta.config.service import FeedbackConfig, WebhookConfig
from tests.helpers import SECRET, mta_config, send_message, started, wait_for

MESSAGE = (
    b"From: a@sender.test\r\nSubject: s\r\nX-Campaign-Delivery-Id: D1\r\n"
    b"X-Campaign-Log-Id: L{i}\r\n\r\nbody\r\n"
)


async def test_413_halves_the_batch_until_it_fits(tmp_path: Path) -> None:
    sink = await Sink.start()
    log = DeliveryLog(tmp_path / "log.sqlite")
    receiver = Receiver(log, SECRET, "127.0.0.1", 0, max_body=4096)
    await receiver.start()
    base = mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{sink.port}")
    hook = WebhookConfig(url=receiver.webhook_url, secret=SECRET)
    # First without the webhook, so that all 40 events wait in the outbox: the first batch
    # (40 events, about 13 KB) is over the receiver's 4 KiB.
    app = await started(base)
    try:
        for i in range(20):
            message = MESSAGE.replace(b"{i}", str(i).encode())
            await send_message(*app.smtp_address, "b@sender.test", [f"r{i}@d.test"], message)
        await wait_for(lambda: sink.handler.received == 20)
        await app.stop()
        config = dataclasses.replace(base, feedback=FeedbackConfig(webhooks=(hook,)))
        app = await started(config)
        status = app.running.feedback.status()[0]
        await wait_for(lambda: status.delivered == 40, timeout=30)
        # 40 -> 413, 20 -> 413, then four batches of 10.
        assert receiver.stats.rejected_size == 2 and status.last_status == 413
        assert receiver.stats.batches == 4 and receiver.stats.events == 40
        assert log.kpis("D1").by_status["Sent"] == 20
    finally:
        await app.stop()
        await receiver.stop()
        log.close()
        await sink.close()
