"""The submission side: accept mail over SMTP, normalise, sign, spool, then say 250.

Relaying is allowed to clients from `smtp.relay_networks` or authenticated ones
(AUTH over TLS only), else `554 5.7.1`. A `MAIL ... SIZE=` the spool's disk cannot
hold (twice the size plus a reserve; free space read at most once a second)
gets `452 4.3.1`. A message with no From, or
with two of From, Sender, To, Subject, Date or Message-ID (RFC 5322 3.6), gets
`550 5.6.0` naming the header, and a log line. The X-Campaign-* headers are read and
removed before anything else touches the message; a Received field (and a
Message-ID or Date where missing) is added; then the message is DKIM-signed
in a worker thread (the RSA step runs in OpenSSL without the GIL), which hands
it straight to the spool's writer thread, and committed with one "relayed"
event per recipient. The 250 reply carries the queue id and leaves only after
the commit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import email.utils
import functools
import ipaddress
import logging
import math
import shutil
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.smtp import Envelope, Session

from mta import ids
from mta.clock import Clock
from mta.config.service import SmtpConfig
from mta.core import events, headers
from mta.core.address import ascii_domain
from mta.core.durations import parse_duration
from mta.core.retry import validity_end
from mta.model import EventKind
from mta.queue.queries import digest
from mta.queue.records import NewMessage, NewRecipient
from mta.queue.spool import SpoolError, SpoolFull
from mta.smtp import replies
from mta.smtp.limits import Listener
from mta.smtp.server import FastSMTP, content_of, hook_names

log = logging.getLogger("mta.ingress")

Signer = Callable[[bytes, float | None], bytes]

CAMPAIGN_PREFIX = "X-Campaign-"
DELIVERY_ID = "x-campaign-delivery-id"
LOG_ID = "x-campaign-log-id"
VALIDITY = "x-campaign-validity"
SINGLETONS = ("From", "Sender", "To", "Subject", "Date", "Message-ID")
DISK_RESERVE = 8 * 1024 * 1024  # bytes left free on the spool's disk beyond 2 x SIZE
DISK_CHECK_EVERY = 1.0  # seconds a reading of the spool disk's free space is reused


class IngestSpool(Protocol):
    """What the handler needs of the spool: the Spool, or a worker's RemoteSpool."""

    path: Path

    async def ingest(self, message: NewMessage) -> None: ...

    def ingest_soon(self, message: NewMessage, done: asyncio.Future[None]) -> None: ...


def header_problem(content: bytes) -> str | None:
    """Why RFC 5322 3.6 forbids this header block (no From, a singleton twice), or None."""
    counts: dict[bytes, int] = {}
    for name, _ in headers.fields(headers.split(content)[0]):
        key = name.lower()
        counts[key] = counts.get(key, 0) + 1
    if not counts.get(b"from"):
        return "no From header"
    for singleton in SINGLETONS:
        seen = counts.get(singleton.lower().encode(), 0)
        if seen > 1:
            return f"{seen} {singleton} headers (one allowed)"
    return None


def declared_size(options: list[str]) -> int | None:
    for option in options:
        keyword, _, value = option.partition("=")
        if keyword.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


new_queue_id = ids.new_queue_id


def rfc5322_date(when: float) -> str:
    return _date_of_second(int(when))


@functools.lru_cache(maxsize=4)  # one text per second: messages of the same second share it
def _date_of_second(second: int) -> str:
    return email.utils.format_datetime(dt.datetime.fromtimestamp(second, dt.UTC))


