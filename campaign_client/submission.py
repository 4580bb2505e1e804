"""Submission: send a delivery to the MTA over SMTP, one message per recipient
(docs/design.md, "Submission").

    delivery = Delivery("D1", [Recipient("a@x.test", "1", {"first_name": "Ann"})],
                        from_addr="news@sender.test", subject="Hi {first_name}",
                        template="Hello {first_name}", validity="5d")
    result = await submit(delivery, "127.0.0.1", 2525, log=log, sessions=10)

Each message carries `X-Campaign-Delivery-Id`, `X-Campaign-Log-Id` and `X-Campaign-Validity`, and
a Message-ID recorded in the log (asynchronous bounces come back with it: the MTA strips the
X-Campaign-* headers). `sessions` aiosmtplib connections run at once, each reusing its connection
for many messages (aiosmtplib does not pipeline; concurrency comes from the sessions). Replies:
- 250: the queue id is the first token after the enhanced code ("250 2.0.0 <id> queued"); the
  line becomes "Taken into account by the service provider" (a local `relayed` event).
- 4xx (or a dropped connection): retried up to `attempts` times with doubling delays from
  `retry_delay`, reconnecting when needed; then Failed with the last reply.
- 5xx: Failed at once, with the type and reason the inbound-email rules give the reply.
Before anything is submitted, recipients whose address is in Quarantine or Denylisted (on the
log's events clock) are left out and written to the delivery's exclusion log with Campaign's
reason ("Address in quarantine", "Denylisted"): `SubmitResult.excluded`.
Log writes are batched (every 0.1 s or 256 results) off the event loop. If the MTA stops
answering altogether (`max_connection_failures` connection failures in a row, or the first
connection fails), submission stops: the rest stays Pending and `SubmitResult.error` says why
(`SubmitError` is raised when not a single connection could be made).
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import re
import secrets
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from email.header import Header
from email.utils import formatdate

import aiosmtplib

from campaign_client.address_store import Exclusion
from campaign_client.events import Event, Failure, Kind, Smtp
from campaign_client.inbound import Inbound, Notice, Original, Rule, load_rules, qualify
from campaign_client.log import DeliveryLog

DEFAULT_SUBJECT = "Your news from {delivery_id}"
DEFAULT_TEMPLATE = "Hello,\n\nThis is delivery {delivery_id} for {email}.\n"
BUILTIN_FIELDS = frozenset({"email", "log_id", "delivery_id"})

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_VALIDITY = re.compile(r"^\d+(\.\d+)?[smhdw]?$")
_ADDRESS = re.compile(r"^[^@\s<>()\[\],;:\"\\]+@[^@\s<>()\[\],;:\"\\]+$")
_ID_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


class SubmitError(Exception):
    """Submission could not start (the MTA is unreachable); the message says where and why."""


class TemplateError(ValueError):
    """A template names a field the recipients do not have, or is malformed."""


@dataclass(frozen=True, slots=True)
class Recipient:
    email: str
    log_id: str
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Delivery:
    delivery_id: str
    recipients: Sequence[Recipient]
    from_addr: str = "campaign@sender.test"
    subject: str = DEFAULT_SUBJECT
    template: str = DEFAULT_TEMPLATE
    validity: str = "5d"
    bounce_address: str | None = None      # envelope sender (MAIL FROM); default from_addr
    headers: Mapping[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ValueError (TemplateError for templates) naming the first problem."""
        if not self.delivery_id or any(c in self.delivery_id for c in "\r\n"):
            raise ValueError("delivery id must be a non-empty single line")
        if not _VALIDITY.match(self.validity.strip()):
            raise ValueError(f"validity {self.validity!r}: use e.g. 5d, 84h, 3600s")
        for name, address in (("from", self.from_addr), ("bounce", self.bounce_address)):
            if address is not None and not is_address(address):
                raise ValueError(f"{name} address {address!r} is not an email address")
        if not self.recipients:
            raise ValueError("the delivery has no recipients")
        seen: set[tuple[str, str]] = set()
        for index, recipient in enumerate(self.recipients, 1):
            if not is_address(recipient.email):
                raise ValueError(f"recipient {index}: {recipient.email!r} is not an email address")
            if not recipient.log_id or any(c in recipient.log_id for c in "\r\n"):
                raise ValueError(f"recipient {index}: log id must be a non-empty single line")
            key = (recipient.log_id, recipient.email)
            if key in seen:
                raise ValueError(
                    f"recipient {index}: duplicate log id {recipient.log_id!r} for "
                    f"{recipient.email}"
                )
            seen.add(key)
        for name in self.headers:
            if not _HEADER_NAME.match(name):
                raise ValueError(f"header name {name!r} is not valid")
        available = set(BUILTIN_FIELDS)
        for recipient in self.recipients:
            available.update(recipient.fields)
        for label, text in (("subject", self.subject), ("template", self.template)):
            for name in template_fields(text, label):
                if name not in available:
                    raise TemplateError(
                        f"{label} uses {{{name}}} but the recipients have no field {name!r}"
                    )


