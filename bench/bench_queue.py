"""Queue scaling: the due-work pick and the MTA's memory with 1,000 vs 1,000,000 queued.

    python bench/bench_queue.py [--sizes 1000,1000000] [--domains 20]

For each size it fills a spool with that many due recipients over a number of
domains, then measures, in this process, the per-domain pick (lease 20
recipients of one domain: the scheduler's unit of work) and the start-up scan,
and, in a real `mta serve` process started on that spool (delivery pointed at a
closed port, so the mail stays queued), the resident memory after start.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import start_mta
from mta.queue.records import Release
from mta.queue.schema import SCHEMA, SCHEMA_VERSION
from mta.queue.spool import Spool

CONTENT = b"From: a@sender.test\r\nSubject: queued\r\n\r\n" + b"x" * 1800 + b"\r\n"


def fill(path: Path, count: int, domains: int, now: float) -> None:
    """Write `count` queued recipients (one per message) straight into a new spool file."""
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    conn.execute("PRAGMA journal_mode=WAL")
    expires = now + 3 * 86400
    batch = 50_000
    for start in range(0, count, batch):
        size = min(batch, count - start)
        conn.executemany(
            "INSERT INTO messages (id, queue_id, mail_from, received_at, expires_at, size,"
            " pending, content) VALUES (?, ?, 'b@sender.test', ?, ?, ?, 1, ?)",
            [(start + i + 1, f"Q{start + i:012d}", now, expires, len(CONTENT), CONTENT)
             for i in range(size)],
        )
        conn.executemany(
            "INSERT INTO recipients (message_id, address, domain, next_attempt_at, expires_at,"
            " seq) VALUES (?, ?, ?, ?, ?, 1)",
            [(start + i + 1, f"r{start + i}@d{(start + i) % domains}.test",
              f"d{(start + i) % domains}.test", now - 1.0 + (start + i) * 1e-6, expires)
             for i in range(size)],
        )
        conn.commit()
    conn.close()


async def measure_picks(path: Path, domains: int, rounds: int) -> dict[str, float]:
    spool = await Spool.open(path)
    try:
        started = time.perf_counter()
        queues = await spool.queues()
        scan = time.perf_counter() - started
        assert len(queues) == domains
        rng = random.Random(1)
        now = time.time() + 10
        timings = []
        for _ in range(rounds):
            domain = f"d{rng.randrange(domains)}.test"
            t0 = time.perf_counter()
            pick = await spool.pick([(domain, 20)], now)
            timings.append(time.perf_counter() - t0)
            assert pick.recipients
            # Give them back as they were, so every round sees the same queue.
            await spool.release([Release(r.recipient_id, now - 1.0) for r in pick.recipients])
        t0 = time.perf_counter()
        await spool.pick_expired(now, 500)
        expiry = time.perf_counter() - t0
    finally:
        await spool.close()
    return {
        "pick_ms": statistics.median(timings) * 1000,
        "pick_p99_ms": sorted(timings)[int(len(timings) * 0.99) - 1] * 1000,
        "scan_s": scan,
        "expiry_ms": expiry * 1000,
    }


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def measure_rss(data_dir: Path, idle: float) -> float:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: every attempt is refused, the mail stays queued
    mta = await start_mta("serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir),
                          "--relayhost", f"127.0.0.1:{port}", "--admin", "",
                          "--log-level", "error")
    try:
        await asyncio.sleep(idle)
        return rss_mb(mta.process.pid)
    finally:
        await mta.stop()


async def main_async(args: argparse.Namespace) -> int:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        for size in args.sizes:
            data_dir = Path(tmp) / f"q{size}"
            data_dir.mkdir()
            path = data_dir / "spool.sqlite3"
            t0 = time.perf_counter()
            fill(path, size, args.domains, time.time())
            fill_s = time.perf_counter() - t0
            picks = await measure_picks(path, args.domains, args.rounds)
            rss = await measure_rss(data_dir, args.idle)
            rows.append((size, fill_s, picks, rss, os.path.getsize(path) / 1e6))
    base = rows[0]
    print(f"\nqueue benchmark: {args.domains} domains, picks of 20 recipients of one domain")
    print(f"{'queued':>10} {'pick median ms':>15} {'pick p99 ms':>12} {'x base':>7} "
          f"{'start scan s':>13} {'MTA RSS MB':>11} {'x base':>7} {'spool MB':>9}")
    for size, _, picks, rss, db_mb in rows:
        print(f"{size:>10} {picks['pick_ms']:>15.3f} {picks['pick_p99_ms']:>12.3f} "
              f"{picks['pick_ms'] / base[2]['pick_ms']:>7.2f} {picks['scan_s']:>13.2f} "
              f"{rss:>11.1f} {rss / base[3]:>7.2f} {db_mb:>9.0f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1_000, 1_000_000])
    parser.add_argument("--domains", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--idle", type=float, default=3.0, help="seconds before reading RSS")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
