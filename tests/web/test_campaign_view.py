"""The console's Campaign view: the MTA's admin API reads the client's delivery log over HTTP
(the client's GET /deliveries), and says plainly when no client is there."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp

from campaign_client.log import DeliveryLog
from campaign_client.receiver import Receiver
from tests.client.client_helpers import SECRET
from tests.web.test_operator import admin, admin_stack


async def test_the_console_reads_the_clients_deliveries(net: str, tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "campaign-log.sqlite")
    log.register("DLV-7", [("L1", "ann@isp.test", None), ("L2", "ben@isp.test", None)], time.time())
    receiver = Receiver(log, SECRET, "127.0.0.1", 0)
    await receiver.start()
    stack = None
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{receiver.port}/deliveries") as got:
                direct = await got.json()
            assert [d["delivery_id"] for d in direct["deliveries"]] == ["DLV-7"]
            assert sorted(line["recipient"] for line in direct["lines"]) == [
                "ann@isp.test", "ben@isp.test",
            ]
            stack = await admin_stack(
                net, tmp_path, client_url=f"http://127.0.0.1:{receiver.port}/"
            )
            async with http.get(f"{admin(stack)}/api/v1/campaign") as got:
                seen = await got.json()
            assert seen["available"] is True
            assert seen["deliveries"][0]["total"] == 2
            await receiver.stop()
            async with http.get(f"{admin(stack)}/api/v1/campaign") as got:
                gone = await got.json()
            assert gone["available"] is False and "cannot reach the client" in gone["reason"]
    finally:
        await receiver.stop()
        if stack is not None:
            await stack.stop()
        log.close()


async def test_without_a_client_the_view_says_so(net: str, tmp_path: Path) -> None:
    stack = await admin_stack(net, tmp_path)
    try:
        async with aiohttp.ClientSession() as http, http.get(
            f"{admin(stack)}/api/v1/campaign"
        ) as got:
            answer = await got.json()
        assert answer == {
            "available": False, "reason": "no Campaign client (mta up --client runs one)",
        }
    finally:
        await stack.stop()
