"""An aiosmtpd `SMTP` protocol tuned for throughput and strict replies.

The base of every SMTP listener here: the MTA's ingress, the test sink and the
simulated ISPs. Over aiosmtpd's class it changes five things:
- DATA is read in chunks up to the CRLF.CRLF terminator (aiosmtpd reads and logs
  line by line: most of its profile on large messages). Only CRLF.CRLF ends the
  data (no SMTP smuggling); bare LF / bare CR inside are normalised to CRLF; NUL
  is refused with 554 5.6.0; oversize data with 552 5.3.4 after reading to the end.
- MAIL and RCPT are parsed and validated by `mta.core.address` (our rules, our
  canonical form), with limits on recipients (452 4.5.3) and SIZE (552 5.3.4).
- EHLO advertises PIPELINING and ENHANCEDSTATUSCODES; every other reply gets an
  RFC 3463 enhanced code when its text has none.
- An exception in a handler answers `451 4.3.0` and is logged, never shown.
- The host name is passed in (aiosmtpd would call `socket.getfqdn()` per connection).

Handlers implement aiosmtpd's hooks: `handle_MAIL(server, session, envelope,
address, options)`, `handle_RCPT(...)`, `handle_DATA(server, session, envelope)`
returning a reply string; a 2xx reply to MAIL or RCPT is recorded in the envelope
by this class.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import ssl
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
)

from mta.core.address import AddressError, parse_path

log = logging.getLogger("mta.smtp")

_DEFAULT_ENHANCED = {
    211: "2.0.0",
    214: "2.0.0",
    220: "2.0.0",
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.5.0",
    421: "4.3.0",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    455: "4.5.4",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    534: "5.7.9",
    535: "5.7.8",
    538: "5.7.11",
    550: "5.0.0",
    551: "5.1.6",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}
_HAS_ENHANCED = re.compile(r"^\d{3}[ -][245]\.\d{1,3}\.\d{1,3}(?:\s|$)")
_BARE_NEWLINE = re.compile(rb"\r\n|\r|\n")
_TERMINATOR = b"\r\n.\r\n"


def content_of(envelope: Envelope) -> bytes:
    """The message bytes of an envelope filled by `FastSMTP` (always bytes, CRLF, unstuffed)."""
    content = envelope.content
    if not isinstance(content, bytes):
        raise TypeError("FastSMTP envelopes carry bytes")
    return content


def with_enhanced_code(status: str) -> str:
    """Add the default RFC 3463 code for the reply's basic code if the text has none."""
    if len(status) < 3 or not status[:3].isdigit() or _HAS_ENHANCED.match(status):
        return status
    enhanced = _DEFAULT_ENHANCED.get(int(status[:3]))
    if enhanced is None:
        return status
    separator = status[3:4] or " "
    return f"{status[:3]}{separator}{enhanced} {status[4:]}".rstrip()


