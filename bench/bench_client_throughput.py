"""Benchmark: the campaign client's own costs (submission, webhook intake, KPIs).

- build: microseconds to build one message (template, headers, Message-ID).
- submit: messages/s submitted with `campaign_client.submit` (N sessions, connection reuse) to
  an aiosmtpd sink in a CHILD process that answers "250 2.0.0 <id> queued" (so the sink does
  not share our core), with the delivery log written as in `campaign-client send`.
- webhooks: events/s through `Receiver` (signature check, JSON, one SQLite transaction per
  batch, fsync) for relayed + delivered events posted in batches by an aiohttp client, and the
  POST -> 204 latency per batch (median, p99).
- kpis: milliseconds for `DeliveryLog.kpis` over the delivery's lines.

    .venv/bin/python bench/bench_client_throughput.py [--messages 5000] [--sessions 10]
        [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from campaign_client.log import DeliveryLog
from campaign_client.receiver import Receiver
from campaign_client.submission import Delivery, Recipient, build_message, submit
from campaign_client.webhook import parse_secret, signed_headers

SECRET = "whsec_YmVuY2htYXJrLWtleS1iZW5jaG1hcmsta2V5LTMy"

SINK = """
import asyncio, sys
from aiosmtpd.smtp import SMTP
class Sink:
    n = 0
    async def handle_DATA(self, server, session, envelope):
        Sink.n += 1
        return f"250 2.0.0 S{Sink.n:07d} queued"
async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Sink()), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


def bench_build(count: int) -> float:
    delivery = Delivery(
        "B",
        [Recipient("u@a.test", "1", {"first_name": "U"})],
        subject="Hi {first_name}",
        template="Hello {first_name}\n" * 40,
    )
    recipient = delivery.recipients[0]
    started = time.perf_counter()
    for i in range(count):
        build_message(delivery, recipient, f"<{i}@b>", 0.0)
    return (time.perf_counter() - started) / count * 1e6


async def bench_submit(messages: int, sessions: int, folder: Path) -> tuple[float, float]:
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        recipients = [
            Recipient(f"user{i}@d{i % 7}.test", str(i), {"first_name": f"U{i}"})
            for i in range(messages)
        ]
        delivery = Delivery(
            "BENCH",
            recipients,
            subject="Hi {first_name}",
            template="Hello {first_name},\n" + "news line\n" * 150,
        )
        log = DeliveryLog(folder / "submit.sqlite")
        result = await submit(delivery, "127.0.0.1", port, log=log, sessions=sessions)
        assert result.accepted == messages, result
        started = time.perf_counter()
        kpis = log.kpis("BENCH")
        kpi_ms = (time.perf_counter() - started) * 1000
        assert kpis.total == messages
        log.close()
        return result.rate, kpi_ms
    finally:
        sink.terminate()
        sink.wait()


async def bench_webhooks(messages: int, batch: int, folder: Path) -> tuple[float, list[float]]:
    log = DeliveryLog(folder / "webhooks.sqlite")
    key = parse_secret(SECRET)
    async with Receiver(log, SECRET, "127.0.0.1", 0) as receiver:
        events = []
        for i in range(messages):
            for seq, kind in ((1, "relayed"), (2, "delivered")):
                events.append(
                    {
                        "event_id": uuid.uuid4().hex,
                        "seq": seq,
                        "kind": kind,
                        "at": time.time(),
                        "queue_id": f"Q{i}",
                        "delivery_id": "W",
                        "log_id": str(i),
                        "recipient": f"user{i}@a.test",
                        "attempt": seq - 1,
                        "smtp": {
                            "code": 250,
                            "enhanced": "2.0.0",
                            "text": "ok",
                            "phase": "dot",
                            "mx": "mx.a.test",
                        },
                        "bounce_class": None,
                        "failure": None,
                        "next_attempt_at": None,
                        "possible_duplicate": False,
                    }
                )
        bodies = [json.dumps(events[i : i + batch]).encode() for i in range(0, len(events), batch)]
        latencies: list[float] = []
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            for body in bodies:
                headers = signed_headers(key, uuid.uuid4().hex, int(time.time()), body)
                sent = time.perf_counter()
                async with session.post(receiver.webhook_url, data=body, headers=headers) as resp:
                    assert resp.status == 204, resp.status
                latencies.append((time.perf_counter() - sent) * 1000)
            elapsed = time.perf_counter() - started
        assert log.kpis("W").by_status["Sent"] == messages
    log.close()
    return len(events) / elapsed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=10)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    print(f"build_message: {bench_build(2000):.0f} us per message (2 KB body)")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rate, kpi_ms = asyncio.run(bench_submit(args.messages, args.sessions, folder))
        print(
            f"submit: {args.messages} messages, {args.sessions} sessions -> {rate:.0f} msg/s "
            "(sink in a child process; delivery log written)"
        )
        print(f"kpis: {kpi_ms:.1f} ms over {args.messages} lines")
        events_per_s, latencies = asyncio.run(bench_webhooks(args.messages, args.batch, folder))
        latencies.sort()
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"webhooks: {2 * args.messages} events in batches of {args.batch} -> "
            f"{events_per_s:.0f} events/s; POST->204 median "
            f"{statistics.median(latencies):.1f} ms, p99 {p99:.1f} ms (commit + fsync)"
        )


if __name__ == "__main__":
    main()
