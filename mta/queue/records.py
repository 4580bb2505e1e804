"""The queue's records: what enters the spool, what a pick leases, what an attempt writes back."""

from __future__ import annotations

from dataclasses import dataclass

from mta.model import Result


@dataclass(frozen=True, slots=True)
class NewRecipient:
    address: str
    domain: str
    log_id: str | None


@dataclass(frozen=True, slots=True)
class NewMessage:
    queue_id: str
    mail_from: str
    delivery_id: str | None
    received_at: float
    expires_at: float
    content: bytes
    smtputf8: bool
    recipients: tuple[NewRecipient, ...]
    # One "relayed" event per recipient, in recipient order: (event_id, body).
    events: tuple[tuple[str, str], ...] = ()
    content_sha256: str = ""  # of `content`, when its maker computed it (else the spool does)


@dataclass(frozen=True, slots=True)
class DueRecipient:
    """A recipient leased for an attempt (or found expired), with what delivery needs."""

    recipient_id: int
    message_id: int
    queue_id: str
    mail_from: str
    delivery_id: str | None
    address: str
    domain: str
    log_id: str | None
    attempts: int
    seq: int
    received_at: float
    expires_at: float
    smtputf8: bool
    possible_duplicate: bool
    last_code: int | None
    last_enhanced: str | None
    last_text: str | None
    last_phase: str | None
    last_mx: str | None
    reported_key: str | None = None  # the last soft bounce reported, and when
    reported_at: float | None = None


@dataclass(frozen=True, slots=True)
class Pick:
    recipients: list[DueRecipient]
    contents: dict[int, bytes]  # message id -> content, its checksum verified
    next_due: dict[str, float | None]  # per domain asked: the earliest next attempt left
    # Messages whose content failed its checksum or could not be read: never to be sent.
    damaged: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class DomainQueue:
    domain: str
    next_due: float | None
    queued: int


@dataclass(frozen=True, slots=True)
class Update:
    """The result of one attempt (or an expiry) for one recipient, with its event."""

    recipient_id: int
    message_id: int
    state: str  # RecipientState value
    attempts: int
    next_attempt_at: float | None
    seq: int
    at: float
    code: int | None = None
    enhanced: str | None = None
    text: str | None = None
    phase: str | None = None
    mx: str | None = None
    result: Result = Result.RETRY  # attempts.result: delivered, retry, bounce or expire
    site: str | None = None
    binding: str | None = None
    attempted: bool = True  # False: no connection was tried (e.g. validity over)
    possible_duplicate: bool = False
    event: tuple[str, str, str] | None = None  # (event_id, kind, body json)
    reported_key: str | None = None  # set with a soft bounce's event (None: keep the last)


@dataclass(frozen=True, slots=True)
class Release:
    """Give a leased recipient back without an attempt (e.g. shutdown, site waiting)."""

    recipient_id: int
    next_attempt_at: float
    possible_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class WebhookCursor:
    """Where one webhook endpoint is in the event outbox, and its counters."""

    url: str
    last_id: int = 0  # the last event delivered (or dropped) to it
    disabled: bool = False
    failing_since: float | None = None
    delivered: int = 0
    dropped: int = 0


@dataclass
class SpoolStats:
    queued: int = 0
    leased: int = 0
    delivered: int = 0
    bounced: int = 0
    expired: int = 0
    messages: int = 0
    events: int = 0