@dataclass(frozen=True, slots=True)
class SubmitOutcome:
    log_id: str
    recipient: str
    accepted: bool
    queue_id: str | None
    reply: str
    attempts: int


@dataclass(slots=True)
class SubmitResult:
    total: int
    accepted: int = 0
    failed: int = 0
    retries: int = 0
    not_submitted: int = 0
    elapsed: float = 0.0
    error: str | None = None
    outcomes: list[SubmitOutcome] = field(default_factory=list)
    excluded: list[Exclusion] = field(default_factory=list)   # left out, never submitted

    @property
    def rate(self) -> float:
        """Messages answered per second."""
        done = self.accepted + self.failed
        return done / self.elapsed if self.elapsed > 0 else 0.0


Progress = Callable[[int, int], None]


def canonical_address(address: str) -> str:
    """The address as the MTA records it: local part as given, domain lower-cased."""
    local, at, domain = address.strip().rpartition("@")
    return f"{local}{at}{domain.lower()}" if at else address.strip()


def is_address(text: str) -> bool:
    return bool(_ADDRESS.match(text)) and not any(ord(c) < 32 or ord(c) == 127 for c in text)


def template_fields(text: str, label: str = "template") -> list[str]:
    """The field names a template uses; TemplateError for malformed or non-plain fields."""
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise TemplateError(f"{label}: {exc} (write {{{{ and }}}} for literal braces)") from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise TemplateError(f"{label}: only plain fields like {{first_name}} are allowed,"
                                f" got {{{name}}}")
        names.append(name)
    return names


def render(text: str, values: Mapping[str, str]) -> str:
    return text.format_map(dict(values))


def parse_queue_id(message: str) -> str | None:
    """"2.0.0 ABC123 queued" (or "ABC123 queued") -> "ABC123"; angle brackets are dropped."""
    tokens = message.split()
    if tokens and _ENHANCED.match(tokens[0]):
        tokens = tokens[1:]
    if not tokens:
        return None
    return tokens[0].strip("<>") or None


def split_reply(code: int, message: str) -> Smtp:
    """An SMTP reply as aiosmtplib gives it (code, "5.1.1 text") -> Smtp."""
    text = " ".join(message.split())
    first, _, rest = text.partition(" ")
    if _ENHANCED.match(first):
        return Smtp(code=code, enhanced=first, text=rest, phase="submission")
    return Smtp(code=code, enhanced=None, text=text, phase="submission")


def message_id_for(delivery: Delivery, recipient: Recipient) -> str:
    domain = (delivery.from_addr.rpartition("@")[2] or "campaign-client.test").strip()
    delivery_part = _ID_UNSAFE.sub("_", delivery.delivery_id)[:64]
    log_part = _ID_UNSAFE.sub("_", recipient.log_id)[:64]
    return f"<{delivery_part}.{log_part}.{secrets.token_hex(6)}@{domain}>"


