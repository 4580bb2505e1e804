"""Delivery says the scope of each outcome where it happens, over real loopback SMTP: a
recipient's own RCPT reply, the message's answer for the rest, a failed session for all."""

from __future__ import annotations

import socket

from mta.clock import ManualClock
from mta.config.service import DeliveryConfig
from mta.delivery.client import Delivery
from mta.delivery.deliverer import Job, JobResult
from mta.delivery.dns import Resolver
from mta.model import Condition, Phase
from tests.helpers import ScriptedHandler, ScriptedServer

CONTENT = b"From: a@sender.test\r\nSubject: scope\r\n\r\nhello\r\n"


def job(*recipients: str) -> Job:
    return Job("Q1", "a@sender.test", CONTENT, "dest.test", tuple(recipients))


async def deliver_to(port: int, the_job: Job) -> JobResult:
    clock = ManualClock()
    config = DeliveryConfig(relayhost=f"127.0.0.1:{port}", tls="none")
    delivery = Delivery(config, Resolver(clock), clock)
    try:
        return await delivery.deliver(the_job)
    finally:
        await delivery.close()


async def test_a_rejected_recipient_is_its_own_scope_and_the_dot_answers_the_rest() -> None:
    handler = ScriptedHandler(rcpt=["250 2.1.5 Ok", "550 5.1.1 No such user"])
    server = await ScriptedServer.start(handler)
    try:
        result = await deliver_to(server.port, job("ann@dest.test", "bob@dest.test"))
    finally:
        await server.close()
    assert result.scopes == ("message", "recipient")
    assert [(o.reply.code, o.phase) for o in result.outcomes] == [
        (250, Phase.DOT),
        (550, Phase.RCPT),
    ]
    assert not result.session_failed


async def test_a_refused_connection_fails_the_session_for_every_recipient() -> None:
    with socket.socket() as probe:  # a port nobody listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        result = await deliver_to(port, job("ann@dest.test", "bob@dest.test", "cy@dest.test"))
    assert result.session_failed and result.scopes == ("session",) * 3
    assert {o.condition for o in result.outcomes} == {Condition.CONNECTION_REFUSED}
    assert len(set(result.outcomes)) == 1
