"""Quarantine through the commands, over real SMTP and signed webhooks: a first send whose
hard bounces and complaint come back as the MTA's events, then the next send leaves those
addresses out and reports them (Campaign's exclusion log); `quarantine ls|show|rm`; the
10-day reset on the events' clock; `send` saying what it waits for."""

from __future__ import annotations

import asyncio
import email.message
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import Envelope

from campaign_client.cli import main
from campaign_client.events import Event, Kind
from campaign_client.log import DeliveryLog
from tests.client.client_helpers import SECRET, SMTP_250, SMTP_550, FakeMta, ev, post

DAY = 86_400.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ScriptedMta(FakeMta):
    """Answers 250 at submission, then reports like the MTA by the local part: "hard..." a
    synchronous hard bounce (550 5.1.1), "complain..." delivered then a complaint, others
    delivered. Event times are the wall clock plus `offset` (the MTA's clock, moved on)."""

    offset: float = 0.0

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        self.counter += 1
        queue_id = f"Q{self.counter:05d}"
        events = []
        for rcpt in envelope.rcpt_tos:
            assert isinstance(message, email.message.EmailMessage)
            self.received.append(_received(str(envelope.mail_from), rcpt, message))
            ids = {"delivery_id": str(message["X-Campaign-Delivery-Id"]),
                   "log_id": str(message["X-Campaign-Log-Id"]), "recipient": rcpt,
                   "queue_id": queue_id, "at": time.time() + self.offset}
            local = rcpt.split("@")[0]
            events.append(ev("relayed", 1, **ids))
            if local.startswith("hard"):
                events.append(ev("hard_bounce", 2, smtp=SMTP_550, **ids,
                                 failure={"type": "Hard", "reason": "User unknown",
                                          "reason_code": 1}))
            else:
                events.append(ev("delivered", 2, smtp=SMTP_250, **ids))
            if local.startswith("complain"):
                events.append(ev("complaint", 3, **ids, failure={
                    "type": "Hard", "reason": "Denylisted", "reason_code": 8}))
        assert self.webhook_url is not None
        self.posts.append(asyncio.create_task(post(self.webhook_url, events)))
        return f"250 2.0.0 {queue_id} queued"


def _received(mail_from: str, rcpt: str, message: email.message.EmailMessage) -> Any:
    from tests.client.client_helpers import Received

    return Received(mail_from, rcpt, message)


