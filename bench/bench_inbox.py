"""Inbox latency: list and search p95 over HTTP with 100,000 stored messages, against the same
requests on an empty store, in the same run.

    python bench/bench_inbox.py [--messages 100000] [--repeat 40]

Fills a SQLite store of the personas (`mta.sim.store`, as the simulation writes it) with
generated messages (5 personas, 20 delivery ids, one in ten unsigned), serves it with the
simulation's HTTP app on a loopback port, and times each request (the first page of 50):
the list, to:, from:, subject:, delivery:, persona:, dkim:, a bare word, and one query that
matches nothing (a full scan). Prints p50 and p95 per request for both stores, and the
ratio of p95s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp

from mta.sim import store
from mta.sim.http import HttpServer, build_app
from mta.sim.inbox_http import Inbox

PERSONAS = ("gmail", "yahoo", "outlook", "isp", "blackhole")
QUERIES = {
    "list": "",
    "to:": "to:user4242@",
    "from:": "from:news7@",
    "subject:": 'subject:"offer 123"',
    "delivery:": "delivery:DLV-7",
    "persona:": "persona:yahoo",
    "dkim:": "dkim:none",
    "word": "offer",
    "no match": "to:nobody-at-all@",
}


def message(i: int) -> store.Received:
    persona = PERSONAS[i % len(PERSONAS)]
    signed = "" if i % 10 == 0 else "DKIM-Signature: v=1; a=rsa-sha256; d=campaign.test; b=x\r\n"
    content = (
        f"{signed}Received: from mta ([127.0.0.1]) by mta-sim with ESMTP id Q{i:08d}\r\n"
        f"Feedback-ID: DLV-{i % 20}:mta-sim\r\nFrom: News <news{i % 50}@campaign.test>\r\n"
        f"To: <user{i}@{persona}.test>\r\nSubject: Weekly offer {i}\r\n"
        f"Message-ID: <{i}@campaign.test>\r\n\r\n" + "Hello there, this is the offer.\r\n" * 12
    ).encode()
    return store.Received(
        persona, "bounces@campaign.test", [f"user{i}@{persona}.test"], content, 1.8e9 + i,
        [("MAIL FROM:<bounces@campaign.test>", "250 2.1.0 OK"), ("end of data", "250 2.0.0 OK")],
    )


def fill(data_dir: Path, count: int) -> float:
    kept = store.SqliteStore(data_dir)
    kept.dkim_check = lambda content: "pass" if b"DKIM-Signature" in content[:200] else "none"
    started = time.perf_counter()
    try:
        for persona in PERSONAS:
            kept.open(persona)
        for start in range(0, count, 5000):
            errors = kept.write([message(i) for i in range(start, min(count, start + 5000))])
            assert not any(errors), errors[0]
    finally:
        kept.close()
    return time.perf_counter() - started


async def measure(data_dir: Path, repeat: int) -> dict[str, list[float]]:
    app = build_app(data_dir, lambda: {}, lambda: list(PERSONAS), Inbox(data_dir, {}, ""))
    server = await HttpServer.start(app, "127.0.0.1", 0)
    host, port = server.address
    times: dict[str, list[float]] = {name: [] for name in QUERIES}
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(repeat):
                for name, query in QUERIES.items():
                    started = time.perf_counter()
                    async with http.get(
                        f"http://{host}:{port}/sim/v1/search", params={"query": query}
                    ) as got:
                        assert got.status == 200, await got.text()
                        await got.json()
                    times[name].append(time.perf_counter() - started)
    finally:
        await server.stop()
    return times


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else values[0]


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-inbox-") as tmp:
        empty = Path(tmp) / "empty"
        full = Path(tmp) / "full"
        store.SqliteStore(empty).close()
        seconds = fill(full, args.messages)
        size = (full / store.SQLITE_FILE).stat().st_size >> 20
        print(f"stored {args.messages} messages in {seconds:.1f}s "
              f"({args.messages / seconds:.0f}/s, {size} MiB)")
        base = await measure(empty, args.repeat)
        big = await measure(full, args.repeat)
    print(f"\ninbox over HTTP: first page of 50, {args.repeat} requests each, "
          f"{args.messages} messages vs an empty store (same run)")
    print(f"{'request':<11} {'empty p50':>10} {'empty p95':>10} {'full p50':>10} {'full p95':>10}"
          f" {'p95 ratio':>10}")
    for name in QUERIES:
        e, f = base[name], big[name]
        print(f"{name:<11} {statistics.median(e) * 1000:>8.1f}ms {p95(e) * 1000:>8.1f}ms "
              f"{statistics.median(f) * 1000:>8.1f}ms {p95(f) * 1000:>8.1f}ms "
              f"{p95(f) / p95(e):>9.1f}x")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=40)
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
