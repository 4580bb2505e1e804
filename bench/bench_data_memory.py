"""The MTA's memory around bursts of large DATA: RSS before, peak during, and after.

    .venv/bin/python bench/bench_data_memory.py [--size-mib 24] [--concurrent 4]
        [--oversize-mib 100] [--rounds 2] [--mta-src DIR]

Starts `mta serve` (delivery to a closed port, so everything stays queued), sends a few
small messages to warm it up, then per round: `--concurrent` messages of `--size-mib` MiB
at once, and one DATA of `--oversize-mib` MiB over the SIZE limit. Reads VmRSS and VmHWM
(the peak, reset before each burst through /proc/PID/clear_refs) from /proc. Figures are
in MB and as ratios to the RSS before the first burst. `--mta-src` runs the `mta` package
found in another checkout (e.g. main before a change) for comparison. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import make_message
from bench.procs import start_mta

MB = 1_000_000


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of a process, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


def reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as handle:
        handle.write("5")


async def reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), 120)
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def send(port: int, message: bytes, declare: bool = True) -> bytes:
    """One transaction; the reply to the final dot."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reply(reader)
        writer.write(b"EHLO bench.test\r\n")
        await reply(reader)
        size = f" SIZE={len(message)}" if declare else ""
        writer.write(
            f"MAIL FROM:<b@sender.test>{size}\r\nRCPT TO:<r@dest.test>\r\nDATA\r\n".encode()
        )
        for _ in range(3):
            last = await reply(reader)
        if not last.startswith(b"354"):
            return last
        writer.write(message.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        await writer.drain()
        return await reply(reader)
    finally:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=24)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--oversize-mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mta-src", default="", help="a checkout whose mta package to run")
    args = parser.parse_args(argv)
    asyncio.run(measure(args))
    return 0


async def measure(args: argparse.Namespace) -> None:
    env = {"PYTHONPATH": args.mta_src} if args.mta_src else {}
    cwd = args.mta_src or None
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as tmp:
        mta = await start_mta(
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            tmp,
            "--relayhost",
            "127.0.0.1:9",
            "--admin",
            "",
            env=env,
            cwd=cwd,
        )
        pid = mta.process.pid
        try:
            for i in range(20):
                await send(mta.port, make_message(2048, i))
            await asyncio.sleep(1)
            base = memory(pid)["VmRSS"]
            print(
                f"mta pid {pid} ({args.mta_src or 'this checkout'}); RSS at rest {base / MB:.0f} MB"
            )
            big = make_message(args.size_mib << 20)
            # Declared without SIZE so that the server reads it all before refusing.
            over = make_message(args.oversize_mib << 20)
            for n in range(1, args.rounds + 1):
                reset_peak(pid)
                replies = await asyncio.gather(
                    *(send(mta.port, big) for _ in range(args.concurrent))
                )
                peak = memory(pid)["VmHWM"]
                await asyncio.sleep(1)
                after = memory(pid)["VmRSS"]
                ok = sum(r.startswith(b"250") for r in replies)
                print(
                    f"round {n}: {args.concurrent} x {args.size_mib} MiB at once ({ok} accepted): "
                    f"peak +{(peak - base) / MB:.0f} MB, after +{(after - base) / MB:.0f} MB "
                    f"(x{peak / base:.2f} / x{after / base:.2f} of rest)"
                )
                reset_peak(pid)
                answer = await send(mta.port, over, declare=False)
                peak = memory(pid)["VmHWM"]
                await asyncio.sleep(1)
                after = memory(pid)["VmRSS"]
                print(
                    f"round {n}: {args.oversize_mib} MiB over the SIZE limit "
                    f"({answer.decode().split()[0]}): peak +{(peak - base) / MB:.0f} MB, "
                    f"after +{(after - base) / MB:.0f} MB"
                )
        finally:
            await mta.stop()


if __name__ == "__main__":
    sys.exit(main())
