"""Submission -> spool -> delivery over real sockets: DKIM on the wire, retries, bounces,
expiry under a manual clock, connection reuse, TLS, unknown outcomes after the dot."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import dkim
import pytest

from mta.app import MtaApp
from mta.cli.dkim import keygen
from mta.cli.sink import Sink
from mta.clock import ManualClock
from mta.ingress.dkim import public_key_record
from mta.smtp.maildir import strip_trace
from mta.smtp.server import FastSMTP, start_server
from mta.smtp.tls import write_self_signed
from tests.helpers import (
    ScriptedHandler,
    ScriptedServer,
    events_of,
    mta_config,
    send_message,
    spool_rows,
    started,
    states,
    wait_for,
)

MESSAGE = (
    b"From: Sender <news@sender.test>\r\nTo: <rcpt@dest.test>\r\nSubject: Hello\r\n"
    b"X-Campaign-Delivery-Id: DLV1\r\nX-Campaign-Log-Id: LOG1\r\n\r\nHi there.\r\n"
)


async def relay_to(
    tmp_path: Path, port: int, clock: ManualClock | None = None, **flags: object
) -> MtaApp:
    return await started(
        mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{port}", retry__jitter=0.0, **flags),
        clock=clock,
    )


def kinds(app: MtaApp) -> list[str]:
    return [e["kind"] for e in events_of(app)]


async def test_signed_message_arrives_and_verifies_at_the_sink(tmp_path: Path) -> None:
    rsa_path, rsa_key = keygen("sender.test", "rsa1", tmp_path / "keys")
    ed_path, ed_key = keygen("sender.test", "ed1", tmp_path / "keys", kind="ed25519")
    records = {
        b"rsa1._domainkey.sender.test.": public_key_record(rsa_key).encode(),
        b"ed1._domainkey.sender.test.": public_key_record(ed_key).encode(),
    }
    sink = await Sink.start(maildir=tmp_path / "maildir")
    app = await started(mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{sink.port}"))
    try:
        # Reconfigure through the public flag path: --dkim DOMAIN:SELECTOR:KEYFILE.
        await app.stop()
        from mta.cli.main import build_parser, config_from_args

        args = build_parser().parse_args(
            [
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                str(tmp_path / "spool"),
                "--relayhost",
                f"127.0.0.1:{sink.port}",
                "--dkim",
                f"sender.test:rsa1:{rsa_path}",
                "--dkim",
                f"sender.test:ed1:{ed_path}",
                "--admin",
                "127.0.0.1:0",
            ]
        )
        app = await started(config_from_args(args))
        reply = await send_message(
            *app.smtp_address, "bounces@sender.test", ["rcpt@dest.test"], MESSAGE
        )
        assert reply.startswith("250 2.0.0")
        assert sink.maildir is not None
        await wait_for(lambda: sink.handler.received == 1)
        stored = sink.maildir.paths()[0].read_bytes()
        received = strip_trace(stored)
        assert received.count(b"DKIM-Signature:") == 2
        assert b"X-Campaign" not in received
        verifier = dkim.DKIM(received)
        dnsfunc = lambda name, timeout=5: records.get(name, b"")  # noqa: E731
        assert verifier.verify(idx=0, dnsfunc=dnsfunc)
        assert verifier.verify(idx=1, dnsfunc=dnsfunc)
        # Tampering breaks it: the signature covers what was received.
        assert not dkim.verify(received.replace(b"Hi there.", b"Hi there!"), dnsfunc=dnsfunc)
        # The delivered event is committed just after the sink's 250: wait for it, not race it.
        await wait_for(lambda: kinds(app) == ["relayed", "delivered"])
    finally:
        await app.stop()
        await sink.close()


async def test_4xx_is_retried_on_schedule_then_delivered(
    tmp_path: Path, receiver: ScriptedServer
) -> None:
    receiver.handler.rcpt[:] = ["451 4.3.0 Temporary local problem"]
    clock = ManualClock()
    app = await relay_to(tmp_path, receiver.port, clock, retry__first="10m")
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@dest.test"], MESSAGE)
        await wait_for(lambda: "soft_bounce" in kinds(app))
        soft = events_of(app)[-1]
        assert soft["smtp"]["code"] == 451 and soft["next_attempt_at"] == clock.now() + 600
        assert soft["failure"]["type"] == "Soft" and soft["log_id"] == "LOG1"
        assert states(app) == {"r@dest.test": "queued"}
        clock.advance(599)
        await asyncio.sleep(0.2)
        assert kinds(app) == ["relayed", "soft_bounce"]  # not before its time
        clock.advance(2)
        await wait_for(lambda: kinds(app) == ["relayed", "soft_bounce", "delivered"])
        delivered = events_of(app)[-1]
        assert (delivered["seq"], delivered["attempt"]) == (3, 2)
        assert len(receiver.handler.received) == 1
    finally:
        await app.stop()


async def test_5xx_fails_at_once_without_retry(tmp_path: Path, receiver: ScriptedServer) -> None:
    receiver.handler.rcpt[:] = ["550 5.1.1 <r@dest.test>: Recipient address rejected: User unknown"]
    app = await relay_to(tmp_path, receiver.port, ManualClock())
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@dest.test"], MESSAGE)
        await wait_for(lambda: "hard_bounce" in kinds(app))
        bounce = events_of(app)[-1]
        assert bounce["smtp"]["enhanced"] == "5.1.1" and bounce["smtp"]["phase"] == "rcpt"
        assert bounce["failure"]["type"] == "Hard" and bounce["next_attempt_at"] is None
        assert states(app) == {"r@dest.test": "bounced"}
        assert spool_rows(app, "SELECT content IS NULL FROM messages") == [(1,)]
    finally:
        await app.stop()


async def test_mixed_recipients_in_one_transaction(
    tmp_path: Path, receiver: ScriptedServer
) -> None:
    receiver.handler.rcpt[:] = ["250 2.1.5 Ok", "550 5.1.1 no such user", "452 4.2.2 over quota"]
    app = await relay_to(tmp_path, receiver.port, ManualClock())
    try:
        await send_message(
            *app.smtp_address,
            "b@sender.test",
            ["ok@dest.test", "gone@dest.test", "full@dest.test"],
            MESSAGE,
        )
        await wait_for(lambda: len(events_of(app)) == 6)
        assert states(app) == {
            "ok@dest.test": "delivered",
            "gone@dest.test": "bounced",
            "full@dest.test": "queued",
        }
        assert receiver.handler.received[0][1] == ["ok@dest.test"]
    finally:
        await app.stop()


async def test_connections_are_reused(tmp_path: Path) -> None:
    sink = await Sink.start()
    app = await started(mta_config(tmp_path, delivery__relayhost=f"127.0.0.1:{sink.port}"))
    try:
        for _ in range(3):
            for i in range(5):
                await send_message(*app.smtp_address, "b@sender.test", [f"r{i}@d.test"], MESSAGE)
            await wait_for(lambda: states(app) and set(states(app).values()) == {"delivered"})
        pool = app.running.delivery.pool
        assert sink.handler.received == 15
        assert pool.opened < 15 and pool.reused > 0
    finally:
        await app.stop()
        await sink.close()


async def test_lost_connection_after_the_dot_is_a_possible_duplicate(
    tmp_path: Path, receiver: ScriptedServer
) -> None:
    gate = asyncio.Event()
    receiver.handler.stall_dot = gate
    clock = ManualClock()
    app = await relay_to(tmp_path, receiver.port, clock, delivery__timeouts__dot="1s")
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@dest.test"], MESSAGE)
        await wait_for(lambda: "soft_bounce" in kinds(app))
        soft = events_of(app)[-1]
        assert soft["possible_duplicate"] is True and soft["smtp"]["phase"] == "dot"
        receiver.handler.stall_dot = None
        gate.set()
        clock.advance(3600)
        await wait_for(lambda: "delivered" in kinds(app))
        assert events_of(app)[-1]["possible_duplicate"] is True
    finally:
        gate.set()
        await app.stop()


@pytest.mark.parametrize("handshake_fails", [False, True])
async def test_opportunistic_tls_and_fallback_to_clear_text(
    tmp_path: Path, handshake_fails: bool
) -> None:
    cert, key = write_self_signed(tmp_path / "tls", "receiver.test")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if handshake_fails:
        context.verify_mode = ssl.CERT_REQUIRED  # asks a client certificate we never send
    handler = ScriptedHandler()
    sessions: list[bool] = []

    class Recording(FastSMTP):
        async def smtp_MAIL(self, arg: str | None) -> None:
            sessions.append(self._tls_protocol is not None)
            await super().smtp_MAIL(arg)

    server = await start_server(
        lambda: Recording(handler, hostname="rx.test", data_size_limit=10**6, tls_context=context),
        "127.0.0.1",
        0,
    )
    app = await relay_to(tmp_path, server.sockets[0].getsockname()[1])
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@dest.test"], MESSAGE)
        await wait_for(lambda: len(handler.received) == 1)
        assert sessions == [not handshake_fails]
    finally:
        await app.stop()
        server.close()


async def test_graceful_stop_gives_in_flight_recipients_back(
    tmp_path: Path, receiver: ScriptedServer
) -> None:
    gate = asyncio.Event()
    receiver.handler.stall_dot = gate
    config = mta_config(
        tmp_path, delivery__relayhost=f"127.0.0.1:{receiver.port}", spool__shutdown_grace="0.2s"
    )
    app = await started(config)
    await send_message(*app.smtp_address, "b@sender.test", ["r@dest.test"], MESSAGE)
    await wait_for(lambda: app.running.scheduler.inflight == 1)
    await app.stop()
    assert spool_rows(
        config.data_path, "SELECT state, leased, possible_duplicate FROM recipients"
    ) == [("queued", 0, 1)]
    receiver.handler.stall_dot = None
    gate.set()
    app = await started(config)
    try:
        await wait_for(lambda: "delivered" in [e["kind"] for e in events_of(config.data_path)])
        assert events_of(config.data_path)[-1]["possible_duplicate"] is True
    finally:
        await app.stop()


async def test_a_site_at_its_connection_limit_waits_without_spinning(
    tmp_path: Path, receiver: ScriptedServer
) -> None:
    """One connection allowed, the receiver stalls: the other recipients wait for it to
    end; the scheduler sleeps meanwhile instead of planning again and again."""
    rules = tmp_path / "mx-rules.toml"
    rules.write_text("[default]\nmax_connections = 1\n")
    gate = asyncio.Event()
    receiver.handler.stall_dot = gate
    app = await relay_to(tmp_path, receiver.port, delivery__mx_rules_files=(str(rules),))
    try:
        for i in range(3):
            await send_message(*app.smtp_address, "b@sender.test", [f"r{i}@dest.test"], MESSAGE)
        scheduler = app.running.scheduler
        await wait_for(lambda: scheduler.inflight == 1)
        before = scheduler.rounds
        await asyncio.sleep(0.5)
        assert scheduler.rounds - before < 20
        receiver.handler.stall_dot = None
        gate.set()
        await wait_for(lambda: set(states(app).values()) == {"delivered"})
    finally:
        gate.set()
        await app.stop()


async def test_a_domain_with_nothing_queued_leaves_the_scheduler(
    tmp_path: Path, receiver: ScriptedServer
) -> None:
    """The scheduler's memory (and each round's work) follows the domains that have mail
    waiting, not every domain ever seen."""
    app = await relay_to(tmp_path, receiver.port)
    try:
        await send_message(*app.smtp_address, "b@sender.test", ["r@once.test"], MESSAGE)
        await wait_for(lambda: states(app) == {"r@once.test": "delivered"})
        scheduler = app.running.scheduler
        await wait_for(lambda: "once.test" not in scheduler.domains)
        await send_message(*app.smtp_address, "b@sender.test", ["s@once.test"], MESSAGE)
        await wait_for(lambda: states(app).get("s@once.test") == "delivered")
    finally:
        await app.stop()
