"""KPIs from a known mix of lines (pure), and the table text."""

from __future__ import annotations

from campaign_client.indicators import Row, compute_kpis, render_table
from campaign_client.status import Status


def mix() -> list[Row]:
    return [
        Row(Status.SENT, count=6),
        Row(Status.SENT, "Hard", "Denylisted"),                  # a complaint after delivery
        Row(Status.FAILED, "Hard", "User unknown", 2),
        Row(Status.FAILED, "Soft", "Mailbox full"),               # expired after soft bounces
        Row(Status.TAKEN, "Soft", "Mailbox full", 3),             # still being retried
        Row(Status.TAKEN, count=4),
        Row(Status.PENDING),
    ]


def test_counts_success_and_failures_from_a_known_mix() -> None:
    kpis = compute_kpis("D1", mix())
    assert kpis.total == 18
    assert kpis.by_status == {
        "Pending": 1, "Taken into account by the service provider": 7, "Sent": 7, "Failed": 3,
    }
    assert kpis.success_pct == round(7 * 100 / 18, 2) == 38.89
    # failures count Failed lines only: they add up to the Failed count
    assert kpis.by_failure_type == {"Hard": 2, "Soft": 1}
    assert kpis.by_failure_reason == {"User unknown": 2, "Mailbox full": 1}
    assert sum(kpis.by_failure_type.values()) == kpis.by_status["Failed"] == 3
    assert kpis.after_delivery.by_reason == {"Denylisted": 1}
    assert kpis.being_retried.by_reason == {"Mailbox full": 3}
    assert kpis.not_final == 8 and not kpis.final


def test_success_starts_at_zero_and_declared_recipients_count_as_pending() -> None:
    kpis = compute_kpis("D2", [Row(Status.TAKEN, count=10)], declared_total=12)
    assert (kpis.total, kpis.success_pct, kpis.by_status["Pending"]) == (12, 0.0, 2)
    assert compute_kpis("D3", []).success_pct == 0.0
    assert not compute_kpis("D3", []).final


def test_final_when_every_line_is_sent_or_failed() -> None:
    kpis = compute_kpis("D4", [Row(Status.SENT, count=3), Row(Status.FAILED, "Hard", "x")])
    assert kpis.final and kpis.success_pct == 75.0


def test_table_and_json() -> None:
    kpis = compute_kpis("D1", mix())
    text = render_table(kpis)
    assert "Taken into account by the service provider" in text
    assert "38.89%" in text and "Failures by type (Failed lines): Hard 2, Soft 1" in text
    assert "After delivery (Sent lines: complaints, auto-replies): by type Hard 1" in text
    assert "Being retried, last soft bounce: Mailbox full 3" in text
    data = kpis.to_json()
    assert set(data) == {"delivery_id", "total", "by_status", "success_pct", "indicators",
                         "by_failure_type", "by_failure_reason", "after_delivery",
                         "being_retried"}


def test_indicators() -> None:
    rows = [
        Row(Status.SENT, count=5, accepted=True),
        Row(Status.SENT, "Hard", "Denylisted", accepted=True),       # complaint after delivery
        Row(Status.FAILED, "Hard", "User unknown", 2, accepted=True),
        Row(Status.FAILED, "Soft", "Unreachable", 3, accepted=True),  # validity ended
        Row(Status.FAILED, "Ignored", "Not defined", accepted=True),
        Row(Status.FAILED, "Hard", "Refused", 4),                     # refused at submission
        Row(Status.TAKEN, count=2, accepted=True),
    ]
    kpis = compute_kpis("D1", rows, excluded=7)
    assert kpis.indicators.to_json() == {
        "sent_to_provider": 5 + 1 + 2 + 3 + 1 + 2, "delivered": 6, "hard_bounces": 6,
        "soft_bounces": 3, "excluded": 7, "success_pct": round(6 * 100 / 18, 2)}
    assert kpis.total == 18                       # excluded recipients are not lines
    assert "(7 more excluded before sending)" in render_table(kpis)
