"""The receiver refuses hostile requests cheaply, over real HTTP: the signature headers and the
size are checked before the body is read (an unsigned request announcing 15 MiB is answered at
once, with nothing sent after its headers), and signed events with fields out of range or JSON
nested too deeply answer 400, not 500."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from campaign_client.cli import main
from campaign_client.log import DeliveryLog
from campaign_client.receiver import Receiver
from campaign_client.webhook import parse_secret, signed_headers
from tests.client.client_helpers import SECRET, ev, post


@pytest.fixture
async def receiver(tmp_path: Path) -> AsyncIterator[Receiver]:
    log = DeliveryLog(tmp_path / "log.sqlite")
    rx = Receiver(log, SECRET, "127.0.0.1", 0, max_body=64 * 1024)
    await rx.start()
    yield rx
    await rx.stop()
    log.close()


async def headers_only(rx: Receiver, headers: dict[str, str]) -> str:
    """Send a request's headers announcing a large body, never the body; the status line."""
    assert rx.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", rx.port)
    try:
        lines = [
            "POST /webhook HTTP/1.1",
            f"Host: 127.0.0.1:{rx.port}",
            "Content-Type: application/json",
            f"Content-Length: {15 * 1024 * 1024}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        # A receiver that reads the body first would wait here for 15 MiB that never come.
        status = await asyncio.wait_for(reader.readline(), 10)
        return status.decode().strip()
    finally:
        writer.close()


async def test_unsigned_request_is_refused_before_its_body(receiver: Receiver) -> None:
    assert await headers_only(receiver, {}) == "HTTP/1.1 401 Unauthorized"
    stale = {"webhook-id": "msg_1", "webhook-timestamp": "1000", "webhook-signature": "v1,xx"}
    assert await headers_only(receiver, stale) == "HTTP/1.1 401 Unauthorized"
    assert receiver.stats.rejected_signature == 2 and receiver.stats.batches == 0


async def test_an_announced_body_over_the_limit_is_413_before_reading(receiver: Receiver) -> None:
    # Plausible headers (the signature cannot be checked without the body).
    signed = signed_headers(parse_secret(SECRET), "msg_big", int(time.time()), b"[]")
    assert await headers_only(receiver, signed) == "HTTP/1.1 413 Request Entity Too Large"
    assert receiver.stats.rejected_size == 1


async def test_a_chunked_body_over_the_limit_is_413(receiver: Receiver) -> None:
    stamp = int(time.time())
    headers = signed_headers(parse_secret(SECRET), "msg_chunked", stamp, b"whatever")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):  # 100 x 8 KiB, past the 64 KiB limit
            yield b" " * 8192

    async with (
        aiohttp.ClientSession() as http,
        http.post(receiver.webhook_url, data=chunks(), headers=headers) as resp,
    ):
        assert resp.status == 413
    assert receiver.stats.rejected_size == 1
    # A batch under the limit still goes through.
    assert await post(receiver.webhook_url, [ev("relayed", 1)]) == 204


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("seq", 10**30, "seq: out of range"),
        ("attempt", -(10**20), "attempt: out of range"),
        ("at", "tomorrow", "at: expected a number"),
    ],
)
async def test_signed_events_out_of_range_answer_400(
    receiver: Receiver, field: str, value: object, reason: str
) -> None:
    assert receiver.port is not None
    event = ev("relayed", 1)
    event[field] = value
    body = json.dumps([event]).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    headers = signed_headers(parse_secret(SECRET), msg_id, int(time.time()), body)
    async with (
        aiohttp.ClientSession() as http,
        http.post(receiver.webhook_url, data=body, headers=headers) as resp,
    ):
        assert resp.status == 400
        text = await resp.text()
    assert reason in text and text.count("\n") == 1
    assert receiver.log.line("D1", "1", "a@x.test") is None


async def test_signed_deeply_nested_json_answers_400(receiver: Receiver) -> None:
    status = await post(receiver.webhook_url, b"[" * 50_000)
    assert status == 400 and receiver.stats.rejected_body == 1


def test_the_limit_is_a_receive_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["receive", "--listen", "127.0.0.1:0", "--secret", SECRET, "--max-body", "10",
            "--log", str(tmp_path / "log.sqlite")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == "campaign-client: error: max_body must be at least 1024 bytes\n"