def build_message(
    delivery: Delivery, recipient: Recipient, message_id: str, now: float
) -> bytes:
    """The RFC 5322 message for one recipient (CRLF line ends, MIME text/plain UTF-8).

    Built directly rather than through `email.message.EmailMessage` (10x faster): ASCII bodies
    with short lines go as 7bit, others as quoted-printable; non-ASCII header text as RFC 2047
    encoded-words; CR/LF in header values are folded into spaces (no header injection).
    """
    values = {**recipient.fields, "email": recipient.email, "log_id": recipient.log_id,
              "delivery_id": delivery.delivery_id}
    encoding, body = _encode_body(render(delivery.template, values))
    lines = [
        f"From: {delivery.from_addr}",
        f"To: {recipient.email}",
        f"Subject: {_header_text(render(delivery.subject, values))}",
        f"Date: {formatdate(now, usegmt=True)}",
        f"Message-ID: {message_id}",
        f"X-Campaign-Delivery-Id: {_header_text(delivery.delivery_id)}",
        f"X-Campaign-Log-Id: {_header_text(recipient.log_id)}",
        f"X-Campaign-Validity: {delivery.validity.strip()}",
    ]
    lines.extend(f"{name}: {_header_text(value)}" for name, value in delivery.headers.items())
    lines.extend([
        "MIME-Version: 1.0",
        'Content-Type: text/plain; charset="utf-8"',
        f"Content-Transfer-Encoding: {encoding}",
    ])
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body


_NEWLINES = re.compile(r"\r\n|\r")
_HEADER_NAME = re.compile(r"^[!-9;-~]+$")


def _header_text(value: str) -> str:
    text = " ".join(value.split())
    if text.isascii():
        return text
    return Header(text, "utf-8").encode(linesep="\r\n")


def _encode_body(text: str) -> tuple[str, bytes]:
    text = _NEWLINES.sub("\n", text)
    if not text.endswith("\n"):
        text += "\n"
    if text.isascii() and all(len(line) <= 998 for line in text.split("\n")):
        return "7bit", text.replace("\n", "\r\n").encode("ascii")
    encoded = binascii.b2a_qp(text.encode("utf-8"), istext=True)
    return "quoted-printable", encoded.replace(b"\n", b"\r\n")


def qualify_refusal(reply: Smtp, rules: tuple[Rule, ...]) -> Failure:
    """Failure type and reason for a refused submission, by the same rules as DSNs."""
    status = reply.enhanced or ""
    diagnostic = " ".join(part for part in (str(reply.code or ""), status, reply.text or "")
                          if part)
    inbound = Inbound("dsn", None, "", Original(),
                      (Notice(recipient=None, action="failed", status=status,
                              diagnostic=diagnostic),))
    result = qualify(inbound, rules)[0]
    return Failure(result.failure_type, result.reason, result.reason_code)


class _Recorder:
    """Buffers local events and applies them to the log in batches, off the event loop."""

    def __init__(self, log: DeliveryLog | None, clock: Callable[[], float]) -> None:
        self.log = log
        self.clock = clock
        self.buffer: list[Event] = []
        self.lock = asyncio.Lock()
        self.wake = asyncio.Event()

    def add(self, event: Event) -> None:
        if self.log is None:
            return
        self.buffer.append(event)
        if len(self.buffer) >= 256:
            self.wake.set()

    async def flush(self) -> None:
        async with self.lock:
            if not self.buffer or self.log is None:
                return
            batch, self.buffer = self.buffer, []
            await asyncio.to_thread(self.log.apply_events, batch, self.clock())

    async def run(self, done: asyncio.Event) -> None:
        """Flush every 0.1 s, or sooner when 256 results are waiting, until `done`."""
        while not done.is_set():
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=0.1)
            await self.flush()


