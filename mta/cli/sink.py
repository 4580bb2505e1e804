"""`mta sink`: an SMTP server that accepts every message and stores it in a Maildir.

A place to point the MTA's `--relayhost` in tests and benchmarks, and the
"loopback limit" baseline of the benchmark: the same listener code as the MTA's
ingress, with nothing behind it but a file write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from aiosmtpd.smtp import Envelope, Session

from mta.smtp.maildir import Maildir
from mta.smtp.server import FastSMTP, bound_port, close_server, content_of, start_server

log = logging.getLogger("mta.sink")


class SinkHandler:
    def __init__(self, maildir: Maildir | None) -> None:
        self.maildir = maildir
        self.received = 0

    async def handle_DATA(self, server: FastSMTP, session: Session, envelope: Envelope) -> str:
        maildir = self.maildir
        if maildir is not None:
            content = content_of(envelope)
            sender, recipients = envelope.mail_from or "", list(envelope.rcpt_tos)
            if maildir.fsync:
                await asyncio.get_running_loop().run_in_executor(
                    None, maildir.deliver, sender, recipients, content
                )
            else:
                maildir.deliver(sender, recipients, content)
        self.received += 1
        return "250 2.0.0 Ok: stored"


class Sink:
    """A running sink: `await Sink.start(...)`, `.port`, `await close()`."""

    def __init__(self, handler: SinkHandler, server: asyncio.Server, host: str) -> None:
        self.handler = handler
        self.server = server
        self.host = host

    @property
    def port(self) -> int:
        return bound_port(self.server)

    @property
    def maildir(self) -> Maildir | None:
        return self.handler.maildir

    @classmethod
    async def start(
        cls,
        host: str = "127.0.0.1",
        port: int = 0,
        maildir: Path | None = None,
        fsync: bool = False,
        hostname: str = "sink.localhost",
        max_message_size: int = 50 * 1024 * 1024,
    ) -> Sink:
        handler = SinkHandler(Maildir(maildir, fsync) if maildir is not None else None)
        factory: Callable[[], FastSMTP] = lambda: FastSMTP(  # noqa: E731
            handler, hostname=hostname, data_size_limit=max_message_size, ident="ESMTP sink"
        )
        server = await start_server(factory, host, port)
        return cls(handler, server, host)

    async def close(self) -> None:
        await close_server(self.server)
