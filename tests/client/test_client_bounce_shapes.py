"""The shapes the issue names, on small messages written for the test: RFC 3464 read
leniently, a multipart/report without a delivery-status part, plain-text bounces without an
"NNN N.N.N" pair, the bounce test before the auto-reply test."""

from __future__ import annotations

import json
import re
from pathlib import Path

from campaign_client.bounces.fields import parse_fields, recipient_groups
from campaign_client.inbound import load_rules, parse_inbound, qualify


def _report(status_part: str, text: str = "Delivery failed.") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.isp.test\r\nTo: bounces@sender.test\r\n"
        "Subject: Undeliverable\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        f"--B\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
        f"--B\r\nContent-Type: message/delivery-status\r\n\r\n{status_part}\r\n--B--\r\n"
    ).encode()


def _verdicts(raw: bytes) -> list[tuple[str | None, str, str, str]]:
    inbound = parse_inbound(raw)
    return [(q.notice.recipient, q.notice.status, q.failure_type, q.reason)
            for q in qualify(inbound, load_rules())]


def test_delivery_status_written_as_one_block() -> None:
    one_block = ("Reporting-MTA: dns; mx.isp.test\r\nFinal-Recipient: rfc822; a@isp.test\r\n"
                 "Action: failed\r\nStatus: 5.1.1\r\n"
                 "Final-Recipient: rfc822; b@isp.test\r\nAction: failed\r\nStatus: 5.2.2\r\n")
    assert _verdicts(_report(one_block)) == [
        ("a@isp.test", "5.1.1", "Hard", "User unknown"),
        ("b@isp.test", "5.2.2", "Soft", "Mailbox full"),
    ]


def test_fields_in_any_order_and_extra_blank_lines() -> None:
    text = ("Reporting-MTA: dns; x\n\n\n\nAction: failed\nFinal-Recipient: rfc822; a@b.test\n"
            "Status:5.1.1\nDiagnostic-Code:smtp;550 no such user\n    here\n")
    assert recipient_groups(parse_fields(text)) == [{
        "action": "failed", "final-recipient": "rfc822; a@b.test", "status": "5.1.1",
        "diagnostic-code": "smtp;550 no such user here"}]


def test_generic_status_made_precise_by_the_diagnostic() -> None:
    block = ("Final-Recipient: rfc822; a@isp.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"
             "Diagnostic-Code: X-Postfix; host mx[1.2.3.4] said: 550 5.1.1 <a@isp.test>:\r\n"
             "    Recipient address rejected (in reply to RCPT TO command)\r\n")
    assert _verdicts(_report(block)) == [("a@isp.test", "5.1.1", "Hard", "User unknown")]


def test_multipart_report_without_a_delivery_status_part_is_read_as_text() -> None:
    raw = (
        b"From: postmaster@isp.test\r\nSubject: Delivery Status Notification (Failure)\r\n"
        b'MIME-Version: 1.0\r\nContent-Type: multipart/report; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\n"
        b"Delivery to the following recipient failed permanently:\r\n\r\n"
        b"     carol@isp.test\r\n\r\nTechnical details of permanent failure:\r\n"
        b"The email account that you tried to reach is over quota.\r\n--B--\r\n"
    )
    assert _verdicts(raw) == [("carol@isp.test", "", "Soft", "Mailbox full")]


def test_plain_text_bounce_without_a_reply_code() -> None:
    raw = (b"From: Mail Delivery System <Mailer-Daemon@mx.isp.test>\r\n"
           b"Subject: Mail delivery failed: returning message to sender\r\n"
           b"Auto-Submitted: auto-replied\r\nX-Failed-Recipients: dan@gone.test\r\n\r\n"
           b"This message was created automatically by mail delivery software.\r\n\r\n"
           b"A message that you sent could not be delivered to one or more of its\r\n"
           b"recipients. This is a permanent error. The following address(es) failed:\r\n\r\n"
           b"  dan@gone.test\r\n    Unrouteable address\r\n\r\n"
           b"------ This is a copy of the message, including all the headers. ------\r\n\r\n"
           b"Message-ID: <m7@sender.test>\r\nX-Campaign-Log-Id: 7\r\n")
    inbound = parse_inbound(raw)
    # Exim writes Auto-Submitted: auto-replied on its bounces: still a bounce, not an auto-reply.
    assert inbound.kind == "dsn"
    assert inbound.original.log_id == "7" and inbound.original.message_id == "<m7@sender.test>"
    assert _verdicts(raw) == [("dan@gone.test", "", "Soft", "Invalid domain")]


