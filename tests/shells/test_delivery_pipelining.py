"""Delivery pipelines the envelope (RFC 2920) against a real SMTP server on loopback.

`GroupServer` is a small asyncio SMTP server: with `hold` it keeps the replies of a
pipelined group until the group ends (at DATA, RSET, NOOP, QUIT or EHLO) and sends them in
one write, as Postfix does; without PIPELINING it counts every command that arrived before
the reply to the one before it (a client that pipelined without being allowed to).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from mta.clock import ManualClock
from mta.config.service import DeliveryConfig, TimeoutsConfig
from mta.delivery.client import Delivery
from mta.delivery.deliverer import Job, JobResult
from mta.delivery.dns import Resolver
from mta.model import Condition, Phase

CONTENT = b"From: a@sender.test\r\nSubject: pipelined\r\n\r\nhello\r\n"
GROUP_END = {"DATA", "RSET", "NOOP", "QUIT", "EHLO"}


@dataclass
class Script:
    """Replies in turn per command (the default is success) and what the server saw."""

    pipelining: bool = True
    hold: bool = True
    mail: list[str] = field(default_factory=list)
    rcpt: list[str] = field(default_factory=list)
    data: list[str] = field(default_factory=list)
    stall_rcpt: bool = False
    commands: list[str] = field(default_factory=list)
    writes: list[bytes] = field(default_factory=list)
    stored: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    early: int = 0  # commands that came before the previous command's reply was sent


class GroupServer(asyncio.Protocol):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.buffer = bytearray()
        self.pending: list[str] = []
        self.content: bytearray | None = None
        self.mail_from: str | None = None
        self.rcpts: list[str] = []
        self.stalled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(b"220 mx.group.test ESMTP\r\n")

    def flush(self) -> None:
        if self.pending:
            chunk = "".join(f"{line}\r\n" for line in self.pending).encode()
            self.pending.clear()
            self.script.writes.append(chunk)
            self.transport.write(chunk)

    def data_received(self, data: bytes) -> None:
        self.buffer.extend(data)
        while not self.stalled and (end := self.buffer.find(b"\r\n")) != -1:
            line = bytes(self.buffer[:end])
            del self.buffer[: end + 2]
            if self.content is not None:
                self.content_line(line)
                continue
            if not self.script.pipelining and self.buffer:
                self.script.early += 1
            verb = line[:4].decode().upper()
            self.script.commands.append(verb)
            reply = self.command(verb, line.decode())
            if self.stalled:
                return
            self.pending.append(reply)
            if not self.script.hold or verb in GROUP_END:
                self.flush()
            if verb == "QUIT":
                self.transport.close()

    def content_line(self, line: bytes) -> None:
        assert self.content is not None
        if line != b".":
            self.content += (line[1:] if line.startswith(b".") else line) + b"\r\n"
            return
        self.script.stored.append((self.mail_from or "", list(self.rcpts), bytes(self.content)))
        self.content = None
        self.mail_from, self.rcpts = None, []
        self.pending.append("250 2.0.0 Ok: queued")
        self.flush()

    def command(self, verb: str, line: str) -> str:
        script = self.script
        if verb == "EHLO":
            lines = ["mx.group.test", *(["PIPELINING"] if script.pipelining else [])]
            lines.append("ENHANCEDSTATUSCODES")
            return "\r\n".join(f"250-{text}" for text in lines[:-1]) + f"\r\n250 {lines[-1]}"
        if verb == "MAIL":
            reply = script.mail.pop(0) if script.mail else "250 2.1.0 Ok"
            if reply.startswith("2"):
                self.mail_from = line.split("<", 1)[1].split(">", 1)[0]
            return reply
        if verb == "RCPT":
            if script.stall_rcpt:
                self.stalled = True
                return ""
            if self.mail_from is None:
                return "503 5.5.1 Error: need MAIL command"
            reply = script.rcpt.pop(0) if script.rcpt else "250 2.1.5 Ok"
            if reply.startswith("2"):
                self.rcpts.append(line.split("<", 1)[1].split(">", 1)[0])
            return reply
        if verb == "DATA":
            if not self.rcpts:
                return "554 5.5.1 Error: no valid recipients"
            reply = script.data.pop(0) if script.data else "354 End data with <CR><LF>.<CR><LF>"
            if reply.startswith("354"):
                self.content = bytearray()
            return reply
        if verb == "RSET":
            self.mail_from, self.rcpts = None, []
            return "250 2.0.0 Ok"
        if verb == "QUIT":
            return "221 2.0.0 Bye"
        return "502 5.5.2 Error: command not recognized"


async def serve(script: Script) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: GroupServer(script), "127.0.0.1", 0)


def job(*recipients: str) -> Job:
    return Job("Q1", "a@sender.test", CONTENT, "dest.test", tuple(recipients))


def delivery_to(server: asyncio.Server, timeouts: TimeoutsConfig | None = None) -> Delivery:
    port = server.sockets[0].getsockname()[1]
    clock = ManualClock()
    config = DeliveryConfig(
        relayhost=f"127.0.0.1:{port}", tls="none", timeouts=timeouts or TimeoutsConfig()
    )
    return Delivery(config, Resolver(clock), clock)


async def deliver(
    script: Script, *jobs: Job, timeouts: TimeoutsConfig | None = None
) -> list[JobResult]:
    server = await serve(script)
    delivery = delivery_to(server, timeouts)
    try:
        return [await delivery.deliver(one) for one in jobs]
    finally:
        await delivery.close()
        server.close()
        await server.wait_closed()


def seen(result: JobResult) -> list[tuple[int, Phase]]:
    return [(o.reply.code, o.phase) for o in result.outcomes]


RECIPIENTS = ("ann@dest.test", "bob@dest.test", "cy@dest.test")


async def test_replies_that_arrive_together_are_all_read() -> None:
    script = Script()
    (result,) = await deliver(script, job(*RECIPIENTS))
    assert seen(result) == [(250, Phase.DOT)] * 3
    assert script.stored == [("a@sender.test", list(RECIPIENTS), CONTENT)]
    # the server held MAIL's, the three RCPTs' and DATA's replies and sent them in one write
    group = script.writes[1]  # the first write answered EHLO
    assert group.count(b"\r\n") == 5 and group.startswith(b"250 2.1.0 Ok\r\n")
    assert group.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n")
    assert script.commands[:6] == ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "DATA"]


async def test_a_refused_recipient_in_the_group_has_its_reply_and_the_rest_get_the_message() -> (
    None
):
    script = Script(rcpt=["250 2.1.5 Ok", "550 5.1.1 No such user", "250 2.1.5 Ok"])
    (result,) = await deliver(script, job(*RECIPIENTS))
    assert seen(result) == [(250, Phase.DOT), (550, Phase.RCPT), (250, Phase.DOT)]
    assert result.scopes == ("message", "recipient", "message")
    assert "No such user" in result.outcomes[1].reply.text
    assert script.stored == [("a@sender.test", ["ann@dest.test", "cy@dest.test"], CONTENT)]


async def test_a_refused_sender_answers_for_every_recipient_and_the_session_is_reset() -> None:
    script = Script(mail=["550 5.7.1 Sender refused"])
    first, second = await deliver(script, job(*RECIPIENTS), job("dee@dest.test"))
    assert seen(first) == [(550, Phase.MAIL)] * 3
    assert {o.reply.text for o in first.outcomes} == {"Sender refused"}
    # RSET after the refused group; the same session then carries the next message
    assert script.commands[:8] == ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "DATA", "RSET", "MAIL"]
    assert seen(second) == [(250, Phase.DOT)]
    assert script.stored == [("a@sender.test", ["dee@dest.test"], CONTENT)]


async def test_a_refused_data_after_accepted_recipients_answers_for_all_and_sends_nothing() -> None:
    script = Script(data=["451 4.3.0 Try again later"])
    first, second = await deliver(script, job(*RECIPIENTS), job("dee@dest.test"))
    assert seen(first) == [(451, Phase.DATA)] * 3
    assert first.scopes == ("message",) * 3
    assert script.commands[6] == "RSET"
    assert seen(second) == [(250, Phase.DOT)]
    assert script.stored == [("a@sender.test", ["dee@dest.test"], CONTENT)]


async def test_without_pipelining_one_command_at_a_time() -> None:
    script = Script(pipelining=False, hold=False, rcpt=["250 2.1.5 Ok", "550 5.1.1 No such user"])
    (result,) = await deliver(script, job(*RECIPIENTS))
    assert script.early == 0  # nothing was sent before the reply to the command before it
    assert script.commands[:6] == ["EHLO", "MAIL", "RCPT", "RCPT", "RCPT", "DATA"]
    assert seen(result) == [(250, Phase.DOT), (550, Phase.RCPT), (250, Phase.DOT)]
    assert script.stored == [("a@sender.test", ["ann@dest.test", "cy@dest.test"], CONTENT)]


async def test_a_stall_in_a_held_group_is_bounded_and_reported_at_mail() -> None:
    timeouts = TimeoutsConfig(mail=0.1, rcpt=0.1, data=0.1)
    (result,) = await deliver(Script(stall_rcpt=True), job(*RECIPIENTS), timeouts=timeouts)
    assert {(o.condition, o.phase) for o in result.outcomes} == {(Condition.TIMEOUT, Phase.MAIL)}
    assert "at MAIL" in result.outcomes[0].reply.text
    assert "pipelined MAIL, RCPT x3, DATA" in result.outcomes[0].reply.text


async def test_a_stall_after_the_mail_reply_is_reported_at_rcpt() -> None:
    # a server that answers each command at once: the RCPT reply is late on its own timeout
    timeouts = TimeoutsConfig(mail=0.1, rcpt=0.1, data=0.1)
    script = Script(hold=False, stall_rcpt=True)
    (result,) = await deliver(script, job(*RECIPIENTS), timeouts=timeouts)
    assert {(o.condition, o.phase) for o in result.outcomes} == {(Condition.TIMEOUT, Phase.RCPT)}
    assert "at RCPT" in result.outcomes[0].reply.text
