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
- A `Listener` (see `mta.smtp.limits`) shared by a listener's sessions caps connections
  (421 4.3.2 in total, 421 4.7.0 per client IP), the session's length, junk commands,
  AUTH failures (per session and per IP) and the memory DATA may hold: past the SIZE limit
  DATA is read and dropped, past the memory budget it spills to a temp file, and a line
  over `line_length_hard_limit` is refused after the dot with 550 5.6.0. Without one,
  nothing is capped but the SIZE limit.

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
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aiosmtpd.smtp import (
    MISSING,
    SMTP,
    AuthResult,
    Envelope,
    LoginPassword,
    Session,
    TLSSetupException,
    syntax,
)

from mta.core.address import AddressError, parse_path
from mta.smtp import replies
from mta.smtp.limits import Listener, SmtpLimits, failure_delay
from mta.smtp.receive import DataSink, LineMeter

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
_CHUNK = 256 * 1024  # DATA is taken from the socket's buffer in pieces of about this size
JUNK_CLOSE_DELAY = 1.0  # seconds before the 421 that ends a session over the junk limit


@dataclass
class _Data:
    raw: bytes
    too_big: bool = False
    nul: bool = False
    long_line: bool = False


def _not_utf8(arg: str | None) -> bool:
    """aiosmtpd decodes arguments with surrogateescape: stray bytes survive as surrogates."""
    if arg is None:
        return False
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


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


_HOOK_NAMES: dict[type, list[str]] = {}


def hook_names(cls: type) -> list[str]:
    """The names aiosmtpd looks for in dir() of a server and of its handler: the command
    (smtp_), AUTH (auth_) and hook (handle_) methods of `cls`, listed once per class."""
    names = _HOOK_NAMES.get(cls)
    if names is None:
        names = _HOOK_NAMES[cls] = [
            name for name in dir(cls) if name.startswith(("smtp_", "auth_", "handle_"))
        ]
    return names


