"""A lean SMTP load generator (like Postfix's smtp-source): N sessions, pipelined envelopes.

Each session sends its share of messages over one connection: MAIL, RCPT and DATA
in one write (the server offers PIPELINING), then the content and the dot. It
uses raw asyncio streams so that the generator costs far less CPU than the
servers it measures.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field


def make_message(size: int, index: int = 0, sender: str = "news@sender.test") -> bytes:
    """A plausible message of about `size` bytes (CRLF, lines under 78 characters)."""
    head = (
        f"From: Newsletter <{sender}>\r\nTo: <rcpt{index}@dest.test>\r\n"
        f"Subject: Benchmark message {index}\r\nMessage-ID: <bench.{index}@sender.test>\r\n"
        "Date: Fri, 27 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "X-Campaign-Delivery-Id: BENCH\r\n\r\n"
    ).encode()
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    body = line * max(1, (size - len(head)) // len(line))
    return head + body


async def _reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


@dataclass
class LoadResult:
    sent: int
    failed: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # final dot written -> reply, s

    def percentile(self, share: float) -> float:
        """The latency (seconds) below which `share` (0..1) of the accepted messages fall."""
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


async def _session(
    host: str,
    port: int,
    indexes: range,
    message: bytes,
    recipient: str,
    counter: list[int],
    interval: float,
    latencies: list[float],
) -> tuple[int, int]:
    """Send one message per index (`recipient` may hold "{i}"), every `interval` seconds."""
    reader, writer = await asyncio.open_connection(host, port)
    await _reply(reader)
    writer.write(b"EHLO loadgen.test\r\n")
    await _reply(reader)
    stuffed = message.replace(b"\r\n.", b"\r\n..") + b".\r\n"
    sent = failed = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    for n, index in enumerate(indexes):
        if interval:
            delay = started + n * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        envelope = (
            f"MAIL FROM:<bounces@sender.test> SIZE={len(message)}\r\n"
            f"RCPT TO:<{recipient.format(i=index)}>\r\nDATA\r\n"
        ).encode()
        writer.write(envelope)
        mail, rcpt, data = (await _reply(reader), await _reply(reader), await _reply(reader))
        if not (mail.startswith(b"250") and rcpt.startswith(b"250") and data.startswith(b"354")):
            failed += 1
            if data.startswith(b"354"):
                writer.write(b".\r\n")
                await _reply(reader)
            else:
                writer.write(b"RSET\r\n")
                await _reply(reader)
            continue
        writer.write(stuffed)
        dot = time.perf_counter()
        if (await _reply(reader)).startswith(b"250"):
            latencies.append(time.perf_counter() - dot)
            sent += 1
            counter[0] += 1
        else:
            failed += 1
    writer.write(b"QUIT\r\n")
    await writer.drain()
    writer.close()
    return sent, failed


async def run_load(
    host: str,
    port: int,
    total: int,
    sessions: int,
    message: bytes,
    recipient: str = "rcpt@dest.test",
    rate: float | None = None,
) -> LoadResult:
    """Send `total` messages over `sessions` concurrent connections; time the whole.

    `recipient` may contain "{i}", the message's number (0..total-1); `rate` (messages
    per second over all sessions) paces the load, None sends as fast as it goes.
    """
    interval = sessions / rate if rate else 0.0
    counter = [0]
    latencies: list[float] = []
    started = time.perf_counter()
    results = await asyncio.gather(
        *(
            _session(
                host, port, range(k, total, sessions), message, recipient, counter, interval,
                latencies,
            )
            for k in range(min(sessions, total))
        )
    )
    seconds = time.perf_counter() - started
    return LoadResult(
        sum(r[0] for r in results), sum(r[1] for r in results), seconds, latencies
    )
