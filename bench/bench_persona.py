"""How fast one persona accepts mail, next to the MTA's end-to-end rate into that same persona.

    python bench/bench_persona.py [--messages 5000] [--sessions 20] [--size 2048]
                                  [--mode mx|relayhost] [--no-dkim] [--store-dir DIR]
                                  [--fsync]

In one run, with the persona in its own process (the sim, one persona, no limits,
no latency; no fsync unless --fsync: the per-message path only):
1. the load generator straight to the persona: the persona's msg/s and CPU ms/msg
   with each store: SQLite in the temp dir (disk) and in /dev/shm (tmpfs), and a
   Maildir in both. A Maildir message is one file created, whose cost this
   machine's file system decides (the bench prints it: it varies ~10x on a shared
   VM); SQLite appends every message waiting to one WAL file in one transaction
   (the bench prints how many messages a transaction held on average);
2. the load generator -> `mta serve` (DKIM RSA-2048 by default, durable spool)
   -> the persona (the default store, SQLite, on disk), found through the stub DNS
   (`--mode mx`) or as the relay host: the MTA's end-to-end msg/s (first
   submission to last remote 250).
Prints each store's ratio to that end-to-end rate; the persona must not be the
bottleneck (ratio >= 3; the exit status is 1 when the default store on disk is
under 3x).
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
from dataclasses import dataclass
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
store = "STORE"
store_fsync = FSYNC

[[personas]]
name = "bench"
domains = ["bench.test"]
mx = [{ name = "mx.bench.test", address = "ADDRESS" }]
[personas.limits]
max_recipients = 1000
""".replace("ADDRESS", ADDRESS)
_READY = re.compile(r"persona on ([\d.]+):(\d+) dns ([\d.]+):(\d+)")
_STORED = re.compile(r"persona stored (\d+) in (\d+) batches")
DEFAULT_STORE = "sqlite"


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
    writer = sim.writer
    await sim.stop()
    batches = writer.batches if writer is not None else 0
    print(f"persona stored {stored} in {batches} batches", file=sys.stderr, flush=True)


class Persona(Proc):
    """The persona process, with what it said on stderr."""

    lines: list[str]

    def batch_size(self) -> float:
        """Messages per store write (per SQLite transaction), over the whole run."""
        for line in reversed(self.lines):
            match = _STORED.search(line)
            if match:
                return int(match.group(1)) / max(int(match.group(2)), 1)
        return 0.0


async def start_persona(
    work: Path, store: Path, kind: str, fsync: bool
) -> tuple[Persona, tuple[str, int]]:
    config = work / f"isps-{kind}.toml"
    text = CONFIG.replace("STORE", kind).replace("FSYNC", "true" if fsync else "false")
    config.write_text(text, encoding="utf-8")
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
            persona = Persona(process, int(match.group(2)))
            persona.lines = []
            asyncio.get_running_loop().create_task(_drain(process.stderr, persona.lines))
            return persona, (match.group(3), int(match.group(4)))


async def _drain(stream: asyncio.StreamReader, lines: list[str]) -> None:
    while line := await stream.readline():
        lines.append(line.decode("utf-8", "replace"))
        del lines[:-20]


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


@dataclass
class Direct:
    rate: float  # msg/s
    cpu_ms: float  # persona CPU per message
    failed: int
    batch: float  # messages per store write


async def direct(args: argparse.Namespace, work: Path, store_dir: str, kind: str) -> Direct:
    """The load generator straight into a persona storing under `store_dir`."""
    message = make_message(args.size)
    store = Path(tempfile.mkdtemp(prefix="bench-persona-", dir=store_dir))
    persona, _ = await start_persona(work, store, kind, args.fsync)
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
    return Direct(result.rate, cpu, result.failed, persona.batch_size())


async def end_to_end(args: argparse.Namespace, work: Path, store_dir: str) -> dict[str, float]:
    """Load generator -> `mta serve` -> the persona (the default store, on disk)."""
    message = make_message(args.size)
    store = Path(tempfile.mkdtemp(prefix="bench-persona-", dir=store_dir))
    persona, dns_address = await start_persona(work, store, DEFAULT_STORE, args.fsync)
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
            from mta.cli.dkim import keygen

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
    places = [disk] + ([tmpfs] if tmpfs else [])
    with tempfile.TemporaryDirectory(prefix="bench-persona-") as tmp:
        work = Path(tmp)
        costs = {where: file_cost(Path(where), args.size) for where in places}
        runs: dict[tuple[str, str], Direct] = {}
        for kind in ("sqlite", "maildir"):
            for where in places:
                runs[(kind, where)] = await direct(args, work, where, kind)
        e2e = await end_to_end(args, work, disk)
    print(
        f"\npersona benchmark: {args.messages} messages of {args.size} bytes, "
        f"{args.sessions} sessions, MTA in {args.mode} mode, "
        f"DKIM {'off' if args.no_dkim else 'rsa-2048'}, store fsync {'on' if args.fsync else 'off'}"
    )
    for where in places:
        print(f"creating, writing and renaming one file in {where}: {costs[where]:.0f} us CPU")
    for (kind, where), run in runs.items():
        detail = f"{run.batch:.1f} msg/transaction" if kind == "sqlite" else "one file each"
        print(
            f"persona, load generator straight in, {kind:7} in {where:9}: {run.rate:7.0f} msg/s"
            f"  ({run.cpu_ms:.3f} CPU ms/msg; {detail}; {run.failed} failed)"
        )
    print(
        f"MTA end to end into the persona, {DEFAULT_STORE:7} in {disk:9}:     "
        f"{e2e['rate']:7.0f} msg/s  (MTA {e2e['mta_cpu_ms']:.3f} CPU ms/msg, persona"
        f" {e2e['persona_cpu_ms']:.3f}; {e2e['lost']:.0f} lost)"
    )
    for (kind, where), run in runs.items():
        ratio = run.rate / e2e["rate"]
        print(f"persona / MTA end to end, {kind:7} in {where:9}: {ratio:5.1f}x  (needs >= 3x)")
    default = runs[(DEFAULT_STORE, disk)].rate / e2e["rate"]
    if runs[("maildir", disk)].rate / e2e["rate"] < 3 <= default:
        print("  a Maildir on this disk would limit the persona: see the per-file cost above")
    return 0 if default >= 3 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--mode", choices=("mx", "relayhost"), default="mx")
    parser.add_argument("--no-dkim", action="store_true")
    parser.add_argument("--fsync", action="store_true", help="sim.store_fsync = true")
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
