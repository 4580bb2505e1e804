"""The delivery-log status table (campaign_client.status), row by row, plus its invariants."""

from __future__ import annotations

import pytest

from campaign_client.events import Event, Failure, Kind, Smtp
from campaign_client.status import (
    TABLE,
    FailureUpdate,
    LineState,
    Status,
    Trigger,
    apply,
    effect,
    trigger_of,
)

P, T, S, F = Status.PENDING, Status.TAKEN, Status.SENT, Status.FAILED
KEPT, SET, CLEARED = "Mailbox full", "User unknown", None

# (status before, event kind, failure type carried by the event, status after,
#  failure reason after). What an event does to the address (quarantine, denylist) is
#  campaign_client.quarantine's table: tests/client/test_client_quarantine.py.
ROWS = [
    (P, Kind.RELAYED, None, T, KEPT),
    (P, Kind.DELIVERED, None, S, CLEARED),
    (P, Kind.SOFT_BOUNCE, "Soft", T, SET),
    (P, Kind.HARD_BOUNCE, "Hard", F, SET),
    (P, Kind.EXPIRED, "Soft", F, SET),
    (P, Kind.OUT_OF_BAND, "Hard", F, SET),
    (P, Kind.OUT_OF_BAND, "Soft", P, SET),
    (P, Kind.OUT_OF_BAND, "Ignored", P, SET),
    (P, Kind.COMPLAINT, "Hard", P, SET),
    (P, Kind.SUBMIT_FAILED, "Hard", F, SET),
    (T, Kind.RELAYED, None, T, KEPT),
    (T, Kind.DELIVERED, None, S, CLEARED),
    (T, Kind.SOFT_BOUNCE, "Soft", T, SET),
    (T, Kind.HARD_BOUNCE, "Hard", F, SET),
    (T, Kind.EXPIRED, "Soft", F, SET),
    (T, Kind.OUT_OF_BAND, "Hard", F, SET),
    (T, Kind.OUT_OF_BAND, "Soft", T, SET),
    (T, Kind.OUT_OF_BAND, "Ignored", T, SET),
    (T, Kind.COMPLAINT, "Hard", T, SET),
    (T, Kind.SUBMIT_FAILED, "Hard", T, KEPT),
    (S, Kind.RELAYED, None, S, KEPT),
    (S, Kind.DELIVERED, None, S, KEPT),
    (S, Kind.SOFT_BOUNCE, "Soft", S, KEPT),
    (S, Kind.HARD_BOUNCE, "Hard", S, KEPT),
    (S, Kind.EXPIRED, "Soft", S, KEPT),
    (S, Kind.OUT_OF_BAND, "Hard", F, SET),
    (S, Kind.OUT_OF_BAND, "Soft", S, SET),
    (S, Kind.OUT_OF_BAND, "Ignored", S, SET),
    (S, Kind.COMPLAINT, "Hard", S, SET),
    (S, Kind.SUBMIT_FAILED, "Hard", S, KEPT),
    (F, Kind.RELAYED, None, F, KEPT),
    (F, Kind.DELIVERED, None, F, KEPT),
    (F, Kind.SOFT_BOUNCE, "Soft", F, KEPT),
    (F, Kind.HARD_BOUNCE, "Hard", F, KEPT),
    (F, Kind.EXPIRED, "Soft", F, KEPT),
    (F, Kind.OUT_OF_BAND, "Hard", F, SET),
    (F, Kind.OUT_OF_BAND, "Soft", F, KEPT),
    (F, Kind.OUT_OF_BAND, "Ignored", F, KEPT),
    (F, Kind.COMPLAINT, "Hard", F, KEPT),
    (F, Kind.SUBMIT_FAILED, "Hard", F, KEPT),
]


def event(kind: Kind, failure_type: str | None = None, **fields: object) -> Event:
    values: dict[str, object] = {
        "event_id": f"e-{kind}", "kind": kind, "delivery_id": "D", "log_id": "1",
        "recipient": "a@x.test", "attempt": 2, "queue_id": "Q2",
        "smtp": Smtp(550, "5.1.1", "user unknown", "rcpt", "mx.x.test"),
        "failure": None if failure_type is None else Failure(failure_type, SET, 1),
    }
    values.update(fields)
    return Event(**values)  # type: ignore[arg-type]


def state(status: Status) -> LineState:
    return LineState(status=status, failure_type="Soft", failure_reason=KEPT, reason_code=5,
                     last_reply="452 4.2.2 full", attempts=1, queue_id="Q1")


@pytest.mark.parametrize(("before", "kind", "failure_type", "after", "reason"),
                         ROWS, ids=[f"{r[0].name}-{r[1]}-{r[2]}" for r in ROWS])
def test_every_row_of_the_table(before: Status, kind: Kind, failure_type: str | None,
                                after: Status, reason: str | None) -> None:
    ev = event(kind, failure_type)
    new = apply(state(before), ev)
    assert new.status is after
    assert new.failure_reason == reason
    if reason == SET:
        assert new.failure_type == failure_type and new.reason_code == 1


def test_rows_cover_every_cell_of_the_table() -> None:
    cells = {(r[0], trigger_of(event(r[1], r[2]))) for r in ROWS}
    assert cells == {(status, trigger) for status in Status for trigger in Trigger}
    assert set(TABLE) == set(Status)
    assert all(set(row) == set(Trigger) for row in TABLE.values())


def test_recorded_effects_update_reply_attempts_and_queue_id() -> None:
    new = apply(state(T), event(Kind.SOFT_BOUNCE, "Soft", possible_duplicate=True))
    assert new.last_reply == "550 5.1.1 user unknown"
    assert (new.attempts, new.queue_id, new.possible_duplicate) == (2, "Q2", True)


def test_stale_events_change_nothing() -> None:
    before = state(S)
    assert apply(before, event(Kind.HARD_BOUNCE, "Hard", attempt=9)) == before
    assert effect(S, event(Kind.SOFT_BOUNCE, "Soft")).failure is FailureUpdate.KEEP


def test_expired_without_failure_keeps_the_last_soft_reason() -> None:
    new = apply(state(T), event(Kind.EXPIRED, None))
    assert (new.status, new.failure_type, new.failure_reason) == (F, "Soft", KEPT)


def test_out_of_band_without_failure_is_ignored_kind() -> None:
    assert trigger_of(event(Kind.OUT_OF_BAND, None)) is Trigger.ASYNC_IGNORED
    assert trigger_of(event(Kind.OUT_OF_BAND, "Hard")) is Trigger.ASYNC_HARD


def test_the_seeds_story_soft_bounce_then_success() -> None:
    line = LineState()
    line = apply(line, event(Kind.RELAYED, smtp=Smtp(250, "2.0.0", "Q1 queued")))
    assert line.status is T and line.failure_reason is None
    line = apply(line, event(Kind.SOFT_BOUNCE, "Soft", failure=Failure("Soft", KEPT, 5)))
    assert line.status is T and line.failure_reason == KEPT
    line = apply(line, event(Kind.DELIVERED, smtp=Smtp(250, "2.0.0", "ok")))
    assert line.status is S and line.failure_reason is None
    assert line.last_reply == "250 2.0.0 ok"
    line = apply(line, event(Kind.SOFT_BOUNCE, "Soft"))
    assert line.status is S