class IngressHandler:
    """aiosmtpd hooks for the submission listener."""

    def __dir__(self) -> list[str]:
        return hook_names(type(self))  # see FastSMTP.__dir__

    def __init__(
        self,
        config: SmtpConfig,
        spool: IngestSpool,
        clock: Clock,
        signer: Signer | None = None,
        executor: Executor | None = None,
        on_queued: Callable[[NewMessage], None] = lambda message: None,
        *,
        validity: float,
        node: str = "",
    ) -> None:
        """`config` is the `[smtp]` section; `validity` (retry.validity) is the default and
        the cap of X-Campaign-Validity in seconds; `node` is the cluster node's name, carried
        by the events it makes."""
        self.config = config
        self.validity = validity
        self.node = node
        self.spool = spool
        self.clock = clock
        self.signer = signer
        self.executor = executor
        self.on_queued = on_queued
        self.networks = [ipaddress.ip_network(n, strict=False) for n in config.relay_networks]
        self._relaying: dict[str, bool] = {}  # client address -> in relay_networks
        self.accepted = 0
        self.rejected = 0
        self.closing = False
        self._storing = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._free = 0
        self._free_at = -math.inf

    async def close(self, grace: float) -> None:
        """Refuse new transactions; wait up to `grace` seconds for messages being stored."""
        self.closing = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            log.warning("%d messages still being stored at shutdown", self._storing)

    async def handle_MAIL(
        self,
        server: FastSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if self.closing:
            return replies.SHUTTING_DOWN
        size = declared_size(options)
        if size is not None:
            free = self._free_disk()
            if 2 * size + DISK_RESERVE > free:
                log.warning(
                    "refused MAIL with SIZE=%d: %d bytes free on the spool's disk", size, free
                )
                return replies.STORAGE_TOO_SMALL
        return replies.SENDER_OK

    def _free_disk(self) -> int:
        """Free bytes on the spool's disk, read at most once a second (a statfs per
        MAIL cost the event loop's thread more than the rest of the envelope)."""
        now = time.monotonic()
        if now - self._free_at >= DISK_CHECK_EVERY:
            self._free = shutil.disk_usage(self.spool.path.parent).free
            self._free_at = now
        return self._free

    def relay_allowed(self, session: Session) -> bool:
        if session.authenticated:
            return True
        peer: Any = session.peer
        return self.in_relay_networks(str(peer[0]) if isinstance(peer, tuple) and peer else "")

    def in_relay_networks(self, host: str) -> bool:
        known = self._relaying.get(host)
        if known is None:
            if len(self._relaying) >= 4096:
                self._relaying.clear()
            known = self._relaying[host] = self._in_networks(host)
        return known

    def _in_networks(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    async def handle_RCPT(
        self,
        server: FastSMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        if not self.relay_allowed(session):
            self.rejected += 1
            return replies.RELAY_DENIED
        return replies.RECIPIENT_OK

    async def handle_DATA(self, server: FastSMTP, session: Session, envelope: Envelope) -> str:
        if self.closing:
            return replies.SHUTTING_DOWN
        self._storing += 1
        self._idle.clear()
        try:
            return await self._store(server, session, envelope)
        finally:
            self._storing -= 1
            if self._storing == 0:
                self._idle.set()

    async def _store(self, server: FastSMTP, session: Session, envelope: Envelope) -> str:
        content = content_of(envelope)
        now = self.clock.now()
        problem = header_problem(content)
        if problem is not None:
            self.rejected += 1
            log.warning("refused a message from %s: %s", _peer_ip(session), problem)
            return f"550 5.6.0 Message refused: {problem} (RFC 5322 3.6)"
        fields, content = headers.extract(content, CAMPAIGN_PREFIX)
        requested: float | None = None
        if VALIDITY in fields:
            try:
                requested = parse_duration(fields[VALIDITY])
            except ValueError:
                self.rejected += 1
                return "554 5.6.0 Bad X-Campaign-Validity header: use e.g. 5d or 84h"
        queue_id = new_queue_id()
        delivery_id = fields.get(DELIVERY_ID)
        present = headers.names(content)
        if delivery_id and b"feedback-id" not in present:
            # as ESPs do for Gmail's Postmaster Tools: the receiver sees the campaign's id
            head, body = headers.split(content)
            content = head + f"Feedback-ID: {delivery_id}:mta-sim\r\n".encode() + b"\r\n" + body
        content = self._trace(content, present, session, envelope, queue_id, server.hostname, now)
        log_id = fields.get(LOG_ID)
        message = NewMessage(
            queue_id=queue_id,
            mail_from=envelope.mail_from or "",
            delivery_id=delivery_id,
            received_at=now,
            expires_at=validity_end(now, requested, self.validity),
            content=content,
            smtputf8=bool(envelope.smtp_utf8),
            recipients=tuple(
                NewRecipient(address, ascii_domain(address.rpartition("@")[2]), log_id)
                for address in envelope.rcpt_tos
            ),
            events=tuple(
                self._relayed_event(queue_id, delivery_id, log_id, address, now)
                for address in envelope.rcpt_tos
            ),
        )
        try:
            if self.signer is None:
                await self.spool.ingest(message)
            else:
                message = await self._sign_and_store(message, now)
        except _SigningFailed:
            log.exception("DKIM signing failed for %s", queue_id)
            return replies.LOCAL_ERROR
        except SpoolFull:
            log.error("spool full: refused a message of %d bytes", len(message.content))
            return replies.STORAGE_FULL
        except SpoolError as exc:
            log.error("spool failure, message refused with 451: %s", exc)
            return replies.LOCAL_ERROR
        self.accepted += 1
        self.on_queued(message)
        return f"250 2.0.0 {queue_id} queued"

    async def _sign_and_store(self, message: NewMessage, now: float) -> NewMessage:
        """Sign on the executor (in one process, a thread: RSA in OpenSSL, without the GIL;
        in an ingress worker, the loop's own thread), which also takes the content's checksum
        and hands the signed message straight to the spool's writer: the commit starts
        without a hop back through the event loop, and the loop hears only of the commit.
        Returns the signed message after the commit."""
        signer = self.signer
        assert signer is not None
        # t= only on a real clock: verifiers refuse signing times in their future.
        signed_at = now if self.clock.is_real else None
        loop = asyncio.get_running_loop()
        stored: asyncio.Future[None] = loop.create_future()
        signed: list[NewMessage] = []

        def sign_and_queue() -> None:
            try:
                content = signer(message.content, signed_at)
            except Exception as exc:
                loop.call_soon_threadsafe(_fail, stored, _SigningFailed(), exc)
                return
            try:  # whatever fails, the session hears of it (never waits for ever)
                signed.append(
                    dataclasses.replace(message, content=content, content_sha256=digest(content))
                )
                self.spool.ingest_soon(signed[0], stored)
            except Exception as exc:
                loop.call_soon_threadsafe(_fail, stored, exc, None)

        if self.executor is None:
            loop.run_in_executor(None, sign_and_queue)
        else:
            self.executor.submit(sign_and_queue)
        await stored
        return signed[0]

    def _relayed_event(
        self, queue_id: str, delivery_id: str | None, log_id: str | None, address: str, now: float
    ) -> tuple[str, str]:
        event_id = ids.new_event_id()
        body = events.build(
            event_id=event_id,
            seq=1,
            kind=EventKind.RELAYED,
            at=now,
            subject=events.Subject(queue_id, delivery_id, log_id, address),
            attempt=0,
            node=self.node,
        )
        return event_id, body.dumps()

    def _trace(
        self,
        content: bytes,
        present: set[bytes],
        session: Session,
        envelope: Envelope,
        queue_id: str,
        hostname: str,
        now: float,
    ) -> bytes:
        """Prepend Received; add Message-ID and Date when the message has none (`present`:
        the lower-cased names of its header fields)."""
        date = rfc5322_date(now)
        added: list[bytes] = []
        if b"message-id" not in present:
            added.append(f"Message-ID: <{queue_id}@{hostname}>\r\n".encode())
        if b"date" not in present:
            added.append(f"Date: {date}\r\n".encode())
        if added:
            head, body = headers.split(content)
            content = head + b"".join(added) + b"\r\n" + body
        peer_ip = _peer_ip(session)
        protocol = (
            ("UTF8SMTP" if envelope.smtp_utf8 else "ESMTP") if session.extended_smtp else "SMTP"
        )
        if session.ssl is not None:
            protocol += "S"
        if session.authenticated:
            protocol += "A"
        recipient = f"\r\n\tfor <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        received = (
            f"Received: from {session.host_name or 'unknown'} ([{peer_ip}])\r\n"
            f"\tby {hostname} (mta-sim) with {protocol} id {queue_id}{recipient};\r\n"
            f"\t{date}\r\n"
        )
        return headers.prepend(content, received.encode("utf-8"))


class _SigningFailed(Exception):
    """The signer raised (logged with its traceback; the client gets 451 4.3.0)."""


def _fail(future: asyncio.Future[None], error: Exception, cause: Exception | None) -> None:
    if cause is not None:
        error.__cause__ = cause
    if not future.done():
        future.set_exception(error)


def _peer_ip(session: Session) -> str:
    peer: Any = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


def server_factory(
    handler: IngressHandler,
    tls_context: ssl.SSLContext | None,
    listener: Listener | None = None,
) -> Callable[[], FastSMTP]:
    config = handler.config
    auth_users = dict(config.auth_users) or None

    def factory() -> FastSMTP:
        return FastSMTP(
            handler,
            hostname=config.hostname,
            data_size_limit=config.max_message_size,
            max_recipients=config.max_recipients,
            tls_context=tls_context,
            auth_users=auth_users,
            timeout=config.idle_timeout,
            ident="ESMTP mta-sim",
            listener=listener,
        )

    return factory