class _Session(Session):
    """aiosmtpd's session without the deprecated `login_data` property's warning.

    On every successful AUTH aiosmtpd itself still sets `session.login_data`, whose
    property logs "Session.login_data is deprecated"; we read `auth_data` (the
    supported attribute) and keep `login_data` a plain attribute, so nothing warns.
    """

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


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
        listener: Listener | None = None,
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
        self.listener = listener or Listener(SmtpLimits())
        self.limits = self.listener.limits
        self._client_ip = ""
        self._admitted = False
        self._session_timer: asyncio.TimerHandle | None = None
        self._handling = False  # inside the DATA handler: a shutdown waits for its reply
        self._close_after_reply = ""
        self._junk = 0
        self._auth_failures = 0
        self._auth_delay = 0.0
        self._greeted = False
        self._held: list[bytes] = []
        self._auth_offered = bool(auth_users)
        # aiosmtpd keeps these limits in a class-level dict it mutates per EHLO.
        self.command_size_limits = collections.defaultdict(lambda: 1024)

    def __dir__(self) -> list[str]:
        """Only hook_names: aiosmtpd builds its command and AUTH tables from dir() of the
        server and of its handler on every connection, and the full listing, every
        attribute fetched, cost about 250 us of CPU a session."""
        return hook_names(type(self))

    def _reset_envelope(self) -> None:
        self.envelope = self._create_envelope()

    # -- connection limits and shutdown ----------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None and not self._admitted:  # not the STARTTLS layer
            peer = transport.get_extra_info("peername")
            self._client_ip = str(peer[0]) if isinstance(peer, tuple) and peer else str(peer)
            refusal = self.listener.admit(self, self._client_ip)
            if refusal is not None:
                log.info("refused a connection from %s: %s", self._client_ip, refusal)
                writer = cast(asyncio.WriteTransport, transport)  # uvloop's are not subclasses
                writer.write(refusal.encode() + b"\r\n")
                writer.close()
                self.listener.ended(self._client_ip)
                return
            self._admitted = True
            if self.limits.session_timeout:
                self._session_timer = asyncio.get_running_loop().call_later(
                    self.limits.session_timeout, self._session_expired
                )
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if not self._admitted:
            return  # refused at connection_made: aiosmtpd never set this one up
        self._admitted = False
        self.listener.gate.release(self, self._client_ip)
        self.listener.ended(self._client_ip)
        if self._session_timer is not None:
            self._session_timer.cancel()
        super().connection_lost(error)

    def _session_expired(self) -> None:
        self.listener.session_timeouts_total += 1
        log.info("session time limit reached for %s", self._client_ip)
        self._close_with("421 4.4.2 Session time limit exceeded, closing")

    def shut_down(self) -> None:
        """Say 421 4.3.2 and close; a session whose message is being stored gets its reply first."""
        self._close_with(replies.SHUTTING_DOWN)

    def _close_with(self, reply: str) -> None:
        if self._handling:
            self._close_after_reply = reply
            return
        transport = cast(asyncio.WriteTransport | None, self.transport)
        if transport is None or transport.is_closing():
            return
        data = b"".join(self._held) + reply.encode() + b"\r\n"
        self._held.clear()
        transport.write(data)
        transport.close()

    def _create_session(self) -> Session:
        return _Session(self.loop)

    # -- replies --------------------------------------------------------------

    async def push(self, status: Any) -> None:
        """Send a reply; while the next pipelined command is already buffered, hold it and
        send the replies together (RFC 2920), saving a write per command."""
        if isinstance(status, bytes):
            status = status.decode("utf-8", "replace")
        if self.transport is None:
            return  # the connection is gone
        if self._auth_delay and status.startswith("535"):
            delay, self._auth_delay = self._auth_delay, 0.0
            await asyncio.sleep(delay)  # each failed guess slows the next one
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

    async def _after_reply(self) -> None:
        if self._close_after_reply:
            reply, self._close_after_reply = self._close_after_reply, ""
            if self.transport is not None and not self.transport.is_closing():
                await self.push(reply)

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
        if _not_utf8(hostname):
            await self.push("501 5.5.2 Syntax error: HELO name is not valid UTF-8")
            return
        if not hostname:
            await self.push("501 5.5.4 Syntax: HELO hostname")
            return
        assert self.session is not None
        self._reset_envelope()
        self.session.extended_smtp = False
        self.session.host_name = hostname
        await self._push_lines(250, [self.hostname])

    async def smtp_EHLO(self, hostname: str) -> None:
        if _not_utf8(hostname):
            await self.push("501 5.5.2 Syntax error: EHLO name is not valid UTF-8")
            return
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
            await self.push(replies.NESTED_MAIL)
            return
        if _not_utf8(arg):
            await self.push("553 5.1.7 Sender address is not valid UTF-8")
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
                await self.push(replies.TOO_BIG)
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
            status = replies.SENDER_OK
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
            await self.push(replies.NEED_MAIL)
            return
        if _not_utf8(arg):
            await self.push("553 5.1.3 Recipient address is not valid UTF-8")
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
            status = replies.RECIPIENT_OK
        if status.startswith("2"):
            self.envelope.rcpt_tos.append(path.address)
        await self.push(status)

    # -- junk commands and AUTH -------------------------------------------------

    async def _too_much_junk(self) -> bool:
        """Count a NOOP/RSET/VRFY/EXPN/HELP; past the limit say 421 and close (Postfix's
        smtpd_junk_command_limit). The count restarts after each accepted message."""
        limit = self.limits.junk_command_limit
        if not limit:
            return False
        self._junk += 1
        if self._junk <= limit:
            return False
        if self._junk == limit + 1:  # pipelined commands after the 421 are not answered
            self.listener.junk_closed_total += 1
            log.info("%s sent more than %d junk commands; closing", self._client_ip, limit)
            # A pause before the 421 keeps a flooding client from reconnecting at once.
            await asyncio.sleep(JUNK_CLOSE_DELAY)
            await self.push(f"421 4.7.0 Too many NOOP/RSET/VRFY commands (limit {limit}), closing")
        return True

    @syntax("NOOP [ignored]")
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._too_much_junk():
            await super().smtp_NOOP(arg)

    @syntax("RSET")
    async def smtp_RSET(self, arg: str) -> None:
        if not await self._too_much_junk():
            await super().smtp_RSET(arg)

    @syntax("VRFY <address>")
    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._too_much_junk():
            await super().smtp_VRFY(arg)

    @syntax("EXPN <address>")
    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._too_much_junk():
            await super().smtp_EXPN(arg)

    @syntax("HELP [command]")
    async def smtp_HELP(self, arg: str) -> None:
        if not await self._too_much_junk():
            await super().smtp_HELP(arg)

    async def smtp_AUTH(self, arg: str) -> None:
        if self.listener.auth.refused(self._client_ip, time.monotonic()):
            await self.push("454 4.7.0 Too many failed authentications; try again later")
            return
        await super().smtp_AUTH(arg)
        limit = self.limits.auth_failures_per_session
        if limit and self._auth_failures >= limit and self.transport is not None:
            await self.push("421 4.7.0 Too many failed authentications, closing")

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        result = super()._authenticate(mechanism, auth_data)
        if not result.success:
            self._auth_failures += 1
            self.listener.auth.failed(self._client_ip, time.monotonic())
            log.info(
                "failed AUTH %s from %s (%d in this session)",
                mechanism,
                self._client_ip,
                self._auth_failures,
            )
            self._auth_delay = failure_delay(self.limits.auth_failure_delay, self._auth_failures)
        return result

    # -- content --------------------------------------------------------------

    async def _read_data(self) -> _Data | None:
        """The raw bytes up to CRLF.CRLF (terminator removed) and what was wrong with them.

        The CRLF that ended the DATA command line also starts the terminator of an
        empty message, so it is put back in front of the buffer: one search for
        CRLF.CRLF then finds the end of any message. The data comes off the socket's
        buffer in pieces of about `_CHUNK` bytes; past the SIZE limit, after a NUL or an
        over-long line the pieces are dropped, not kept. Returns None when the connection
        closed before the terminator.
        """
        reader = self._reader
        limit = self.data_size_limit or 0
        buffered: bytearray = reader._buffer  # type: ignore[attr-defined]  # asyncio's own
        buffered[0:0] = b"\r\n"
        saved_limit: int = reader._limit  # type: ignore[attr-defined]
        # readuntil() gives up past this many bytes without the terminator: we take those
        # and go on, so the buffer never holds more than about 2 x _CHUNK.
        reader._limit = _CHUNK  # type: ignore[attr-defined]
        sink = DataSink(self.listener.reading, self.limits.spill_dir)
        meter = LineMeter(self.limits.line_length_hard_limit)
        data = _Data(b"")
        total = 0
        first = True
        try:
            while True:
                final = True
                try:
                    chunk = await reader.readuntil(_TERMINATOR)
                except asyncio.LimitOverrunError as exc:
                    chunk = await reader.readexactly(exc.consumed)
                    final = False
                except asyncio.IncompleteReadError:
                    sink.discard()
                    return None
                total += len(chunk)
                data.too_big = bool(limit) and total - (7 if final else 2) > limit
                if data.too_big or data.nul or meter.over:
                    sink.discard()  # refused already: read on to the dot, keep nothing
                    if final:
                        break
                    continue
                meter.feed(chunk)
                data.nul = b"\x00" in chunk
                if data.nul or meter.over:
                    sink.discard()
                else:
                    sink.write(chunk[2 if first else 0 : -3 if final else None])
                first = False
                if final:
                    break
        except BaseException:
            sink.discard()
            raise
        finally:
            reader._limit = saved_limit  # type: ignore[attr-defined]
        data.long_line = meter.over
        if data.too_big or data.nul or data.long_line:
            return data
        # Take the message out of the sink only when the handlers' budget has room for it.
        try:
            await self.listener.handling.take(sink.size)
        except BaseException:
            sink.discard()  # the session went away while waiting its turn
            raise
        data.raw = sink.value()
        return data

    def _data_refusal(self, data: _Data) -> str | None:
        if data.too_big:
            return replies.TOO_BIG
        if data.nul:
            return "554 5.6.0 Message contains NUL characters"
        if data.long_line:
            self.listener.long_lines_total += 1
            limit = self.limits.line_length_hard_limit
            return f"550 5.6.0 Message has a line over {limit} octets (RFC 5321 4.5.3.1.6)"
        return None

    async def smtp_DATA(self, arg: str | None) -> None:
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        if self.envelope.mail_from is None:
            await self.push(replies.NEED_MAIL)
            return
        if not self.envelope.rcpt_tos:
            await self.push("554 5.5.1 Error: no valid recipients")
            return
        await self.push(replies.START_DATA)
        data = await self._read_data()
        if data is None:
            return  # connection gone; aiosmtpd's loop notices
        refusal = self._data_refusal(data)
        if refusal is not None:
            self._reset_envelope()
            log.info("refused DATA from %s: %s", self._client_ip, refusal)
            await self.push(refusal)
            return
        size = len(data.raw)
        self._handling = True
        try:
            content = normalise_data(data.raw)
            data.raw = b""
            self.envelope.content = content
            self.envelope.original_content = content
            del content
            status = await self._call_handler_hook("DATA")
        finally:
            self._handling = False
            self._reset_envelope()
            self.listener.handling.give(size)
        if status is MISSING or str(status).startswith("2"):
            self._junk = 0
        await self.push("250 2.0.0 Ok" if status is MISSING else status)
        await self._after_reply()

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


class Listening(Protocol):
    """A listener: an asyncio server, or the ingress workers' shared socket."""

    @property
    def sockets(self) -> tuple[socket.socket, ...]: ...

    def close(self) -> None: ...

    def is_serving(self) -> bool: ...


def bound_port(server: Listening) -> int:
    sockets = server.sockets
    if not sockets:
        raise RuntimeError("server has no socket")
    return int(sockets[0].getsockname()[1])
