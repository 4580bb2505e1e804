"""What the content checksum and the salvage cost, against baselines in the same run.

    python bench/bench_spool_damage.py [--messages 3000] [--sizes 2048,51200]

For each content size it ingests `--messages` messages through the spool (the SHA-256 is
computed in the writer thread), then leases them all as the scheduler does (256 per pick)
twice: from the spool as written (each content checked against its checksum) and from a
copy whose checksums are removed (nothing to check: the pick before this change), and
prints the ratio. Then `mta spool check` and `mta spool salvage` (in this process) on a
copy with 1% of the contents flipped, against SQLite's own `VACUUM INTO` copy of the
same file; the check must find exactly the flipped messages.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mta.queue.records import NewMessage, NewRecipient
from mta.queue.salvage import check, salvage
from mta.queue.spool import Spool

NOW = 1_800_000_000.0


def content(n: int, size: int) -> bytes:
    head = f"From: a@sender.test\r\nSubject: message {n}\r\n\r\nMSG-{n:07d}-".encode()
    return head + b"x" * (size - len(head) - 2) + b"\r\n"


async def ingest(path: Path, count: int, size: int) -> float:
    spool = await Spool.open(path)
    started = time.perf_counter()
    try:
        for start in range(0, count, 100):
            await asyncio.gather(
                *(
                    spool.ingest(
                        NewMessage(
                            queue_id=f"Q{n:09d}",
                            mail_from="a@sender.test",
                            delivery_id=None,
                            received_at=NOW,
                            expires_at=NOW + 86400,
                            content=content(n, size),
                            smtputf8=False,
                            recipients=(NewRecipient(f"r{n}@d.test", "d.test", None),),
                        )
                    )
                    for n in range(start, min(start + 100, count))
                )
            )
    finally:
        await spool.close()
    return time.perf_counter() - started


async def pick_all(path: Path, count: int) -> float:
    spool = await Spool.open(path)
    picked = 0
    started = time.perf_counter()
    try:
        while picked < count:
            pick = await spool.pick([("d.test", 256)], NOW + 1)
            assert not pick.damaged
            picked += len(pick.recipients)
    finally:
        await spool.close()
    return time.perf_counter() - started


def flip(path: Path, count: int, every: int) -> int:
    raw = bytearray(path.read_bytes())
    flipped = 0
    for n in range(0, count, every):
        at = raw.find(f"MSG-{n:07d}-".encode())
        if at >= 0:
            raw[at + 20] ^= 0x01
            flipped += 1
    path.write_bytes(bytes(raw))
    return flipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sizes", default="2048,51200")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-spool-") as tmp:
        root = Path(tmp)
        for size in (int(s) for s in args.sizes.split(",")):
            base = root / f"s{size}"
            base.mkdir()
            path = base / "spool.sqlite3"
            took = asyncio.run(ingest(path, args.messages, size))
            plain = root / f"plain{size}"
            plain.mkdir()
            shutil.copyfile(path, plain / "spool.sqlite3")
            with sqlite3.connect(plain / "spool.sqlite3") as conn:
                conn.execute("UPDATE messages SET content_sha256 = NULL")
            checked = asyncio.run(pick_all(path, args.messages))
            unchecked = asyncio.run(pick_all(plain / "spool.sqlite3", args.messages))
            print(
                f"{size // 1024} KB x {args.messages}: ingest {args.messages / took:,.0f} msg/s;"
                f" pick with checksums {args.messages / checked:,.0f} msg/s, without"
                f" {args.messages / unchecked:,.0f} msg/s: ratio {checked / unchecked:.2f}x time"
            )
            damaged = root / f"damaged{size}"
            damaged.mkdir()
            shutil.copyfile(path, damaged / "spool.sqlite3")
            flipped = flip(damaged / "spool.sqlite3", args.messages, 100)
            started = time.perf_counter()
            report = check(damaged)
            check_s = time.perf_counter() - started
            assert len(report.messages_damaged) == flipped, (report.messages_damaged, flipped)
            started = time.perf_counter()
            salvage(damaged, root / f"rescued{size}")
            salvage_s = time.perf_counter() - started
            started = time.perf_counter()
            with sqlite3.connect(damaged / "spool.sqlite3") as conn:
                conn.execute("VACUUM INTO ?", (str(root / f"vacuum{size}.sqlite3"),))
            vacuum_s = time.perf_counter() - started
            print(
                f"  {flipped} of {args.messages} contents flipped: check found {flipped} in"
                f" {check_s:.2f}s, salvage {salvage_s:.2f}s ({args.messages / salvage_s:,.0f}"
                f" msg/s); VACUUM INTO of the same file {vacuum_s:.2f}s: salvage"
                f" {salvage_s / vacuum_s:.1f}x its time"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
