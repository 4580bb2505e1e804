"""What an outcome does to a recipient: the state table, events and retry timing together."""

import re

import pytest

from mta.core import events
from mta.core.retry import RetryPolicy
from mta.core.settle import Attempted, expire_unattempted, settle
from mta.core.status import InvalidTransition, transition
from mta.model import (
    BounceClass,
    Condition,
    EventKind,
    Outcome,
    Phase,
    RecipientState,
    Reply,
    Result,
    Verdict,
)

DAY = 86400.0


class ByCode:
    """5xx permanent, the rest transient: enough to exercise the mechanics."""

    def classify(self, outcome: Outcome) -> Verdict:
        if outcome.reply.is_permanent:
            return Verdict(
                BounceClass(10, "Invalid Recipient"),
                "Hard",
                "User unknown",
                1,
                "recipient",
                True,
                "5xx",
            )
        return Verdict(
            BounceClass(20, "Soft Bounce"), "Soft", "Unreachable", 3, "recipient", False, "4xx"
        )


BEFORE = Attempted(
    subject=events.Subject("Q1", "D1", "L1", "a@b.test"),
    attempts=0,
    seq=1,
    expires_at=1000.0 + DAY,
    possible_duplicate=False,
)
POLICY = RetryPolicy(first=600, factor=2, max_interval=3600, jitter=0.0)


def run(outcome: Outcome, before: Attempted = BEFORE):  # type: ignore[no-untyped-def]
    return settle(
        before, outcome, now=1000.0, rules=ByCode(), policy=POLICY, rand=0.5, event_id="E"
    )


def test_success_after_the_dot_is_delivered() -> None:
    s = run(Outcome(Reply(250, "2.0.0", "ok"), Phase.DOT, "mx.b.test"))
    assert (s.state, s.result, s.seq, s.attempts) == (RecipientState.DELIVERED, "delivered", 2, 1)
    assert s.event.as_dict()["kind"] == "delivered"
    assert s.event.as_dict()["smtp"] == {
        "code": 250,
        "enhanced": "2.0.0",
        "text": "ok",
        "phase": "dot",
        "mx": "mx.b.test",
    }
    assert s.event.as_dict()["failure"] is None


def test_a_2xx_before_the_dot_is_not_a_delivery() -> None:
    s = run(Outcome(Reply(250, None, "odd"), Phase.RCPT))
    assert s.state is RecipientState.QUEUED


def test_transient_failure_retries_with_next_attempt_in_the_event() -> None:
    s = run(Outcome(Reply(451, "4.3.0", "try later"), Phase.RCPT, "mx"))
    assert s.state is RecipientState.QUEUED
    assert s.next_attempt_at == 1600.0
    assert s.event.as_dict()["kind"] == "soft_bounce"
    assert s.event.as_dict()["next_attempt_at"] == 1600.0
    failure = {"type": "Soft", "reason": "Unreachable", "reason_code": 3}
    assert s.event.as_dict()["failure"] == failure


def test_permanent_failure_bounces() -> None:
    s = run(Outcome(Reply(550, "5.1.1", "no such user"), Phase.RCPT))
    assert (s.state, s.event.as_dict()["kind"]) == (RecipientState.BOUNCED, "hard_bounce")
    assert s.event.as_dict()["bounce_class"] == {"code": 10, "name": "Invalid Recipient"}


def test_transient_failure_near_the_end_of_validity_retries_at_the_end() -> None:
    before = Attempted(BEFORE.subject, 7, 8, 1000.0 + 60, False)
    s = run(Outcome(Reply(452, "4.2.2", "over quota"), Phase.RCPT), before)
    assert (s.state, s.event.as_dict()["kind"], s.next_attempt_at) == (
        RecipientState.QUEUED,
        "soft_bounce",
        1060.0,
    )


def test_transient_failure_at_the_end_of_validity_expires_with_the_last_reply() -> None:
    before = Attempted(BEFORE.subject, 7, 8, 1000.0, False)
    s = run(Outcome(Reply(452, "4.2.2", "over quota"), Phase.RCPT), before)
    assert (s.state, s.event.as_dict()["kind"], s.seq, s.attempts) == (
        RecipientState.EXPIRED,
        "expired",
        9,
        8,
    )
    assert s.event.as_dict()["smtp"]["text"] == "over quota"


def test_unknown_outcome_after_the_dot_marks_possible_duplicate() -> None:
    outcome = Outcome(
        Reply(421, "4.4.2", "lost"),
        Phase.DOT,
        "mx",
        Condition.CONNECTION_LOST,
        possible_duplicate=True,
    )
    s = run(outcome)
    assert s.possible_duplicate and s.event.as_dict()["possible_duplicate"] is True


