"""How fast one persona accepts mail, next to the MTA's end-to-end rate into that same persona.

    python bench/bench_persona.py [--messages 5000] [--sessions 20] [--size 2048]
                                  [--mode mx|relayhost] [--no-dkim] [--store-dir DIR]

In one run, with the persona in its own process (the sim, one persona, no limits,
no latency, Maildir without fsync: the per-message path only):
1. the load generator straight to the persona: the persona's msg/s and CPU ms/msg;
2. the load generator -> `mta serve` (DKIM RSA-2048 by default, durable spool)
   -> the persona, found through the stub DNS (`--mode mx`) or as the relay host:
   the MTA's end-to-end msg/s (first submission to last remote 250, from the spool).
Prints both and their ratio; the persona must not be the bottleneck (ratio >= 3).
`--store-dir` puts the persona's Maildir elsewhere (e.g. /dev/shm) to tell the
persona's own cost from the file system's (each message is one file created).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import make_message, run_load
from bench.procs import Proc, start_mta

ADDRESS = "127.4.0.11"
CONFIG = """
[sim]
seed = 1
smtp_port = 0
dns_listen = "127.4.0.1:0"
http_listen = ""
mta_submit = ""

[[personas]]
name = "bench"
domains = ["bench.test"]
mx = [{ name = "mx.bench.test", address = "ADDRESS" }]
[personas.limits]
max_recipients = 1000
""".replace("ADDRESS", ADDRESS)
_READY = re.compile(r"persona on ([\d.]+):(\d+) dns ([\d.]+):(\d+)")


# -- the persona process ----------------------------------------------------------------


async def _child(config_path: str, data_dir: str) -> None:
    from mta.clock import ScaledClock
    from mta.sim.config import load_sim_config
    from mta.sim.simulation import Simulation

    sim = await Simulation.start(load_sim_config(config_path), ScaledClock(1.0), Path(data_dir))
    host, port = sim.dns_address
    print(f"persona on {ADDRESS}:{sim.smtp_port} dns {host}:{port}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    stored = sum(p.counters.accepted for p in sim.personas.values())
    await sim.stop()
    print(f"persona stored {stored}", file=sys.stderr, flush=True)


async def start_persona(work: Path, store: Path) -> tuple[Proc, tuple[str, int]]:
    config = work / "isps.toml"
    config.write_text(CONFIG, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(config),
        str(store),
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("MTA_")},
    )
    assert process.stderr is not None
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
        if not line:
            raise RuntimeError("the persona process exited before listening")
        match = _READY.search(line)
        if match:
            asyncio.get_running_loop().create_task(_drain(process.stderr))
            return Proc(process, int(match.group(2))), (match.group(3), int(match.group(4)))


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


# -- measuring ---------------------------------------------------------------------------


def delivered(spool: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{spool}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT COUNT(*) FROM recipients WHERE state = 'delivered'")
            return int(row.fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


async def measure(args: argparse.Namespace, work: Path) -> dict[str, float]:
    message = make_message(args.size)
    recipient = "rcpt@bench.test"
    store = Path(tempfile.mkdtemp(prefix="bench-persona-", dir=args.store_dir))
    persona, dns_address = await start_persona(work, store)
    try:
        await run_load(ADDRESS, persona.port, 300, args.sessions, message, recipient)  # warm-up
        cpu0 = persona.cpu_seconds()
        direct = await run_load(
            ADDRESS, persona.port, args.messages, args.sessions, message, recipient
        )
        persona_cpu = (persona.cpu_seconds() - cpu0) / max(direct.sent, 1) * 1000

        data_dir = work / "mta"
        mta_args = ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir)]
        mta_args += ["--log-level", "warning", "--admin", ""]
        if args.mode == "relayhost":
            mta_args += ["--relayhost", f"{ADDRESS}:{persona.port}"]
        else:
            mta_args += ["--dns", f"{dns_address[0]}:{dns_address[1]}"]
            mta_args += ["--delivery-port", str(persona.port)]
        if not args.no_dkim:
            from mta.dkim_cmd import keygen

            key_path, _ = keygen("sender.test", "bench", work / "keys", force=True)
            mta_args += ["--dkim", f"sender.test:bench:{key_path}"]
        mta = await start_mta(*mta_args)
        spool = data_dir / "spool.sqlite3"
        try:
            await run_load("127.0.0.1", mta.port, 300, args.sessions, message, recipient)
            while delivered(spool) < 300:
                await asyncio.sleep(0.05)
            cpu_mta0, cpu_persona0 = mta.cpu_seconds(), persona.cpu_seconds()
            started = time.perf_counter()
            accepted = await run_load(
                "127.0.0.1", mta.port, args.messages, args.sessions, message, recipient
            )
            deadline = time.perf_counter() + 300
            while delivered(spool) < 300 + accepted.sent and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - started
            done = delivered(spool) - 300
            mta_cpu = (mta.cpu_seconds() - cpu_mta0) / max(done, 1) * 1000
            persona_busy = (persona.cpu_seconds() - cpu_persona0) / seconds
        finally:
            await mta.stop()
    finally:
        await persona.stop()
        shutil.rmtree(store, ignore_errors=True)
    return {
        "direct_rate": direct.rate,
        "direct_failed": direct.failed,
        "persona_cpu_ms": persona_cpu,
        "e2e_rate": done / seconds,
        "mta_cpu_ms": mta_cpu,
        "persona_busy": persona_busy,
        "lost": accepted.failed + (accepted.sent - done),
    }


async def main_async(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-persona-") as tmp:
        r = await measure(args, Path(tmp))
    ratio = r["direct_rate"] / r["e2e_rate"] if r["e2e_rate"] else float("inf")
    print(
        f"\npersona benchmark: {args.messages} messages of {args.size} bytes, "
        f"{args.sessions} sessions, MTA in {args.mode} mode, "
        f"DKIM {'off' if args.no_dkim else 'rsa-2048'}, persona store in {args.store_dir or '/tmp'}"
    )
    print(
        f"persona, load generator straight in: {r['direct_rate']:8.0f} msg/s"
        f"  ({r['persona_cpu_ms']:.3f} CPU ms/msg, {r['direct_failed']:.0f} failed)"
    )
    print(
        f"MTA end to end into the persona:     {r['e2e_rate']:8.0f} msg/s"
        f"  (MTA {r['mta_cpu_ms']:.3f} CPU ms/msg; persona busy {r['persona_busy']:.0%} of a core;"
        f" {r['lost']:.0f} lost)"
    )
    verdict = "ok" if ratio >= 3 else "TOO SLOW: the persona would limit the benchmark"
    print(f"persona / MTA end to end:            {ratio:8.1f}x  (needs >= 3x: {verdict})")
    return 0 if ratio >= 3 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--mode", choices=("mx", "relayhost"), default="mx")
    parser.add_argument("--no-dkim", action="store_true")
    parser.add_argument("--store-dir", metavar="DIR", help="where the persona stores (a temp dir)")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "DATA_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.child:
        asyncio.run(_child(*args.child))
        return 0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
