"""Address quarantine as Campaign documents it, as ONE literal table. Pure: no I/O, no clock.

An address has an `AddressState` (status, error counter, the last counted error's time, and the
cause: the failure and the delivery that put it where it is). Each error the client learns of is
reduced to a `Signal` (Hard, Soft, Ignored, Complaint); `TABLE[status][signal]` is an `Action`;
`decide(state, notice, now, policy)` returns the new state. `now` is the notice's time on the
events' clock (an event's `at`), never the wall clock of the process that applies it.

The rules (thresholds are `Policy`, from the client's config):
- Hard error: the address goes to Quarantine at once (synchronous hard bounces from the MTA as
  well as asynchronous ones from the bounce mailbox).
- Soft error: the error counter goes up by one only if the error comes at least
  `soft_error_interval` (24 h) after the last counted one; the counter's `soft_error_limit`-th
  (5th) counted error puts the address in Quarantine. A first counted error makes it Erroneous.
- Ignored error (auto-replies, "Not defined" Ignored...): nothing changes.
- Complaint (an ARF feedback report): Denylisted.
- A successful delivery after a retry: an Erroneous address's counter is reinitialized and it
  is Valid again (Campaign: "if a delivery is successful after a retry, the error counter,
  prior to quarantining, is reinitialized"); a quarantined address is not released by it.
- When the last counted error is more than `reset_after` (10 days) old, the counter resets and
  the address is Valid again (`current(state, now, policy)`; `decide` applies it first). This
  holds for Erroneous and Quarantine; a Denylisted address stays until a user removes it.

Choices where Campaign's documentation is silent:
- In Quarantine, a further Hard or counted Soft error refreshes the last counted error (the
  10 days start again) and adds to the counter, but the cause (the reason and the delivery that
  quarantined the address) stays the first one.
- A Soft error that comes before the last counted one (a late event) is never counted.
- Denylisted outranks everything: no bounce changes it, and it is never reset by time.
- A success older than the last counted error (a late event) resets nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Final

from campaign_client.events import Event, Kind

DAY: Final = 86_400.0


class AddressStatus(StrEnum):
    VALID = "Valid"
    ERRONEOUS = "Erroneous"
    QUARANTINE = "Quarantine"
    DENYLISTED = "Denylisted"


EXCLUDED_STATUSES: Final = frozenset({AddressStatus.QUARANTINE, AddressStatus.DENYLISTED})


class Signal(StrEnum):
    HARD = "Hard"
    SOFT = "Soft"
    IGNORED = "Ignored"
    COMPLAINT = "Complaint"
    SUCCESS = "Success"


class Action(StrEnum):
    QUARANTINE = "quarantine"     # to Quarantine now, this notice is the cause; counts one
    COUNT = "count"               # count if the interval has passed; the limit quarantines
    RECOUNT = "recount"           # in Quarantine: count (Hard always, Soft after the interval)
    DENYLIST = "denylist"         # to Denylisted, this notice is the cause
    RESET = "reset"               # a success: counter reinitialized, Valid again
    KEEP = "keep"                 # nothing changes


@dataclass(frozen=True, slots=True)
class Policy:
    """Campaign's defaults; every value comes from the client's config (`[quarantine]`)."""

    soft_error_limit: int = 5
    soft_error_interval: float = 1 * DAY
    reset_after: float = 10 * DAY


@dataclass(frozen=True, slots=True)
class Notice:
    """One error about an address, as the quarantine sees it."""

    signal: Signal
    at: float
    failure_type: str | None = None
    reason: str | None = None
    reason_code: int | None = None
    delivery_id: str | None = None
    log_id: str | None = None
    kind: str | None = None             # the event kind it came from (for the history)


@dataclass(frozen=True, slots=True)
class AddressState:
    """What the client knows of one address."""

    status: AddressStatus = AddressStatus.VALID
    errors: int = 0                      # counted errors since the last reset
    last_error_at: float | None = None   # the last counted error (events' clock)
    failure_type: str | None = None      # the cause: the notice that gave the status
    reason: str | None = None
    reason_code: int | None = None
    delivery_id: str | None = None
    log_id: str | None = None
    since: float | None = None           # when the status was entered

    @property
    def excluded(self) -> bool:
        """True when the next send must leave the address out."""
        return self.status in EXCLUDED_STATUSES


_V, _E, _Q, _D = (AddressStatus.VALID, AddressStatus.ERRONEOUS, AddressStatus.QUARANTINE,
                  AddressStatus.DENYLISTED)
_A = Action

TABLE: Final[dict[AddressStatus, dict[Signal, Action]]] = {
    _V: {Signal.HARD: _A.QUARANTINE, Signal.SOFT: _A.COUNT, Signal.IGNORED: _A.KEEP,
         Signal.COMPLAINT: _A.DENYLIST, Signal.SUCCESS: _A.KEEP},
    _E: {Signal.HARD: _A.QUARANTINE, Signal.SOFT: _A.COUNT, Signal.IGNORED: _A.KEEP,
         Signal.COMPLAINT: _A.DENYLIST, Signal.SUCCESS: _A.RESET},
    _Q: {Signal.HARD: _A.RECOUNT, Signal.SOFT: _A.RECOUNT, Signal.IGNORED: _A.KEEP,
         Signal.COMPLAINT: _A.DENYLIST, Signal.SUCCESS: _A.KEEP},
    _D: {Signal.HARD: _A.KEEP, Signal.SOFT: _A.KEEP, Signal.IGNORED: _A.KEEP,
         Signal.COMPLAINT: _A.KEEP, Signal.SUCCESS: _A.KEEP},
}

RESETTABLE: Final = frozenset({AddressStatus.ERRONEOUS, AddressStatus.QUARANTINE})


def current(state: AddressState, now: float, policy: Policy) -> AddressState:
    """The state as of `now`: Valid again (counter reset) once the last counted error is more
    than `policy.reset_after` old."""
    if (state.status in RESETTABLE and state.last_error_at is not None
            and now - state.last_error_at > policy.reset_after):
        return AddressState(since=state.last_error_at + policy.reset_after)
    return state


def _caused(state: AddressState, status: AddressStatus, notice: Notice) -> AddressState:
    return replace(state, status=status, failure_type=notice.failure_type,
                   reason=notice.reason, reason_code=notice.reason_code,
                   delivery_id=notice.delivery_id, log_id=notice.log_id, since=notice.at)


def _counted(state: AddressState, notice: Notice) -> AddressState:
    last = state.last_error_at
    return replace(state, errors=state.errors + 1,
                   last_error_at=notice.at if last is None else max(last, notice.at))


def _interval_passed(state: AddressState, notice: Notice, policy: Policy) -> bool:
    last = state.last_error_at
    return last is None or notice.at - last >= policy.soft_error_interval


def decide(state: AddressState, notice: Notice, now: float, policy: Policy) -> AddressState:
    """The address's state after `notice`, by the table; `now` is the notice's time."""
    state = current(state, now, policy)
    action = TABLE[state.status][notice.signal]
    if action is Action.KEEP:
        return state
    if action is Action.DENYLIST:
        return _caused(state, AddressStatus.DENYLISTED, notice)
    if action is Action.RESET:
        last = state.last_error_at
        return state if last is not None and notice.at < last else AddressState(since=notice.at)
    if action is Action.QUARANTINE:
        return _caused(_counted(state, notice), AddressStatus.QUARANTINE, notice)
    if notice.signal is Signal.SOFT and not _interval_passed(state, notice, policy):
        return state
    counted = _counted(state, notice)
    if action is Action.RECOUNT:
        return counted
    if counted.errors >= policy.soft_error_limit:
        return _caused(counted, AddressStatus.QUARANTINE, notice)
    if state.status is AddressStatus.VALID:
        return _caused(counted, AddressStatus.ERRONEOUS, notice)
    return counted


# Which events are errors about the address. Submission refusals are about the sender's own
# connection to its MTA (relay denied, a full spool), never about the address: not counted.
_BY_TYPE: Final[dict[str | None, Signal]] = {
    "Hard": Signal.HARD, "Soft": Signal.SOFT, "Ignored": Signal.IGNORED, None: Signal.IGNORED,
}
_ERROR_KINDS: Final = frozenset({Kind.SOFT_BOUNCE, Kind.HARD_BOUNCE, Kind.EXPIRED,
                                 Kind.OUT_OF_BAND})


def notice_of(event: Event, now: float) -> Notice | None:
    """The quarantine's view of a feedback event (None: not an error about the address).

    The failure type the event carries decides (a hard_bounce the MTA qualified Soft counts as
    Soft); a complaint denylists; a delivery is a success. `now` stands in for an event
    without `at`.
    """
    at = event.at if event.at is not None else now
    failure = event.failure
    if event.kind is Kind.COMPLAINT:
        signal = Signal.COMPLAINT
    elif event.kind is Kind.DELIVERED:
        signal = Signal.SUCCESS
    elif event.kind in _ERROR_KINDS:
        signal = _BY_TYPE.get(failure.type if failure else None, Signal.IGNORED)
    else:
        return None
    return Notice(
        signal=signal, at=at,
        failure_type=failure.type if failure else None,
        reason=failure.reason if failure else None,
        reason_code=failure.reason_code if failure else None,
        delivery_id=event.delivery_id, log_id=event.log_id, kind=str(event.kind),
    )
