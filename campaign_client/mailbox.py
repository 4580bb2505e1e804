"""The bounce mailbox: an aiosmtpd handler that qualifies inbound mail into the delivery log.

`process_inbound(log, raw, rules, now)` (synchronous, called in a worker thread) parses one
message (`campaign_client.inbound`), qualifies it with the inbound-email rules, finds the log line
it is about (returned X-Campaign-* headers, then Message-ID / In-Reply-To, then the recipient),
applies a local `out_of_band` or `complaint` event (Hard -> Failed + quarantine; complaint ->
denylist; Soft / Ignored -> reason only, see `campaign_client.status`) and records what it did in
the log's `inbound` table. A Hard result or a complaint for an address with no matching line
still puts the address in quarantine / on the denylist.

`BounceMailbox` is the aiosmtpd handler: RCPT is accepted for the configured bounce addresses (all
addresses if none are configured); DATA answers 250 only after the log has committed, and
`451 4.3.0` if it cannot.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from campaign_client.inbound import Inbound, Rule, parse_inbound, qualify, to_event
from campaign_client.log import DENYLISTED, QUARANTINE, DeliveryLog, LogError


@dataclass(frozen=True, slots=True)
class InboundOutcome:
    """How one recipient report of an inbound message was handled."""

    kind: str
    recipient: str | None
    line: tuple[str, str, str] | None       # (delivery_id, log_id, recipient) or None
    failure_type: str
    reason: str
    rule: str


def process_inbound(
    log: DeliveryLog, raw: bytes, rules: tuple[Rule, ...], now: float
) -> list[InboundOutcome]:
    """Parse, qualify and apply one inbound message; returns one outcome per report."""
    inbound: Inbound = parse_inbound(raw)
    outcomes: list[InboundOutcome] = []
    events = []
    for qualified in qualify(inbound, rules):
        recipient = qualified.notice.recipient or inbound.original.recipient
        line = log.find_line(
            delivery_id=inbound.original.delivery_id,
            log_id=inbound.original.log_id,
            message_id=inbound.original.message_id,
            recipient=recipient,
        )
        key = None if line is None else (line.delivery_id, line.log_id, line.recipient)
        if key is not None:
            events.append(to_event(inbound, qualified, key, now))
        elif recipient and (inbound.kind == "complaint" or qualified.failure_type == "Hard"):
            log.quarantine(
                recipient, DENYLISTED if inbound.kind == "complaint" else QUARANTINE, now,
                failure_type=qualified.failure_type, reason=qualified.reason,
                reason_code=qualified.reason_code,
            )
        outcome = InboundOutcome(inbound.kind, recipient, key, qualified.failure_type,
                                 qualified.reason, qualified.rule)
        outcomes.append(outcome)
        log.record_inbound(
            now, inbound.kind, message_id=inbound.message_id, recipient=recipient,
            delivery_id=key[0] if key else None, log_id=key[1] if key else None,
            failure_type=qualified.failure_type, reason=qualified.reason, rule=qualified.rule,
            detail=(qualified.smtp.line() if qualified.smtp else None) or inbound.feedback_type,
        )
    if events:
        log.apply_events(events, now)
    return outcomes


class BounceMailbox:
    """aiosmtpd handler for the sender's bounce mailbox."""

    def __init__(
        self,
        log: DeliveryLog,
        rules: tuple[Rule, ...],
        clock: Callable[[], float],
        addresses: Iterable[str] | None = None,
    ) -> None:
        self.log = log
        self.rules = rules
        self.clock = clock
        self.addresses = None if addresses is None else {a.lower() for a in addresses}
        self.received = 0
        self.outcomes: list[InboundOutcome] = []

    def accepts(self, address: str) -> bool:
        if self.addresses is None:
            return True
        address = address.lower()
        if address in self.addresses:
            return True
        local, _, domain = address.partition("@")
        base = local.split("+", 1)[0]            # bounces+tag@domain (VERP-style tags)
        return f"{base}@{domain}" in self.addresses

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if not self.accepts(address):
            return "550 5.1.1 Not a bounce mailbox of this sender"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        try:
            outcomes = await asyncio.to_thread(
                process_inbound, self.log, raw, self.rules, self.clock()
            )
        except (sqlite3.Error, LogError):
            return "451 4.3.0 Temporary local problem, please retry"
        self.received += 1
        self.outcomes.extend(outcomes[:100])
        del self.outcomes[:-1000]
        return "250 2.0.0 OK"
