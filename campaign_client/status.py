"""The delivery log's status machine as ONE literal table (docs/design.md, "Delivery log
statuses").

A log line has a `Status`; each event is reduced to a `Trigger`; `TABLE[status][trigger]` is an
`Effect` (new status or unchanged, what happens to the failure fields, whether the reply and
attempt are recorded). `apply(state, event)` returns the new `LineState`; `effect(status, event)`
is the table's cell. Pure: no I/O, no clock. What an event does to the ADDRESS (quarantine,
denylist) is `campaign_client.quarantine`'s table, not this one.

The documented rows, and the choices made where the documentation is silent:
- relayed (SMTP 250 at submission, or the MTA's `relayed` event) -> Taken into account by the
  service provider; the Success KPI does not count it.
- hard_bounce / expired -> Failed, failure type and reason from the event (expired carries the
  last reply; an expired event without a failure keeps the last soft bounce's reason).
- soft_bounce -> status unchanged, only failure type/reason/reply updated. From Pending (the MTA
  reports on a message whose 250 we have not recorded yet) it is Taken into account: the MTA has it.
- delivered -> Sent; the failure fields are cleared (the line is a success).
- Sent stays Sent against any late MTA event; Failed stays Failed against any MTA event.
- Asynchronous bounces (the client's bounce mailbox, or an MTA `out_of_band` event) as Campaign:
  Hard -> Failed, even after Sent; Soft / Ignored only record the reason (never on a Failed
  line, whose hard reason is kept).
- complaint (RFC 5965 feedback report) -> failure Hard "Denylisted" is recorded, the status is
  unchanged: the message was delivered and read; the complaint is about the address's future
  mail (the address is denylisted), so the Success KPI keeps it.
- submit_failed (the MTA refused the message at submission: 5xx, or 4xx after the client's
  retries) -> Failed; ignored if the MTA has reported the message (Taken, Sent), which happens
  when a connection dropped after the final dot and the MTA had committed it after all.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum, StrEnum
from typing import Final

from campaign_client.events import Event, Kind


class Status(StrEnum):
    PENDING = "Pending"
    TAKEN = "Taken into account by the service provider"
    SENT = "Sent"
    FAILED = "Failed"


FINAL_STATUSES: Final = frozenset({Status.SENT, Status.FAILED})


class Trigger(StrEnum):
    RELAYED = "relayed"
    DELIVERED = "delivered"
    SOFT_BOUNCE = "soft_bounce"
    HARD_BOUNCE = "hard_bounce"
    EXPIRED = "expired"
    ASYNC_HARD = "async_hard"          # out_of_band qualified Hard
    ASYNC_SOFT = "async_soft"          # out_of_band qualified Soft
    ASYNC_IGNORED = "async_ignored"    # out_of_band qualified Ignored (auto-replies...)
    COMPLAINT = "complaint"
    SUBMIT_FAILED = "submit_failed"


class FailureUpdate(Enum):
    KEEP = "keep"      # failure fields untouched
    SET = "set"        # taken from the event (fields the event leaves null are kept)
    CLEAR = "clear"    # emptied


@dataclass(frozen=True, slots=True)
class Effect:
    status: Status | None            # None: unchanged
    failure: FailureUpdate
    record: bool                     # update last reply, attempts, queue id, possible_duplicate


@dataclass(frozen=True, slots=True)
class LineState:
    """What the status machine knows of a log line (the log adds keys, times and seq)."""

    status: Status = Status.PENDING
    failure_type: str | None = None
    failure_reason: str | None = None
    reason_code: int | None = None
    last_reply: str | None = None
    attempts: int = 0
    queue_id: str | None = None
    possible_duplicate: bool = False


_K, _S, _C = FailureUpdate.KEEP, FailureUpdate.SET, FailureUpdate.CLEAR

TAKE: Final = Effect(Status.TAKEN, _K, record=True)
SEND: Final = Effect(Status.SENT, _C, record=True)
NOTE: Final = Effect(None, _S, record=True)                     # only the failure reason moves
NOTE_TAKEN: Final = Effect(Status.TAKEN, _S, record=True)
FAIL: Final = Effect(Status.FAILED, _S, record=True)
STALE: Final = Effect(None, _K, record=False)                   # too late to change anything

_P, _T, _SE, _F = Status.PENDING, Status.TAKEN, Status.SENT, Status.FAILED
_tr = Trigger

TABLE: Final[dict[Status, dict[Trigger, Effect]]] = {
    _P: {
        _tr.RELAYED: TAKE,
        _tr.DELIVERED: SEND,
        _tr.SOFT_BOUNCE: NOTE_TAKEN,
        _tr.HARD_BOUNCE: FAIL,
        _tr.EXPIRED: FAIL,
        _tr.ASYNC_HARD: FAIL,
        _tr.ASYNC_SOFT: NOTE,
        _tr.ASYNC_IGNORED: NOTE,
        _tr.COMPLAINT: NOTE,
        _tr.SUBMIT_FAILED: FAIL,
    },
    _T: {
        _tr.RELAYED: TAKE,
        _tr.DELIVERED: SEND,
        _tr.SOFT_BOUNCE: NOTE,
        _tr.HARD_BOUNCE: FAIL,
        _tr.EXPIRED: FAIL,
        _tr.ASYNC_HARD: FAIL,
        _tr.ASYNC_SOFT: NOTE,
        _tr.ASYNC_IGNORED: NOTE,
        _tr.COMPLAINT: NOTE,
        _tr.SUBMIT_FAILED: STALE,
    },
    _SE: {
        _tr.RELAYED: STALE,
        _tr.DELIVERED: STALE,
        _tr.SOFT_BOUNCE: STALE,
        _tr.HARD_BOUNCE: STALE,
        _tr.EXPIRED: STALE,
        _tr.ASYNC_HARD: FAIL,
        _tr.ASYNC_SOFT: NOTE,
        _tr.ASYNC_IGNORED: NOTE,
        _tr.COMPLAINT: NOTE,
        _tr.SUBMIT_FAILED: STALE,
    },
    _F: {
        _tr.RELAYED: STALE,
        _tr.DELIVERED: STALE,
        _tr.SOFT_BOUNCE: STALE,
        _tr.HARD_BOUNCE: STALE,
        _tr.EXPIRED: STALE,
        _tr.ASYNC_HARD: NOTE,
        _tr.ASYNC_SOFT: STALE,
        _tr.ASYNC_IGNORED: STALE,
        _tr.COMPLAINT: STALE,
        _tr.SUBMIT_FAILED: STALE,
    },
}

_BY_KIND: Final[dict[Kind, Trigger]] = {
    Kind.RELAYED: Trigger.RELAYED,
    Kind.DELIVERED: Trigger.DELIVERED,
    Kind.SOFT_BOUNCE: Trigger.SOFT_BOUNCE,
    Kind.HARD_BOUNCE: Trigger.HARD_BOUNCE,
    Kind.EXPIRED: Trigger.EXPIRED,
    Kind.COMPLAINT: Trigger.COMPLAINT,
    Kind.SUBMIT_FAILED: Trigger.SUBMIT_FAILED,
}


def trigger_of(event: Event) -> Trigger:
    """The table column for an event; out_of_band splits on its qualified failure type."""
    if event.kind is Kind.OUT_OF_BAND:
        failure_type = event.failure.type if event.failure else None
        if failure_type == "Hard":
            return Trigger.ASYNC_HARD
        if failure_type == "Soft":
            return Trigger.ASYNC_SOFT
        return Trigger.ASYNC_IGNORED
    return _BY_KIND[event.kind]


def effect(status: Status, event: Event) -> Effect:
    """The table's cell for this status and event."""
    return TABLE[status][trigger_of(event)]


def apply(state: LineState, event: Event) -> LineState:
    """The line after the event, by the table."""
    cell = effect(state.status, event)
    new = state if cell.status is None else replace(state, status=cell.status)
    if cell.failure is FailureUpdate.CLEAR:
        new = replace(new, failure_type=None, failure_reason=None, reason_code=None)
    elif cell.failure is FailureUpdate.SET and event.failure is not None:
        failure = event.failure
        new = replace(
            new,
            failure_type=failure.type if failure.type is not None else new.failure_type,
            failure_reason=failure.reason if failure.reason is not None else new.failure_reason,
            reason_code=(
                failure.reason_code if failure.reason_code is not None else new.reason_code
            ),
        )
    if cell.record:
        reply = event.smtp.line() if event.smtp is not None else None
        new = replace(
            new,
            last_reply=reply if reply is not None else new.last_reply,
            attempts=max(new.attempts, event.attempt or 0),
            queue_id=event.queue_id or new.queue_id,
            possible_duplicate=new.possible_duplicate or event.possible_duplicate,
        )
    return new
