"""`mta serve --workers 2`: one listener's limits and counts hold across its workers.

The main process admits every connection, so the per-IP cap counts the sessions of all
workers and frees a place when a session in any worker ends; failed AUTH in different
workers add up to one lockout, refused at connect by whichever worker; and the admin
API counts what each worker refused."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import aiosmtplib
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mta.cli.sink import Sink
from mta.smtp.tls import write_self_signed
from tests.e2e.test_crash import Serve
from tests.helpers import Conversation, read_reply, wait_for


async def start(tmp_path: Path, relay_port: int, *extra: str, **env: str) -> Serve:
    """`mta serve --workers 2` with its admin API on a free port."""
    return await Serve.start(
        tmp_path, relay_port, "--workers", "2", "--admin", "127.0.0.1:0", *extra, **env
    )


async def metric(mta: Serve, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{mta.admin}/metrics") as got:
        text = await got.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise AssertionError(f"no metric {name} {labels}")


@pytest.fixture
async def sink() -> AsyncIterator[Sink]:
    server = await Sink.start()
    yield server
    await server.close()


def metric_is(mta: Serve, name: str, value: float) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await metric(mta, name) == value

    return check


async def greeting(port: int) -> str:
    """The first reply to a new connection (then the connection is closed)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await read_reply(reader)
    finally:
        writer.close()


async def test_the_per_ip_cap_counts_the_sessions_of_every_worker(
    tmp_path: Path, sink: Sink
) -> None:
    mta = await start(tmp_path, sink.port, MTA_SMTP_MAX_CONNECTIONS_PER_IP="4")
    sessions = [await Conversation.open("127.0.0.1", mta.port) for _ in range(4)]
    try:
        # counted per worker (four each), a fifth session would have been let in
        assert (await greeting(mta.port)).startswith("421 4.7.0 Too many connections from")
        assert await metric(mta, "mta_smtp_sessions_open") == 4.0
        await sessions.pop().close()  # a place is free again, whichever worker had it
        await wait_for(metric_is(mta, "mta_smtp_sessions_open", 3), timeout=10)
        sessions.append(await Conversation.open("127.0.0.1", mta.port))
        total = 'mta_smtp_connections_refused_total'
        assert await metric(mta, total, reason="per_ip") == 1.0
    finally:
        for session in sessions:
            await session.close()
        assert await mta.terminate() == 0


async def test_failed_auth_in_two_workers_locks_the_address_out_of_both(
    tmp_path: Path, sink: Sink
) -> None:
    """Loopback outside relay_networks: a client must STARTTLS and AUTH. Three sessions are
    open at once (the main process gives each new one to the less busy worker, so the
    first two are in different workers); one failed AUTH in each of the first two reaches
    the limit of 2. Then the third session's AUTH is refused by its worker, and a new
    connection is refused at once (without AUTH it can do nothing)."""
    cert, key = write_self_signed(tmp_path / "tls", "mta.test")
    config = tmp_path / "mta.toml"
    config.write_text(
        "[smtp]\n"
        'relay_networks = ["10.0.0.0/8"]\n'
        f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        'auth_failures_per_ip = 2\nauth_failure_delay = "0s"\n'
        '[smtp.auth_users]\ncampaign = "s3cret"\n'
    )
    mta = await start(tmp_path, sink.port, "--config", str(config))
    trust = ssl.create_default_context(cafile=str(cert))
    clients = [
        aiosmtplib.SMTP(hostname="127.0.0.1", port=mta.port, start_tls=False) for _ in range(3)
    ]
    try:
        for client in clients:
            await client.connect()
            await client.starttls(tls_context=trust, server_hostname="mta.test")
            await client.ehlo()
        for client in clients[:2]:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as failed:
                await client.auth_plain("campaign", "wrong")
            assert failed.value.code == 535
        await wait_for(metric_is(mta, "mta_smtp_auth_failures_total", 2), timeout=10)
        await asyncio.sleep(1.0)  # the main process's word of the lockout reaches the workers
        with pytest.raises(aiosmtplib.SMTPResponseException) as refused:
            await clients[2].auth_plain("campaign", "s3cret")
        assert (refused.value.code, refused.value.message[:5]) == (454, "4.7.0")
        assert (await greeting(mta.port)).startswith("421 4.7.0 Too many failed auth")
    finally:
        for client in clients:
            client.close()
        assert await mta.terminate() == 0


async def test_the_admin_api_counts_what_the_workers_refused(tmp_path: Path, sink: Sink) -> None:
    mta = await start(tmp_path, sink.port)
    try:
        for n in range(3):
            session = await Conversation.open("127.0.0.1", mta.port)
            try:
                assert (await session.command("MAIL FROM:<a@sender.test>")).startswith("250")
                assert (await session.command(f"RCPT TO:<r{n}@dest.test>")).startswith("250")
                assert (await session.command("DATA")).startswith("354")
                reply = await session.send_data(b"Subject: no From\r\n\r\nbody\r\n.\r\n")
                assert reply.startswith("550 5.6.0"), reply
            finally:
                await session.close()
        await wait_for(metric_is(mta, "mta_messages_rejected_total", 3), timeout=10)
    finally:
        assert await mta.terminate() == 0
