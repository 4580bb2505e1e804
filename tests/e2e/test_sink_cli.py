"""`mta sink` as a user runs it: stores each message as received in a Maildir."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path

from mta.smtp.maildir import Maildir, strip_trace
from tests.helpers import send_message


async def test_sink_stores_what_it_receives(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mta",
        "sink",
        "--listen",
        "127.0.0.1:0",
        "--maildir",
        str(tmp_path / "md"),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    line = (await asyncio.wait_for(process.stderr.readline(), 30)).decode()
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    assert match, line
    message = b"Subject: kept\r\n\r\nline one\r\n.line with a dot\r\n"
    reply = await send_message("127.0.0.1", int(match.group(1)), "a@b.test", ["c@d.test"], message)
    assert reply.startswith("250")
    process.send_signal(signal.SIGTERM)
    rest = (await asyncio.wait_for(process.stderr.read(), 30)).decode()
    assert await process.wait() == 0
    assert "1 messages received" in rest
    (path,) = Maildir(tmp_path / "md").paths()
    stored = path.read_bytes()
    assert stored.startswith(b"Return-Path: <a@b.test>\r\nDelivered-To: c@d.test\r\n")
    assert strip_trace(stored) == message
