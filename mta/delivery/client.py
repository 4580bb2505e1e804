"""Outbound SMTP: route a message to its domain's MX hosts and report one outcome per recipient
with its scope (the session, the message or the recipient: `mta.delivery.deliverer.JobResult`).

aiosmtplib carries the bytes; this module drives it command by command with
the per-stage timeouts of RFC 5321 4.5.3.2 (configurable, in real seconds),
pipelines the envelope when the server offers PIPELINING (RFC 2920: the first
reply may wait for the whole group, the sum of its commands' timeouts; a stall
there is reported at MAIL, the stage whose reply did not come), using our own
canonical addresses (the library never rewrites them). It reuses
connections per (address, port, source) up to a per-connection message limit,
falls back to the next MX address when a connection or greeting fails, upgrades
to TLS when offered (opportunistic: on a failed handshake the host is retried
in clear text and remembered for a while; `required`: the attempt is deferred),
and never decides anything: verdicts belong to `mta.core.bounce`.

A lost connection or a timeout after the final dot leaves the outcome unknown:
the recipients are reported as deferred with `possible_duplicate` set. A reply
that is not SMTP (garbage, an over-long line) is the condition `protocol_error`:
one log line, the connection closed, a transient failure like a lost connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import Hashable
from typing import cast

import aiosmtplib
from aiosmtplib import (
    SMTPConnectError,
    SMTPConnectResponseError,
    SMTPConnectTimeoutError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)
from aiosmtplib.errors import SMTPReadTimeoutError

from mta.clock import Clock
from mta.config.engine import parse_hostport
from mta.config.service import DeliveryConfig
from mta.core.bounce import condition_reply
from mta.core.reply import from_parts
from mta.core.routing import order_hosts
from mta.delivery.deliverer import FailureScope, Job, JobResult
from mta.delivery.dns import Resolver
from mta.delivery.pipeline import Replies
from mta.delivery.pool import Connection, Key, Pool
from mta.model import Condition, Outcome, Phase, Reply
from mta.smtp.tls import opportunistic_client_context

log = logging.getLogger("mta.delivery")

MAX_ADDRESSES_TRIED = 5
NO_TLS_MEMORY = 3600.0  # virtual seconds a host that failed the TLS handshake is sent clear text


class _Failure(Exception):
    """This address could not take the transaction; try the next one."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(str(outcome.reply))
        self.outcome = outcome


class _Disconnected(Exception):
    """A reused connection turned out dead before the first reply."""


class _GroupTimeout(SMTPReadTimeoutError):
    """No first reply to a pipelined envelope within the sum of its commands' timeouts."""


def local(
    condition: Condition,
    phase: Phase,
    host: str | None,
    detail: str,
    possible_duplicate: bool = False,
) -> Outcome:
    """An outcome we observed ourselves, with the reply `mta classify --condition` shows."""
    return Outcome(condition_reply(condition, detail), phase, host, condition, possible_duplicate)


def failure(condition: Condition, phase: Phase, host: str | None, detail: str) -> _Failure:
    return _Failure(local(condition, phase, host, detail))


def protocol_error(
    exc: SMTPResponseException, phase: Phase, host: str, possible_duplicate: bool = False
) -> Outcome:
    """A reply that broke the protocol: one log line (no traceback) and its outcome."""
    said = exc.message.removeprefix("Malformed SMTP response line: ").strip()
    said = said.encode("ascii", "backslashreplace").decode("ascii")
    shown = repr(said[:60] + ("..." if len(said) > 60 else ""))
    detail = f"{host} at {phase.value.upper()}: {shown}"
    if possible_duplicate:
        detail += ", after the final dot: the outcome is unknown"
    log.warning("protocol error from %s", detail)
    return local(Condition.PROTOCOL_ERROR, phase, host, detail, possible_duplicate)


def _stuff(content: bytes) -> bytes:
    """Dot-stuff CRLF content and add the terminator (RFC 5321 4.5.2)."""
    if not content.endswith(b"\r\n"):
        content += b"\r\n"
    stuffed = content.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


