"""Helpers for the campaign_client tests: a signed-webhook poster (real HTTP, aiohttp client),
event builders, and a small aiosmtpd SMTP server on port 0 standing in for the MTA."""

from __future__ import annotations

import asyncio
import base64
import email
import email.policy
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiosmtpd.smtp import SMTP, Envelope

from campaign_client.webhook import parse_secret, signed_headers

SECRET = "whsec_" + base64.b64encode(b"campaign-client-test-key-32bytes").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-key-entirely-32-bytes").decode()


def ev(kind: str, seq: int | None = 1, *, log_id: str = "1", recipient: str = "a@x.test",
       delivery_id: str = "D1", event_id: str | None = None, failure: dict[str, Any] | None = None,
       smtp: dict[str, Any] | None = None, attempt: int = 1, queue_id: str = "Q1",
       **extra: Any) -> dict[str, Any]:
    """One event as the MTA sends it."""
    body: dict[str, Any] = {
        "event_id": event_id or uuid.uuid4().hex, "seq": seq, "kind": kind,
        "at": time.time(), "queue_id": queue_id, "delivery_id": delivery_id, "log_id": log_id,
        "recipient": recipient, "attempt": attempt, "smtp": smtp, "bounce_class": None,
        "failure": failure, "next_attempt_at": None, "possible_duplicate": False,
    }
    body.update(extra)
    return body


HARD = {"type": "Hard", "reason": "User unknown", "reason_code": 1}
SOFT = {"type": "Soft", "reason": "Mailbox full", "reason_code": 5}
SMTP_550 = {"code": 550, "enhanced": "5.1.1", "text": "user unknown", "phase": "rcpt",
            "mx": "mx.x.test"}
SMTP_452 = {"code": 452, "enhanced": "4.2.2", "text": "mailbox full", "phase": "rcpt",
            "mx": "mx.x.test"}
SMTP_250 = {"code": 250, "enhanced": "2.0.0", "text": "ok", "phase": "dot", "mx": "mx.x.test"}


async def post(url: str, events: Sequence[dict[str, Any]] | bytes, *, secret: str = SECRET,
               timestamp: int | None = None, msg_id: str | None = None,
               headers: dict[str, str] | None = None) -> int:
    """POST a batch the way the MTA does; returns the HTTP status."""
    body = events if isinstance(events, bytes) else json.dumps(list(events)).encode()
    stamp = int(time.time()) if timestamp is None else timestamp
    sent = signed_headers(parse_secret(secret), msg_id or f"msg_{uuid.uuid4().hex}", stamp, body)
    sent["content-type"] = "application/json"
    if headers is not None:
        sent.update(headers)
    async with aiohttp.ClientSession() as session, session.post(url, data=body,
                                                                headers=sent) as resp:
        return resp.status


@dataclass
class Received:
    mail_from: str
    rcpt: str
    message: email.message.EmailMessage


@dataclass
class FakeMta:
    """An SMTP server on 127.0.0.1:0 answering like the MTA's ingress.

    The local part decides: "reject..." -> 550 5.1.1 at RCPT; "temp..." -> 451 4.3.0 at RCPT
    every time; "flaky..." -> 451 on the first try then accepted; others -> 250 with a queue id.
    """

    received: list[Received] = field(default_factory=list)
    attempts: dict[str, int] = field(default_factory=dict)
    sessions: int = 0
    server: asyncio.Server | None = None
    counter: int = 0
    webhook_url: str | None = None          # if set, POST relayed + delivered like the MTA
    posts: list[asyncio.Task[int]] = field(default_factory=list)

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self._protocol, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    def _protocol(self) -> SMTP:
        self.sessions += 1
        return SMTP(self, hostname="mta.test", ident="fake mta", enable_SMTPUTF8=True)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def handle_RCPT(self, server: Any, session: Any, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        local = address.split("@")[0]
        self.attempts[address] = self.attempts.get(address, 0) + 1
        if local.startswith("reject"):
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        first = self.attempts[address] == 1
        if local.startswith("temp") or (local.startswith("flaky") and first):
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        for rcpt in envelope.rcpt_tos:
            assert isinstance(message, email.message.EmailMessage)
            self.received.append(Received(str(envelope.mail_from), rcpt, message))
        self.counter += 1
        queue_id = f"Q{self.counter:05d}"
        if self.webhook_url is not None:
            events = [
                ev(kind, seq, delivery_id=str(message["X-Campaign-Delivery-Id"]),
                   log_id=str(message["X-Campaign-Log-Id"]), recipient=rcpt, queue_id=queue_id,
                   smtp=SMTP_250 if kind == "delivered" else None)
                for rcpt in envelope.rcpt_tos for seq, kind in ((1, "relayed"), (2, "delivered"))
            ]
            self.posts.append(asyncio.create_task(post(self.webhook_url, events)))
        return f"250 2.0.0 {queue_id} queued"