class _Run:
    """State shared by the sessions of one `submit` call."""

    def __init__(
        self, delivery: Delivery, host: str, port: int, message_ids: Mapping[tuple[str, str], str],
        recorder: _Recorder, rules: tuple[Rule, ...], progress: Progress | None,
        attempts: int, retry_delay: float, timeout: float, max_connection_failures: int,
        local_hostname: str, clock: Callable[[], float],
    ) -> None:
        self.delivery = delivery
        self.host = host
        self.port = port
        self.message_ids = message_ids
        self.recorder = recorder
        self.rules = rules
        self.progress = progress
        self.attempts = attempts
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.max_connection_failures = max_connection_failures
        self.local_hostname = local_hostname
        self.clock = clock
        self.queue: list[Recipient] = list(reversed(delivery.recipients))
        self.result = SubmitResult(total=len(delivery.recipients))
        self.connection_failures = 0
        self.abort: str | None = None
        self.mail_from = delivery.bounce_address or delivery.from_addr

    async def connect(self) -> aiosmtplib.SMTP:
        smtp = aiosmtplib.SMTP(hostname=self.host, port=self.port, timeout=self.timeout,
                               local_hostname=self.local_hostname, start_tls=False)
        await smtp.connect()
        return smtp

    def done(self, outcome: SubmitOutcome) -> None:
        result = self.result
        result.outcomes.append(outcome)
        if outcome.accepted:
            result.accepted += 1
        else:
            result.failed += 1
        if self.progress is not None:
            self.progress(result.accepted + result.failed, result.total)

    async def session(self, smtp: aiosmtplib.SMTP | None) -> None:
        try:
            while self.queue and self.abort is None:
                recipient = self.queue.pop()
                smtp = await self.send_one(smtp, recipient)
        finally:
            if smtp is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(smtp.quit(), timeout=2.0)

    async def send_one(
        self, smtp: aiosmtplib.SMTP | None, recipient: Recipient
    ) -> aiosmtplib.SMTP | None:
        delivery = self.delivery
        message_id = self.message_ids[(recipient.log_id, recipient.email)]
        data = build_message(delivery, recipient, message_id, time.time())
        options = [] if (self.mail_from + recipient.email).isascii() else ["SMTPUTF8"]
        reply = Smtp(code=None, text="not attempted")
        for attempt in range(1, self.attempts + 1):
            if self.abort is not None:
                break
            connection_lost = False
            try:
                if smtp is None or not smtp.is_connected:
                    smtp = await self.connect()
                _, message = await smtp.sendmail(self.mail_from, [recipient.email], data,
                                                 mail_options=options)
                self.connection_failures = 0
                self.accept(recipient, message, attempt)
                return smtp
            except aiosmtplib.SMTPRecipientsRefused as exc:
                refused = exc.recipients[0]
                reply = split_reply(refused.code, refused.message)
            except aiosmtplib.SMTPResponseException as exc:
                reply = split_reply(exc.code, exc.message)
                connection_lost = exc.code == 421
            except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
                reply = Smtp(code=None, text=f"connection to the MTA failed: {exc}",
                             phase="submission")
                connection_lost = True
            if connection_lost:
                if smtp is not None:
                    smtp.close()
                smtp = None
                self.connection_failures += 1
                if self.connection_failures >= self.max_connection_failures:
                    self.abort = (f"MTA at {self.host}:{self.port} unreachable after "
                                  f"{self.connection_failures} connection failures: "
                                  f"{reply.line()}")
                    break
            else:
                self.connection_failures = 0
            if reply.code is not None and reply.code >= 500:
                self.refuse(recipient, reply, attempt)
                return smtp
            if attempt < self.attempts:
                self.result.retries += 1
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
        if self.abort is not None:
            self.queue.append(recipient)          # left Pending, counted as not submitted
            return smtp
        self.refuse(recipient, reply, self.attempts)
        return smtp

    def accept(self, recipient: Recipient, message: str, attempt: int) -> None:
        reply = split_reply(250, message)
        queue_id = parse_queue_id(message)
        self.recorder.add(Event(
            event_id=f"submit:{self.delivery.delivery_id}:{recipient.log_id}:"
                     f"{recipient.email}:{queue_id or 'accepted'}",
            kind=Kind.RELAYED, delivery_id=self.delivery.delivery_id,
            log_id=recipient.log_id, recipient=recipient.email, seq=None, at=self.clock(),
            queue_id=queue_id, attempt=0, smtp=reply,
        ))
        self.done(SubmitOutcome(recipient.log_id, recipient.email, True, queue_id,
                                reply.line() or "250", attempt))

    def refuse(self, recipient: Recipient, reply: Smtp, attempts: int) -> None:
        failure = qualify_refusal(reply, self.rules)
        self.recorder.add(Event(
            event_id=f"submit:{self.delivery.delivery_id}:{recipient.log_id}:"
                     f"{recipient.email}:refused",
            kind=Kind.SUBMIT_FAILED, delivery_id=self.delivery.delivery_id,
            log_id=recipient.log_id, recipient=recipient.email, seq=None, at=self.clock(),
            smtp=reply, failure=failure,
        ))
        self.done(SubmitOutcome(recipient.log_id, recipient.email, False, None,
                                reply.line() or "no reply", attempts))


