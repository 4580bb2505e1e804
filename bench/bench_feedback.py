"""Event latency: from the remote server's 250 to the client's delivery log saying "Sent".

    python bench/bench_feedback.py [--messages 3000] [--sessions 20]

`mta serve` (DKIM RSA-2048, durable spool) relays to `mta sink` (a Maildir, whose
file names carry the time of each 250) and POSTs its events to the Campaign
client's receiver running in this process (signature checks, SQLite log with
fsync). First a burst measures the end-to-end maximum rate; then the same number of
messages is sent at half of it, and for each recipient the latency is the time its
log line became Sent minus the time the sink stored (and acknowledged) the message.
Prints the median and p99 in milliseconds, with the rates.
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

from bench.bench_relay import delivered
from bench.loadgen import make_message, run_load
from bench.procs import start_mta
from campaign_client import DeliveryLog, Receiver
from mta.smtp.maildir import Maildir

SECRET = "whsec_YmVuY2gtZmVlZGJhY2stc2VjcmV0LWtleQ=="


def stored_at(maildir: Path) -> dict[str, float]:
    """recipient -> wall time (s) of its 250 at the sink (Maildir names start with ns)."""
    found: dict[str, float] = {}
    for path in Maildir(maildir).paths():
        head = path.read_bytes()[:300].decode("ascii", "replace")
        for line in head.split("\r\n"):
            if line.startswith("Delivered-To: "):
                found[line[len("Delivered-To: ") :]] = int(path.name.split(".")[0]) / 1e9
    return found


async def run(messages: int, sessions: int, work: Path) -> dict[str, float]:
    message = make_message(2048).replace(
        b"X-Campaign-Delivery-Id: BENCH", b"X-Campaign-Delivery-Id: BENCH\r\nX-Campaign-Log-Id: L"
    )
    log = DeliveryLog(work / "log.sqlite")
    receiver = Receiver(log, SECRET, "127.0.0.1", 0)
    await receiver.start()
    config = work / "mta.toml"
    config.write_text(
        f'[[feedback.webhooks]]\nurl = "{receiver.webhook_url}"\nsecret = "{SECRET}"\n'
    )
    from mta.cli.dkim import keygen

    key, _ = keygen("sender.test", "bench", work / "keys", force=True)
    sink = await start_mta(
        "sink", "--listen", "127.0.0.1:0", "--maildir", str(work / "md"), "--log-level", "warning"
    )
    mta = await start_mta(
        "serve",
        "--config",
        str(config),
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(work / "spool"),
        "--relayhost",
        f"127.0.0.1:{sink.port}",
        "--admin",
        "",
        "--log-level",
        "warning",
        "--dkim",
        f"sender.test:bench:{key}",
    )
    spool = work / "spool" / "spool.sqlite3"
    try:
        # 1. The maximum: a burst, timed to the last remote 250.
        started = time.perf_counter()
        burst = await run_load(
            "127.0.0.1", mta.port, messages, sessions, message, "burst{i}@dest.test"
        )
        while delivered(spool) < burst.sent:
            await asyncio.sleep(0.02)
        maximum = burst.sent / (time.perf_counter() - started)
        # 2. Half of it, paced; each recipient's latency from the sink's 250 to "Sent".
        rate = maximum / 2
        paced = await run_load(
            "127.0.0.1", mta.port, messages, sessions, message, "paced{i}@dest.test", rate=rate
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            sent = [
                ln
                for ln in log.lines("BENCH")
                if ln.recipient.startswith("paced") and ln.status == "Sent"
            ]
            if len(sent) >= paced.sent:
                break
            await asyncio.sleep(0.1)
        at_sink = stored_at(work / "md")
        latencies = sorted(
            (ln.updated_at - at_sink[ln.recipient]) * 1000 for ln in sent if ln.recipient in at_sink
        )
    finally:
        await mta.stop()
        await sink.stop()
        await receiver.stop()
    return {
        "max_rate": maximum,
        "rate": rate,
        "achieved": paced.rate,
        "count": len(latencies),
        "median_ms": statistics.median(latencies),
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)],
        "max_ms": latencies[-1],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-feedback-") as tmp:
        r = asyncio.run(run(args.messages, args.sessions, Path(tmp)))
    print(f"\nfeedback latency, remote 250 -> client log 'Sent' ({r['count']} recipients):")
    print(
        f"  end-to-end maximum {r['max_rate']:.0f} msg/s; paced at {r['rate']:.0f} msg/s"
        f" (achieved {r['achieved']:.0f})"
    )
    print(f"  median {r['median_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
