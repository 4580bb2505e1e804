"""Postfix's C test tools as the relay benchmark's harness: smtp-source and smtp-sink.

`smtp-source` (N parallel sessions, one connection each, `-d`) sends the load and
`smtp-sink` takes what the servers relay; both are C and cost the two cores far
less than a Python load generator and sink, so the servers measured get the
machine. They ship with Postfix (/usr/sbin); `tools()` says whether they are here.
smtp-source does not pipeline and times nothing per message: the benchmark's
dot -> 250 latencies come from the Python load generator (bench/loadgen.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

from bench.loadgen import LoadResult

SOURCE = "/usr/sbin/smtp-source"
SINK = "/usr/sbin/smtp-sink"


def _find(name: str, default: str) -> str | None:
    return shutil.which(name) or (default if Path(default).exists() else None)


def tools() -> tuple[str, str] | None:
    """(smtp-source, smtp-sink) when both are installed and usable, else None."""
    source, sink = _find("smtp-source", SOURCE), _find("smtp-sink", SINK)
    if source is None or sink is None:
        return None
    return source, sink


def message_file(directory: Path, message: bytes) -> Path:
    """The message as smtp-source -F wants it: LF lines (it sends each with CRLF and
    dot-stuffs), so the bytes on the wire are `message`'s."""
    path = directory / f"message-{len(message)}-{hash(message) & 0xFFFF:04x}.txt"
    if not path.exists():
        path.write_bytes(message.replace(b"\r\n", b"\n"))
        path.chmod(0o644)
    return path


class SmtpSink:
    """smtp-sink on a loopback port: accepts and drops every message."""

    def __init__(self, port: int, path: str) -> None:
        self.port, self.path = port, path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        user = ["-u", "postfix"] if os.geteuid() == 0 else []  # it refuses to run as root
        self.process = await asyncio.create_subprocess_exec(
            self.path, *user, "-4", "-m", "2000", f"127.0.0.1:{self.port}", "1024",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return
            except OSError:
                if self.process.returncode is not None or loop.time() > deadline:
                    raise RuntimeError(f"smtp-sink did not listen on {self.port}") from None
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def run_source(
    path: str, port: int, total: int, sessions: int, message: Path, keep: bool = True
) -> LoadResult:
    """`total` messages over `sessions` sessions that stay connected (`keep`; else a new
    session for every message, `sessions` at once); every message is accepted (250) or
    smtp-source stops with an error, reported as RuntimeError."""
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        path, "-4", *(["-d"] if keep else []), "-s", str(sessions), "-m", str(total),
        "-F", str(message),
        "-f", "bounces@sender.test", "-t", "rcpt@dest.test", "-M", "loadgen.test",
        f"127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    seconds = time.perf_counter() - started
    if process.returncode:
        text = out.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"smtp-source: {text[-1] if text else process.returncode}")
    return LoadResult(total, 0, seconds)