async def submit(
    delivery: Delivery,
    mta_host: str = "127.0.0.1",
    mta_port: int = 2525,
    *,
    log: DeliveryLog | None = None,
    sessions: int = 10,
    progress: Progress | None = None,
    attempts: int = 3,
    retry_delay: float = 0.5,
    timeout: float = 30.0,
    max_connection_failures: int = 20,
    rules: tuple[Rule, ...] | None = None,
    local_hostname: str = "campaign-client.test",
    clock: Callable[[], float] = time.time,
    exclude: bool = True,
) -> SubmitResult:
    """Submit every recipient of `delivery`; lines are registered in `log` first (Pending).

    Recipient domains are lower-cased first (as the MTA records them), so the log's lines and
    the MTA's events name the same address. With a `log` (and `exclude`), addresses in
    Quarantine or Denylisted are left out first (see the module doc).
    """
    delivery = replace(delivery, recipients=[
        replace(r, email=canonical_address(r.email)) for r in delivery.recipients
    ])
    delivery.check()
    if sessions < 1 or attempts < 1:
        raise ValueError("sessions and attempts must be >= 1")
    rules = rules if rules is not None else load_rules()
    started = time.monotonic()
    excluded: list[Exclusion] = []
    if log is not None and exclude:
        now = await asyncio.to_thread(log.clock, clock())
        excluded = await asyncio.to_thread(
            log.exclude, delivery.delivery_id,
            [(r.log_id, r.email) for r in delivery.recipients], now)
        if excluded:
            left_out = {(item.log_id, item.recipient) for item in excluded}
            delivery = replace(delivery, recipients=[
                r for r in delivery.recipients if (r.log_id, r.email) not in left_out])
    if not delivery.recipients:
        return SubmitResult(total=0, elapsed=time.monotonic() - started, excluded=excluded)
    message_ids = {(r.log_id, r.email): message_id_for(delivery, r) for r in delivery.recipients}
    if log is not None:
        existing = {(line.log_id, line.recipient): line.message_id
                    for line in await asyncio.to_thread(log.lines, delivery.delivery_id)}
        for key, known in existing.items():
            if key in message_ids and known:
                message_ids[key] = known
        await asyncio.to_thread(
            log.register, delivery.delivery_id,
            [(r.log_id, r.email, message_ids[(r.log_id, r.email)]) for r in delivery.recipients],
            clock(),
        )
    recorder = _Recorder(log, clock)
    run = _Run(delivery, mta_host, mta_port, message_ids, recorder, rules, progress, attempts,
               retry_delay, timeout, max_connection_failures, local_hostname, clock)
    try:
        first = await run.connect()
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        raise SubmitError(f"cannot connect to the MTA at {mta_host}:{mta_port}: {exc}") from None
    done = asyncio.Event()
    flusher = asyncio.create_task(recorder.run(done))
    count = min(sessions, len(delivery.recipients))
    try:
        await asyncio.gather(run.session(first), *(run.session(None) for _ in range(count - 1)))
    finally:
        done.set()
        recorder.wake.set()
        await flusher
        await recorder.flush()
    result = run.result
    result.excluded = excluded
    result.elapsed = time.monotonic() - started
    result.not_submitted = len(run.queue)
    result.error = run.abort
    return result