def test_expiry_without_attempt_keeps_the_attempt_count() -> None:
    s = expire_unattempted(BEFORE, None, now=5.0, rules=ByCode(), event_id="E2")
    assert (s.state, s.attempts, s.attempted) == (RecipientState.EXPIRED, 0, False)
    assert s.event.as_dict()["smtp"]["enhanced"] == "4.4.7"


def test_an_untried_expiry_says_what_held_it_back_and_reads_as_unreachable() -> None:
    from mta.config.bounce_rules import load_bounce_rules

    held = "held back by a suspension of the site mx.example.test"
    s = expire_unattempted(
        BEFORE, None, now=5.0, rules=load_bounce_rules(), event_id="E3", held=held
    )
    assert s.event.as_dict()["smtp"]["text"].endswith(held)
    doc = s.event.as_dict()
    assert doc["bounce_class"] == {"code": 24, "name": "Timeout"}
    assert doc["failure"] == {"type": "Soft", "reason": "Unreachable", "reason_code": 3}


@pytest.mark.parametrize(
    "state", [RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.EXPIRED]
)
@pytest.mark.parametrize("result", list(Result))
def test_terminal_states_have_no_way_out(state: RecipientState, result: Result) -> None:
    with pytest.raises(InvalidTransition) as caught:
        transition(state, result)
    assert (caught.value.state, caught.value.result) == (state, result)


@pytest.mark.parametrize("result", [Result.THROTTLED, Result.CONNECT_FAILED])
def test_results_of_a_site_move_no_recipient(result: Result) -> None:
    with pytest.raises(InvalidTransition, match=f"no transition from queued on {result}"):
        transition(RecipientState.QUEUED, result)


def test_the_table_has_a_row_for_every_state() -> None:
    from mta.core.status import TRANSITIONS

    assert set(TRANSITIONS) == set(RecipientState)
    kinds = {kind for row in TRANSITIONS.values() for _, kind in row.values()}
    assert kinds <= set(EventKind)
    assert set(TRANSITIONS[RecipientState.QUEUED]) == {
        Result.DELIVERED, Result.RETRY, Result.BOUNCE, Result.EXPIRE
    }


def test_an_event_on_the_wire_keeps_its_fields_and_their_order() -> None:
    s = run(Outcome(Reply(451, "4.7.1", "greylisted"), Phase.RCPT, "mx.b.test"))
    assert s.event.dumps() == (
        '{"event_id":"E","seq":2,"kind":"soft_bounce","at":1000.0,"queue_id":"Q1",'
        '"delivery_id":"D1","log_id":"L1","recipient":"a@b.test","attempt":1,'
        '"smtp":{"code":451,"enhanced":"4.7.1","text":"greylisted","phase":"rcpt",'
        '"mx":"mx.b.test"},"bounce_class":{"code":20,"name":"Soft Bounce"},'
        '"failure":{"type":"Soft","reason":"Unreachable","reason_code":3},'
        '"next_attempt_at":1600.0,"possible_duplicate":false}'
    )
    relayed = events.build(
        event_id="R", seq=1, kind=EventKind.RELAYED, at=5.0,
        subject=events.Subject("Q1", None, None, "a@b.test"), attempt=0,
    )
    assert relayed.dumps() == (
        '{"event_id":"R","seq":1,"kind":"relayed","at":5.0,"queue_id":"Q1",'
        '"delivery_id":null,"log_id":null,"recipient":"a@b.test","attempt":0,"smtp":null,'
        '"bounce_class":null,"failure":null,"next_attempt_at":null,"possible_duplicate":false}'
    )


def test_a_throttling_reply_does_not_use_an_attempt() -> None:
    from mta.core.retry import RetrySchedule, ScheduleEntry

    waiting = RetryPolicy(first=600, factor=2, max_interval=3600, jitter=0.0, name="throttle",
                          waits_for_site=True, site_backoff=60.0)
    schedule = RetrySchedule((ScheduleEntry(waiting, rule=re.compile("^throttle-")),), POLICY)

    class Throttling(ByCode):
        def classify(self, outcome: Outcome) -> Verdict:
            return Verdict(BounceClass(70, "Transient Failure"), "Soft", "Unreachable", 3, "site",
                           False, "throttle-rate")

    s = settle(BEFORE, Outcome(Reply(421, "4.7.28", "slow down"), Phase.RCPT), now=1000.0,
               rules=Throttling(), policy=schedule, rand=0.5, event_id="E")
    assert (s.state, s.attempts, s.next_attempt_at) == (RecipientState.QUEUED, 0, 1060.0)
    assert (s.event.kind, s.event.next_attempt_at) == ("soft_bounce", 1060.0)
