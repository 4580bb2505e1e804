"""The SQLite delivery log directly, with explicit `now`: holds, gap release, late events."""

from __future__ import annotations

from pathlib import Path

from campaign_client.events import Event, Failure, Kind, Smtp
from campaign_client.log import DeliveryLog

KEY = ("D1", "1", "a@x.test")


def event(event_id: str, kind: Kind, seq: int | None, **fields: object) -> Event:
    return Event(event_id, kind, *KEY, seq=seq, **fields)  # type: ignore[arg-type]


def test_gap_is_released_only_after_max_age_then_late_event_is_harmless(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "log.sqlite")
    log.apply_events([event("e1", Kind.RELAYED, 1)], now=100.0)
    report = log.apply_events([event("e3", Kind.DELIVERED, 3,
                                     smtp=Smtp(250, "2.0.0", "ok"))], now=100.0)
    assert report.held == 1 and log.held_count() == 1
    assert log.release_stale(now=150.0, max_age=60.0).released == 0
    released = log.release_stale(now=161.0, max_age=60.0)
    assert released.released == 1 and log.held_count() == 0
    line = log.line(*KEY)
    assert line is not None and (line.status, line.gaps, line.last_seq) == ("Sent", 1, 3)
    # seq 2 finally arrives: applied through the table, which keeps Sent.
    late = log.apply_events([event("e2", Kind.SOFT_BOUNCE, 2,
                                   failure=Failure("Soft", "Mailbox full", 5))], now=170.0)
    assert late.applied == 1
    line = log.line(*KEY)
    assert line is not None and (line.status, line.failure_reason) == ("Sent", None)


def test_holds_survive_a_reopen_and_drain_in_order(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    with DeliveryLog(path) as log:
        log.apply_events([event("e4", Kind.EXPIRED, 4, failure=Failure("Soft", "Unreachable", 3)),
                          event("e3", Kind.SOFT_BOUNCE, 3,
                                failure=Failure("Soft", "Mailbox full", 5))], now=1.0)
        assert log.held_count() == 2
    with DeliveryLog(path) as log:
        report = log.apply_events([event("e2", Kind.SOFT_BOUNCE, 2),
                                   event("e1", Kind.RELAYED, 1)], now=2.0)
        assert (report.applied, report.released, report.held) == (4, 3, 1)  # e2 held first
        line = log.line(*KEY)
        assert line is not None
        assert (line.status, line.failure_reason, line.last_seq) == ("Failed", "Unreachable", 4)


def test_same_event_twice_in_one_batch_and_local_events(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "log.sqlite")
    report = log.apply_events([event("e1", Kind.RELAYED, 1), event("e1", Kind.RELAYED, 1),
                               event("local", Kind.DELIVERED, None)], now=1.0)
    assert (report.applied, report.duplicates) == (2, 1)
    line = log.line(*KEY)
    assert line is not None and line.status == "Sent" and line.last_seq == 1


def test_events_without_a_line_key_are_acknowledged_but_not_applied(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "log.sqlite")
    report = log.apply_events([Event("x", Kind.RELAYED, None, None, "a@x.test", seq=1)], 1.0)
    assert report.unmatched == 1 and log.deliveries() == [] and log.is_applied("x")


def test_recipient_case_from_the_mta_matches_the_registered_line(tmp_path: Path) -> None:
    log = DeliveryLog(tmp_path / "log.sqlite")
    log.register("D1", [("1", "Ann@A.test", None)], now=1.0)
    log.apply_events([Event("e1", Kind.DELIVERED, "D1", "1", "Ann@a.test", seq=1)], now=2.0)
    assert [line.recipient for line in log.lines("D1")] == ["Ann@A.test"]
    assert log.kpis("D1").success_pct == 100.0