def normalise_data(raw: bytes) -> bytes:
    """Bare LF / bare CR -> CRLF, then remove dot-stuffing (RFC 5321 4.5.2)."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf or raw.count(b"\n") != crlf:
        raw = _BARE_NEWLINE.sub(b"\r\n", raw)
    if b"\r\n." in raw:
        raw = raw.replace(b"\r\n.", b"\r\n")
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw


def password_authenticator(users: dict[str, str]) -> Callable[..., AuthResult]:
    """An aiosmtpd authenticator checking LOGIN/PLAIN credentials against a table."""

    def authenticate(
        server: SMTP, session: Session, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = auth_data.login.decode("utf-8", "replace")
        password = auth_data.password.decode("utf-8", "replace")
        ok = login in users and users[login] == password
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    return authenticate


class FastSMTP(SMTP):
    """See the module docstring."""

    def __init__(
        self,
        handler: Any,
        *,
        hostname: str,
        data_size_limit: int,
        max_recipients: int = 1000,
        tls_context: ssl.SSLContext | None = None,
        auth_users: dict[str, str] | None = None,
        timeout: float = 300.0,
        ident: str = "ESMTP",
    ) -> None:
        super().__init__(
            handler,
            hostname=hostname,
            ident=ident,
            data_size_limit=data_size_limit,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=tls_context,
            timeout=timeout,
            auth_require_tls=True,
            authenticator=password_authenticator(auth_users) if auth_users else None,
            auth_exclude_mechanism=None if auth_users else ["PLAIN", "LOGIN"],
        )
        self.max_recipients = max_recipients
        self._greeted = False
        self._held: list[bytes] = []
        self._auth_offered = bool(auth_users)
        # aiosmtpd keeps these limits in a class-level dict it mutates per EHLO.
        self.command_size_limits = collections.defaultdict(lambda: 1024)

    def _reset_envelope(self) -> None:
        self.envelope = self._create_envelope()

    # -- replies --------------------------------------------------------------

    async def push(self, status: Any) -> None:
        """Send a reply; while the next pipelined command is already buffered, hold it and
        send the replies together (RFC 2920), saving a write per command."""
        if isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        if not self._greeted:
            self._greeted = True  # the 220 greeting carries no enhanced code
        elif not status.startswith(("334", "354")):
            status = with_enhanced_code(status)
        data = status.encode("utf-8") + b"\r\n"
        closing = status.startswith("421")
        buffered: bytearray = self._reader._buffer  # type: ignore[attr-defined]
        if not closing and b"\n" in buffered:
            self._held.append(data)
            return
        if self._held:
            data = b"".join(self._held) + data
            self._held.clear()
        self._writer.write(data)
        await self._writer.drain()
        if closing and self.transport is not None:
            self.transport.close()  # RFC 5321 3.8: 421 closes the channel

    async def _push_lines(self, code: int, lines: list[str]) -> None:
        last = len(lines) - 1
        payload = "".join(
            f"{code}{' ' if i == last else '-'}{line}\r\n" for i, line in enumerate(lines)
        ).encode("utf-8")
        if self._held:
            payload = b"".join(self._held) + payload
            self._held.clear()
        self._writer.write(payload)
        await self._writer.drain()

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, TLSSetupException):
            log.info("TLS handshake with %s failed: %s", self._peer_text(), error.__cause__)
            return "454 4.7.0 TLS not available due to temporary reason"
        log.error("SMTP session error from %s", self._peer_text(), exc_info=error)
        return "451 4.3.0 Internal error; please try again later"

    def _peer_text(self) -> str:
        peer = self.session.peer if self.session is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else str(peer)

    # -- greeting -------------------------------------------------------------

    async def smtp_HELO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        assert self.session is not None
        self._reset_envelope()
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await self._push_lines(250, [self.hostname])

    async def smtp_EHLO(self, hostname: str) -> None:
        if not hostname:
            await self.push("501 5.5.4 Syntax: EHLO hostname")
            return
        assert self.session is not None
        self._reset_envelope()
        self.session.extended_smtp = True
        self.session.host_name = hostname
        lines = [self.hostname, "PIPELINING"]
        if self.data_size_limit:
            lines.append(f"SIZE {self.data_size_limit}")
        lines += ["8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"]
        if self.tls_context and not self._tls_protocol:
            lines.append("STARTTLS")
        if self._auth_offered and self._tls_protocol:
            lines.append("AUTH " + " ".join(sorted(self._auth_methods)))
        hook = self._handle_hooks.get("EHLO")
        if hook is not None:
            replaced = await hook(self, self.session, self.envelope, hostname, lines)
            if isinstance(replaced, str):  # a refusal such as "554 5.7.1 ..."
                await self.push(replaced)
                return
            lines = replaced
        await self._push_lines(250, lines)

    # -- envelope -------------------------------------------------------------

    def _keyword_arg(self, keyword: str, arg: str | None) -> str | None:
        if arg is None or arg[: len(keyword)].upper() != keyword:
            return None
        return arg[len(keyword) :]

    async def smtp_MAIL(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("MAIL"):
            return
        assert self.session is not None and self.envelope is not None
        if self.envelope.mail_from is not None:
            await self.push("503 5.5.1 Error: nested MAIL command")
            return
        rest = self._keyword_arg("FROM:", arg)
        if rest is None:
            await self.push("501 5.5.4 Syntax: MAIL FROM:<address>")
            return
        try:
            path = parse_path(rest, sender=True)
        except AddressError as exc:
            await self.push(exc.reply)
            return
        params = dict(path.params)
        if params and not self.session.extended_smtp:
            await self.push("501 5.5.4 Parameters need EHLO")
            return
        size = params.pop("SIZE", None)
        if size is not None:
            if not size.isdigit():
                await self.push("501 5.5.4 Bad SIZE parameter")
                return
            if self.data_size_limit and int(size) > self.data_size_limit:
                await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
                return
        body = params.pop("BODY", "7BIT")
        if (body or "").upper() not in ("7BIT", "8BITMIME"):
            await self.push("501 5.5.4 BODY must be 7BIT or 8BITMIME")
            return
        smtputf8 = "SMTPUTF8" in params
        if smtputf8 and params.pop("SMTPUTF8") is not None:
            await self.push("501 5.5.4 SMTPUTF8 takes no value")
            return
        if params:
            await self.push(f"555 5.5.4 MAIL parameter {next(iter(params))} not supported")
            return
        options = [k if v is None else f"{k}={v}" for k, v in path.params.items()]
        status = await self._call_handler_hook("MAIL", path.address, options)
        if status is MISSING:
            status = "250 2.1.0 Sender ok"
        if status.startswith("2"):
            self.envelope.mail_from = path.address
            self.envelope.mail_options.extend(options)
            self.envelope.smtp_utf8 = smtputf8
        await self.push(status)

    async def smtp_RCPT(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("RCPT"):
            return
        assert self.session is not None and self.envelope is not None
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        rest = self._keyword_arg("TO:", arg)
        if rest is None:
            await self.push("501 5.5.4 Syntax: RCPT TO:<address>")
            return
        try:
            path = parse_path(rest, sender=False, smtputf8=self.envelope.smtp_utf8)
        except AddressError as exc:
            await self.push(exc.reply)
            return
        if path.params:
            await self.push(f"555 5.5.4 RCPT parameter {next(iter(path.params))} not supported")
            return
        if len(self.envelope.rcpt_tos) >= self.max_recipients:
            await self.push("452 4.5.3 Error: too many recipients")
            return
        status = await self._call_handler_hook("RCPT", path.address, [])
        if status is MISSING:
            status = "250 2.1.5 Recipient ok"
        if status.startswith("2"):
            self.envelope.rcpt_tos.append(path.address)
        await self.push(status)

    # -- content --------------------------------------------------------------

    async def _read_data(self) -> tuple[bytes | None, bool]:
        """Raw bytes up to CRLF.CRLF (terminator removed) and whether they were too large.

        The CRLF that ended the DATA command line also starts the terminator of an
        empty message, so it is put back in front of the buffer: one search for
        CRLF.CRLF then finds the end of any message. Returns (None, ...) when the
        connection closed before the terminator.
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        buffered: bytearray = reader._buffer  # type: ignore[attr-defined]  # asyncio's own
        buffered[0:0] = b"\r\n"
        saved_limit: int = reader._limit  # type: ignore[attr-defined]
        # Let one readuntil() span a whole message; restored after the read.
        reader._limit = max(limit, 1 << 20) + 65536  # type: ignore[attr-defined]
        too_big = False
        total = 0
        try:
            while True:
                try:
                    raw = await reader.readuntil(_TERMINATOR)
                except asyncio.LimitOverrunError as exc:
                    too_big = True
                    total += exc.consumed
                    await reader.readexactly(exc.consumed)
                    continue
                except asyncio.IncompleteReadError:
                    return None, too_big
                total += len(raw)
                break
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]
        if too_big or (limit and total - len(_TERMINATOR) - 2 > limit):
            return b"", True
        return raw[2:-3], False  # drop our CRLF and ".CRLF"; the last line keeps its CRLF

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.envelope.mail_from is None:
            await self.push("503 5.5.1 Error: need MAIL command")
            return
        if not self.envelope.rcpt_tos:
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        raw, too_big = await self._read_data()
        if raw is None:
            return  # connection gone; aiosmtpd's loop notices
        if too_big:
            self._reset_envelope()
            await self.push("552 5.3.4 Message size exceeds fixed maximum message size")
            return
        if b"\x00" in raw:
            self._reset_envelope()
            await self.push("554 5.6.0 Message contains NUL characters")
            return
        content = normalise_data(raw)
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        self._reset_envelope()
        await self.push("250 2.0.0 Ok" if status is MISSING else status)

    async def smtp_BDAT(self, arg: str | None) -> None:
        await self.push("502 5.5.1 BDAT not supported (CHUNKING is not offered)")


ServerFactory = Callable[[], FastSMTP]


async def start_server(
    factory: ServerFactory, host: str, port: int, *, reuse_port: bool = False
) -> asyncio.Server:
    """Listen on host:port (port 0: any free port) with the given protocol factory."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(
        factory,
        host=host,
        port=port,
        reuse_address=True,
        reuse_port=reuse_port or None,
        backlog=1024,
    )


async def close_server(server: asyncio.Server, timeout: float = 2.0) -> None:
    """Stop listening; wait briefly for the listener to close (not for every client)."""
    server.close()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(server.wait_closed(), timeout)


def bound_port(server: asyncio.Server) -> int:
    sockets = server.sockets
    if not sockets:
        raise RuntimeError("server has no socket")
    return int(sockets[0].getsockname()[1])
