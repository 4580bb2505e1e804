"""How fast one persona accepts mail, next to the MTA's end-to-end rate into that same persona.

    python bench/bench_persona.py [--messages 5000] [--sessions 20] [--size 2048]
                                  [--mode mx|relayhost] [--no-dkim] [--store-dir DIR]

In one run, with the persona in its own process (the sim, one persona, no limits,
no latency, Maildir without fsync: the per-message path only):
1. the load generator straight to the persona: the persona's msg/s and CPU ms/msg,
   storing in the temp dir (disk) and, for comparison, in /dev/shm (tmpfs): each
   message is one file created, whose cost this machine's file system decides (the
   bench prints it: it varies ~10x on a shared VM);
2. the load generator -> `mta serve` (DKIM RSA-2048 by default, durable spool)
   -> the persona (store on disk), found through the stub DNS (`--mode mx`) or as
   the relay host: the MTA's end-to-end msg/s (first submission to last remote 250).
Prints the ratios; the persona must not be the bottleneck (ratio >= 3; the exit
status is 1 when even the tmpfs store is under 3x).
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
RECIPIENT = "rcpt@bench.test"
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


def file_cost(directory: Path, size: int, count: int = 2000) -> float:
    """Microseconds of CPU to create, write and rename one file of `size` bytes there."""
    work = Path(tempfile.mkdtemp(prefix="bench-files-", dir=directory))
    (work / "tmp").mkdir()
    (work / "new").mkdir()
    data = b"x" * size
    try:
        before = os.times()
        for i in range(count):
            tmp, new = f"{work}/tmp/{i}", f"{work}/new/{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)
            os.rename(tmp, new)
        after = os.times()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return (after.user + after.system - before.user - before.system) / count * 1e6


async def direct(
    args: argparse.Namespace, work: Path, store_dir: str | None
) -> tuple[float, float, int]:
    """The load generator straight into a persona storing under `store_dir`:
    (msg/s, persona CPU ms/msg, failures)."""
    message = make_message(args.size)
    store = Path(tempfile.mkdtemp(prefix="bench-persona-", dir=store_dir))
    persona, _ = await start_persona(work, store)
    try:
        await run_load(ADDRESS, persona.port, 300, args.sessions, message, RECIPIENT)  # warm-up
        cpu0 = persona.cpu_seconds()
        result = await run_load(
            ADDRESS, persona.port, args.messages, args.sessions, message, RECIPIENT
        )
        cpu = (persona.cpu_seconds() - cpu0) / max(result.sent, 1) * 1000
    finally:
        await persona.stop()
        shutil.rmtree(store, ignore_errors=True)
    return result.rate, cpu, result.failed


async def end_to_end(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Load generator -> `mta serve` -> the persona (store on disk)."""
    message = make_message(args.size)
    store = Path(tempfile.mkdtemp(prefix="bench-persona-", dir=args.store_dir))
    persona, dns_address = await start_persona(work, store)
    try:
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
            await run_load("127.0.0.1", mta.port, 300, args.sessions, message, RECIPIENT)
            while delivered(spool) < 300:
                await asyncio.sleep(0.05)
            cpu_mta0, cpu_persona0 = mta.cpu_seconds(), persona.cpu_seconds()
            started = time.perf_counter()
            accepted = await run_load(
                "127.0.0.1", mta.port, args.messages, args.sessions, message, RECIPIENT
            )
            deadline = time.perf_counter() + 300
            while delivered(spool) < 300 + accepted.sent and time.perf_counter() < deadline:
                await asyncio.sleep(0.02)
            seconds = time.perf_counter() - started
            done = delivered(spool) - 300
            mta_cpu = (mta.cpu_seconds() - cpu_mta0) / max(done, 1) * 1000
            persona_cpu = (persona.cpu_seconds() - cpu_persona0) / max(done, 1) * 1000
        finally:
            await mta.stop()
    finally:
        await persona.stop()
        shutil.rmtree(store, ignore_errors=True)
    return {
        "rate": done / seconds,
        "mta_cpu_ms": mta_cpu,
        "persona_cpu_ms": persona_cpu,
        "lost": accepted.failed + (accepted.sent - done),
    }


async def main_async(args: argparse.Namespace) -> int:
    disk = args.store_dir or tempfile.gettempdir()
    tmpfs = "/dev/shm" if os.path.isdir("/dev/shm") and args.store_dir is None else None
    with tempfile.TemporaryDirectory(prefix="bench-persona-") as tmp:
        work = Path(tmp)
        costs = {disk: file_cost(Path(disk), args.size)}
        runs = {disk: await direct(args, work, args.store_dir)}
        if tmpfs:
            costs[tmpfs] = file_cost(Path(tmpfs), args.size)
            runs[tmpfs] = await direct(args, work, tmpfs)
        e2e = await end_to_end(args, work)
    print(
        f"\npersona benchmark: {args.messages} messages of {args.size} bytes, "
        f"{args.sessions} sessions, MTA in {args.mode} mode, "
        f"DKIM {'off' if args.no_dkim else 'rsa-2048'}"
    )
    for where, (rate, cpu, failed) in runs.items():
        print(
            f"persona, load generator straight in, store in {where:9}: {rate:7.0f} msg/s"
            f"  ({cpu:.3f} CPU ms/msg; creating one file there: {costs[where]:.0f} us CPU;"
            f" {failed} failed)"
        )
    print(
        f"MTA end to end into the persona, store in {disk:9}:   {e2e['rate']:7.0f} msg/s"
        f"  (MTA {e2e['mta_cpu_ms']:.3f} CPU ms/msg, persona {e2e['persona_cpu_ms']:.3f};"
        f" {e2e['lost']:.0f} lost)"
    )
    ratios = {where: rate / e2e["rate"] for where, (rate, _, _) in runs.items()}
    best = max(ratios.values())
    for where, ratio in ratios.items():
        print(f"persona / MTA end to end, store in {where:9}: {ratio:5.1f}x  (needs >= 3x)")
    if ratios[disk] < 3 <= best:
        print("  the disk store limits the persona here: see the per-file cost above")
    return 0 if best >= 3 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--mode", choices=("mx", "relayhost"), default="mx")
    parser.add_argument("--no-dkim", action="store_true")
    parser.add_argument(
        "--store-dir",
        metavar="DIR",
        help="where the persona stores (default: the temp dir, and /dev/shm for comparison)",
    )
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
