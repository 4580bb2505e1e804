"""Core data types shared by every part of the MTA (stdlib only, all immutable).

A `Reply` is what an SMTP server said (or what we say on its behalf for a local
condition such as a DNS failure); an `Outcome` places it in a phase of the
session; a `Verdict` is the MTA's judgement of an outcome (Momentum bounce
class, Campaign failure type and reason, scope of the failure). Recipients move
through `RecipientState` by the `Result` of each attempt; each change produces
an event of one `EventKind`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal


class Phase(StrEnum):
    """Where in an SMTP session a reply was received (or a local failure happened)."""

    CONNECT = "connect"  # DNS, TCP connect and the 220 greeting
    EHLO = "ehlo"
    STARTTLS = "starttls"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the reply to the DATA command itself
    DOT = "dot"  # the reply after the final dot (end of data)


class Condition(StrEnum):
    """Local conditions: failures observed by us rather than replied by a server."""

    DNS_NXDOMAIN = "dns_nxdomain"
    DNS_FAILURE = "dns_failure"  # SERVFAIL, timeout, refused
    NULL_MX = "null_mx"  # RFC 7505
    NO_ADDRESS = "no_address"  # MX hosts resolve to nothing usable
    CONNECTION_REFUSED = "connection_refused"
    TIMEOUT = "timeout"
    TLS_FAILURE = "tls_failure"
    CONNECTION_LOST = "connection_lost"
    PROTOCOL_ERROR = "protocol_error"  # the next hop's reply broke the protocol (garbage)
    LOCAL_ERROR = "local_error"  # a bug or resource problem on our side
    VALIDITY_EXPIRED = "validity_expired"  # the validity ended before it could be tried again


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: basic code, RFC 3463 enhanced code (if any), text without codes.

    Multiline replies are joined with a single space, as most bounce rules expect.
    """

    code: int
    enhanced: str | None
    text: str

    @property
    def is_success(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def __str__(self) -> str:
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.text}".rstrip()
        return f"{self.code} {self.text}".rstrip()


@dataclass(frozen=True, slots=True)
class Outcome:
    """A reply in context: which phase, which host, and a local condition if any."""

    reply: Reply
    phase: Phase
    mx: str | None = None
    condition: Condition | None = None
    possible_duplicate: bool = False


@dataclass(frozen=True, slots=True)
class BounceClass:
    """A Momentum bounce class (SparkPost's public table): code and name."""

    code: int
    name: str


FailureType = Literal["Hard", "Soft", "Ignored"]
Scope = Literal["recipient", "message", "site"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The MTA's judgement of a failed outcome.

    `permanent` decides between retrying and failing at once; `failure_type` is
    what the sender's log shows (a permanent verdict may still be "Soft" in
    Campaign's terms, e.g. a reputation block that retrying will not fix).
    """

    bounce_class: BounceClass
    failure_type: FailureType
    failure_reason: str
    reason_code: int
    scope: Scope
    permanent: bool
    rule: str
    throttle: bool = False  # the reply asks us to slow down: the site's doing, not the recipient's


class RecipientState(StrEnum):
    QUEUED = "queued"  # waiting for its next attempt (or in flight)
    DELIVERED = "delivered"  # a remote 2xx after the final dot
    BOUNCED = "bounced"  # a permanent failure
    EXPIRED = "expired"  # retries ended with the validity period


TERMINAL_STATES = frozenset(
    {RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.EXPIRED}
)


class Result(StrEnum):
    """What an attempt came to: the one vocabulary of the state table, the retry decision,
    the throttle and every counter.

    A recipient's attempt ends DELIVERED, RETRY (another attempt later), BOUNCE or
    EXPIRE (the validity ended); these four move it through the state table
    (`mta.core.status`) and are the values stored in the spool. The throttle sees a
    transaction at its site and also tells apart THROTTLED (a retry because the site
    asked us to slow down) and CONNECT_FAILED (the session never got an answer).
    """

    DELIVERED = "delivered"
    RETRY = "retry"
    BOUNCE = "bounce"
    EXPIRE = "expire"
    THROTTLED = "throttled"
    CONNECT_FAILED = "connect_failed"


class EventKind(StrEnum):
    RELAYED = "relayed"
    DELIVERED = "delivered"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    EXPIRED = "expired"
    OUT_OF_BAND = "out_of_band"
    COMPLAINT = "complaint"
