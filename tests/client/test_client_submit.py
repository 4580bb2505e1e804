"""Submission over real SMTP to an aiosmtpd server on port 0 standing in for the MTA."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from campaign_client.log import DeliveryLog
from campaign_client.submission import (
    Delivery,
    Recipient,
    SubmitError,
    TemplateError,
    build_message,
    parse_queue_id,
    submit,
)
from tests.client.client_helpers import FakeMta

TAKEN = "Taken into account by the service provider"


@pytest.fixture
async def mta() -> AsyncIterator[tuple[FakeMta, int]]:
    fake = FakeMta()
    port = await fake.start()
    yield fake, port
    await fake.stop()


def delivery(*emails: str) -> Delivery:
    recipients = [Recipient(address, str(i), {"first_name": f"N{i}"})
                  for i, address in enumerate(emails, 1)]
    return Delivery("D1", recipients, from_addr="news@sender.test",
                    subject="Hi {first_name}", template="Dear {first_name},\nnews.\n",
                    validity="84h")


def test_queue_id_is_the_first_token_after_the_enhanced_code() -> None:
    assert parse_queue_id("2.0.0 7F3A9C queued") == "7F3A9C"
    assert parse_queue_id("2.0.0 <7F3A9C> queued") == "7F3A9C"
    assert parse_queue_id("7F3A9C queued") == "7F3A9C"
    assert parse_queue_id("2.0.0") is None


async def test_headers_arrive_and_queue_ids_are_recorded(
    mta: tuple[FakeMta, int], tmp_path: Path
) -> None:
    fake, port = mta
    log = DeliveryLog(tmp_path / "log.sqlite")
    seen: list[tuple[int, int]] = []
    result = await submit(delivery("ann@a.test", "bob@b.test", "reject@a.test"), "127.0.0.1",
                          port, log=log, sessions=2, progress=lambda d, t: seen.append((d, t)))
    assert (result.accepted, result.failed, result.not_submitted) == (2, 1, 0)
    assert seen[-1] == (3, 3)
    by_rcpt = {r.rcpt: r for r in fake.received}
    assert set(by_rcpt) == {"ann@a.test", "bob@b.test"}
    ann = by_rcpt["ann@a.test"].message
    assert ann["X-Campaign-Delivery-Id"] == "D1"
    assert ann["X-Campaign-Log-Id"] == "1"
    assert ann["X-Campaign-Validity"] == "84h"
    assert ann["Subject"] == "Hi N1" and "Dear N1," in ann.get_content()
    assert by_rcpt["ann@a.test"].mail_from == "news@sender.test"
    line = log.line("D1", "1", "ann@a.test")
    assert line is not None
    assert line.status == TAKEN
    assert line.queue_id is not None and line.queue_id.startswith("Q")
    assert line.message_id == ann["Message-ID"]
    assert line.last_reply is not None and line.last_reply.startswith("250 2.0.0 Q")
    outcome_ids = {o.recipient: o.queue_id for o in result.outcomes}
    assert outcome_ids["ann@a.test"] == line.queue_id
    kpis = log.kpis("D1")
    assert kpis.by_status == {"Pending": 0, TAKEN: 2, "Sent": 0, "Failed": 1}
    assert kpis.success_pct == 0.0


async def test_5xx_at_rcpt_fails_at_once_with_the_reply(
    mta: tuple[FakeMta, int], tmp_path: Path
) -> None:
    fake, port = mta
    log = DeliveryLog(tmp_path / "log.sqlite")
    result = await submit(delivery("reject@a.test"), "127.0.0.1", port, log=log)
    assert result.failed == 1 and result.retries == 0
    assert fake.attempts["reject@a.test"] == 1
    line = log.line("D1", "1", "reject@a.test")
    assert line is not None
    assert line.status == "Failed"
    assert (line.failure_type, line.failure_reason, line.reason_code) == ("Hard", "User unknown", 1)
    assert line.last_reply == "550 5.1.1 <reject@a.test>: Recipient address rejected"


async def test_4xx_is_retried_then_failed_and_a_flaky_one_succeeds(
    mta: tuple[FakeMta, int], tmp_path: Path
) -> None:
    fake, port = mta
    log = DeliveryLog(tmp_path / "log.sqlite")
    result = await submit(delivery("temp@a.test", "flaky@a.test"), "127.0.0.1", port, log=log,
                          attempts=3, retry_delay=0.01)
    assert fake.attempts == {"temp@a.test": 3, "flaky@a.test": 2}
    assert (result.accepted, result.failed, result.retries) == (1, 1, 3)
    temp = log.line("D1", "1", "temp@a.test")
    flaky = log.line("D1", "2", "flaky@a.test")
    assert temp is not None and flaky is not None
    assert (temp.status, temp.failure_type, temp.failure_reason) == ("Failed", "Soft",
                                                                     "Unreachable")
    assert temp.last_reply == "451 4.3.0 Try again later"
    assert flaky.status == TAKEN


async def test_sessions_are_concurrent_and_reused(
    mta: tuple[FakeMta, int], tmp_path: Path
) -> None:
    fake, port = mta
    emails = [f"user{i}@d{i % 3}.test" for i in range(60)]
    result = await submit(delivery(*emails), "127.0.0.1", port, sessions=4)
    assert result.accepted == 60
    assert fake.sessions == 4                      # 60 messages over 4 connections
    assert len({r.message["Message-ID"] for r in fake.received}) == 60


async def test_domains_are_lower_cased_like_the_mta_does(
    mta: tuple[FakeMta, int], tmp_path: Path
) -> None:
    fake, port = mta
    log = DeliveryLog(tmp_path / "log.sqlite")
    await submit(delivery("Ann@A.Test"), "127.0.0.1", port, log=log)
    assert fake.received[0].rcpt == "Ann@a.test"
    assert log.line("D1", "1", "Ann@a.test") is not None


async def test_template_errors_are_found_before_connecting(tmp_path: Path) -> None:
    bad = Delivery("D1", [Recipient("a@a.test", "1")], template="Hi {nickname}")
    with pytest.raises(TemplateError, match="nickname"):
        await submit(bad, "127.0.0.1", 9)


async def test_unreachable_mta_raises_submit_error(tmp_path: Path) -> None:
    with socket.socket() as sock:                 # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = DeliveryLog(tmp_path / "log.sqlite")
    with pytest.raises(SubmitError, match=f"127.0.0.1:{port}"):
        await submit(delivery("a@a.test"), "127.0.0.1", port, log=log)
    line = log.line("D1", "1", "a@a.test")
    assert line is not None and line.status == "Pending"


def test_built_messages_parse_back() -> None:
    import email
    import email.policy

    plain = Delivery("D1", [Recipient("ann@a.test", "1", {"first_name": "Ann"})],
                     subject="Hi {first_name}", template="Hello {first_name}\n.\nbye",
                     headers={"X-Extra": "a\r\nInjected: yes"})
    raw = build_message(plain, plain.recipients[0], "<m1@sender.test>", 0.0)
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Injected"] is None and message["X-Extra"] == "a Injected: yes"
    assert message["Content-Transfer-Encoding"] == "7bit"
    assert message.get_content().splitlines() == ["Hello Ann", ".", "bye"]
    wide = Delivery("D1", [Recipient("zoë@a.test", "2", {"first_name": "Zoë"})],
                    subject="Bonjour {first_name} — " * 5,
                    template="Hé {first_name}\n" + "x" * 1500)
    raw = build_message(wide, wide.recipients[0], "<m2@sender.test>", 0.0)
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert message["Subject"] == ("Bonjour Zoë — " * 5).strip()
    assert message["To"] == "zoë@a.test"
    assert message.get_content().splitlines() == ["Hé Zoë", "x" * 1500]


def test_bad_header_names_are_refused() -> None:
    bad = Delivery("D1", [Recipient("a@a.test", "1")], headers={"Bad Name": "x"})
    with pytest.raises(ValueError, match="header name"):
        bad.check()


async def test_internationalised_address_goes_with_smtputf8(
    mta: tuple[FakeMta, int], tmp_path: Path
) -> None:
    fake, port = mta
    result = await submit(delivery("zoë@a.test"), "127.0.0.1", port)
    assert result.accepted == 1
    assert fake.received[0].rcpt == "zoë@a.test"
    assert fake.received[0].message["To"] == "zoë@a.test"
