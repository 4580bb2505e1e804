"""Hostile clients against the submission listener, over real sockets: connection caps, the
session time limit, junk commands, AUTH guessing, over-long lines, duplicate headers, bytes
that are not UTF-8, DATA past SIZE or past the memory budget, SIZE against free disk."""

from __future__ import annotations

import asyncio
import base64
import logging
import resource
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import pytest

from mta.app import MtaApp
from tests.helpers import (
    Conversation,
    auth_config,
    mta_config,
    read_reply,
    send_message,
    spool_rows,
    started,
    tls_session,
)

MESSAGE = b"From: a@b.test\r\nTo: c@d.test\r\nSubject: hi\r\n\r\nbody\r\n"


async def mta_with(tmp_path: Path, **flags: Any) -> MtaApp:
    # Delivery goes nowhere (port 9 on loopback refuses): these tests look at ingress only.
    return await started(mta_config(tmp_path, delivery__relayhost="127.0.0.1:9", **flags))


async def connect_from(app: MtaApp, source: str) -> tuple[asyncio.StreamReader, Any, str]:
    """Open a TCP connection from a given loopback address; return its first reply."""
    reader, writer = await asyncio.open_connection(*app.smtp_address, local_addr=(source, 0))
    return reader, writer, await read_reply(reader)


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), 10) == b""


async def metrics(app: MtaApp) -> str:
    host, port = app.admin_address or ("", 0)
    async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/metrics") as r:
        return await r.text()


async def test_total_and_per_ip_connection_caps(tmp_path: Path) -> None:
    app = await mta_with(tmp_path, smtp__max_connections=3, smtp__max_connections_per_ip=2)
    writers = []
    try:
        for source in ("127.0.0.1", "127.0.0.1"):
            _, writer, greeting = await connect_from(app, source)
            writers.append(writer)
            assert greeting.startswith("220"), greeting
        reader, writer, refused = await connect_from(app, "127.0.0.1")
        assert refused.startswith("421 4.7.0"), refused
        assert await closed(reader)
        writer.close()
        _, writer, greeting = await connect_from(app, "127.0.0.2")
        writers.append(writer)
        assert greeting.startswith("220"), greeting
        reader, writer, refused = await connect_from(app, "127.0.0.3")
        assert refused.startswith("421 4.3.2"), refused
        assert await closed(reader)
        writer.close()
        # A closed session frees its place.
        writers.pop(0).close()
        await asyncio.sleep(0.1)
        _, writer, greeting = await connect_from(app, "127.0.0.1")
        writers.append(writer)
        assert greeting.startswith("220"), greeting
        text = await metrics(app)
        assert 'mta_smtp_connections_refused_total{reason="total"} 1' in text
        assert 'mta_smtp_connections_refused_total{reason="per_ip"} 1' in text
    finally:
        for writer in writers:
            writer.close()
        await app.stop()


