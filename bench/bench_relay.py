"""End-to-end relay throughput: load generator -> `mta serve` (DKIM RSA-2048, durable spool)
-> `mta sink`, next to the same load sent straight to the sink (the loopback limit).

    python bench/bench_relay.py [--messages 5000] [--sessions 20] [--sizes 2048,51200]
    python bench/bench_relay.py --console    # each size without, then with an open console

Prints, per message size: the sink's rate (baseline), the MTA's acceptance rate and its
end-to-end rate (first submission to last remote 250, read from the spool), the MTA's CPU
milliseconds per message, and the ratio of end to end over the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import make_message, run_load
from bench.procs import start_mta


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def delivered(spool: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5)
        try:
            return int(
                conn.execute(
                    "SELECT COUNT(*) FROM recipients WHERE state = 'delivered'"
                ).fetchone()[0]
            )
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


async def console_load(admin: str, stop: asyncio.Event) -> int:
    """What the operator console page asks of the admin API while it is open: the sites and
    the audit every second, the Campaign view every 3 s, and a long-poll on the events."""
    requests = 0
    async with aiohttp.ClientSession() as http:

        async def get(path: str) -> Any:
            nonlocal requests
            requests += 1
            async with http.get(admin + path) as got:
                return await got.json()

        async def poll(paths: tuple[str, ...], every: float) -> None:
            while not stop.is_set():
                for path in paths:
                    await get(path)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every)

        async def events() -> None:  # as the page: a busy stream is read once a second
            cursor = 0
            while not stop.is_set():
                answer = await get(f"/api/v1/events?after={cursor}&limit=500&wait=20")
                cursor = answer["next"]
                if answer["events"]:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), 1.0)

        tasks = [
            asyncio.ensure_future(poll(("/api/v1/queue/sites", "/api/v1/audit"), 1.0)),
            asyncio.ensure_future(poll(("/api/v1/campaign",), 3.0)),
            asyncio.ensure_future(events()),
        ]
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return requests


async def one_size(
    size: int, messages: int, sessions: int, dkim: bool, work: Path, console: bool = False
) -> dict[str, float]:
    message = make_message(size)
    sink = await start_mta("sink", "--listen", "127.0.0.1:0", "--log-level", "warning")
    try:
        await run_load("127.0.0.1", sink.port, 200, sessions, message)  # warm-up
        cpu0 = sink.cpu_seconds()
        baseline = await run_load("127.0.0.1", sink.port, messages, sessions, message)
        sink_cpu = (sink.cpu_seconds() - cpu0) / max(baseline.sent, 1) * 1000
        data_dir = work / f"spool-{size}{'-console' if console else ''}"
        admin_port = free_port()
        args = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(data_dir),
            "--relayhost",
            f"127.0.0.1:{sink.port}",
            "--log-level",
            "warning",
            "--admin",
            f"127.0.0.1:{admin_port}" if console else "",
        ]
        if dkim:
            from mta.cli.dkim import keygen

            key_path, _ = keygen("sender.test", "bench", work / "keys", force=True)
            args += ["--dkim", f"sender.test:bench:{key_path}"]
        mta = await start_mta(*args)
        spool = data_dir / "spool.sqlite3"
        try:
            await run_load("127.0.0.1", mta.port, 200, sessions, message)  # warm-up
            while delivered(spool) < 200:
                await asyncio.sleep(0.05)
            stop = asyncio.Event()
            admin = f"http://127.0.0.1:{admin_port}"
            viewer = asyncio.ensure_future(
                console_load(admin, stop) if console else asyncio.sleep(0, 0)
            )
            cpu0 = mta.cpu_seconds()
            started = time.perf_counter()
            accepted = await run_load("127.0.0.1", mta.port, messages, sessions, message)
            deadline = time.perf_counter() + 300
            while delivered(spool) < 200 + accepted.sent and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
            end_to_end = time.perf_counter() - started
            stop.set()
            console_requests = await viewer
            done = delivered(spool) - 200
            mta_cpu = (mta.cpu_seconds() - cpu0) / max(done, 1) * 1000
        finally:
            await mta.stop()
    finally:
        await sink.stop()
    return {
        "size": size,
        "sink_rate": baseline.rate,
        "sink_cpu_ms": sink_cpu,
        "accept_rate": accepted.rate,
        "e2e_rate": done / end_to_end,
        "mta_cpu_ms": mta_cpu,
        "failed": accepted.failed + (accepted.sent - done),
        "console_requests": float(console_requests or 0),
    }


async def console_cost(args: argparse.Namespace) -> int:
    """Each size without and with a console open on the admin API, in the same run, in the
    order without, with, with, without; the rates are the means of the two runs of each."""
    print(f"\nrelay with vs without an open console: {args.messages} messages, "
          f"{args.sessions} sessions, DKIM {'off' if args.no_dkim else 'rsa-2048'}")
    print(f"{'size':>7} {'without e2e/s':>14} {'with e2e/s':>11} {'with/without':>13} "
          f"{'console requests':>17} {'CPU ms/msg':>11} {'with':>9} {'cpu ratio':>9}")
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        for size in args.sizes:
            dkim = not args.no_dkim
            runs: dict[bool, list[dict[str, float]]] = {False: [], True: []}
            for console in (False, True, True, False):  # ABBA: drift in the machine cancels out
                work = Path(tmp) / f"run-{len(runs[False]) + len(runs[True])}"
                runs[console].append(
                    await one_size(size, args.messages, args.sessions, dkim, work, console)
                )
            without = sum(r["e2e_rate"] for r in runs[False]) / 2
            with_console = sum(r["e2e_rate"] for r in runs[True]) / 2
            requests = sum(r["console_requests"] for r in runs[True]) / 2
            cpu_without = sum(r["mta_cpu_ms"] for r in runs[False]) / 2
            cpu_with = sum(r["mta_cpu_ms"] for r in runs[True]) / 2
            print(f"{size:>7} {without:>14.0f} {with_console:>11.0f} "
                  f"{with_console / without:>13.3f} {requests:>17.0f} "
                  f"{cpu_without:>11.2f} {cpu_with:>9.2f} {cpu_with / cpu_without:>9.3f}")
    return 0


async def main_async(args: argparse.Namespace) -> int:
    if args.console:
        return await console_cost(args)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp:
        for size in args.sizes:
            rows.append(
                await one_size(size, args.messages, args.sessions, not args.no_dkim, Path(tmp))
            )
    print(
        f"\nrelay benchmark: {args.messages} messages, {args.sessions} sessions, "
        f"DKIM {'off' if args.no_dkim else 'rsa-2048'}, durable spool (WAL, synchronous=FULL)"
    )
    print(
        f"{'size':>7} {'sink msg/s':>11} {'accept msg/s':>13} {'e2e msg/s':>10} "
        f"{'MTA CPU ms/msg':>15} {'e2e/sink':>9} {'lost':>5}"
    )
    for r in rows:
        print(
            f"{r['size']:>7} {r['sink_rate']:>11.0f} {r['accept_rate']:>13.0f} "
            f"{r['e2e_rate']:>10.0f} {r['mta_cpu_ms']:>15.2f} "
            f"{r['e2e_rate'] / r['sink_rate']:>9.2f} {r['failed']:>5.0f}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[2048, 51200]
    )
    parser.add_argument("--no-dkim", action="store_true")
    parser.add_argument(
        "--console", action="store_true", help="with vs without an open operator console"
    )
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
