"""The submission listener over real sockets: ESMTP offer, each validation error, limits, relay."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mta.app import MtaApp
from tests.helpers import Conversation, auth_config, mta_config, spool_rows, started


@pytest.fixture
async def mta(tmp_path: Path) -> AsyncIterator[MtaApp]:
    # Delivery goes nowhere (port 9 on loopback refuses): these tests look at ingress only.
    app = await started(
        mta_config(
            tmp_path,
            delivery__relayhost="127.0.0.1:9",
            smtp__max_recipients=3,
            smtp__max_message_size=4096,
        )
    )
    yield app
    await app.stop()


async def open_conv(app: MtaApp) -> Conversation:
    return await Conversation.open(*app.smtp_address)


async def at_data(app: MtaApp) -> Conversation:
    """A conversation past MAIL FROM:<a@b.test>, RCPT TO:<c@d.test> and DATA: what it sends
    next is the message."""
    conv = await open_conv(app)
    await conv.command("MAIL FROM:<a@b.test>")
    await conv.command("RCPT TO:<c@d.test>")
    await conv.command("DATA")
    return conv


async def data_reply(app: MtaApp, raw: bytes) -> str:
    """The reply to one message's `raw` data (stuffed, ending in CRLF.CRLF)."""
    conv = await at_data(app)
    try:
        return await conv.send_data(raw)
    finally:
        await conv.close()


