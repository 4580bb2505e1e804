"""`mta serve` as a real process under hostile DATA and at SIGTERM: RSS read from /proc stays
bounded through bursts of large messages and an over-limit DATA, and goes back down after;
SIGTERM says 421 4.3.2 to an open session before closing it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

from tests.helpers import read_reply

MB = 1_000_000


class Serve:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    @classmethod
    async def start(cls, data_dir: Path) -> Serve:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MTA_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "mta", "serve", "--listen", "127.0.0.1:0",
            "--data-dir", str(data_dir), "--relayhost", "127.0.0.1:9", "--admin", "",
            stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        assert process.stderr is not None
        while True:
            line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
            if not line:
                raise AssertionError("mta serve exited before listening")
            match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
            if match:
                asyncio.get_running_loop().create_task(drain(process.stderr))
                return cls(process, int(match.group(1)))

    def memory(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no {key}")

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    async def terminate(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)


async def drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def message(size: int) -> bytes:
    head = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: big\r\n\r\n"
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
    return head + line * (size // len(line))


async def send(port: int, content: bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await read_reply(reader)
        writer.write(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        replies = [await read_reply(reader) for _ in range(4)]
        assert replies[-1].startswith("354"), replies
        writer.write(content + b".\r\n")
        await writer.drain()
        return await asyncio.wait_for(read_reply(reader), 60)
    finally:
        writer.close()


async def test_rss_stays_bounded_through_bursts_of_large_data(tmp_path: Path) -> None:
    mta = await Serve.start(tmp_path)
    try:
        for _ in range(5):
            assert (await send(mta.port, message(2000))).startswith("250")
        await asyncio.sleep(0.5)
        rest = mta.memory("VmRSS")
        big = message(24 << 20)
        after = []
        for _ in range(2):
            mta.reset_peak()
            replies = await asyncio.gather(*(send(mta.port, big) for _ in range(4)))
            assert all(r.startswith("250 2.0.0") for r in replies), replies
            # Before: about +300 MB at the peak, and all of it kept afterwards.
            assert mta.memory("VmHWM") - rest < 230 * MB
            await asyncio.sleep(0.5)
            after.append(mta.memory("VmRSS") - rest)
        assert max(after) < 120 * MB, after
        mta.reset_peak()
        # 100 MiB without SIZE: read to the dot, kept only up to the SIZE limit, then 552.
        assert (await send(mta.port, message(100 << 20))).startswith("552 5.3.4")
        assert mta.memory("VmHWM") - rest < 120 * MB
    finally:
        assert await mta.terminate() == 0


async def test_sigterm_says_421_to_open_sessions(tmp_path: Path) -> None:
    mta = await Serve.start(tmp_path)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", mta.port)
        await read_reply(reader)
        writer.write(b"EHLO c.test\r\nMAIL FROM:<a@b.test>\r\n")
        assert (await read_reply(reader)).startswith("250")
        assert (await read_reply(reader)).startswith("250")
        mta.process.send_signal(signal.SIGTERM)
        reply = await read_reply(reader)
        assert reply.startswith("421 4.3.2 Service shutting down"), reply
        assert await asyncio.wait_for(reader.read(1), 10) == b""
        writer.close()
    finally:
        assert await mta.terminate() == 0
