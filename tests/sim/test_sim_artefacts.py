"""Asynchronous artefacts travel back through the MTA to the sender's bounce mailbox."""

from __future__ import annotations

import asyncio
import email
from email.message import Message
from typing import Any

from mta.smtp.maildir import strip_trace

PERSONA = """
[[personas]]
name = "isp"
domains = ["isp.test"]
mx = [{ name = "mx.isp.test", address = "{net}.15" }]
[personas.async]
delay = "10m"
"""


async def wait_for_mail(stack: Any, count: int) -> list[tuple[bytes, Message]]:
    maildir = stack.sink.maildir
    for _ in range(500):
        if maildir.count() >= count:
            break
        await asyncio.sleep(0.01)
    stored = list(maildir.messages())
    assert len(stored) == count, f"{len(stored)} messages in the sender mailbox"
    return [(raw, email.message_from_bytes(strip_trace(raw))) for raw in stored]


def parts_of(message: Message) -> list[Message]:
    payload = message.get_payload()
    assert isinstance(payload, list)
    return [part for part in payload if isinstance(part, Message)]


def by_type(found: list[tuple[bytes, Message]]) -> dict[str, tuple[bytes, Message]]:
    out = {}
    for raw, msg in found:
        report = msg.get_param("report-type") or ("autoreply" if msg["Auto-Submitted"] else "")
        out[str(report)] = (raw, msg)
    return out


async def test_dsn_autoreply_and_complaint_reach_the_sender(stack: Any) -> None:
    await stack.start(PERSONA, sink=True)
    mid = await stack.submit(
        ["carol+async@isp.test", "ooto@isp.test", "complaint@isp.test"], subject="Spring sale"
    )
    await stack.quiet()
    assert all(r.state == "delivered" for r in stack.rows().values())
    outbox = stack.sim.outbox
    assert outbox.scheduled == {"dsn": 1, "autoreply": 1, "complaint": 1}
    assert stack.sink.maildir.count() == 0  # nothing before the delay (virtual time)
    stack.clock.advance(600.0)
    found = by_type(await wait_for_mail(stack, 3))
    assert outbox.sent == {"dsn": 1, "autoreply": 1, "complaint": 1}

    raw, dsn = found["delivery-status"]
    assert raw.startswith(b"Return-Path: <>\r\nDelivered-To: bounces@campaign.test\r\n")
    assert dsn.get_content_type() == "multipart/report"
    parts = parts_of(dsn)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    status = parts[1].as_string()
    assert "Final-Recipient: rfc822; carol+async@isp.test" in status
    assert "Action: failed" in status and "Status: 5.1.1" in status
    assert "Diagnostic-Code: smtp; 550 5.1.1" in status
    assert f"Message-ID: {mid}" in parts[2].as_string()
    assert "X-Campaign-Delivery-Id" not in parts[2].as_string()  # the MTA stripped it

    raw, reply = found["autoreply"]
    assert raw.startswith(b"Return-Path: <>\r\n")
    assert reply["Auto-Submitted"] == "auto-replied"
    assert reply["In-Reply-To"] == mid and reply["From"] == "<ooto@isp.test>"
    assert reply["Subject"] == "Auto: Spring sale"

    raw, arf = found["feedback-report"]
    parts = parts_of(arf)
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/feedback-report",
        "message/rfc822",
    ]
    feedback = parts[1].as_string()
    assert "Feedback-Type: abuse" in feedback
    assert "Original-Rcpt-To: <complaint@isp.test>" in feedback
    assert "Original-Mail-From: <bounces@campaign.test>" in feedback
    original = parts_of(parts[2])[0]
    assert original["Message-ID"] == mid and original["Subject"] == "Spring sale"
    assert stack.sim.personas["isp"].ips["127.0.0.1"].complaints == 1


async def test_random_async_fraction_and_no_artefact_for_null_sender(stack: Any) -> None:
    persona = PERSONA + "dsn_fraction = 1.0\n"
    await stack.start(persona, sink=True)
    await stack.submit(["x@isp.test"])
    await stack.submit(["y@isp.test"], sender="")
    await stack.quiet()
    assert stack.sim.outbox.scheduled == {"dsn": 1}  # nothing is sent back to <>
    stack.clock.advance(600.0)
    found = await wait_for_mail(stack, 1)
    assert "Final-Recipient: rfc822; x@isp.test" in found[0][0].decode()
