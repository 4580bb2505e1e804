"""Mail the personas send back later: DSNs, auto-replies, complaints, and their outbox.

Builders (pure; time and ids are arguments):
- `build_dsn`: RFC 3464 multipart/report; report-type=delivery-status, with a
  human part, message/delivery-status and the original headers as
  text/rfc822-headers.
- `build_autoreply`: RFC 3834 (Auto-Submitted: auto-replied, In-Reply-To).
- `build_complaint`: RFC 5965 multipart/report; report-type=feedback-report
  (Feedback-Type: abuse, Original-Rcpt-To, the original message attached).

`Outbox` holds them until their (virtual) due time on the shared clock, then
submits each with the null reverse path (`MAIL FROM:<>`, RFC 5321 4.5.5 and
RFC 3834 5.1) to the envelope sender of the original message, through the
MTA's submission port, so they travel back as in real life. A failed
submission is retried a few times (real seconds), then dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import email.utils
import heapq
import itertools
import logging
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from mta.clock import Clock

log = logging.getLogger("mta.sim.artefacts")

Kind = Literal["dsn", "autoreply", "complaint"]
SEND_TRIES = 4
SEND_TIMEOUT = 10.0
MAX_PARALLEL = 8
HEADER_LIMIT = 64 * 1024


def rfc5322_date(when: float) -> str:
    return email.utils.format_datetime(dt.datetime.fromtimestamp(when, dt.UTC))


def split_message(content: bytes) -> tuple[bytes, bytes]:
    """(header block ending with CRLF, body) of a CRLF message."""
    end = content.find(b"\r\n\r\n", 0, HEADER_LIMIT)
    if end < 0:
        return content[:HEADER_LIMIT].rstrip(b"\r\n") + b"\r\n", b""
    return content[: end + 2], content[end + 4 :]


def header_value(headers: bytes, name: str) -> str:
    """The first field `name` of a header block, unfolded ("" if absent)."""
    wanted = name.lower().encode("ascii") + b":"
    lines = headers.split(b"\r\n")
    for i, line in enumerate(lines):
        if line[: len(wanted)].lower() == wanted:
            value = line[len(wanted) :]
            for more in lines[i + 1 :]:
                if more[:1] not in (b" ", b"\t"):
                    break
                value += b" " + more.strip()
            return value.decode("utf-8", "replace").strip()
    return ""


def _crlf(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def _clean(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Original:
    """What the persona knew of the message it accepted."""

    mail_from: str
    recipient: str
    content: bytes
    client_ip: str
    arrived_at: float


def build_dsn(
    original: Original,
    reporting_mta: str,
    status: str,
    diagnostic: str,
    now: float,
    boundary: str,
    message_id: str,
) -> bytes:
    """An RFC 3464 failure report for one recipient."""
    headers, _ = split_message(original.content)
    subject = _clean(header_value(headers, "Subject"))
    top = [
        f"From: Mail Delivery Subsystem <mailer-daemon@{reporting_mta}>",
        f"To: <{original.mail_from}>",
        "Subject: Delivery Status Notification (Failure)" + (f": {subject}" if subject else ""),
        f"Date: {rfc5322_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        "Your message could not be delivered to the following recipient:",
        "",
        f"  {original.recipient}",
        "",
        f"The server {reporting_mta} answered: {_clean(diagnostic)}",
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Arrival-Date: {rfc5322_date(original.arrived_at)}",
        "",
        f"Final-Recipient: rfc822; {original.recipient}",
        "Action: failed",
        f"Status: {status}",
        f"Remote-MTA: dns; {reporting_mta}",
        f"Diagnostic-Code: smtp; {_clean(diagnostic)}",
        f"Last-Attempt-Date: {rfc5322_date(now)}",
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    return _crlf(top) + headers + _crlf(["", f"--{boundary}--"])


def build_autoreply(
    original: Original, now: float, message_id: str, text: str = "I am out of the office."
) -> bytes:
    """An RFC 3834 automatic reply from the recipient to the envelope sender."""
    headers, _ = split_message(original.content)
    subject = _clean(header_value(headers, "Subject"))
    original_id = header_value(headers, "Message-ID")
    lines = [
        f"From: <{original.recipient}>",
        f"To: <{original.mail_from}>",
        f"Subject: Auto: {subject}" if subject else "Subject: Auto: (no subject)",
        f"Date: {rfc5322_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
    ]
    if original_id:
        lines += [f"In-Reply-To: {original_id}", f"References: {original_id}"]
    lines += ["", text]
    return _crlf(lines)


def build_complaint(
    original: Original,
    reporting_mta: str,
    feedback_from: str,
    now: float,
    boundary: str,
    message_id: str,
) -> bytes:
    """An RFC 5965 abuse report about the original message, which it carries whole."""
    headers, _ = split_message(original.content)
    subject = _clean(header_value(headers, "Subject"))
    domain = original.mail_from.rpartition("@")[2]
    top = [
        f"From: <{feedback_from}>",
        f"To: <{original.mail_from}>",
        f"Subject: Abuse report: {subject}" if subject else "Subject: Abuse report",
        f"Date: {rfc5322_date(now)}",
        f"Message-ID: {message_id}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=feedback-report; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        f"This is an email abuse report for a message received from IP {original.client_ip}"
        f" on {rfc5322_date(original.arrived_at)}.",
        "",
        f"--{boundary}",
        "Content-Type: message/feedback-report",
        "",
        "Feedback-Type: abuse",
        "User-Agent: mta-sim/0.1",
        "Version: 1",
        f"Original-Mail-From: <{original.mail_from}>",
        f"Original-Rcpt-To: <{original.recipient}>",
        f"Arrival-Date: {rfc5322_date(original.arrived_at)}",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"Source-IP: {original.client_ip}",
    ]
    if domain:
        top.append(f"Reported-Domain: {domain}")
    top += ["", f"--{boundary}", "Content-Type: message/rfc822", "", ""]
    body = _crlf(top)[:-2] + original.content
    if not original.content.endswith(b"\r\n"):
        body += b"\r\n"
    return body + _crlf(["", f"--{boundary}--"])


@dataclass(order=True)
class _Item:
    due: float
    order: int
    kind: Kind = field(compare=False)
    recipient: str = field(compare=False)
    content: bytes = field(compare=False)
    persona: str = field(compare=False)


class Outbox:
    """Artefacts waiting for their due time, then submitted to the MTA. See the module docstring."""

    def __init__(self, clock: Clock, submit: tuple[str, int] | None) -> None:
        self.clock = clock
        self.submit = submit
        self._heap: list[_Item] = []
        self._order = itertools.count()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_PARALLEL)
        self.scheduled: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.failed: dict[str, int] = {}

    @property
    def pending(self) -> int:
        return len(self._heap) + len(self._sending)

    def schedule(
        self, due: float, kind: Kind, recipient: str, content: bytes, persona: str
    ) -> None:
        heapq.heappush(self._heap, _Item(due, next(self._order), kind, recipient, content, persona))
        self.scheduled[kind] = self.scheduled.get(kind, 0) + 1
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-outbox")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            now = self.clock.now()
            while self._heap and self._heap[0].due <= now:
                item = heapq.heappop(self._heap)
                await self._slots.acquire()
                task = asyncio.get_running_loop().create_task(self._send(item))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)
            waits: list[asyncio.Future[object]] = [asyncio.ensure_future(self._wake.wait())]
            if self._heap:
                waits.append(asyncio.ensure_future(self.clock.sleep_until(self._heap[0].due)))
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waits:
                    waiter.cancel()

    async def _send(self, item: _Item) -> None:
        try:
            delay = 0.5
            for attempt in range(SEND_TRIES):
                error = await self._submit_once(item)
                if error is None:
                    self.sent[item.kind] = self.sent.get(item.kind, 0) + 1
                    return
                if attempt < SEND_TRIES - 1:
                    await asyncio.sleep(delay)
                    delay *= 2
            log.warning(
                "%s from %s to %s dropped: %s", item.kind, item.persona, item.recipient, error
            )
            self.failed[item.kind] = self.failed.get(item.kind, 0) + 1
        finally:
            self._slots.release()

    async def _submit_once(self, item: _Item) -> str | None:
        """None on success, else why it failed."""
        if self.submit is None:
            return "no MTA submission address configured"
        host, port = self.submit
        smtp = aiosmtplib.SMTP(
            hostname=host,
            port=port,
            timeout=SEND_TIMEOUT,
            start_tls=False,
            local_hostname="sim.localhost",
        )
        try:
            await smtp.connect()
            errors, _ = await smtp.sendmail("", [item.recipient], item.content)
            if errors:
                return str(errors)
            return None
        except (aiosmtplib.SMTPException, OSError) as exc:
            return str(exc) or type(exc).__name__
        finally:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError):
                if smtp.is_connected:
                    await smtp.quit()
            smtp.close()
