"""An honest report: failures by type and reason count Failed lines only; complaints and
auto-replies on Sent lines stand in their own section; the indicators; `--recipients`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from campaign_client.cli import main
from campaign_client.events import Event, Failure, Kind, Smtp
from campaign_client.log import DeliveryLog

T0 = 1_800_000_000.0
HARD = Failure("Hard", "User unknown", 1)
SOFT = Failure("Soft", "Mailbox full", 5)
IGNORED = Failure("Ignored", "Error ignored", 25)
COMPLAINT = Failure("Hard", "Denylisted", 8)
R550 = Smtp(550, "5.1.1", "user unknown", "rcpt", "mx.x.test")
R452 = Smtp(452, "4.2.2", "mailbox full", "rcpt", "mx.x.test")
R250 = Smtp(250, "2.0.0", "ok", "dot", "mx.x.test")


def build(path: Path) -> None:
    """20 lines: 12 Sent (3 with an auto-reply, 2 with a complaint), 3 hard bounced, 2 expired
    after soft bounces, 1 refused at submission, 2 still retried after a soft bounce."""
    with DeliveryLog(path) as log:
        people = [(str(i), f"u{i:02d}@x.test") for i in range(1, 21)]
        log.register("D1", [(log_id, rcpt, None) for log_id, rcpt in people], T0)
        events: list[Event] = []

        def add(kind: Kind, n: int, at: float, **fields: object) -> None:
            log_id, rcpt = people[n - 1]
            events.append(Event(f"{kind}-{n}-{at}", kind, "D1", log_id, rcpt, at=at,
                                **fields))  # type: ignore[arg-type]

        for n in range(1, 21):
            if n != 18:
                add(Kind.RELAYED, n, T0, queue_id=f"Q{n}", attempt=0)
        for n in range(1, 13):
            add(Kind.DELIVERED, n, T0 + 60, smtp=R250, attempt=1)
        for n in (1, 2, 3):
            add(Kind.OUT_OF_BAND, n, T0 + 3600, failure=IGNORED)          # auto-replies
        for n in (4, 5):
            add(Kind.COMPLAINT, n, T0 + 7200, failure=COMPLAINT)
        for n in (13, 14, 15):
            add(Kind.HARD_BOUNCE, n, T0 + 60, smtp=R550, failure=HARD, attempt=1)
        for n in (16, 17, 19, 20):
            add(Kind.SOFT_BOUNCE, n, T0 + 60, smtp=R452, failure=SOFT, attempt=1)
        for n in (16, 17):
            add(Kind.EXPIRED, n, T0 + 84 * 3600, smtp=R452, failure=SOFT, attempt=9)
        add(Kind.SUBMIT_FAILED, 18, T0, smtp=Smtp(554, "5.7.1", "Relay access denied"),
            failure=Failure("Hard", "Refused", 20))
        log.apply_events(events, T0)
        log.record_inbound(T0 + 3600, "auto_reply", message_id="<r1@x.test>",
                           recipient="u01@x.test", delivery_id="D1", log_id="1",
                           failure_type="Ignored", reason="Error ignored", rule="auto-reply",
                           detail=None)


def test_failures_count_failed_lines_only(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path / "log.sqlite")
    assert main(["report", "D1", "--log", str(tmp_path / "log.sqlite"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["by_status"] == {"Pending": 0, "Taken into account by the service provider": 2,
                                 "Sent": 12, "Failed": 6}
    assert sum(data["by_failure_type"].values()) == data["by_status"]["Failed"] == 6
    assert sum(data["by_failure_reason"].values()) == 6
    assert data["by_failure_type"] == {"Hard": 4, "Soft": 2}
    assert data["by_failure_reason"] == {"User unknown": 3, "Mailbox full": 2, "Refused": 1}
    assert data["after_delivery"] == {"by_type": {"Ignored": 3, "Hard": 2},
                                      "by_reason": {"Error ignored": 3, "Denylisted": 2}}
    assert data["being_retried"] == {"by_type": {"Soft": 2}, "by_reason": {"Mailbox full": 2}}
    assert data["indicators"] == {"sent_to_provider": 19, "delivered": 12, "hard_bounces": 4,
                                  "soft_bounces": 2, "excluded": 0, "success_pct": 60.0}


def test_report_text_shows_each_section(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path / "log.sqlite")
    assert main(["report", "D1", "--log", str(tmp_path / "log.sqlite")]) == 0
    out = capsys.readouterr().out
    assert ("Indicators: Sent to the provider 19, Delivered 12, Hard bounces 4, Soft bounces 2,"
            " Excluded 0, Success 60.00%") in out
    assert "Failures by type (Failed lines): Hard 4, Soft 2" in out
    assert ("After delivery (Sent lines: complaints, auto-replies): by type Ignored 3, Hard 2;"
            " by reason Error ignored 3, Denylisted 2") in out


def test_recipients_with_status_reason_and_history(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    build(tmp_path / "log.sqlite")
    log = str(tmp_path / "log.sqlite")
    assert main(["report", "D1", "--log", log, "--recipients", "--status", "failed",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "Failed" and len(data["recipients"]) == 6
    expired = next(r for r in data["recipients"] if r["recipient"] == "u16@x.test")
    assert (expired["failure_type"], expired["reason"], expired["attempts"]) == (
        "Soft", "Mailbox full", 9)
    assert [(h["kind"], h["reply"], h["reason"], h["status"]) for h in expired["history"]] == [
        ("relayed", None, None, "Taken into account by the service provider"),
        ("soft_bounce", "452 4.2.2 mailbox full", "Mailbox full",
         "Taken into account by the service provider"),
        ("expired", "452 4.2.2 mailbox full", "Mailbox full", "Failed")]

    assert main(["report", "D1", "--log", log, "--recipients", "--status", "Sent"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1] == "12 recipients"
    assert "u01@x.test" in out and "Sent" in out
    assert "out_of_band  -> Ignored / Error ignored" in out
    assert "inbound auto_reply  -> Ignored / Error ignored  (rule auto-reply)" in out
    assert "complaint  -> Hard / Denylisted" in out

    assert main(["report", "D1", "--log", log, "--recipients"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "20 recipients"


@pytest.mark.parametrize(("argv", "message"), [
    (["--status", "Sent"], "--status goes with --recipients"),
    (["--recipients", "--status", "bounced"], "--status: expected one of Pending,"),
])
def test_recipient_listing_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  argv: list[str], message: str) -> None:
    build(tmp_path / "log.sqlite")
    assert main(["report", "D1", "--log", str(tmp_path / "log.sqlite"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