@pytest.fixture
async def mta() -> AsyncIterator[tuple[ScriptedMta, int]]:
    fake = ScriptedMta()
    port = await fake.start()
    yield fake, port
    await asyncio.gather(*fake.posts, return_exceptions=True)
    await fake.stop()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def arun(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


PEOPLE = ["ok1@a.test", "hard1@a.test", "hard2@b.test", "complain@a.test", "ok2@b.test"]


async def test_the_next_send_excludes_quarantined_and_denylisted_addresses(
    mta: tuple[ScriptedMta, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake, port = mta
    listen = free_port()
    fake.webhook_url = f"http://127.0.0.1:{listen}/webhook"
    log = str(tmp_path / "log.sqlite")
    (tmp_path / "people.csv").write_text("email\n" + "\n".join(PEOPLE) + "\n")

    def send(delivery: str) -> list[str]:
        return ["send", "--mta", f"127.0.0.1:{port}", "--delivery-id", delivery,
                "--csv", str(tmp_path / "people.csv"), "--listen", f"127.0.0.1:{listen}",
                "--secret", SECRET, "--log", log, "--timeout", "60", "--json"]

    code, out, err = await arun(send("D1"), capsys)
    assert code == 0, err
    first = json.loads(out)
    assert first["by_status"]["Sent"] == 3 and first["by_status"]["Failed"] == 2
    assert first["indicators"]["hard_bounces"] == 2
    assert first["after_delivery"]["by_reason"] == {"Denylisted": 1}

    code, out, _ = run(["quarantine", "ls", "--log", log, "--json"], capsys)
    listed = {item["address"]: item for item in json.loads(out)}
    assert code == 0 and set(listed) == {"hard1@a.test", "hard2@b.test", "complain@a.test"}
    assert (listed["hard1@a.test"]["status"], listed["hard1@a.test"]["reason"],
            listed["hard1@a.test"]["delivery_id"]) == ("Quarantine", "User unknown", "D1")
    assert listed["complain@a.test"]["status"] == "Denylisted"

    fake.received.clear()
    code, out, err = await arun(send("D2"), capsys)
    assert code == 0, err
    assert sorted(r.rcpt for r in fake.received) == ["ok1@a.test", "ok2@b.test"]
    assert ("excluded 3 recipients before submission (Address in quarantine 2, Denylisted 1)"
            in err)
    assert "hard1@a.test: Address in quarantine (Quarantine: User unknown, delivery D1)" in err
    second = json.loads(out)
    assert second["total"] == 2 and second["indicators"]["excluded"] == 3
    assert {item["recipient"]: item["reason"] for item in second["submission"]["excluded"]} == {
        "hard1@a.test": "Address in quarantine", "hard2@b.test": "Address in quarantine",
        "complain@a.test": "Denylisted"}

    code, out, _ = run(["report", "D2", "--log", log, "--recipients", "--status", "excl",
                        "--json"], capsys)
    items = json.loads(out)["recipients"]
    assert code == 0 and {i["recipient"]: (i["status"], i["reason_code"]) for i in items} == {
        "hard1@a.test": ("Excluded", 9), "hard2@b.test": ("Excluded", 9),
        "complain@a.test": ("Excluded", 8)}
    code, out, _ = run(["report", "D2", "--log", log], capsys)
    assert "(3 more excluded before sending)" in out and "Excluded 3" in out

    code, _, err = run(["quarantine", "rm", "hard1@a.test", "--log", log], capsys)
    assert code == 0 and "hard1@a.test is Valid again (was Quarantine" in err
    code, out, _ = run(["quarantine", "show", "hard1@a.test", "--log", log, "--json"], capsys)
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "Valid"
    assert [h["signal"] for h in shown["history"]] == ["Hard", "Removed"]
    code, _, err = run(["quarantine", "rm", "ok1@a.test", "--log", log], capsys)
    assert code == 1 and err.startswith("campaign-client: error: ok1@a.test is not in")

    # Ten days and a second after hard2's bounce on the events' clock (a later event moves
    # it), hard2 is Valid again; the denylisted address stays out.
    later = time.time() + 10 * DAY + 60
    with DeliveryLog(log) as opened:
        opened.apply_events([Event("late", Kind.DELIVERED, "DX", "1", "ok9@x.test", at=later)],
                            time.time())
    fake.offset = 10 * DAY + 60
    fake.received.clear()
    code, out, err = await arun(send("D3"), capsys)
    assert code == 0, err
    assert sorted(r.rcpt for r in fake.received) == [
        "hard1@a.test", "hard2@b.test", "ok1@a.test", "ok2@b.test"]
    assert "excluded 1 recipients before submission (Denylisted 1)" in err

    code, out, _ = run(["quarantine", "ls", "--log", log], capsys)
    assert "complain@a.test" in out and "Denylisted" in out
    assert out.strip().splitlines()[-1].startswith("3 addresses")   # hard1/2 again, complain


async def test_a_send_where_every_address_is_excluded_ends_at_once(
    mta: tuple[ScriptedMta, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, port = mta
    log = tmp_path / "log.sqlite"
    with DeliveryLog(log) as opened:
        opened.quarantine("hard1@a.test", "Quarantine", time.time(), reason="User unknown")
    (tmp_path / "one.csv").write_text("email\nhard1@a.test\n")
    code, out, err = await arun(["send", "--mta", f"127.0.0.1:{port}", "--delivery-id", "D1",
                                 "--csv", str(tmp_path / "one.csv"), "--log", str(log),
                                 "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["indicators"]["excluded"] == 1
    assert "submitted 0/0" in err


async def test_send_says_what_it_waits_for_when_no_event_comes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeMta()                                  # accepts, never reports anything
    port = await fake.start()
    try:
        code, _, err = await arun(
            ["send", "--mta", f"127.0.0.1:{port}", "--delivery-id", "D1", "--generate", "3",
             "--domains", "a.test", "--log", str(tmp_path / "log.sqlite"), "--timeout", "2.6",
             "--idle-notice", "1"], capsys)
    finally:
        await fake.stop()
    assert code == 1
    notices = [line for line in err.splitlines() if "waiting for the MTA's feedback" in line]
    assert len(notices) >= 2
    assert notices[0].startswith(
        "campaign-client: waiting for the MTA's feedback events on 3 of 3 recipients "
        "(Taken into account by the service provider 3); no new event in "
        f"{tmp_path}/log.sqlite for 1s; this command runs no receiver")
    assert "`mta up --client`" in notices[0]


def test_config_errors_name_the_file_and_key(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "client.toml"
    bad.write_text("[quarantine]\nsoft_error_limit = -1\n")
    code, _, err = run(["quarantine", "ls", "--config", str(bad)], capsys)
    assert code == 2
    assert err == (f"campaign-client: error: {bad}: quarantine.soft_error_limit: expected an "
                   "integer >= 1, got -1\n")


def test_the_log_location_comes_from_the_config_or_the_environment(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "var").mkdir()
    for path in ("var/campaign-log.sqlite", "other.sqlite", "env.sqlite"):
        with DeliveryLog(tmp_path / path) as log:
            log.quarantine(f"{Path(path).stem}@x.test", "Quarantine", time.time())
    (tmp_path / "client.toml").write_text('log = "other.sqlite"\n')

    def listed(argv: list[str]) -> set[str]:
        code, out, _ = run(["quarantine", "ls", "--json", *argv], capsys)
        assert code == 0
        return {item["address"] for item in json.loads(out)}

    monkeypatch.delenv("CAMPAIGN_CLIENT_LOG", raising=False)
    monkeypatch.delenv("CAMPAIGN_CLIENT_CONFIG", raising=False)
    assert listed([]) == {"campaign-log@x.test"}
    assert listed(["--config", "client.toml"]) == {"other@x.test"}
    monkeypatch.setenv("CAMPAIGN_CLIENT_LOG", "env.sqlite")
    assert listed(["--config", "client.toml"]) == {"env@x.test"}
    assert listed(["--log", "other.sqlite"]) == {"other@x.test"}
