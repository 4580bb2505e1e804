"""Reading the replies to pipelined commands (RFC 2920) on an aiosmtplib connection.

aiosmtplib reads one reply per command it writes, so it cannot pipeline: replies
that arrive together would be lost. For the envelope of a transaction (MAIL, every
RCPT and DATA written at once to a server that offers PIPELINING) a `Replies`
protocol stands in for aiosmtplib's on the transport, keeps every byte, and hands
the replies out one at a time, each with its own timeout; `restore()` gives the
transport back. The end of the connection reaches aiosmtplib's protocol too.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from aiosmtplib import SMTPResponseException, SMTPServerDisconnected
from aiosmtplib.errors import SMTPReadTimeoutError

MAX_LINE = 8192  # an over-long reply line is a protocol error, as aiosmtplib says
INVALID_RESPONSE = -1


class Replies(asyncio.Protocol):
    """Installed on `transport` in place of `inner` until `restore()`."""

    def __init__(self, transport: asyncio.Transport, inner: asyncio.BaseProtocol) -> None:
        self.transport = transport
        self.inner = inner
        self.buffer = bytearray()
        self.closed: Exception | None = None
        self._arrived = asyncio.Event()
        transport.set_protocol(self)

    def restore(self) -> None:
        self.transport.set_protocol(self.inner)

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        self.buffer.extend(data)
        self._arrived.set()

    def eof_received(self) -> bool | None:
        self.closed = SMTPServerDisconnected("Unexpected EOF received")
        self._arrived.set()
        return cast(asyncio.Protocol, self.inner).eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed is None:
            self.closed = SMTPServerDisconnected("Connection lost")
        self._arrived.set()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    async def reply(self, timeout: float) -> tuple[int, str]:
        """The next reply (code, text); SMTPReadTimeoutError after `timeout` seconds,
        SMTPServerDisconnected when the connection ended first."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            parsed = take_reply(self.buffer)
            if parsed is not None:
                return parsed
            if self.closed is not None:
                raise self.closed
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise SMTPReadTimeoutError("Timed out waiting for server response") from None


def take_reply(buffer: bytearray) -> tuple[int, str] | None:
    """Remove one whole reply (its lines joined by newlines) from `buffer`; None if the
    buffer does not hold one yet. SMTPResponseException for a line that is not SMTP."""
    lines: list[Any] = []
    code = INVALID_RESPONSE
    offset = 0
    while True:
        end = buffer.find(b"\n", offset)
        if end == -1:
            if len(buffer) - offset > MAX_LINE:
                raise SMTPResponseException(INVALID_RESPONSE, "Response too long")
            return None
        line = bytes(buffer[offset : end + 1])
        if len(line) > MAX_LINE:
            raise SMTPResponseException(INVALID_RESPONSE, "Response too long")
        head = line[:3]
        if not head.isdigit():
            text = line.decode("utf-8", errors="ignore")
            raise SMTPResponseException(INVALID_RESPONSE, f"Malformed SMTP response line: {text}")
        code = int(head)
        offset = end + 1
        lines.append(line[4:].strip(b" \t\r\n"))
        if line[3:4] != b"-":
            del buffer[:offset]
            return code, b"\n".join(lines).decode("utf-8", "surrogateescape")
