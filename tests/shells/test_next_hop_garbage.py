"""A next hop that answers something that is not SMTP, at each stage of the session, over real
sockets: the attempt is a transient `protocol_error` (421 4.5.0) with one log line, the
recipient waits for its retry, and nothing is logged as a traceback or a "local error"."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from tests.helpers import events_of, mta_config, send_message, spool_rows, started, wait_for

MESSAGE = b"From: a@sender.test\r\nSubject: s\r\n\r\nbody\r\n"


class GarbageHop:
    """Speaks just enough SMTP, and answers `garbage` instead at the stage `at`."""

    def __init__(self, at: str, garbage: bytes) -> None:
        self.at = at
        self.garbage = garbage
        self.server: asyncio.Server | None = None
        self.sessions = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self.session, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def answer(self, stage: str, good: bytes) -> bytes:
        return self.garbage if stage == self.at else good

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        try:
            writer.write(self.answer("connect", b"220 hop.test ESMTP\r\n"))
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"EHLO":
                    writer.write(self.answer("ehlo", b"250-hop.test\r\n250 SIZE 1000000\r\n"))
                elif verb == b"MAIL":
                    writer.write(self.answer("mail", b"250 2.1.0 ok\r\n"))
                elif verb == b"RCPT":
                    writer.write(self.answer("rcpt", b"250 2.1.5 ok\r\n"))
                elif verb == b"DATA":
                    writer.write(b"354 go ahead\r\n")
                    await writer.drain()
                    while (await reader.readline()) not in (b".\r\n", b""):
                        pass
                    writer.write(self.answer("dot", b"250 2.0.0 queued\r\n"))
                elif verb == b"QUIT":
                    writer.write(b"221 bye\r\n")
                    break
                else:
                    writer.write(b"250 ok\r\n")
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize(
    ("at", "garbage"),
    [
        ("connect", b"HELLO this is not SMTP\r\n"),
        ("ehlo", b"\x00\xff garbage \x1b[31m\r\n"),
        ("mail", b"OK fine\r\n"),
        ("rcpt", b"2x0 what\r\n"),
        ("dot", b"thanks!\r\n"),
    ],
)
async def test_a_garbage_reply_is_a_transient_protocol_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, at: str, garbage: bytes
) -> None:
    hop = GarbageHop(at, garbage)
    port = await hop.start()
    app = await started(mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{port}"))
    try:
        with caplog.at_level(logging.INFO, logger="mta"):
            reply = await send_message(*app.smtp_address, "a@sender.test", ["r@d.test"], MESSAGE)
            assert reply.startswith("250 ")
            await wait_for(lambda: len(events_of(app)) == 2)
        (row,) = spool_rows(
            app, "SELECT state, last_code, last_enhanced, last_text, last_phase FROM recipients"
        )
        state, code, enhanced, text, phase = row
        assert (state, code, enhanced, phase) == ("queued", 421, "4.5.0", at)
        assert text.startswith(f"Protocol error: malformed reply: 127.0.0.1 at {at.upper()}: ")
        assert text.isprintable() and len(text) < 200
        event = events_of(app)[1]
        assert event["kind"] == "soft_bounce" and event["next_attempt_at"] is not None
        assert event["bounce_class"]["code"] == 20
        assert event["failure"]["type"] == "Soft" and event["failure"]["reason"] == "Unreachable"
        assert event["possible_duplicate"] is (at == "dot")
        problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert [r.getMessage().split(":")[0] for r in problems] == [
            "protocol error from 127.0.0.1 at " + at.upper()
        ]
        assert all(r.exc_info is None for r in caplog.records)
        assert "Local error" not in caplog.text and "Traceback" not in caplog.text
    finally:
        await app.stop()
        await hop.close()
