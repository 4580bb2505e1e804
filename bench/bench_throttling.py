"""Throttling replies provoked per 1,000 messages: the adaptive MTA against a naive sender.

    python bench/bench_throttling.py [--messages 2000] [--naive-rate 3] [--scale 60]

One Gmail-like persona accepts 100 messages per minute per sending IP and answers
Gmail's "421 4.7.28 ... unusual rate" above that. The same burst of messages goes,
in the same run, (1) through `MtaApp` (its built-in MX rules and adaptive control,
from 127.0.0.1) and (2) from a naive fixed-rate sender (from 127.0.0.2: its own
quota) that sends at `--naive-rate` messages per virtual second and retries each
refused message a virtual minute later. Time is virtual, scaled `--scale` times.
Prints the throttling replies per 1,000 messages delivered and the virtual time
each took to deliver everything.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sqlite3
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib

from bench.loadgen import make_message, run_load
from mta.app import MtaApp
from mta.clock import ScaledClock
from mta.config.service import load_config
from mta.sim.config import parse_sim_config
from mta.sim.simulation import Simulation

NET = "127.6.1"
SIM = f"""
[sim]
smtp_port = 0
dns_listen = "{NET}.1:0"
http_listen = ""
mta_submit = ""
[[personas]]
name = "gmail"
domains = ["gmail.test"]
mx = [{{ name = "mx1.google.test", address = "{NET}.11" }}]
[personas.replies]
throttle = "421 4.7.28 [{{ip}}] Our system has detected an unusual rate of unsolicited \
mail originating from your IP address. - gsmtp"
[personas.limits]
messages = "100/m"
sessions = 40
connections = "6000/m"
"""


async def adaptive(
    sim: Simulation, clock: ScaledClock, work: Path, total: int
) -> tuple[int, float]:
    host, port = sim.dns_address
    config = load_config(
        None,
        environ={},
        flags={
            "smtp.listen": "127.0.0.1:0",
            "admin.listen": "",
            "data_dir": str(work / "mta"),
            "dns.nameservers": (host,),
            "dns.port": port,
            "delivery.port": sim.smtp_port,
            "delivery.tls": "none",
            "log_level": "warning",
        },
    )
    app = MtaApp(config, clock=clock)
    await app.start()
    started = clock.now()
    try:
        await run_load(*app.smtp_address, total, 10, make_message(2048), "user{i}@gmail.test")
        spool = config.data_path / "spool.sqlite3"
        while True:
            conn = sqlite3.connect(spool)
            done, throttled = conn.execute(
                "SELECT (SELECT COUNT(*) FROM recipients WHERE state = 'delivered'),"
                " (SELECT COUNT(*) FROM attempts WHERE code = 421)"
            ).fetchone()
            conn.close()
            if done >= total:
                return throttled, clock.now() - started
            await asyncio.sleep(0.1)
    finally:
        await app.stop()


async def naive(sim: Simulation, clock: ScaledClock, total: int, rate: float) -> tuple[int, float]:
    """Send at a fixed virtual rate from 127.0.0.2; a refused message is retried a virtual
    minute later; returns (throttling replies, virtual time to deliver all)."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    delivered = 0
    throttled = 0
    started = clock.now()
    message = make_message(2048)
    ticks = itertools.count()
    loop = asyncio.get_running_loop()
    real_start = loop.time()
    interval = 1.0 / (rate * clock.scale)  # real seconds between two sends
    done = asyncio.Event()

    async def later(index: int) -> None:
        await clock.sleep(60.0)
        queue.put_nowait(index)

    async def worker() -> None:
        nonlocal delivered, throttled
        smtp: aiosmtplib.SMTP | None = None
        while not done.is_set():
            index = await queue.get()
            slot = real_start + next(ticks) * interval
            await asyncio.sleep(max(0.0, slot - loop.time()))
            if smtp is None or not smtp.is_connected:
                smtp = aiosmtplib.SMTP(
                    hostname=f"{NET}.11",
                    port=sim.smtp_port,
                    source_address=("127.0.0.2", 0),
                    start_tls=False,
                )
                await smtp.connect()
            try:
                await smtp.sendmail("bounces@sender.test", [f"naive{index}@gmail.test"], message)
                delivered += 1
                if delivered == total:
                    done.set()
            except (
                aiosmtplib.SMTPRecipientsRefused,
                aiosmtplib.SMTPResponseException,
                aiosmtplib.SMTPServerDisconnected,
            ):
                throttled += 1
                smtp = None
                asyncio.get_running_loop().create_task(later(index))

    workers = [asyncio.create_task(worker()) for _ in range(5)]
    await done.wait()
    for task in workers:
        task.cancel()
    return throttled, clock.now() - started


async def main_async(args: argparse.Namespace) -> int:
    clock = ScaledClock(args.scale)
    with tempfile.TemporaryDirectory(prefix="bench-throttling-") as tmp:
        sim = await Simulation.start(
            parse_sim_config(SIM, "bench"), clock, Path(tmp) / "sim", http=False
        )
        try:
            ours, our_time = await adaptive(sim, clock, Path(tmp), args.messages)
            theirs, their_time = await naive(sim, clock, args.messages, args.naive_rate)
        finally:
            await sim.stop()
    per = 1000 / args.messages
    print(f"\nthrottling against a 100/min persona, {args.messages} messages, time x{args.scale:g}")
    print(f"{'sender':<28} {'421 replies':>12} {'per 1,000':>10} {'virtual min':>12}")
    print(f"{'adaptive MTA':<28} {ours:>12} {ours * per:>10.1f} {our_time / 60:>12.1f}")
    print(
        f"{f'naive, {args.naive_rate:g}/s fixed':<28} {theirs:>12} {theirs * per:>10.1f} "
        f"{their_time / 60:>12.1f}"
    )
    print(f"ratio naive / adaptive: {theirs / max(ours, 1):.1f}x the throttling replies")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument(
        "--naive-rate",
        type=float,
        default=3.0,
        help="the naive sender's messages per virtual second (limit: 1.67)",
    )
    parser.add_argument("--scale", type=float, default=60.0)
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
