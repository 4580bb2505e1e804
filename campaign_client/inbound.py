"""Inbound mail at the bounce mailbox: the API the rest of the client uses (pure).

`parse_inbound(raw)` reads one message (see `campaign_client.bounces`: RFC 3464 DSNs read
leniently, the plain-text bounces of Postfix, Exim, qmail, Sendmail, Exchange, Domino, Gmail,
Yahoo and others, RFC 5965 complaints, RFC 3834 auto-replies, told apart by evidence) into an
`Inbound` with one `Notice` per failed recipient. `qualify(inbound, rules)` applies the
inbound-email rules (ordered, first match wins; data in campaign_client/inbound-rules.toml,
loaded by `load_rules`) and returns one `Qualified` per recipient: Hard / Soft / Ignored with a
Campaign reason and its code. `to_event(...)` turns one into the client's local `out_of_band`
or `complaint` event for the delivery log.
"""

from __future__ import annotations

import hashlib

from campaign_client.bounces import (
    CONDITIONS,
    DEFAULT_RULES_RESOURCE,
    FAILURE_TYPES,
    KINDS,
    REASON_CODES,
    Inbound,
    Notice,
    Original,
    Qualified,
    Rule,
    RulesError,
    load_rules,
    parse_inbound,
    parse_rules,
    qualify,
)
from campaign_client.events import Event, Failure, Kind

__all__ = [
    "CONDITIONS",
    "DEFAULT_RULES_RESOURCE",
    "FAILURE_TYPES",
    "KINDS",
    "REASON_CODES",
    "Inbound",
    "Notice",
    "Original",
    "Qualified",
    "Rule",
    "RulesError",
    "load_rules",
    "parse_inbound",
    "parse_rules",
    "qualify",
    "to_event",
]


def to_event(inbound: Inbound, qualified: Qualified, line_key: tuple[str, str, str],
             now: float) -> Event:
    """The local event that applies a qualified inbound message to a log line."""
    delivery_id, log_id, recipient = line_key
    kind = Kind.COMPLAINT if inbound.kind == "complaint" else Kind.OUT_OF_BAND
    identity = f"{inbound.message_id or inbound.fingerprint}|{delivery_id}|{log_id}|{recipient}"
    event_id = "inbound:" + hashlib.sha256(identity.encode()).hexdigest()[:32]
    return Event(
        event_id=event_id,
        kind=kind,
        delivery_id=delivery_id,
        log_id=log_id,
        recipient=recipient,
        seq=None,
        at=now,
        smtp=qualified.smtp,
        failure=Failure(qualified.failure_type, qualified.reason, qualified.reason_code),
    )