class Delivery:
    """See the module docstring; a `mta.delivery.deliverer.Deliverer`."""

    def __init__(
        self,
        config: DeliveryConfig,
        resolver: Resolver,
        clock: Clock,
        rng: random.Random | None = None,
        hostname: str = "mta.localhost",
    ) -> None:
        """`config` is the `[delivery]` section; `hostname` (smtp.hostname) is the EHLO name
        when `delivery.helo_name` is empty."""
        self.config = config
        self.helo_name = config.helo_name or hostname
        self.relayhost = parse_hostport(config.relayhost) if config.relayhost else None
        self.resolver = resolver
        self.clock = clock
        self.rng = rng or random.Random()
        t = config.timeouts
        self.pool = Pool(config.max_connections_per_host, config.max_connections, t.idle)
        self.tls_context = opportunistic_client_context()
        self._no_tls_until: dict[str, float] = {}
        self._reaper: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        await self.pool.close()

    async def limit_connections(self, group: Hashable, limit: int) -> None:
        """See `mta.delivery.deliverer.Deliverer`."""
        await self.pool.trim(group, limit)

    def open_connections(self, group: Hashable) -> int:
        """See `mta.delivery.deliverer.Deliverer`."""
        return self.pool.connections_in(group)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(max(self.config.timeouts.idle / 2, 0.5))
            await self.pool.reap()

    # -- routing --------------------------------------------------------------

    async def _targets(self, domain: str) -> list[str] | Outcome:
        """MX hosts in order, or the outcome that ends the attempt (null MX, DNS failure)."""
        relay = self.relayhost
        if relay is not None:
            return [relay[0]]
        answer = await self.resolver.mx(domain)
        if answer.kind == "null":
            return local(
                Condition.NULL_MX,
                Phase.CONNECT,
                None,
                f"{domain} accepts no mail",
            )
        if answer.kind == "nxdomain":
            return local(
                Condition.DNS_NXDOMAIN,
                Phase.CONNECT,
                None,
                answer.error,
            )
        if answer.kind == "failure":
            return local(Condition.DNS_FAILURE, Phase.CONNECT, None, answer.error)
        return order_hosts(answer.records, self.rng)

    async def deliver(self, job: Job) -> JobResult:
        """One outcome per recipient of the job, in order, with its scope; a 2xx at DOT
        means delivered."""
        count = len(job.recipients)
        targets = await self._targets(job.domain)
        if isinstance(targets, Outcome):
            return JobResult.session(targets, count)
        port = self.relayhost[1] if self.relayhost else self.config.port
        source = job.source
        last: Outcome | None = None
        tried = 0
        for host in targets:
            answer = await self.resolver.addresses(host)
            if answer.kind != "addresses":
                condition = (
                    Condition.DNS_FAILURE if answer.kind == "failure" else Condition.NO_ADDRESS
                )
                last = local(condition, Phase.CONNECT, host, answer.error)
                continue
            for address in answer.addresses:
                if tried >= MAX_ADDRESSES_TRIED:
                    break
                tried += 1
                try:
                    return await self._deliver_via(job, host, address, port, source)
                except _Failure as failure:
                    last = failure.outcome
        if last is None:
            last = local(
                Condition.NO_ADDRESS, Phase.CONNECT, None, f"no MX host of {job.domain} answered"
            )
        return JobResult.session(last, count)

    # -- sessions -------------------------------------------------------------

    async def _deliver_via(
        self, job: Job, host: str, address: str, port: int, source: str | None
    ) -> JobResult:
        key = (address, port, source)
        group = key if job.group is None else job.group
        per_connection = (
            job.max_messages_per_connection or self.config.max_messages_per_connection
        )
        for _ in range(3):  # a reused connection may have died while idle
            conn = await self.pool.reserve(key, group, job.group_limit)
            if conn is None:
                try:
                    conn = await self._open(key, group, host)
                except BaseException:
                    await self.pool.unreserve(key, group)
                    raise
                fresh = True
            else:
                fresh = False
            try:
                outcomes, reusable = await self._transaction(conn, job)
            except _Disconnected:
                await self.pool.discard(conn)
                if fresh:
                    raise failure(
                        Condition.CONNECTION_LOST,
                        Phase.MAIL,
                        host,
                        f"{host} closed a new connection",
                    ) from None
                continue
            except BaseException:
                await self.pool.discard(conn)
                raise
            await self.pool.give_back(conn, reusable, per_connection)
            return outcomes
        raise failure(
            Condition.CONNECTION_LOST, Phase.MAIL, host, f"connections to {host} keep dropping"
        )

    async def _open(self, key: Key, group: Hashable, host: str) -> Connection:
        use_tls = (
            self.config.tls != "none" and self._no_tls_until.get(host, 0) <= self.clock.now()
        )
        conn = await self._connect(key, group, host, use_tls)
        if conn is None:  # the TLS handshake failed: opportunistic mode falls back to clear text
            self._no_tls_until[host] = self.clock.now() + NO_TLS_MEMORY
            conn = await self._connect(key, group, host, False)
            assert conn is not None
        return conn

    async def _connect(
        self, key: Key, group: Hashable, host: str, use_tls: bool
    ) -> Connection | None:
        address, port, source = key
        t = self.config.timeouts
        sock = await self._socket(address, port, source, host)
        smtp = aiosmtplib.SMTP(
            sock=sock, local_hostname=self.helo_name, timeout=t.greeting, start_tls=False
        )
        try:
            await smtp.connect(timeout=t.greeting)
        except SMTPConnectResponseError as exc:
            smtp.close()
            raise _Failure(
                Outcome(from_parts(exc.code, exc.message), Phase.CONNECT, host)
            ) from None
        except SMTPConnectTimeoutError:
            smtp.close()
            raise failure(
                Condition.TIMEOUT,
                Phase.CONNECT,
                host,
                f"no greeting from {host}[{address}]",
            ) from None
        except SMTPResponseException as exc:  # a greeting that is not an SMTP reply
            smtp.close()
            raise _Failure(protocol_error(exc, Phase.CONNECT, host)) from None
        except (SMTPConnectError, SMTPServerDisconnected, OSError) as exc:
            smtp.close()
            raise failure(
                Condition.CONNECTION_LOST,
                Phase.CONNECT,
                host,
                f"{host}[{address}] before the greeting: {exc}",
            ) from None
        try:
            await self._hello(smtp, host)
            tls = False
            if use_tls and smtp.supports_extension("starttls"):
                try:
                    await smtp.starttls(tls_context=self.tls_context, timeout=t.starttls)
                    # With TLS 1.3 a server may reject the handshake only after the client
                    # thinks it is done: the EHLO that follows is part of the TLS test.
                    await self._hello(smtp, host)
                except (SMTPException, ssl.SSLError, OSError, _Failure) as exc:
                    smtp.close()
                    if self.config.tls == "required":
                        raise failure(
                            Condition.TLS_FAILURE,
                            Phase.STARTTLS,
                            host,
                            f"{host}: {exc}",
                        ) from None
                    log.info("TLS with %s failed (%s): retrying in clear text", host, exc)
                    return None
                tls = True
            elif self.config.tls == "required":
                smtp.close()
                reply = Reply(421, "4.7.4", f"TLS is required but {host} does not offer STARTTLS")
                raise _Failure(Outcome(reply, Phase.STARTTLS, host, Condition.TLS_FAILURE))
        except BaseException:
            smtp.close()
            raise
        self.pool.opened += 1
        return Connection(smtp, key, group, host, tls)

    async def _socket(
        self, address: str, port: int, source: str | None, host: str
    ) -> socket.socket:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if source:
                sock.bind((source, 0))
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(
                loop.sock_connect(sock, (address, port)), self.config.timeouts.connect
            )
        except TimeoutError:
            sock.close()
            raise failure(
                Condition.TIMEOUT,
                Phase.CONNECT,
                host,
                f"{host}[{address}]:{port}",
            ) from None
        except OSError as exc:
            sock.close()
            reason = exc.strerror or type(exc).__name__
            raise failure(
                Condition.CONNECTION_REFUSED,
                Phase.CONNECT,
                host,
                f"{host}[{address}]:{port}: {reason}",
            ) from None
        return sock

    async def _hello(self, smtp: aiosmtplib.SMTP, host: str) -> None:
        t = self.config.timeouts
        helo = self.helo_name.encode("ascii")
        try:
            response = await smtp.execute_command(b"EHLO", helo, timeout=t.ehlo)
            if response.code == 250:
                smtp.last_ehlo_response = response
                return
            if 500 <= response.code < 600 and response.code != 554:
                response = await smtp.execute_command(b"HELO", helo, timeout=t.ehlo)
                if response.code == 250:
                    smtp.last_helo_response = response
                    return
        except SMTPTimeoutError:
            raise failure(Condition.TIMEOUT, Phase.EHLO, host, f"after EHLO to {host}") from None
        except SMTPServerDisconnected:
            raise failure(
                Condition.CONNECTION_LOST, Phase.EHLO, host, f"after EHLO to {host}"
            ) from None
        except SMTPResponseException as exc:
            raise _Failure(protocol_error(exc, Phase.EHLO, host)) from None
        raise _Failure(Outcome(from_parts(response.code, response.message), Phase.EHLO, host))

    async def _command(self, conn: Connection, timeout: float, *args: bytes) -> Reply:
        response = await conn.smtp.execute_command(*args, timeout=timeout)
        return from_parts(response.code, response.message)

    async def _transaction(self, conn: Connection, job: Job) -> tuple[JobResult, bool]:
        """MAIL, RCPT..., DATA, content.

        Returns the outcome per recipient and whether the connection may be reused.
        """
        t = self.config.timeouts
        smtp = conn.smtp
        host = conn.host
        count = len(job.recipients)
        results: list[Outcome | None] = [None] * count

        def for_the_rest(outcome: Outcome) -> JobResult:
            """`outcome` (about the message) for every recipient without a reply of its own."""
            scopes: tuple[FailureScope, ...] = tuple(
                "message" if r is None else "recipient" for r in results
            )
            return JobResult(tuple(outcome if r is None else r for r in results), scopes)

        params = b""
        if smtp.supports_extension("size"):
            params += b" SIZE=%d" % len(job.content)
        if smtp.supports_extension("8bitmime") and not job.content.isascii():
            params += b" BODY=8BITMIME"
        if (
            job.smtputf8
            or not job.mail_from.isascii()
            or not all(r.isascii() for r in job.recipients)
        ):
            if not smtp.supports_extension("smtputf8"):
                reply = Reply(553, "5.6.7", f"{host} does not support SMTPUTF8")
                return for_the_rest(Outcome(reply, Phase.MAIL, host)), True
            params += b" SMTPUTF8"
        phase = Phase.MAIL
        mail = b"MAIL FROM:<" + job.mail_from.encode() + b">" + params
        rcpts = [b"RCPT TO:<" + r.encode() + b">" for r in job.recipients]
        pipelined = smtp.supports_extension("pipelining") and not any(
            b"\r" in c or b"\n" in c for c in (mail, *rcpts)
        )
        accepted: list[int] = []
        try:
            if pipelined:
                # RFC 2920: MAIL, every RCPT and DATA in one write; the replies in order.
                protocol = smtp.protocol
                if protocol is None or protocol.transport is None:
                    raise SMTPServerDisconnected("Connection lost")
                transport = cast(asyncio.Transport, protocol.transport)
                if transport.is_closing():
                    raise SMTPServerDisconnected("Connection lost")
                replies = Replies(transport, protocol)
                refused: tuple[Reply, Phase] | None = None  # the envelope's refusal, if any
                # A server may hold the group's replies until it has answered all of it
                # (RFC 2920 3.2), so the first reply may wait for every command of the group:
                # it gets the sum of their timeouts (RFC 5321 4.5.3.2). Each later reply gets
                # its own command's timeout, and no reply waits past that sum from the write:
                # the group never holds the session longer than one command at a time could.
                group = t.mail + count * t.rcpt + t.data
                deadline = asyncio.get_running_loop().time() + group

                def bounded(timeout: float) -> float:
                    left = deadline - asyncio.get_running_loop().time()
                    return max(0.0, min(timeout, left))

                try:
                    transport.write(b"\r\n".join((mail, *rcpts, b"DATA\r\n")))
                    try:
                        reply = from_parts(*await replies.reply(group))
                    except SMTPTimeoutError:
                        raise _GroupTimeout("Timed out waiting for server response") from None
                    if reply.code == 421:
                        return for_the_rest(Outcome(reply, phase, host)), False
                    if not reply.is_success:
                        refused = (reply, phase)
                    phase = Phase.RCPT
                    try:
                        for index in range(count):
                            reply = from_parts(*await replies.reply(bounded(t.rcpt)))
                            if reply.code == 421:  # closing: the rest waits for another session
                                first, at = refused or (reply, phase)
                                return for_the_rest(Outcome(first, at, host)), False
                            if refused is not None:
                                continue  # the server's answers to RCPT after a refused MAIL
                            if reply.is_success:
                                accepted.append(index)
                            else:
                                results[index] = Outcome(reply, phase, host)
                        if refused is None and not accepted:
                            refused = (reply, phase)
                        phase = Phase.DATA
                        data_reply = from_parts(*await replies.reply(bounded(t.data)))
                    except (SMTPServerDisconnected, OSError, SMTPResponseException):
                        if refused is None:
                            raise
                        smtp.close()  # the refusal stands; the session is not reused
                        return for_the_rest(Outcome(refused[0], refused[1], host)), False
                finally:
                    replies.restore()
                if refused is not None:
                    reusable = await self._after_refusal(conn, refused[0], data_reply)
                    return for_the_rest(Outcome(refused[0], refused[1], host)), reusable
                if data_reply.code != 354:
                    outcome = Outcome(data_reply, phase, host)
                    return for_the_rest(outcome), await self._reset(conn, data_reply)
            else:
                reply = await self._command(conn, t.mail, b"MAIL", mail[5:])
                if not reply.is_success:
                    return for_the_rest(Outcome(reply, phase, host)), await self._reset(conn, reply)
                phase = Phase.RCPT
                for index in range(count):
                    reply = await self._command(conn, t.rcpt, b"RCPT", rcpts[index][5:])
                    if reply.code == 421:  # closing: the rest waits for another session
                        return for_the_rest(Outcome(reply, phase, host)), False
                    if reply.is_success:
                        accepted.append(index)
                    else:
                        results[index] = Outcome(reply, phase, host)
                if not accepted:
                    return for_the_rest(Outcome(reply, phase, host)), await self._reset(conn, reply)
                phase = Phase.DATA
                reply = await self._command(conn, t.data, b"DATA")
                if reply.code != 354:
                    return for_the_rest(Outcome(reply, phase, host)), await self._reset(conn, reply)
            phase = Phase.DOT
            protocol = smtp.protocol
            assert protocol is not None
            protocol.write(_stuff(job.content))
            response = await protocol.read_response(timeout=t.dot)
            reply = from_parts(response.code, response.message)
            return for_the_rest(Outcome(reply, phase, host)), reply.code != 421
        except (SMTPServerDisconnected, SMTPTimeoutError, OSError) as exc:
            timeout = isinstance(exc, SMTPTimeoutError)
            if phase is Phase.MAIL and not timeout and conn.messages > 0:
                raise _Disconnected() from None
            unknown = phase is Phase.DOT
            text = f"at {phase.value.upper()} with {host}"
            if isinstance(exc, _GroupTimeout):
                text += f" (no reply to the pipelined MAIL, RCPT x{count}, DATA)"
            if unknown:
                text += ", after the final dot: the outcome is unknown"
            smtp.close()
            condition = Condition.TIMEOUT if timeout else Condition.CONNECTION_LOST
            lost = local(condition, phase, host, text, possible_duplicate=unknown)
            return for_the_rest(lost), False
        except SMTPResponseException as exc:  # the reply was not SMTP: never reuse the session
            smtp.close()
            return for_the_rest(protocol_error(exc, phase, host, phase is Phase.DOT)), False

    async def _after_refusal(self, conn: Connection, reply: Reply, data_reply: Reply) -> bool:
        """After a pipelined envelope was refused: RSET, unless the server took the DATA
        anyway (it waits for content we will not send): then the connection is closed."""
        if data_reply.code == 354:
            conn.smtp.close()
            return False
        return await self._reset(conn, reply)

    async def _reset(self, conn: Connection, reply: Reply) -> bool:
        """RSET after a failed transaction; whether the connection stays usable."""
        if reply.code == 421 or not conn.usable:
            return False
        try:
            response = await conn.smtp.execute_command(b"RSET", timeout=self.config.timeouts.mail)
        except (SMTPException, OSError):
            return False
        return response.code == 250
