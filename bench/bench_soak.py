"""Soak: normal senders beside hostile clients, against the same normal load alone, one run.

    .venv/bin/python bench/bench_soak.py [--minutes 30] [--rate 40] [--senders 8]
        [--sample 60] [--hostile slow=120,oversize=2,auth=4,smuggle=2,noop=4,longline=1,twofrom=1]

Two phases of `--minutes` each, each with a fresh `mta serve` (STARTTLS and AUTH on, the
default limits) relaying to a fresh `mta sink`, all on loopback:
1. clean: `--senders` normal sessions from 127.0.0.1 sending `--rate` messages/s in all;
2. hostile: the same normal load, plus hostile clients from other loopback addresses:
   slow (one byte a second, holding connections), oversize (30 MiB DATA without SIZE,
   paced), auth (STARTTLS then wrong passwords, reconnecting), smuggle (bare LF, "\\n.\\n"
   and a MAIL command inside DATA), noop (pipelined NOOP floods), longline (1 MiB lines),
   twofrom (two From headers).
Every `--sample` seconds it prints the normal senders' p50/p99 latency (MAIL to the reply
at the dot) and the MTA's RSS (the maximum of per-second readings of /proc/PID/status);
at the end the hostile phase against the clean one as ratios, the hostile clients' replies
by code and the MTA's limit counters from /metrics. Every loop stops at the phase's end
and at a count bound; only loopback addresses are used.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import json
import os
import re
import signal
import ssl
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import make_message
from bench.procs import Proc, start_mta
from mta.smtp.tls import write_self_signed

MB = 1_000_000
MAX_LOOPS = 1_000_000  # a bound on every client loop besides the phase's end
PASSWORD = "correct-horse-battery"
HOSTILE_DEFAULT = "slow=120,oversize=2,auth=4,smuggle=2,noop=4,longline=1,twofrom=1"


@dataclass
class Mta:
    process: asyncio.subprocess.Process
    port: int
    admin_port: int

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def metrics(self) -> dict[str, float]:
        url = f"http://127.0.0.1:{self.admin_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        found = {}
        for line in text.splitlines():
            if line.startswith("mta_smtp_") or line.startswith("mta_messages_"):
                name, _, value = line.rpartition(" ")
                found[name] = float(value)
        return found

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


async def start_serve(config: Path) -> Mta:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mta", "serve", "--config", str(config),
        stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    assert process.stderr is not None
    admin = 0
    while True:
        line = (await asyncio.wait_for(process.stderr.readline(), 60)).decode()
        if not line:
            raise RuntimeError("mta serve exited before listening")
        found = re.search(r"admin API on http://127\.0\.0\.1:(\d+)/", line)
        if found:
            admin = int(found.group(1))
        found = re.search(r"mta: listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            asyncio.get_running_loop().create_task(drain(process.stderr))
            return Mta(process, int(found.group(1)), admin)


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


# -- SMTP client pieces -------------------------------------------------------------


async def reply(reader: asyncio.StreamReader, timeout: float = 120.0) -> bytes:
    while True:
        line = await asyncio.wait_for(reader.readline(), timeout)
        if not line:
            raise ConnectionError("closed")
        if line[3:4] != b"-":
            return line


async def connect(
    port: int, source: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 30
    )
    return reader, writer, await reply(reader)


def close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


@dataclass
class Phase:
    port: int
    ends: float  # loop.time()
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (when, seconds)
    normal_failures: int = 0
    replies: dict[str, collections.Counter[str]] = field(
        default_factory=lambda: collections.defaultdict(collections.Counter)
    )

    def running(self) -> bool:
        return asyncio.get_running_loop().time() < self.ends

    def note(self, kind: str, answer: bytes | str) -> None:
        text = answer.decode("utf-8", "replace") if isinstance(answer, bytes) else answer
        self.replies[kind][text[:9].strip() or "closed"] += 1


async def transaction(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    content: bytes,
    size: bool = True,
    rcpt: str = "r@dest.test",
) -> bytes:
    """MAIL, RCPT, DATA pipelined, then the content; the reply at the dot (or the refusal)."""
    declared = f" SIZE={len(content)}" if size else ""
    writer.write(f"MAIL FROM:<b@sender.test>{declared}\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
    answers = [await reply(reader) for _ in range(3)]
    if not answers[2].startswith(b"354"):
        return next((a for a in answers if not a.startswith(b"2")), answers[2])
    writer.write(content.replace(b"\r\n.", b"\r\n..") + b".\r\n")
    await writer.drain()
    return await reply(reader)


# -- the normal senders -------------------------------------------------------------


async def normal_sender(phase: Phase, index: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    message = make_message(4096, index)
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    start = loop.time()
    for n in range(MAX_LOOPS):
        due = start + n * interval
        if due > phase.ends:
            break
        if due > loop.time():
            await asyncio.sleep(due - loop.time())
        try:
            if writer is None or reader is None or writer.is_closing():
                reader, writer, _ = await connect(phase.port, "127.0.0.1")
                writer.write(b"EHLO sender.test\r\n")
                await reply(reader)
            began = loop.time()
            answer = await transaction(reader, writer, message)
            if answer.startswith(b"250"):
                phase.latencies.append((loop.time(), loop.time() - began))
            else:
                phase.normal_failures += 1
                phase.note("normal", answer)
                if answer.startswith(b"421"):
                    close(writer)
                    writer = None
        except (OSError, ConnectionError, TimeoutError) as exc:
            phase.normal_failures += 1
            phase.note("normal", type(exc).__name__)
            if writer is not None:
                close(writer)
            writer = None
    if writer is not None:
        close(writer)


# -- the hostile clients ------------------------------------------------------------


async def hostile_loop(
    phase: Phase, kind: str, source: str, body: Callable[[], Awaitable[None]]
) -> None:
    """Run `body` again and again until the phase ends; count failures by exception name."""
    for _ in range(MAX_LOOPS):
        if not phase.running():
            return
        try:
            await asyncio.wait_for(body(), max(0.1, phase.ends - asyncio.get_running_loop().time()))
        except (OSError, ConnectionError, TimeoutError, ssl.SSLError) as exc:
            phase.note(kind, type(exc).__name__)
            await asyncio.sleep(0.5)


def slow(phase: Phase, source: str) -> Callable[[], Awaitable[None]]:
    async def body() -> None:
        reader, writer, greeting = await connect(phase.port, source)
        try:
            if not greeting.startswith(b"220"):
                phase.note("slow", greeting)
                await asyncio.sleep(1.0)
                return
            for _ in range(MAX_LOOPS):
                for byte in b"MAIL FROM:<slow@x.test>\r\n":
                    writer.write(bytes([byte]))
                    await asyncio.sleep(1.0)
                phase.note("slow", await reply(reader))
        finally:
            close(writer)

    return body


def oversize(phase: Phase, source: str, rate: float) -> Callable[[], Awaitable[None]]:
    piece = (b"x" * 76 + b"\r\n") * 840  # about 64 KiB
    pieces = (30 << 20) // len(piece)

    async def body() -> None:
        reader, writer, _ = await connect(phase.port, source)
        try:
            writer.write(b"EHLO big.test\r\nMAIL FROM:<big@x.test>\r\nRCPT TO:<r@dest.test>\r\n")
            writer.write(b"DATA\r\n")
            answers = [await reply(reader) for _ in range(4)]
            if not answers[3].startswith(b"354"):
                phase.note("oversize", answers[3])
                return
            writer.write(b"From: big@x.test\r\n\r\n")
            for _ in range(pieces):
                writer.write(piece)
                await writer.drain()
                if rate:
                    await asyncio.sleep(len(piece) / (rate * MB))
            writer.write(b".\r\n")
            phase.note("oversize", await reply(reader))
        finally:
            close(writer)
        await asyncio.sleep(1.0)

    return body


def auth_guesser(phase: Phase, source: str, cafile: Path) -> Callable[[], Awaitable[None]]:
    context = ssl.create_default_context(cafile=str(cafile))
    guesses = iter(range(MAX_LOOPS))

    async def body() -> None:
        reader, writer, greeting = await connect(phase.port, source)
        try:
            if not greeting.startswith(b"220"):
                phase.note("auth", greeting)
                await asyncio.sleep(0.05)
                return
            writer.write(b"EHLO guess.test\r\n")
            await reply(reader)
            writer.write(b"STARTTLS\r\n")
            await reply(reader)
            await writer.start_tls(context, server_hostname="mta.test")
            writer.write(b"EHLO guess.test\r\n")
            await reply(reader)
            for _ in range(MAX_LOOPS):
                token = base64.b64encode(f"\0campaign\0guess{next(guesses)}".encode())
                writer.write(b"AUTH PLAIN " + token + b"\r\n")
                answer = await reply(reader)
                phase.note("auth", answer)
                if not answer.startswith(b"535"):
                    return
        finally:
            close(writer)

    return body


SMUGGLE = (
    b"From: s@x.test\r\nSubject: smuggle\r\n\r\nline\n.\nMAIL FROM:<evil@x.test>\r\n"
    b"RCPT TO:<victim@dest.test>\r\nDATA\r\nlone\rCR\r\n\r\n.\r"
)


def smuggler(phase: Phase, source: str) -> Callable[[], Awaitable[None]]:
    async def body() -> None:
        reader, writer, _ = await connect(phase.port, source)
        try:
            writer.write(b"EHLO smuggle.test\r\n")
            await reply(reader)
            for _ in range(MAX_LOOPS):
                if not phase.running():
                    return
                # The raw bytes go out as they are, without dot-stuffing.
                writer.write(b"MAIL FROM:<s@x.test>\r\nRCPT TO:<r@dest.test>\r\nDATA\r\n")
                answers = [await reply(reader) for _ in range(3)]
                if not answers[2].startswith(b"354"):
                    phase.note("smuggle", answers[2])
                    return
                writer.write(SMUGGLE + b"\r\n.\r\n")
                phase.note("smuggle", await reply(reader))
                await asyncio.sleep(0.2)
        finally:
            close(writer)

    return body


def noop_flood(phase: Phase, source: str) -> Callable[[], Awaitable[None]]:
    async def body() -> None:
        reader, writer, greeting = await connect(phase.port, source)
        try:
            if not greeting.startswith(b"220"):
                phase.note("noop", greeting)
                await asyncio.sleep(0.5)
                return
            writer.write(b"EHLO noop.test\r\n")
            await reply(reader)
            for _ in range(MAX_LOOPS):
                writer.write(b"NOOP\r\n" * 50)
                for _ in range(50):
                    answer = await reply(reader)
                    if not answer.startswith(b"250"):
                        phase.note("noop", answer)
                        await asyncio.sleep(0.1)
                        return
                phase.note("noop", b"250 x50")
        finally:
            close(writer)

    return body


def refused_content(
    phase: Phase, source: str, kind: str, content: bytes
) -> Callable[[], Awaitable[None]]:
    async def body() -> None:
        reader, writer, _ = await connect(phase.port, source)
        try:
            writer.write(f"EHLO {kind}.test\r\n".encode())
            await reply(reader)
            for _ in range(MAX_LOOPS):
                if not phase.running():
                    return
                phase.note(kind, await transaction(reader, writer, content, size=False))
                await asyncio.sleep(1.0)
        finally:
            close(writer)

    return body


def hostile_tasks(
    phase: Phase, counts: dict[str, int], cafile: Path, oversize_rate: float
) -> list[Awaitable[None]]:
    """Hostile clients: each kind from its own loopback addresses (two per kind at least,
    outside 127.0.0.1 where the normal senders are); auth from outside relay_networks."""
    tasks: list[Awaitable[None]] = []
    longline = b"From: l@x.test\r\n\r\n" + b"y" * (1 << 20) + b"\r\n"
    twofrom = b"From: a@x.test\r\nFrom: ceo@bank.test\r\nSubject: two\r\n\r\nhi\r\n"
    makers: dict[str, tuple[str, Callable[[str], Callable[[], Awaitable[None]]]]] = {
        "slow": ("127.0.0.4", lambda s: slow(phase, s)),
        "oversize": ("127.0.0.6", lambda s: oversize(phase, s, oversize_rate)),
        "smuggle": ("127.0.0.3", lambda s: smuggler(phase, s)),
        "noop": ("127.0.0.7", lambda s: noop_flood(phase, s)),
        "longline": ("127.0.0.8", lambda s: refused_content(phase, s, "longline", longline)),
        "twofrom": ("127.0.0.9", lambda s: refused_content(phase, s, "twofrom", twofrom)),
        "auth": ("127.0.0.20", lambda s: auth_guesser(phase, s, cafile)),
    }
    for kind, count in counts.items():
        base, make = makers[kind]
        prefix, last = base.rsplit(".", 1)
        for n in range(count):
            # slow clients spread over two addresses (the per-IP cap is still reached)
            source = f"{prefix}.{int(last) + (n % 2 if kind in ('slow', 'auth') else 0)}"
            tasks.append(hostile_loop(phase, kind, source, make(source)))
    return tasks


# -- phases --------------------------------------------------------------------------


@dataclass
class Sample:
    minute: int
    sent: int
    p50: float
    p99: float
    rss_max: int


def write_config(work: Path, sink_port: int) -> tuple[Path, Path]:
    """The MTA's config file and the certificate clients should trust."""
    cert, key = write_self_signed(work / "tls", "mta.test")
    path = work / "mta.toml"
    path.write_text(
        f'data_dir = "{work / "spool"}"\nlog_level = "warning"\n'
        f'[smtp]\nlisten = "127.0.0.1:0"\nrelay_networks = ["127.0.0.0/28"]\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        f'[smtp.auth_users]\ncampaign = "{PASSWORD}"\n'
        f'[delivery]\nrelayhost = "127.0.0.1:{sink_port}"\n'
        f'[admin]\nlisten = "127.0.0.1:0"\n'
    )
    return path, cert


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def run_phase(
    name: str, args: argparse.Namespace, hostile: dict[str, int]
) -> tuple[list[Sample], Phase, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix=f"soak-{name}-") as tmp:
        work = Path(tmp)
        sink: Proc = await start_mta("sink", "--listen", "127.0.0.1:0", "--log-level", "warning")
        config, cert = write_config(work, sink.port)
        mta = await start_serve(config)
        try:
            loop = asyncio.get_running_loop()
            seconds = args.minutes * 60
            begin = loop.time()
            phase = Phase(mta.port, begin + seconds)
            interval = args.senders / args.rate
            tasks = [
                asyncio.ensure_future(normal_sender(phase, i, interval))
                for i in range(args.senders)
            ]
            child = None
            if hostile:
                # The hostile clients run in a process of their own, so that their work does
                # not delay the normal senders' event loop (only the MTA's answers should).
                child = await asyncio.create_subprocess_exec(
                    sys.executable, __file__, "--hostile-child", str(mta.port),
                    "--cafile", str(cert), "--seconds", str(seconds),
                    "--hostile", ",".join(f"{k}={v}" for k, v in hostile.items()),
                    "--oversize-rate", str(args.oversize_rate),
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
            samples: list[Sample] = []
            rss_max = 0
            minute = 0
            next_sample = begin + args.sample
            while loop.time() < phase.ends:
                await asyncio.sleep(1.0)
                rss_max = max(rss_max, mta.rss())
                if loop.time() >= next_sample or loop.time() >= phase.ends:
                    minute += 1
                    window = [
                        s
                        for t, s in phase.latencies
                        if next_sample - args.sample <= t < next_sample
                    ]
                    samples.append(
                        Sample(
                            minute,
                            len(window),
                            percentile(window, 50),
                            percentile(window, 99),
                            rss_max,
                        )
                    )
                    print(
                        f"  {name:7} {minute:3}: {len(window):6} sent"
                        f"  p50 {samples[-1].p50 * 1000:7.1f} ms"
                        f"  p99 {samples[-1].p99 * 1000:7.1f} ms  RSS max {rss_max / MB:6.0f} MB",
                        flush=True,
                    )
                    rss_max = 0
                    next_sample += args.sample
            await asyncio.wait(tasks, timeout=60)
            for task in tasks:
                task.cancel()
            if child is not None:
                output, _ = await asyncio.wait_for(child.communicate(), 120)
                for kind, replies in json.loads(output.decode().splitlines()[-1]).items():
                    phase.replies[kind].update(replies)
            counters = mta.metrics()
            return samples, phase, counters
        finally:
            await mta.stop()
            await sink.stop()


def parse_hostile(text: str) -> dict[str, int]:
    counts = {}
    for part in filter(None, text.split(",")):
        kind, _, number = part.partition("=")
        counts[kind.strip()] = int(number)
    return counts


async def hostile_child(args: argparse.Namespace) -> None:
    """The hostile clients alone, against a given port; prints their replies as JSON."""
    phase = Phase(args.hostile_child, asyncio.get_running_loop().time() + args.seconds)
    tasks = hostile_tasks(phase, parse_hostile(args.hostile), Path(args.cafile), args.oversize_rate)
    await asyncio.gather(*tasks)
    print(json.dumps({kind: dict(counts) for kind, counts in phase.replies.items()}), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of each phase")
    parser.add_argument("--rate", type=float, default=40.0, help="normal messages/s in all")
    parser.add_argument("--senders", type=int, default=8)
    parser.add_argument("--sample", type=float, default=60.0, help="seconds per report line")
    parser.add_argument("--hostile", default=HOSTILE_DEFAULT)
    parser.add_argument("--oversize-rate", type=float, default=5.0, help="MB/s per client")
    parser.add_argument("--hostile-child", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--cafile", default="", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    asyncio.run(hostile_child(args) if args.hostile_child else soak(args))
    return 0


async def soak(args: argparse.Namespace) -> None:
    hostile = parse_hostile(args.hostile)
    print(
        f"soak: 2 phases of {args.minutes:g} min; normal {args.rate:g} msg/s over "
        f"{args.senders} sessions; hostile {hostile}",
        flush=True,
    )
    started = time.time()
    clean, clean_phase, _ = await run_phase("clean", args, {})
    rough, rough_phase, counters = await run_phase("hostile", args, hostile)

    def overall(phase: Phase) -> tuple[float, float]:
        values = [s for _, s in phase.latencies]
        return percentile(values, 50), percentile(values, 99)

    c50, c99 = overall(clean_phase)
    h50, h99 = overall(rough_phase)
    c_rss = max(s.rss_max for s in clean)
    h_rss = max(s.rss_max for s in rough)
    print(
        f"normal senders, clean:   {len(clean_phase.latencies)} sent, "
        f"{clean_phase.normal_failures} failed, p50 {c50 * 1000:.1f} ms, p99 {c99 * 1000:.1f} ms"
    )
    print(
        f"normal senders, hostile: {len(rough_phase.latencies)} sent, "
        f"{rough_phase.normal_failures} failed, p50 {h50 * 1000:.1f} ms, p99 {h99 * 1000:.1f} ms"
    )
    print(f"p99 hostile / clean: x{h99 / c99:.2f}   p50: x{h50 / c50:.2f}")
    print(
        f"RSS max: clean {c_rss / MB:.0f} MB, hostile {h_rss / MB:.0f} MB (x{h_rss / c_rss:.2f});"
        f" last minute {clean[-1].rss_max / MB:.0f} vs {rough[-1].rss_max / MB:.0f} MB"
    )
    if rough_phase.normal_failures or clean_phase.normal_failures:
        print(
            f"normal failures: clean {dict(clean_phase.replies['normal'])}, "
            f"hostile {dict(rough_phase.replies['normal'])}"
        )
    for kind, replies in sorted(rough_phase.replies.items()):
        if kind != "normal":
            print(f"hostile {kind:9}: {dict(replies.most_common(6))}")
    print(
        "MTA counters (hostile phase): "
        + ", ".join(f"{k}={v:g}" for k, v in sorted(counters.items()) if v)
    )
    print(f"wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
