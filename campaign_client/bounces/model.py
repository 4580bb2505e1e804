"""What the bounce mailbox reads out of one inbound message (pure data, no logic).

`Inbound` is one message: its kind (dsn, auto_reply, complaint, unknown), what it tells of the
original message (`Original`) and one `Notice` per recipient it reports on. `Qualified` is one
notice after the inbound-email rules: a Campaign failure type, reason and reason code, and the
name of the rule that decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from campaign_client.events import Smtp

KINDS: Final = ("dsn", "auto_reply", "complaint", "unknown")

# Campaign failure reasons and their codes.
REASON_CODES: Final[dict[str, int]] = {
    "Not defined": 0,
    "User unknown": 1,
    "Invalid domain": 2,
    "Unreachable": 3,
    "Account disabled": 4,
    "Mailbox full": 5,
    "Not connected": 6,
    "Address not specified": 7,
    "Denylisted": 8,
    "Address in quarantine": 9,
    "Refused": 20,
    "Error ignored": 25,
}
FAILURE_TYPES: Final = ("Hard", "Soft", "Ignored")


@dataclass(frozen=True, slots=True)
class Original:
    """What the inbound message tells of the message it is about."""

    delivery_id: str | None = None
    log_id: str | None = None
    message_id: str | None = None
    recipient: str | None = None


@dataclass(frozen=True, slots=True)
class Notice:
    """One recipient's report inside an inbound message."""

    recipient: str | None
    action: str = ""
    status: str = ""
    diagnostic: str = ""


@dataclass(frozen=True, slots=True)
class Inbound:
    kind: str                                   # one of KINDS
    message_id: str | None                      # the inbound message's own Message-ID
    fingerprint: str                            # sha256 of the raw bytes (idempotency)
    original: Original
    notices: tuple[Notice, ...]
    text: str = ""
    feedback_type: str | None = None


@dataclass(frozen=True, slots=True)
class Qualified:
    notice: Notice
    failure_type: str
    reason: str
    reason_code: int
    rule: str
    smtp: Smtp | None = field(default=None)