def test_out_of_office_with_the_same_header_is_an_auto_reply() -> None:
    raw = (b"From: Erin <erin@isp.test>\r\nSubject: Abwesenheitsnotiz: Hi\r\n"
           b"Auto-Submitted: auto-replied\r\nIn-Reply-To: <m8@sender.test>\r\n\r\n"
           b"Ich bin bis Montag nicht im Buero.\r\n")
    inbound = parse_inbound(raw)
    assert (inbound.kind, inbound.original.message_id) == ("auto_reply", "<m8@sender.test>")
    assert _verdicts(raw) == [("erin@isp.test", "", "Ignored", "Error ignored")]


def test_an_auto_reply_names_its_sender_not_its_reply_to() -> None:
    # EarthLink's challenge-response answers come From the recipient with Reply-To a no-reply
    # address (npm baunsu's tests/emails/auto_earthlink.txt): the replier is the From.
    raw = (b"From: mango@isp.test\r\nReply-to: nobody@isp.test\r\nPrecedence: auto_reply\r\n"
           b"Subject: Re: Quote\r\n\r\nI apologize for this automatic reply to your email.\r\n")
    assert parse_inbound(raw).kind == "auto_reply"
    assert _verdicts(raw) == [("mango@isp.test", "", "Ignored", "Error ignored")]


def test_sender_refusals_are_soft_refused_not_hard() -> None:
    for diagnostic in (
        "550 5.7.1 Client host rejected: cannot find your reverse hostname (PTR)",
        "550 5.7.23 SPF validation failed",
        "554 5.7.1 Relay access denied",
        "550 Access from ip address 192.0.2.9 blocked",
    ):
        block = (f"Final-Recipient: rfc822; f@isp.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"
                 f"Diagnostic-Code: smtp; {diagnostic}\r\n")
        assert _verdicts(_report(block))[0][2:] == ("Soft", "Refused"), diagnostic


def test_null_mx_is_hard_user_unknown_as_the_mta_says() -> None:
    block = ("Final-Recipient: rfc822; g@nullmx.test\r\nAction: failed\r\nStatus: 5.1.10\r\n"
             "Diagnostic-Code: smtp; 556 5.1.10 Recipient address has null MX\r\n")
    assert _verdicts(_report(block)) == [("g@nullmx.test", "5.1.10", "Hard", "User unknown")]


def test_arf_in_a_text_part_is_a_complaint() -> None:
    raw = (b"From: fbl@isp.test\r\nSubject: FW: offer\r\n\r\n"
           b"This is an email abuse report for an email message received from IP 192.0.2.2\r\n\r\n"
           b"Feedback-Type: abuse\r\nOriginal-Rcpt-To: <hal@isp.test>\r\n")
    inbound = parse_inbound(raw)
    assert (inbound.kind, inbound.feedback_type) == ("complaint", "abuse")
    assert _verdicts(raw) == [("hal@isp.test", "", "Hard", "Denylisted")]


