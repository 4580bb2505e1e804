"""What feedback leaves behind: outbox bytes per delivered message (pruning) and events per
recipient for a next hop answering 452 4.5.3 for the whole validity (coalescing).

    python -m bench.bench_outbox [--messages 2000]

Outbox: an in-process MTA (manual clock, real spool file) relays `--messages` messages to
`mta sink` and posts its events to a webhook that takes them all; it prints the outbox's
bytes per delivered message (SQLite's dbstat: the pages of the events table, free space
excluded) and the whole spool's, then the same after the retention passes and the pruner
runs. Ratios are after / before.

452 loop: one recipient meets a next hop that answers "452 4.5.3 Too many recipients" to
every RCPT; the manual clock is stepped to each next attempt until the 3.5-day validity
ends. Printed: attempts and events per recipient with
`feedback.coalesce_repeats = "0s"` (every attempt reported, the old behaviour) and with the
default "6h", in the same run. Exits 1 when pruning keeps more than a tenth of the outbox or
coalescing does not cut the events at least tenfold.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sqlite3
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiohttp import web

from bench.loadgen import make_message, run_load
from mta.app import MtaApp
from mta.cli.sink import Sink
from mta.clock import ManualClock
from mta.config.service import load_config

SECRET = "whsec_YmVuY2gtb3V0Ym94LXNlY3JldC1rZXk="
DAY = 86400.0


def query(app: MtaApp, sql: str) -> list[Any]:
    conn = sqlite3.connect(app.config.data_path / "spool.sqlite3")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def outbox_bytes(app: MtaApp) -> int:
    """Bytes of the pages holding the events table (dbstat), free pages excluded."""
    rows = query(app, "SELECT SUM(pgsize - unused) FROM dbstat WHERE name = 'events'")
    return int(rows[0][0] or 0)


def spool_bytes(app: MtaApp) -> int:
    """Bytes of the pages holding any table or index (dbstat), free pages excluded."""
    return int(query(app, "SELECT SUM(pgsize - unused) FROM dbstat")[0][0] or 0)


async def until(predicate: Any, timeout: float = 300.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError("the benchmark's condition was not reached")
        await asyncio.sleep(0.05)


class Taker:
    """A webhook endpoint that takes every batch (the bench measures the sender's side)."""

    def __init__(self) -> None:
        self.events = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def take(self, request: web.Request) -> web.Response:
        self.events += len(await request.json())
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/hook", self.take)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


async def deliver(app: MtaApp, sink: Sink, messages: int) -> None:
    host, port = app.smtp_address
    message = make_message(2048).replace(
        b"X-Campaign-Delivery-Id: BENCH", b"X-Campaign-Delivery-Id: BENCH\r\nX-Campaign-Log-Id: L"
    )
    target = sink.handler.received + messages
    result = await run_load(host, port, messages, 10, message, "r{i}@dest.test")
    assert result.sent == messages, result
    await until(lambda: sink.handler.received >= target)
    await until(lambda: query(app, "SELECT COUNT(*) FROM recipients WHERE state='queued'")
                == [(0,)])


async def outbox(work: Path, messages: int) -> dict[str, float]:
    sink = await Sink.start()
    taker = Taker()
    await taker.start()
    clock = ManualClock()
    config = load_config(None, environ={}, flags={
        "smtp.listen": "127.0.0.1:0", "admin.listen": "", "data_dir": str(work / "outbox"),
        "delivery.relayhost": f"127.0.0.1:{sink.port}", "feedback.url": taker.url,
        "feedback.secret": SECRET, "feedback.batch_max": 500,
    })
    app = MtaApp(config, clock=clock)
    await app.start()
    try:
        await deliver(app, sink, messages)
        await until(lambda: taker.events >= 2 * messages)
        before, spool_before = outbox_bytes(app), spool_bytes(app)
        clock.advance(config.feedback.retention + 1)
        pruner = app.running.pruner
        assert pruner is not None
        pruned = await pruner.prune_once()
        after, spool_after = outbox_bytes(app), spool_bytes(app)
        return {
            "before": before / messages,
            "after": after / messages,
            "pruned": pruned,
            "spool_before": spool_before / messages,
            "spool_after": spool_after / messages,
        }
    finally:
        await app.stop()
        await taker.stop()
        await sink.close()


async def answer_452(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"220 hop.bench ESMTP\r\n")
    try:
        while line := await reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                writer.write(b"250-hop.bench\r\n250 PIPELINING\r\n")
            elif verb == b"RCPT":
                writer.write(b"452 4.5.3 Too many recipients\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def loop_452(work: Path, recipients: int, every: str) -> dict[str, float]:
    hop = await asyncio.start_server(answer_452, "127.0.0.1", 0)
    port = hop.sockets[0].getsockname()[1]
    clock = ManualClock()
    config = load_config(None, environ={}, flags={
        "smtp.listen": "127.0.0.1:0", "admin.listen": "", "data_dir": str(work / f"452-{every}"),
        "delivery.relayhost": f"127.0.0.1:{port}", "feedback.coalesce_repeats": every,
    })
    app = MtaApp(config, clock=clock, rng=random.Random(1))
    await app.start()
    try:
        host, smtp_port = app.smtp_address
        rcpts = [f"r{i}@dest.test" for i in range(recipients)]
        result = await run_load(host, smtp_port, 1, 1, make_message(1024), rcpts[0])
        assert result.sent == 1

        def row() -> tuple[Any, ...]:
            return tuple(query(app, "SELECT state, leased, next_attempt_at, attempts"
                               " FROM recipients")[0])

        for _ in range(5000):
            await until(lambda: row()[1] == 0)
            state, _, next_at, _ = row()
            if state != "queued":
                break
            made = query(app, "SELECT COUNT(*) FROM attempts")[0][0]
            clock.set(max(next_at, clock.now()))
            await until(lambda: query(app, "SELECT COUNT(*) FROM attempts")[0][0] > made  # noqa: B023
                        or row()[0] != "queued")
        attempts = query(app, "SELECT COUNT(*) FROM attempts")[0][0]
        kinds = dict(query(app, "SELECT kind, COUNT(*) FROM events GROUP BY kind"))
        return {"attempts": attempts, "events": sum(kinds.values()),
                "soft": kinds.get("soft_bounce", 0), "expired": kinds.get("expired", 0)}
    finally:
        await app.stop()
        hop.close()
        await hop.wait_closed()


async def run(messages: int, work: Path) -> int:
    print(f"outbox: {messages} messages delivered, their events posted to a webhook")
    o = await outbox(work, messages)
    print("  bytes per delivered message        outbox    whole spool")
    print(f"  before pruning                   {o['before']:8.0f}   {o['spool_before']:8.0f}")
    print(f"  after the retention passes       {o['after']:8.0f}   {o['spool_after']:8.0f}"
          f"   ({int(o['pruned'])} events pruned)")
    print(f"  ratio after / before             {o['after'] / o['before']:8.3f}"
          f"   {o['spool_after'] / o['spool_before']:8.3f}")
    print("452 4.5.3 for the whole 3.5-day validity, one recipient (manual clock)")
    off = await loop_452(work, 1, "0s")
    on = await loop_452(work, 1, "6h")
    for name, r in (("every attempt (0s)", off), ("coalesced (6h)", on)):
        print(f"  {name:20s} attempts {r['attempts']:4.0f}  events {r['events']:4.0f}"
              f"  soft_bounce {r['soft']:4.0f}  expired {r['expired']:.0f}")
    print(f"  events per recipient, coalesced / every attempt: {on['events'] / off['events']:.3f}")
    ok = o["after"] <= o["before"] / 10 and on["events"] * 10 <= off["events"]
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as work:
        return asyncio.run(run(args.messages, Path(work)))


if __name__ == "__main__":
    sys.exit(main())