async def test_start_raises_the_open_file_limit_to_the_hard_limit(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        app = await mta_with(tmp_path)
        await app.stop()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_session_ends_at_its_time_limit(tmp_path: Path) -> None:
    app = await mta_with(tmp_path, smtp__session_timeout="2s")
    try:
        conv = await Conversation.open(*app.smtp_address)
        loop = asyncio.get_running_loop()
        began = loop.time()
        while loop.time() - began < 0.5:  # busy at first: the idle timeout is no help
            assert (await conv.command("NOOP")).startswith("250")
            await asyncio.sleep(0.05)
        # Then nothing is sent (so the close cannot meet a command in flight).
        reply = await asyncio.wait_for(read_reply(conv.reader), 30)
        assert reply.startswith("421 4.4.2"), reply
        assert await closed(conv.reader)
        assert "mta_smtp_session_timeouts_total 1" in await metrics(app)
    finally:
        await app.stop()


async def test_junk_commands_are_limited_per_message(tmp_path: Path) -> None:
    app = await mta_with(tmp_path, smtp__junk_command_limit=5)
    try:
        conv = await Conversation.open(*app.smtp_address)
        for command in ("NOOP", "RSET", "VRFY x", "NOOP", "HELP"):
            assert (await conv.command(command))[:1] in ("2", "5"), command
        # An accepted message starts the count again.
        await conv.command("MAIL FROM:<a@b.test>")
        await conv.command("RCPT TO:<c@d.test>")
        await conv.command("DATA")
        assert (await conv.send_data(MESSAGE + b".\r\n")).startswith("250 2.0.0")
        replies = [await conv.command("NOOP") for _ in range(6)]
        assert [r[:9] for r in replies] == ["250 2.0.0"] * 5 + ["421 4.7.0"]
        assert "limit 5" in replies[-1]
        assert await closed(conv.reader)
        assert "mta_smtp_junk_closed_total 1" in await metrics(app)
    finally:
        await app.stop()


def plain(login: str, password: str) -> bytes:
    return base64.b64encode(f"\0{login}\0{password}".encode())


async def test_auth_guessing_is_cut_off_per_session_then_per_address(tmp_path: Path) -> None:
    config, cert = auth_config(
        tmp_path,
        smtp__auth_failures_per_session=3,
        smtp__auth_failures_per_ip=4,
        smtp__auth_failure_delay="0s",
    )
    app = await started(config)
    try:
        smtp = await tls_session(app, cert)
        codes = []
        for guess in ("a", "b", "c"):
            reply = await smtp.execute_command(b"AUTH", b"PLAIN", plain("campaign", guess))
            codes.append((reply.code, reply.message[:5]))
        assert codes == [(535, "5.7.8")] * 3
        # After the third failure the server says 421 and hangs up.
        with pytest.raises(aiosmtplib.SMTPException):
            reply = await smtp.execute_command(b"NOOP")
            assert reply.code == 421 and reply.message.startswith("4.7.0")
            await smtp.execute_command(b"NOOP")
        smtp.close()

        smtp = await tls_session(app, cert)
        reply = await smtp.execute_command(b"AUTH", b"PLAIN", plain("campaign", "d"))
        assert reply.code == 535  # the 4th failure from this address locks it out
        reply = await smtp.execute_command(b"AUTH", b"PLAIN", plain("campaign", "s3cret"))
        assert (reply.code, reply.message[:5]) == (454, "4.7.0"), reply
        smtp.close()
        # Outside relay_networks nothing can be done without AUTH: refused at connect.
        _, writer, greeting = await connect_from(app, "127.0.0.1")
        assert greeting.startswith("421 4.7.0"), greeting
        writer.close()
        text = await metrics(app)
        assert "mta_smtp_auth_failures_total 4" in text
        assert "mta_smtp_auth_refused_total 2" in text
    finally:
        await app.stop()


async def data_reply(app: MtaApp, content: bytes) -> str:
    conv = await Conversation.open(*app.smtp_address)
    try:
        await conv.command("MAIL FROM:<a@b.test>")
        await conv.command("RCPT TO:<c@d.test>")
        assert (await conv.command("DATA")).startswith("354")
        return await conv.send_data(content + b".\r\n")
    finally:
        await conv.close()


@pytest.mark.parametrize(
    ("line", "limit", "expected"),
    [
        (998, 998, "250 2.0.0"),
        (999, 998, "550 5.6.0"),
        (1 << 20, 998, "550 5.6.0"),
        (20 << 20, 998, "550 5.6.0"),
        (1500, 0, "250 2.0.0"),  # 0 turns the check off
        (2000, 2000, "250 2.0.0"),
    ],
)
async def test_line_length_hard_limit(tmp_path: Path, line: int, limit: int, expected: str) -> None:
    app = await mta_with(
        tmp_path, smtp__line_length_hard_limit=limit, smtp__max_message_size=64 << 20
    )
    try:
        content = MESSAGE + b"y" * line + b"\r\nlast line\r\n"
        reply = await data_reply(app, content)
        assert reply.startswith(expected), reply[:80]
        if expected.startswith("550"):
            assert f"over {limit} octets" in reply
            assert spool_rows(app, "SELECT COUNT(*) FROM messages") == [(0,)]
    finally:
        await app.stop()


async def test_a_long_line_across_reads_is_found(tmp_path: Path) -> None:
    """Lines of 998 octets are fine wherever the socket's reads cut them; one of 999 is not."""
    app = await mta_with(tmp_path, smtp__max_message_size=16 << 20)
    try:
        good = (b"z" * 998 + b"\r\n") * 3000
        assert (await data_reply(app, MESSAGE + good)).startswith("250 2.0.0")
        bad = good + b"z" * 999 + b"\r\n" + good
        assert (await data_reply(app, MESSAGE + bad)).startswith("550 5.6.0")
    finally:
        await app.stop()


@pytest.mark.parametrize(
    ("head", "named"),
    [
        (b"From: a@b.test\r\nFrom: evil@bank.test\r\n", "2 From headers"),
        (b"To: c@d.test\r\nSubject: no sender\r\n", "no From header"),
        (b"From: a@b.test\r\nSender: x@b.test\r\nsender: y@b.test\r\n", "2 Sender headers"),
        (b"From: a@b.test\r\nTo: c@d.test\r\nTo: e@d.test\r\n", "2 To headers"),
        (b"From: a@b.test\r\nSubject: 1\r\nSubject: 2\r\n", "2 Subject headers"),
        (b"From: a@b.test\r\nDate: x\r\nDate: y\r\n", "2 Date headers"),
        (b"From: a@b.test\r\nMessage-ID: <1@x>\r\nMessage-Id: <2@x>\r\n", "2 Message-ID headers"),
    ],
)
async def test_duplicate_singleton_headers_or_no_from_are_refused(
    tmp_path: Path, head: bytes, named: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = await mta_with(tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="mta.ingress"):
            reply = await data_reply(app, head + b"\r\nbody\r\n")
        assert reply.startswith("550 5.6.0") and named in reply, reply
        assert any(named in r.getMessage() for r in caplog.records)
        assert spool_rows(app, "SELECT COUNT(*) FROM messages") == [(0,)]
    finally:
        await app.stop()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (b"MAIL FROM:<\xff\xfe@b.test>", "553 5.1.7"),
        (b"EHLO \xc3\x28", "501 5.5.2"),
    ],
)
async def test_bytes_that_are_not_utf8_get_a_permanent_syntax_reply(
    tmp_path: Path, command: bytes, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = await mta_with(tmp_path)
    try:
        conv = await Conversation.open(*app.smtp_address)
        with caplog.at_level(logging.INFO):
            reply = await conv.command(command)
            assert reply.startswith(expected), reply
            await conv.command("EHLO client.test")
            await conv.command("MAIL FROM:<a@b.test>")
            reply = await conv.command(b"RCPT TO:<\x80@d.test>")
            assert reply.startswith("553 5.1.3"), reply
        assert not any(r.exc_info for r in caplog.records)
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)
        await conv.close()
    finally:
        await app.stop()