# Replies as vendors document them (Google's SMTP error reference, Microsoft's Exchange
# Online NDR pages, Yahoo's and AOL's postmaster pages, Postfix/Exim/qmail texts).
VENDOR_REPLIES = [
    ("550 5.1.1 The email account that you tried to reach does not exist.", "User unknown"),
    ("552 5.2.2 The email account that you tried to reach is over quota.", "Mailbox full"),
    ("550 5.2.1 The email account that you tried to reach is disabled.", "Account disabled"),
    ("550 5.7.1 Our system has detected an unusual rate of unsolicited mail originating from"
     " your IP address.", "Refused"),
    ("450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents"
     " additional messages from being delivered.", "Unreachable"),
    ("550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
     "User unknown"),
    ("550 5.4.1 Recipient address rejected: Access denied. AS(201806281)", "User unknown"),
    ("554 5.2.2 mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException", "Mailbox full"),
    ("550 5.7.606 Access denied, banned sending IP [192.0.2.1]", "Refused"),
    ("554 5.4.14 Hop count exceeded - possible mail loop", "Unreachable"),
    ("550 4.4.7 QUEUE.Expired; message expired", "Unreachable"),
    ("554 delivery error: dd This user doesn't have a yahoo.com account", "User unknown"),
    ("553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will"
     " NOT succeed.", "Refused"),
    ("521 5.2.1 : AOL will not accept delivery of this message.", "Refused"),
    ("550 5.1.1 <a@isp.test>: Recipient address rejected: User unknown in local recipient table",
     "User unknown"),
    ("450 4.1.8 <x@sender.test>: Sender address rejected: Domain not found", "Refused"),
    ("554 5.7.1 <unknown[192.0.2.1]>: Client host rejected: cannot find your reverse hostname",
     "Refused"),
    ("connect to mx.isp.test[192.0.2.7]:25: Connection timed out", "Unreachable"),
    ("Host or domain name not found. Name service error for name=isp.test type=MX",
     "Invalid domain"),
    ("all relevant MX records point to non-existent hosts", "Invalid domain"),
    ("Sorry, I couldn't find any host named isp.test. (#5.1.2)", "Invalid domain"),
    ("552 1 Requested mail action aborted, mailbox not found", "User unknown"),
    ("550 Message was not accepted -- invalid mailbox. Local mailbox x@mail.ru is unavailable:"
     " account is disabled", "Account disabled"),
    ("550 Requested action not taken: mailbox unavailable (-2146232832)", "User unknown"),
    ("550 SC-001 Mail rejected by Outlook.com for policy reasons.", "Refused"),
    ("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
     "Refused"),
    ("We're writing to let you know that the group you tried to contact (g) may not exist, or"
     " you may not have permission to post messages to the group.", "Refused"),
    ("501 5.5.4 Syntax error in parameters or arguments", "Not defined"),
]


def test_vendor_replies_in_a_dsn() -> None:
    for diagnostic, reason in VENDOR_REPLIES:
        block = ("Final-Recipient: rfc822; v@isp.test\r\nAction: failed\r\nStatus: 5.0.0\r\n"
                 f"Diagnostic-Code: smtp; {diagnostic}\r\n")
        assert _verdicts(_report(block))[0][3] == reason, diagnostic


def test_exchange_ndr_in_german_without_a_report_part() -> None:
    raw = ("From: Microsoft Outlook <postmaster@firma.test>\r\n"
           "Subject: Unzustellbar: Neuigkeiten\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           "Die Zustellung an folgende Empfänger oder Gruppen ist fehlgeschlagen:\r\n\r\n"
           "jan@firma.test\r\nDie E-Mail-Adresse wurde nicht gefunden.\r\n\r\n"
           "Diagnoseinformationen für Administratoren:\r\n").encode()
    assert _verdicts(raw) == [("jan@firma.test", "", "Hard", "User unknown")]


def test_raw_utf8_in_headers_and_report_fields() -> None:
    raw = ("From: Mail Delivery System <mailer-daemon@mail.ru.test>\r\n"
           "Subject: Недоставленное сообщение\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
           "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
           "Final-Recipient: rfc822; ivan@mail.ru.test\r\nAction: failed\r\n"
           "Diagnostic-Code: smtp; 550 Нет такого пользователя\r\n--B--\r\n").encode()
    inbound = parse_inbound(raw)
    assert inbound.text.startswith("Недоставленное сообщение")
    assert _verdicts(raw) == [("ivan@mail.ru.test", "", "Hard", "User unknown")]


def test_one_voice_with_the_mta_on_its_sourced_replies() -> None:
    """The MTA's corpus of real replies (tests/data/bounce_corpus.jsonl, with the type and
    reason the MTA gives each), each put in a DSN: the client's rules mostly agree. Where they
    differ on purpose: 4xx "user unknown"
    replies a server gave up on (the client says Hard), a few 4.7.x deferrals."""
    corpus = Path(__file__).resolve().parents[1] / "data" / "bounce_corpus.jsonl"
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()
            if line.strip()]
    rows = [row for row in rows if "type" in row["expect"]]
    same_type = same_reason = 0
    for row in rows:
        reply = " ".join(row["reply"].split())
        status = re.search(r"\b[245]\.\d{1,3}\.\d{1,3}\b", reply)
        block = (f"Final-Recipient: rfc822; v@isp.test\r\nAction: failed\r\n"
                 f"Status: {status.group(0) if status else ''}\r\n"
                 f"Diagnostic-Code: smtp; {reply}\r\n")
        verdict = _verdicts(_report(block))[0]
        same_type += verdict[2] == row["expect"]["type"]
        same_reason += verdict[2:] == (row["expect"]["type"], row["expect"]["reason"])
    assert len(rows) >= 200
    assert same_type / len(rows) >= 0.95
    assert same_reason / len(rows) >= 0.90
