"""Address quarantine as Campaign documents it: the pure table (campaign_client.quarantine) on
explicit event times, the delivery log applying it to the MTA's events, and the config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from campaign_client.config import ConfigError, load_config, log_path, parse_config
from campaign_client.events import Event, Failure, Kind
from campaign_client.log import DeliveryLog
from campaign_client.quarantine import (
    DAY,
    TABLE,
    AddressState,
    AddressStatus,
    Notice,
    Policy,
    Signal,
    current,
    decide,
    notice_of,
)

HOUR = 3600.0
T0 = 1_800_000_000.0
POLICY = Policy()
V, E, Q, D = (AddressStatus.VALID, AddressStatus.ERRONEOUS, AddressStatus.QUARANTINE,
              AddressStatus.DENYLISTED)


def soft(at: float, delivery: str = "D1") -> Notice:
    return Notice(Signal.SOFT, at, "Soft", "Mailbox full", 5, delivery, "1")


def hard(at: float, delivery: str = "D1") -> Notice:
    return Notice(Signal.HARD, at, "Hard", "User unknown", 1, delivery, "1")


def run(notices: list[Notice], policy: Policy = POLICY) -> list[AddressState]:
    state, states = AddressState(), []
    for notice in notices:
        state = decide(state, notice, notice.at, policy)
        states.append(state)
    return states


def test_a_hard_error_quarantines_at_once_with_its_reason_and_delivery() -> None:
    (state,) = run([hard(T0, "D7")])
    assert (state.status, state.reason, state.delivery_id, state.errors) == (
        Q, "User unknown", "D7", 1)
    assert state.excluded


def test_soft_errors_count_only_24h_apart_and_the_fifth_quarantines() -> None:
    times = [T0, T0 + 23 * HOUR, T0 + 24 * HOUR, T0 + 47 * HOUR, T0 + 48 * HOUR,
             T0 + 72 * HOUR, T0 + 95.9 * HOUR, T0 + 96 * HOUR]
    states = run([soft(t, f"D{i}") for i, t in enumerate(times)])
    assert [s.errors for s in states] == [1, 1, 2, 2, 3, 4, 4, 5]
    assert [s.status for s in states] == [E, E, E, E, E, E, E, Q]
    assert states[-1].delivery_id == "D7"          # the delivery of the 5th counted error
    assert states[0].delivery_id == "D0" and states[3].delivery_id == "D0"  # Erroneous since


def test_an_ignored_error_changes_nothing() -> None:
    start = run([soft(T0)])[-1]
    assert decide(start, Notice(Signal.IGNORED, T0 + 2 * DAY), T0 + 2 * DAY, POLICY) == start
    assert decide(AddressState(), Notice(Signal.IGNORED, T0), T0, POLICY) == AddressState()


def test_a_complaint_denylists_and_nothing_undoes_it_but_a_user() -> None:
    states = run([soft(T0), Notice(Signal.COMPLAINT, T0 + HOUR, "Hard", "Denylisted", 8, "D2"),
                  hard(T0 + 2 * HOUR)])
    assert [s.status for s in states] == [E, D, D]
    assert states[-1].reason == "Denylisted" and states[-1].delivery_id == "D2"
    assert current(states[-1], T0 + 400 * DAY, POLICY).status is D


def test_the_counter_resets_when_the_last_counted_error_is_over_10_days_old() -> None:
    state = run([soft(T0), soft(T0 + DAY)])[-1]
    assert (state.status, state.errors) == (E, 2)
    assert current(state, T0 + 11 * DAY, POLICY) == state            # exactly 10 days: kept
    later = current(state, T0 + 11 * DAY + 1, POLICY)
    assert (later.status, later.errors, later.last_error_at) == (V, 0, None)
    # the next soft error after the reset is the first again, however close to the old ones
    after = decide(state, soft(T0 + 11 * DAY + 2), T0 + 11 * DAY + 2, POLICY)
    assert (after.status, after.errors) == (E, 1)


def test_quarantine_is_released_by_time_and_refreshed_by_new_errors() -> None:
    state = run([hard(T0, "D1"), soft(T0 + 5 * DAY, "D2")])[-1]
    assert (state.status, state.errors, state.delivery_id) == (Q, 2, "D1")   # cause kept
    assert current(state, T0 + 15 * DAY, POLICY).status is Q           # 10 d after the soft
    assert current(state, T0 + 15 * DAY + 1, POLICY).status is V


def test_a_success_after_a_retry_makes_an_erroneous_address_valid_again() -> None:
    success = Notice(Signal.SUCCESS, T0 + 2 * DAY)
    states = run([soft(T0), soft(T0 + DAY), success, soft(T0 + 2 * DAY + HOUR)])
    assert [(s.status, s.errors) for s in states] == [(E, 1), (E, 2), (V, 0), (E, 1)]
    late = decide(states[1], Notice(Signal.SUCCESS, T0 + HOUR), T0 + HOUR, POLICY)
    assert late == states[1]                      # a success before the last counted error
    quarantined = run([hard(T0)])[-1]
    assert decide(quarantined, success, success.at, POLICY) == quarantined


def test_late_soft_errors_are_not_counted() -> None:
    state = run([soft(T0 + 2 * DAY), soft(T0)])[-1]
    assert (state.errors, state.last_error_at) == (1, T0 + 2 * DAY)


def test_thresholds_come_from_the_policy() -> None:
    policy = Policy(soft_error_limit=2, soft_error_interval=HOUR, reset_after=DAY)
    states = run([soft(T0), soft(T0 + HOUR)], policy)
    assert [s.status for s in states] == [E, Q]
    assert current(states[-1], T0 + HOUR + DAY + 1, policy).status is V


def test_every_cell_of_the_table_is_filled() -> None:
    assert set(TABLE) == set(AddressStatus)
    assert all(set(row) == set(Signal) for row in TABLE.values())


def event(kind: Kind, at: float, failure: Failure | None, rcpt: str = "a@x.test",
          event_id: str | None = None, delivery: str = "D1") -> Event:
    return Event(event_id or f"{kind}-{at}-{rcpt}", kind, delivery, "1", rcpt, seq=None, at=at,
                 failure=failure)


HARD_F = Failure("Hard", "User unknown", 1)
SOFT_F = Failure("Soft", "Mailbox full", 5)


def test_events_become_notices_by_their_failure_type() -> None:
    assert notice_of(event(Kind.HARD_BOUNCE, T0, HARD_F), 0).signal is Signal.HARD  # type: ignore[union-attr]
    assert notice_of(event(Kind.EXPIRED, T0, SOFT_F), 0).signal is Signal.SOFT  # type: ignore[union-attr]
    complaint = notice_of(event(Kind.COMPLAINT, T0, Failure("Hard", "Denylisted", 8)), 0)
    assert complaint is not None and complaint.signal is Signal.COMPLAINT
    success = notice_of(event(Kind.DELIVERED, T0, None), 0)
    assert success is not None and success.signal is Signal.SUCCESS
    assert notice_of(event(Kind.RELAYED, T0, None), 0) is None
    assert notice_of(event(Kind.SUBMIT_FAILED, T0, HARD_F), 0) is None
    untimed = notice_of(Event("x", Kind.SOFT_BOUNCE, "D1", "1", "a@x.test", failure=SOFT_F), 42)
    assert untimed is not None and untimed.at == 42


def test_the_log_quarantines_on_the_mtas_synchronous_hard_bounce(tmp_path: Path) -> None:
    with DeliveryLog(tmp_path / "log.sqlite") as log:
        log.apply_events([event(Kind.HARD_BOUNCE, T0, HARD_F, "bob@x.test")], T0)
        entry = log.quarantined("bob@x.test", T0)
        assert entry is not None
        assert (entry.status, entry.reason, entry.delivery_id, entry.hits) == (
            "Quarantine", "User unknown", "D1", 1)
        history = log.address_history("bob@x.test")
        assert [(h["signal"], h["counted"], h["status"]) for h in history] == [
            ("Hard", True, "Quarantine")]


def test_the_log_counts_soft_bounces_on_the_events_clock(tmp_path: Path) -> None:
    """Retries 4 h apart over 3.5 days, then more deliveries: the 24 h gap on the events' `at`
    (not on when they are applied, all at once here) decides what is counted."""
    with DeliveryLog(tmp_path / "log.sqlite") as log:
        times = [T0 + i * 4 * HOUR for i in range(22)]                  # 0 h .. 84 h
        log.apply_events([event(Kind.SOFT_BOUNCE, t, SOFT_F) for t in times], T0)
        state = log.address_state("a@x.test", T0 + 84 * HOUR)
        assert (state.status, state.errors) == (E, 4)                   # 0, 24, 48, 72 h
        assert log.quarantined("a@x.test", T0 + 84 * HOUR) is None
        log.apply_events([event(Kind.EXPIRED, T0 + 96 * HOUR, SOFT_F, delivery="D2")], T0)
        entry = log.quarantined("a@x.test", T0 + 96 * HOUR)
        assert entry is not None and (entry.status, entry.hits, entry.delivery_id) == (
            "Quarantine", 5, "D2")
        counted = [h for h in log.address_history("a@x.test") if h["counted"]]
        assert [h["at"] for h in counted] == [*times[0:19:6], T0 + 96 * HOUR]
        # the same event twice (webhooks are at least once) is counted once
        log.apply_events([event(Kind.EXPIRED, T0 + 96 * HOUR, SOFT_F, delivery="D2")], T0)
        assert log.address_state("a@x.test", T0 + 96 * HOUR).errors == 5
        # ten days after the last counted error the address is Valid again
        assert log.address_state("a@x.test", T0 + 106 * DAY).status is V
        assert log.quarantine_list(T0 + 106 * DAY) == []


def test_the_log_denylists_on_a_complaint_and_a_user_can_release(tmp_path: Path) -> None:
    with DeliveryLog(tmp_path / "log.sqlite") as log:
        log.apply_events([event(Kind.COMPLAINT, T0, Failure("Hard", "Denylisted", 8))], T0)
        log.apply_events([event(Kind.SOFT_BOUNCE, T0 + DAY, SOFT_F)], T0)
        entry = log.quarantined("A@x.test", T0 + 20 * DAY)          # any case, forever
        assert entry is not None and entry.status == "Denylisted"
        released = log.release("a@x.test", T0)
        assert released is not None and released.status == "Denylisted"
        assert log.quarantined("a@x.test", T0) is None
        assert log.release("a@x.test", T0) is None


def test_the_log_clock_follows_the_events(tmp_path: Path) -> None:
    with DeliveryLog(tmp_path / "log.sqlite") as log:
        assert log.clock(100.0) == 100.0
        log.apply_events([event(Kind.SOFT_BOUNCE, T0, SOFT_F)], 5.0)
        assert log.clock(100.0) == T0 and log.clock(T0 + 1) == T0 + 1


def test_a_version_1_log_is_migrated(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.sqlite"
    with DeliveryLog(path) as log:
        log.quarantine("old@x.test", "Quarantine", T0, failure_type="Hard",
                       reason="User unknown")
    db = sqlite3.connect(path)
    db.execute("ALTER TABLE quarantine DROP COLUMN last_error_at")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    with DeliveryLog(path) as log:
        entry = log.quarantined("old@x.test", T0 + DAY)
        assert entry is not None and entry.last_at == T0
        assert log.quarantined("old@x.test", T0 + 11 * DAY) is None


def test_config_defaults_file_and_errors(tmp_path: Path) -> None:
    assert load_config(None, env={}).quarantine == Policy()
    path = tmp_path / "client.toml"
    path.write_text('log = "x/log.sqlite"\n[quarantine]\nsoft_error_limit = 3\n'
                    'soft_error_interval = "12h"\nreset_after = "2w"\n')
    config = load_config(str(path), env={})
    assert config.quarantine == Policy(3, 12 * HOUR, 14 * DAY)
    assert log_path(None, config, env={}) == "x/log.sqlite"
    assert log_path(None, config, env={"CAMPAIGN_CLIENT_LOG": "e.sqlite"}) == "e.sqlite"
    assert log_path("f.sqlite", config, env={"CAMPAIGN_CLIENT_LOG": "e.sqlite"}) == "f.sqlite"
    assert load_config(None, env={"CAMPAIGN_CLIENT_CONFIG": str(path)}).log == "x/log.sqlite"
    cases = [
        ("[quarantine]\nsoft_error_limit = 0\n", "c.toml: quarantine.soft_error_limit"),
        ('[quarantine]\nreset_after = "ten days"\n', "c.toml: quarantine.reset_after"),
        ("[quarantine]\nsoft_errors = 5\n", "c.toml: quarantine.soft_errors: unknown key"),
        ("logs = 'x'\n", "c.toml: logs: unknown key"),
        ("[quarantine\n", "c.toml: not valid TOML"),
    ]
    for text, message in cases:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config(text, "c.toml")
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load_config(str(tmp_path / "missing.toml"), env={})


def test_the_shipped_config_file_holds_the_defaults() -> None:
    shipped = Path(__file__).resolve().parents[2] / "config" / "campaign-client.toml"
    config = load_config(str(shipped), env={})
    assert config.quarantine == Policy() and config.log == "var/campaign-log.sqlite"


DSN = (
    b"From: Mail Delivery System <MAILER-DAEMON@mx.isp.test>\r\n"
    b"To: bounces@sender.test\r\n"
    b"Subject: Undelivered Mail Returned to Sender\r\n"
    b"Message-ID: <dsn-7@mx.isp.test>\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/report; report-type=delivery-status; boundary="BND"\r\n'
    b"\r\n"
    b"--BND\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Your message could not be delivered.\r\n"
    b"--BND\r\n"
    b"Content-Type: message/delivery-status\r\n"
    b"\r\n"
    b"Reporting-MTA: dns; mx.isp.test\r\n"
    b"\r\n"
    b"Final-Recipient: rfc822; ann@isp.test\r\n"
    b"Action: failed\r\n"
    b"Status: 5.1.1\r\n"
    b"Diagnostic-Code: smtp; 550 5.1.1 <ann@isp.test>: Recipient address rejected: "
    b"User unknown\r\n"
    b"\r\n"
    b"--BND\r\n"
    b"Content-Type: text/rfc822-headers\r\n"
    b"\r\n"
    b"From: news@sender.test\r\n"
    b"To: ann@isp.test\r\n"
    b"Message-ID: <m-ann@sender.test>\r\n"
    b"Subject: Hi\r\n"
    b"\r\n"
    b"--BND--\r\n"
)


async def test_the_bounce_mailbox_counts_on_the_events_clock(tmp_path: Path) -> None:
    """The MTA's clock runs 20 days ahead of the wall clock (a fast --time-scale): a DSN that
    arrives over SMTP quarantines the address on that clock, so the next send, which reads
    the log's clock, still excludes it."""
    import time

    import aiosmtplib

    from campaign_client.receiver import Receiver

    ahead = time.time() + 20 * DAY
    with DeliveryLog(tmp_path / "log.sqlite") as log:
        log.register("D1", [("1", "ann@isp.test", "<m-ann@sender.test>")], ahead)
        log.apply_events([event(Kind.DELIVERED, ahead, None, "ann@isp.test")], ahead)
        receiver = Receiver(log, None, port=None, bounce_host="127.0.0.1", bounce_port=0)
        await receiver.start()
        try:
            assert receiver.events_clock() == ahead
            assert receiver.bounce_port is not None
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=receiver.bounce_port,
                                   start_tls=False)
            await smtp.connect()
            await smtp.sendmail("", ["bounces@sender.test"], DSN)
            await smtp.quit()
        finally:
            await receiver.stop()
        entry = log.quarantined("ann@isp.test")          # now = the log's clock
        assert entry is not None and entry.status == "Quarantine"
        assert entry.last_at is not None and entry.last_at >= ahead
