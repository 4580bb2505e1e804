"""Asynchronous bounces reaching the bounce mailbox by SMTP: DSNs, complaints, auto-replies."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from campaign_client.events import Event, Kind
from campaign_client.inbound import RulesError, load_rules, parse_inbound, parse_rules, qualify
from campaign_client.log import DeliveryLog
from campaign_client.receiver import Receiver
from tests.client.client_helpers import SECRET

BOUNCES = "bounces@sender.test"
TAKEN = "Taken into account by the service provider"


def dsn(recipient: str, status: str, diagnostic: str, *, message_id: str,
        action: str = "failed", dsn_id: str = "<dsn-1@mx.isp.test>",
        campaign_headers: str = "") -> bytes:
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.isp.test>\r\n"
        f"To: {BOUNCES}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Message-ID: {dsn_id}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="BND"\r\n'
        "\r\n"
        "--BND\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
        "Your message could not be delivered.\r\n"
        "--BND\r\n"
        "Content-Type: message/delivery-status\r\n"
        "\r\n"
        "Reporting-MTA: dns; mx.isp.test\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\n"
        f"Action: {action}\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; {diagnostic}\r\n"
        "\r\n"
        "--BND\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "\r\n"
        "From: news@sender.test\r\n"
        f"To: {recipient}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"{campaign_headers}"
        "Subject: Hi\r\n"
        "\r\n"
        "--BND--\r\n"
    ).encode()


def arf(recipient: str, message_id: str, delivery_id: str, log_id: str) -> bytes:
    return (
        "From: fbl@isp.test\r\n"
        f"To: {BOUNCES}\r\n"
        "Subject: Abuse report\r\n"
        "Message-ID: <arf-1@isp.test>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="B2"\r\n'
        "\r\n"
        "--B2\r\n"
        "Content-Type: text/plain\r\n"
        "\r\n"
        "This is an email abuse report.\r\n"
        "--B2\r\n"
        "Content-Type: message/feedback-report\r\n"
        "\r\n"
        "Feedback-Type: abuse\r\n"
        "User-Agent: isp-fbl/1.0\r\n"
        "Version: 1\r\n"
        f"Original-Rcpt-To: {recipient}\r\n"
        "\r\n"
        "--B2\r\n"
        "Content-Type: message/rfc822\r\n"
        "\r\n"
        "From: news@sender.test\r\n"
        f"To: {recipient}\r\n"
        f"Message-ID: {message_id}\r\n"
        f"X-Campaign-Delivery-Id: {delivery_id}\r\n"
        f"X-Campaign-Log-Id: {log_id}\r\n"
        "Subject: Hi\r\n"
        "\r\n"
        "Hello.\r\n"
        "--B2--\r\n"
    ).encode()


def auto_reply(sender: str, in_reply_to: str) -> bytes:
    return (
        f"From: {sender}\r\n"
        f"To: {BOUNCES}\r\n"
        "Subject: Out of office: Hi\r\n"
        "Message-ID: <away-1@isp.test>\r\n"
        f"In-Reply-To: {in_reply_to}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "\r\n"
        "I am away until Monday.\r\n"
    ).encode()


@pytest.fixture
async def mailbox(tmp_path: Path) -> AsyncIterator[Receiver]:
    log = DeliveryLog(tmp_path / "log.sqlite")
    now = time.time()
    log.register("D1", [("1", "ann@isp.test", "<m1@sender.test>"),
                        ("2", "bob@isp.test", "<m2@sender.test>"),
                        ("3", "cat@isp.test", "<m3@sender.test>"),
                        ("4", "dan@isp.test", "<m4@sender.test>")], now)
    for log_id, rcpt in (("1", "ann@isp.test"), ("2", "bob@isp.test"), ("3", "cat@isp.test"),
                         ("4", "dan@isp.test")):
        log.apply_events([Event(f"r{log_id}", Kind.RELAYED, "D1", log_id, rcpt, seq=1)], now)
    for log_id, rcpt in (("1", "ann@isp.test"), ("3", "cat@isp.test"), ("4", "dan@isp.test")):
        log.apply_events([Event(f"d{log_id}", Kind.DELIVERED, "D1", log_id, rcpt, seq=2)], now)
    rx = Receiver(log, SECRET, "127.0.0.1", None, bounce_host="127.0.0.1", bounce_port=0,
                  bounce_addresses=[BOUNCES])
    await rx.start()
    yield rx
    await rx.stop()
    log.close()


async def deliver(rx: Receiver, raw: bytes, rcpt: str = BOUNCES) -> None:
    """Deliver like a remote MTA returning a bounce: null envelope sender."""
    assert rx.bounce_port is not None
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=rx.bounce_port, start_tls=False)
    await smtp.connect()
    try:
        await smtp.sendmail("", [rcpt], raw)
    finally:
        await smtp.quit()


async def test_hard_dsn_after_sent_fails_the_line_and_quarantines(mailbox: Receiver) -> None:
    raw = dsn("ann@isp.test", "5.1.1", "550 5.1.1 <ann@isp.test>: user unknown",
              message_id="<m1@sender.test>")
    await deliver(mailbox, raw)
    line = mailbox.log.line("D1", "1", "ann@isp.test")
    assert line is not None
    assert (line.status, line.failure_type, line.failure_reason) == ("Failed", "Hard",
                                                                     "User unknown")
    assert line.last_reply == "550 5.1.1 <ann@isp.test>: user unknown"
    entry = mailbox.log.quarantined("ann@isp.test")
    assert entry is not None and (entry.status, entry.reason) == ("Quarantine", "User unknown")
    await deliver(mailbox, raw)                        # the same DSN again: no second effect
    entry = mailbox.log.quarantined("ann@isp.test")
    assert entry is not None and entry.hits == 1
    assert len(mailbox.log.inbound_records()) == 2
    assert mailbox.log.kpis("D1").success_pct == 50.0   # 2 of 4 Sent now


async def test_soft_dsn_only_records_the_reason(mailbox: Receiver) -> None:
    await deliver(mailbox, dsn("bob@isp.test", "4.2.2", "452 4.2.2 Mailbox full",
                               message_id="<m2@sender.test>"))
    line = mailbox.log.line("D1", "2", "bob@isp.test")
    assert line is not None
    assert (line.status, line.failure_type, line.failure_reason, line.reason_code) == (
        TAKEN, "Soft", "Mailbox full", 5)
    assert mailbox.log.quarantined("bob@isp.test") is None


async def test_dsn_found_by_campaign_headers_when_present(mailbox: Receiver) -> None:
    raw = dsn("cat@isp.test", "5.2.1", "550 5.2.1 account disabled", message_id="<other@x>",
              campaign_headers="X-Campaign-Delivery-Id: D1\r\nX-Campaign-Log-Id: 3\r\n")
    await deliver(mailbox, raw)
    line = mailbox.log.line("D1", "3", "cat@isp.test")
    assert line is not None and (line.status, line.failure_reason) == ("Failed",
                                                                       "Account disabled")


async def test_arf_complaint_denylists_the_address(mailbox: Receiver) -> None:
    await deliver(mailbox, arf("dan@isp.test", "<m4@sender.test>", "D1", "4"))
    entry = mailbox.log.quarantined("dan@isp.test")
    assert entry is not None and (entry.status, entry.reason) == ("Denylisted", "Denylisted")
    line = mailbox.log.line("D1", "4", "dan@isp.test")
    assert line is not None
    assert (line.status, line.failure_type, line.failure_reason) == ("Sent", "Hard",
                                                                     "Denylisted")


async def test_auto_reply_is_ignored_but_recorded(mailbox: Receiver) -> None:
    await deliver(mailbox, auto_reply("cat@isp.test", "<m3@sender.test>"))
    line = mailbox.log.line("D1", "3", "cat@isp.test")
    assert line is not None
    assert (line.status, line.failure_type, line.failure_reason) == ("Sent", "Ignored",
                                                                     "Error ignored")
    assert mailbox.log.quarantined("cat@isp.test") is None


async def test_unmatched_hard_bounce_still_quarantines(mailbox: Receiver) -> None:
    await deliver(mailbox, dsn("zed@isp.test", "5.1.1", "550 5.1.1 no such user",
                               message_id="<unknown@elsewhere>"))
    assert mailbox.log.quarantined("zed@isp.test") is not None
    record = mailbox.log.inbound_records()[-1]
    assert record["delivery_id"] is None and record["rule"] == "user-unknown"


async def test_mail_for_other_addresses_is_refused(mailbox: Receiver) -> None:
    with pytest.raises(aiosmtplib.SMTPRecipientsRefused):
        await deliver(mailbox, auto_reply("cat@isp.test", "<m3@sender.test>"),
                      rcpt="someone@sender.test")
    await deliver(mailbox, auto_reply("cat@isp.test", "<m3@sender.test>"),
                  rcpt="bounces+d1-3@sender.test")          # tagged bounce address: accepted
    assert mailbox.mailbox.received == 1


# -- pure parsing and rules ---------------------------------------------------------------------


def test_parse_dsn_fields() -> None:
    inbound = parse_inbound(dsn("ann@isp.test", "5.1.1", "550 5.1.1 user unknown",
                                message_id="<m1@sender.test>"))
    assert inbound.kind == "dsn" and inbound.message_id == "<dsn-1@mx.isp.test>"
    assert inbound.original.message_id == "<m1@sender.test>"
    notice = inbound.notices[0]
    assert (notice.recipient, notice.action, notice.status) == ("ann@isp.test", "failed", "5.1.1")
    assert notice.diagnostic == "550 5.1.1 user unknown"


@pytest.mark.parametrize(("status", "diagnostic", "action", "expected"), [
    ("5.1.1", "550 5.1.1 The email account that you tried to reach does not exist", "failed",
     ("Hard", "User unknown")),
    ("5.2.1", "550 5.2.1 The email account that you tried to reach is disabled", "failed",
     ("Hard", "Account disabled")),
    ("5.2.2", "552 5.2.2 The recipient's inbox is out of storage space", "failed",
     ("Soft", "Mailbox full")),
    ("5.1.2", "550 5.1.2 domain not found", "failed", ("Soft", "Invalid domain")),
    ("5.7.1", "554 5.7.1 Message rejected as spam", "failed", ("Soft", "Refused")),
    ("4.4.7", "Delivery time expired", "delayed", ("Ignored", "Error ignored")),
    # An unrecognised permanent failure is counted (Soft) but not Hard: "Not defined".
    ("5.0.0", "550 something else entirely", "failed", ("Soft", "Not defined")),
    ("", "", "failed", ("Ignored", "Not defined")),
])
def test_default_rules(status: str, diagnostic: str, action: str,
                       expected: tuple[str, str]) -> None:
    inbound = parse_inbound(dsn("x@isp.test", status, diagnostic, message_id="<m@x>",
                                action=action))
    result = qualify(inbound, load_rules())[0]
    assert (result.failure_type, result.reason) == expected


def test_non_report_bounce_uses_embedded_headers_and_reply() -> None:
    raw = (b"From: MAILER-DAEMON@old.test\r\nSubject: failure notice\r\n\r\n"
           b"Sorry, I couldn't deliver: 550 5.1.1 user unknown\r\n\r\n"
           b"--- Below this line is a copy of the message.\r\n\r\n"
           b"Message-ID: <m9@sender.test>\r\nX-Campaign-Log-Id: 9\r\n")
    inbound = parse_inbound(raw)
    assert inbound.kind == "dsn"                 # a bounce, though not an RFC 3464 report
    assert inbound.original.message_id == "<m9@sender.test>"
    assert inbound.original.log_id == "9"
    assert qualify(inbound, load_rules())[0].reason == "User unknown"


@pytest.mark.parametrize(("text", "message"), [
    ('[[rule]]\nname = "a"\ntype = "Hard"\nreason = "Nope"\n', "unknown Campaign reason"),
    ('[[rule]]\nname = "a"\ntype = "Fatal"\nreason = "User unknown"\n', "type"),
    ('[[rule]]\nname = "a"\nstatus = "(" \ntype = "Hard"\nreason = "User unknown"\n',
     "bad regex"),
    ('[[rule]]\nname = "a"\nsubject = "x"\ntype = "Hard"\nreason = "User unknown"\n',
     "unknown key 'subject'"),
    ('rule = 3\n', "no [[rule]]"),
    ('[[rule]\n', "not valid TOML"),
])
def test_bad_rules_name_the_file_and_rule(text: str, message: str) -> None:
    with pytest.raises(RulesError, match=r"my-rules\.toml") as info:
        parse_rules(text, "my-rules.toml")
    assert message in str(info.value)


def test_rules_file_errors(tmp_path: Path) -> None:
    with pytest.raises(RulesError, match="cannot read rules"):
        load_rules(tmp_path / "missing.toml")
    custom = tmp_path / "rules.toml"
    custom.write_text('[[rule]]\nname = "all-hard"\ntype = "Hard"\nreason = "Refused"\n')
    assert load_rules(custom)[0].name == "all-hard"