async def test_ehlo_offers_the_extensions(mta: MtaApp) -> None:
    conv = await Conversation.open(*mta.smtp_address, ehlo=None)
    reply = await conv.command("EHLO client.test")
    for extension in ("PIPELINING", "SIZE 4096", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"):
        assert f"250-{extension}" in reply or f"250 {extension}" in reply, reply
    assert "AUTH" not in reply  # AUTH is offered over TLS only
    await conv.close()


@pytest.mark.parametrize(
    ("commands", "expected"),
    [
        (["MAIL FROM:<a\x01b@x.test>"], "501 5.1.7"),
        (["MAIL FROM:<a@b.test>", "RCPT TO:<c@d.test,e@f.test>"], "553 5.1.3"),
        (["MAIL FROM:<a@b.test>", "RCPT TO:<" + "x" * 65 + "@d.test>"], "501 5.1.3"),
        (["MAIL FROM:<a@b.test>", "RCPT TO:<c@-bad-.test>"], "501 5.1.3"),
        (["MAIL FROM:<a@b.test>", "RCPT TO:<>"], "501 5.1.3"),
        (["MAIL FROM:<a@b.test> SIZE=999999"], "552 5.3.4"),
        (["MAIL FROM:<a@b.test> FOO=BAR"], "555 5.5.4"),
        (["MAIL FROM:<a@b.test> BODY=9BIT"], "501 5.5.4"),
        (["MAIL FROM a@b.test"], "501 5.5.4"),
        (["RCPT TO:<c@d.test>"], "503 5.5.1"),
        (["MAIL FROM:<a@b.test>", "MAIL FROM:<a@b.test>"], "503 5.5.1"),
        (["MAIL FROM:<a@b.test>", "DATA"], "554 5.5.1"),
        (["MAIL FROM:<a@b.test>", "RCPT TO:<ü@d.test>"], "553 5.6.7"),
        (["BDAT 10 LAST"], "502 5.5.1"),
        (["VRFY x"], "252"),
        (["NOOP"], "250 2.0.0"),
    ],
)
async def test_envelope_errors_have_codes_and_enhanced_codes(
    mta: MtaApp, commands: list[str], expected: str
) -> None:
    conv = await open_conv(mta)
    reply = ""
    for command in commands:
        reply = await conv.command(command)
    assert reply.startswith(expected), reply
    assert "Traceback" not in reply and "\n" not in reply
    await conv.close()


async def test_too_many_recipients_is_452_and_keeps_the_first(mta: MtaApp) -> None:
    conv = await open_conv(mta)
    await conv.command("MAIL FROM:<a@b.test>")
    replies = [await conv.command(f"RCPT TO:<r{i}@d.test>") for i in range(4)]
    assert [r[:9] for r in replies] == ["250 2.1.5"] * 3 + ["452 4.5.3"]
    await conv.command("DATA")
    reply = await conv.send_data(b"From: a@b.test\r\nSubject: x\r\n\r\nhi\r\n.\r\n")
    assert reply.startswith("250 2.0.0")
    assert len(spool_rows(mta, "SELECT id FROM recipients")) == 3
    await conv.close()


async def test_nul_in_data_is_refused_and_nothing_is_stored(mta: MtaApp) -> None:
    conv = await at_data(mta)
    reply = await conv.send_data(b"From: a@b.test\r\nSubject: x\r\n\r\nbad\x00byte\r\n.\r\n")
    assert reply.startswith("554 5.6.0")
    # The session goes on: the next transaction works.
    assert (await conv.command("MAIL FROM:<a@b.test>")).startswith("250")
    assert spool_rows(mta, "SELECT COUNT(*) FROM messages") == [(0,)]
    await conv.close()


async def test_oversize_data_is_read_to_the_end_then_refused(mta: MtaApp) -> None:
    conv = await at_data(mta)
    reply = await conv.send_data(
        b"From: a@b.test\r\nSubject: x\r\n\r\n" + (b"y" * 80 + b"\r\n") * 100 + b".\r\n"
    )
    assert reply.startswith("552 5.3.4")
    assert (await conv.command("RSET")).startswith("250 2.0.0")
    await conv.close()


async def test_bare_newlines_are_normalised_and_only_crlf_dot_crlf_ends_data(mta: MtaApp) -> None:
    # "\n.\n" must not end the data (SMTP smuggling); bare CR and LF become CRLF.
    raw = (
        b"From: a@b.test\r\nSubject: x\r\n\r\n"
        b"line1\nline2\rline3\n.\nMAIL FROM:<evil@x.test>\r\n.\r\n"
    )
    reply = await data_reply(mta, raw)
    assert reply.startswith("250 2.0.0"), reply
    (content,) = spool_rows(mta, "SELECT content FROM messages")[0]
    body = content.split(b"\r\n\r\n", 1)[1]
    assert body == b"line1\r\nline2\r\nline3\r\n\r\nMAIL FROM:<evil@x.test>\r\n"
    assert b"\n" not in body.replace(b"\r\n", b"")


async def test_dot_stuffing_is_removed(mta: MtaApp) -> None:
    reply = await data_reply(mta, b"From: a@b.test\r\nSubject: x\r\n\r\n..leading dot\r\n.\r\n")
    assert reply.startswith("250")
    (content,) = spool_rows(mta, "SELECT content FROM messages")[0]
    assert content.endswith(b"\r\n\r\n.leading dot\r\n")


async def test_pipelined_transaction(mta: MtaApp) -> None:
    conv = await open_conv(mta)
    conv.writer.write(
        b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nRCPT TO:<e@d.test>\r\nDATA\r\n"
    )
    from tests.helpers import read_reply

    replies = [await read_reply(conv.reader) for _ in range(4)]
    assert [r[:3] for r in replies] == ["250", "250", "250", "354"]
    conv.writer.write(b"From: a@b.test\r\nSubject: p\r\n\r\nbody\r\n.\r\nQUIT\r\n")
    assert (await read_reply(conv.reader)).startswith("250 2.0.0")
    assert (await read_reply(conv.reader)).startswith("221")
    await conv.close()


async def test_campaign_headers_are_read_and_stripped(mta: MtaApp) -> None:
    reply = await data_reply(
        mta,
        b"From: a@b.test\r\nX-Campaign-Delivery-Id: DLV-7\r\nX-Campaign-Log-Id: LOG-9\r\n"
        b"X-Campaign-Validity: 2h\r\nSubject: s\r\n\r\nbody\r\n.\r\n",
    )
    queue_id = reply.split()[2]
    (row,) = spool_rows(
        mta,
        "SELECT m.delivery_id, r.log_id, m.expires_at - m.received_at, m.content FROM messages m"
        " JOIN recipients r ON r.message_id = m.id WHERE m.queue_id = ?",
        (queue_id,),
    )
    assert row[:3] == ("DLV-7", "LOG-9", 7200.0)
    assert b"X-Campaign" not in row[3] and b"Received: from client.test" in row[3]
    assert b"Message-ID: <" in row[3] and b"Date: " in row[3]


async def test_bad_validity_header_is_refused(mta: MtaApp) -> None:
    reply = await data_reply(mta, b"From: a@b.test\r\nX-Campaign-Validity: soon\r\n\r\nx\r\n.\r\n")
    assert reply.startswith("554 5.6.0") and "X-Campaign-Validity" in reply


async def test_relay_denied_outside_allowed_networks(tmp_path: Path) -> None:
    app = await started(
        mta_config(
            tmp_path, smtp__relay_networks=("10.0.0.0/8",), delivery__relayhost="127.0.0.1:9"
        )
    )
    try:
        conv = await open_conv(app)
        await conv.command("MAIL FROM:<a@b.test>")
        assert (await conv.command("RCPT TO:<c@d.test>")).startswith(
            "554 5.7.1 Relay access denied"
        )
        await conv.close()
    finally:
        await app.stop()


async def store_with_failing_disk(mta: MtaApp, error: str) -> str:
    """Submit one message while a trigger makes the real database refuse the insert with
    `error`, as a failing or full disk would; returns the reply to the final dot."""
    import sqlite3

    conn = sqlite3.connect(mta.config.data_path / "spool.sqlite3")
    conn.execute(
        f"CREATE TRIGGER fail BEFORE INSERT ON messages BEGIN SELECT RAISE(ABORT, '{error}'); END"
    )
    conn.commit()
    conn.close()
    return await data_reply(mta, b"From: a@b.test\r\nSubject: x\r\n\r\nbody\r\n.\r\n")


async def test_storage_failure_answers_451_without_internals(mta: MtaApp) -> None:
    reply = await store_with_failing_disk(mta, "disk I/O error at /secret/path")
    assert reply.startswith("451 4.3.0")
    assert "secret" not in reply and "sqlite" not in reply.lower()
    assert spool_rows(mta, "SELECT COUNT(*) FROM recipients") == [(0,)]


async def test_starttls_then_auth_lets_an_outside_client_relay(tmp_path: Path) -> None:
    """Loopback is not a relay network here: the client must STARTTLS, then AUTH."""
    import ssl

    import aiosmtplib

    config, cert = auth_config(tmp_path)
    app = await started(config)
    try:
        host, port = app.smtp_address
        smtp = aiosmtplib.SMTP(hostname=host, port=port, start_tls=False)
        await smtp.connect()
        await smtp.ehlo()
        assert smtp.supports_extension("starttls") and not smtp.supports_extension("auth")
        reply = await smtp.execute_command(b"AUTH", b"PLAIN", b"AGNhbXBhaWduAHMzY3JldA==")
        assert (reply.code, reply.message[:6]) == (538, "5.7.11")
        await smtp.execute_command(b"MAIL", b"FROM:<a@b.test>")
        reply = await smtp.execute_command(b"RCPT", b"TO:<c@d.test>")
        assert (reply.code, reply.message[:5]) == (554, "5.7.1")
        await smtp.execute_command(b"RSET")
        context = ssl.create_default_context(cafile=str(cert))
        await smtp.starttls(tls_context=context, server_hostname="mta.test")
        await smtp.ehlo()
        assert "PLAIN" in smtp.esmtp_extensions["auth"] and "LOGIN" in smtp.esmtp_extensions["auth"]
        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as refused:
            await smtp.login("campaign", "wrong")
        assert refused.value.code == 535
        reply = await smtp.login("campaign", "s3cret")
        assert reply.code == 235
        errors, response = await smtp.sendmail(
            "a@b.test", ["c@d.test"], b"From: a@b.test\r\nSubject: over TLS\r\n\r\nhi\r\n"
        )
        assert errors == {} and "queued" in response
        await smtp.quit()
        (content,) = spool_rows(app, "SELECT content FROM messages")[0]
        assert b"with ESMTPSA id" in content
    finally:
        await app.stop()


async def test_concurrent_sessions_share_commits(mta: MtaApp) -> None:
    """Group commit: many sessions at their final dot at once share fsyncs."""
    import asyncio

    from tests.helpers import send_message

    spool = mta.running.spool
    commits, ops = spool.commits, spool.ops
    replies = await asyncio.gather(
        *(
            send_message(
                *mta.smtp_address,
                "a@b.test",
                [f"r{i}@d.test"],
                b"From: a@b.test\r\nSubject: g\r\n\r\nx\r\n",
            )
            for i in range(40)
        )
    )
    assert all(r.startswith("250 2.0.0") for r in replies)
    assert spool.commits - commits < spool.ops - ops


async def test_a_full_spool_answers_452_insufficient_storage(mta: MtaApp) -> None:
    """SQLite itself reports SQLITE_FULL: the writer's database may not grow by a page."""
    spool = mta.running.spool

    def cap(conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")

    body = b"From: a@b.test\r\nSubject: x\r\n\r\n" + (b"x" * 70 + b"\r\n") * 40 + b".\r\n"

    assert (await data_reply(mta, body)).startswith("250")  # fills the messages table's first page
    await spool._submit(cap)  # the writer thread's own connection
    reply = await data_reply(mta, body)  # needs a new page
    assert reply.startswith("452 4.3.1 Insufficient system storage")


async def test_words_in_an_error_message_do_not_make_a_full_disk(mta: MtaApp) -> None:
    reply = await store_with_failing_disk(mta, "database or disk is full")
    assert reply.startswith("451 4.3.0")  # a trigger's text, not SQLite's SQLITE_FULL


@pytest.fixture
async def signing_mta(tmp_path: Path) -> AsyncIterator[MtaApp]:
    """An MTA that DKIM-signs mail from b.test (the message is signed in a worker thread,
    which hands it straight to the spool's writer)."""
    import dataclasses

    from mta.cli.dkim import keygen
    from mta.config.service import DkimKey

    key_path, _ = keygen("b.test", "sel", tmp_path / "keys", force=True)
    config = mta_config(tmp_path, delivery__relayhost="127.0.0.1:9")
    keys = (DkimKey("b.test", "sel", str(key_path)),)
    dkim = dataclasses.replace(config.dkim, keys=keys)
    app = await started(dataclasses.replace(config, dkim=dkim))
    yield app
    await app.stop()


async def test_a_signed_message_is_stored_signed_before_the_250(signing_mta: MtaApp) -> None:
    reply = await data_reply(signing_mta, b"From: a@b.test\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert reply.startswith("250 2.0.0")
    queue_id = reply.split()[2]
    [(content, checksum, kinds)] = spool_rows(
        signing_mta,
        "SELECT m.content, m.content_sha256, (SELECT GROUP_CONCAT(kind) FROM events)"
        f" FROM messages m WHERE m.queue_id = '{queue_id}'",
    )
    assert content.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;")
    assert checksum == hashlib.sha256(content).hexdigest()  # taken by the signing thread
    assert kinds == "relayed"


async def test_a_storage_failure_after_signing_answers_451(signing_mta: MtaApp) -> None:
    reply = await store_with_failing_disk(signing_mta, "disk I/O error at /secret/path")
    assert reply.startswith("451 4.3.0")
    assert "secret" not in reply and "sqlite" not in reply.lower()
    assert spool_rows(signing_mta, "SELECT COUNT(*) FROM recipients") == [(0,)]


async def test_a_signing_failure_answers_451_and_stores_nothing(signing_mta: MtaApp) -> None:
    def broken(content: bytes, now: float | None) -> bytes:
        raise ValueError("key material at /secret/key unusable")

    signing_mta.running.handler.signer = broken
    reply = await data_reply(signing_mta, b"From: a@b.test\r\nSubject: x\r\n\r\nbody\r\n.\r\n")
    assert reply.startswith("451 4.3.0") and "secret" not in reply
    assert spool_rows(signing_mta, "SELECT COUNT(*) FROM messages") == [(0,)]