async def test_data_past_size_is_dropped_and_the_session_goes_on(tmp_path: Path) -> None:
    app = await mta_with(tmp_path, smtp__max_message_size=100_000)
    try:
        conv = await Conversation.open(*app.smtp_address)
        await conv.command("MAIL FROM:<a@b.test>")
        await conv.command("RCPT TO:<c@d.test>")
        await conv.command("DATA")
        big = MESSAGE + (b"x" * 76 + b"\r\n") * 40_000  # about 3 MB
        assert (await conv.send_data(big + b".\r\n")).startswith("552 5.3.4")
        await conv.command("MAIL FROM:<a@b.test>")
        await conv.command("RCPT TO:<c@d.test>")
        await conv.command("DATA")
        assert (await conv.send_data(MESSAGE + b".\r\n")).startswith("250 2.0.0")
        await conv.close()
    finally:
        await app.stop()


async def test_data_past_the_memory_budget_spills_to_disk_intact(tmp_path: Path) -> None:
    app = await mta_with(tmp_path, smtp__data_memory_limit=65536)
    try:
        bodies = [MESSAGE + (f"{n:03d} ".encode() + b"x" * 70 + b"\r\n") * 5000 for n in range(4)]
        replies = await asyncio.gather(
            *(send_message(*app.smtp_address, "a@b.test", ["c@d.test"], b) for b in bodies)
        )
        assert all(r.startswith("250 2.0.0") for r in replies), replies
        stored = [row[0] for row in spool_rows(app, "SELECT content FROM messages")]
        for body in bodies:
            assert any(content.endswith(body[len(MESSAGE) :]) for content in stored)
        assert app.running.listener.reading.spilled_total >= 1
        assert app.running.listener.reading.held == app.running.listener.handling.held == 0
        assert "mta_smtp_data_spilled_total" in await metrics(app)
        assert not list(app.config.data_path.glob("data-*"))  # temp files leave no name
    finally:
        await app.stop()


async def test_size_is_checked_against_free_disk(tmp_path: Path) -> None:
    app = await mta_with(tmp_path, smtp__max_message_size=1 << 60)
    try:
        free = shutil.disk_usage(app.config.data_path).free
        conv = await Conversation.open(*app.smtp_address)
        reply = await conv.command(f"MAIL FROM:<a@b.test> SIZE={free + (1 << 30)}")
        assert reply.startswith("452 4.3.1"), reply
        reply = await conv.command("MAIL FROM:<a@b.test> SIZE=2000")
        assert reply.startswith("250"), reply
        await conv.close()
    finally:
        await app.stop()


async def test_stop_says_421_to_open_sessions(tmp_path: Path) -> None:
    app = await mta_with(tmp_path)
    conv = await Conversation.open(*app.smtp_address)
    await conv.command("MAIL FROM:<a@b.test>")
    await app.stop()
    reply = await read_reply(conv.reader)
    assert reply.startswith("421 4.3.2 Service shutting down"), reply
    assert await closed(conv.reader)
